"""A ``flower-superlink`` process this run owns, and the Control API calls privsim makes to it.

The Control API calls are the ones the ``flwr`` CLI makes (``flwr run``: StartRun; ``flwr supernode
register``: RegisterNode; ``flwr ls``: ListRuns; ``flwr supernode ls``: ListNodes), through Flower's own HTTP
client.
"""

from __future__ import annotations

import os
import shutil
import ssl
import sys
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import (  # the Control API's messages (flwr 1.41)
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
    StreamLogsRequest,
)
from flwr.proto.federation_config_pb2 import SimulationConfig
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab

from simulator.deploy.certs import NodeKey, TlsFiles
from simulator.deploy.fab import AppBundle
from simulator.deploy.processes import DeployError, Managed, ProcessGroup, free_ports, wait_for

__all__ = ["RunStatus", "SuperLink", "flower_env", "flower_executable"]

HOST = "127.0.0.1"
Req = TypeVar("Req")
Res = TypeVar("Res")


def flower_executable(name: str) -> str:
    """``flower-superlink`` etc. of this Python environment (the venv's bin need not be on PATH)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found next to {sys.executable} or on PATH: is flwr installed?")
    return found


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the Flower processes privsim starts.

    Its own ``FLWR_HOME`` (installed FABs stay out of ``~/.flwr``), this Python's bin first on PATH (Flower
    starts ``flower-superexec``, ``flwr-simulation`` ... by name), no runtime dependency installation (the
    App's dependencies are privsim's, installed already), no update check; telemetry off unless the user set
    ``FLWR_TELEMETRY_ENABLED``.
    """
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    flwr_home.mkdir(parents=True, exist_ok=True)
    return env


@dataclass(frozen=True)
class RunStatus:
    status: str  # pending | starting | running | finished
    sub_status: str  # completed | failed | stopped (when finished)
    details: str

    @property
    def finished(self) -> bool:
        return self.status == "finished"


class SuperLink:
    """``flower-superlink`` on 127.0.0.1 and a free port, with TLS (``tls``) or ``--insecure``, SuperNode
    authentication (``auth``, needs TLS), and Flower's simulation runtime (``simulation``)."""

    def __init__(
        self,
        group: ProcessGroup,
        env: Mapping[str, str],
        *,
        tls: TlsFiles | None,
        auth: bool = False,
        simulation: bool = False,
    ) -> None:
        if auth and tls is None:
            raise ValueError("SuperNode authentication needs TLS")
        (self.port,) = free_ports(1, HOST)
        self.address = f"{HOST}:{self.port}"
        self.tls = tls
        argv = [flower_executable("flower-superlink"), "--host", HOST, "--port", str(self.port)]
        if tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-ca-certfile", str(tls.ca_cert)]
            argv += ["--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key)]
        if auth:
            argv.append("--enable-supernode-auth")
        if simulation:
            argv.append("--simulation")
        self.process: Managed = group.start("superlink", argv, env)
        self.control = ControlHttpClient.from_server_address(
            self.address,
            insecure=tls is None,
            root_certificates=None if tls is None else str(tls.ca_cert),
            interceptors=[],
        )

    def _healthy(self) -> bool | None:
        url = f"{'http' if self.tls is None else 'https'}://{self.address}/health"
        ctx = None if self.tls is None else ssl.create_default_context(cafile=str(self.tls.ca_cert))
        try:
            with urllib.request.urlopen(url, timeout=2.0, context=ctx) as r:
                return True if r.status == 200 else None
        except OSError:
            return None

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_for(
            self._healthy, timeout=timeout, what="the SuperLink did not start", alive=self.process.exited
        )

    def _call(self, method: Callable[[Req], Res], request: Req) -> Res:
        """One Control API call; any failure (connection, HTTP status, Flower error) as a DeployError."""
        try:
            return method(request)
        except Exception as e:  # httpx's and Flower's errors alike: say which call failed and why
            raise DeployError(f"SuperLink {self.address}: {type(request).__name__} failed: {e}") from e

    def register(self, key: NodeKey, name: str) -> int:
        """Register a SuperNode's public key (``flwr supernode register``); returns its node id."""
        res = self._call(
            self.control.RegisterNode, RegisterNodeRequest(public_key=key.registration, name=name)
        )
        if not res.node_id:
            raise DeployError(f"the SuperLink did not register {name}")
        return int(res.node_id)

    def nodes(self) -> dict[int, str]:
        """Node id → status (registered, online, offline ...)."""
        res = self._call(self.control.ListNodes, ListNodesRequest())
        return {int(n.node_id): n.status for n in res.nodes_info}

    def start_run(
        self,
        fab: AppBundle,
        run_config: Mapping[str, Any],
        simulation: SimulationConfig | None = None,
    ) -> int:
        """Submit the App (``flwr run``); returns the run id."""
        req = StartRunRequest(
            fab=fab_to_proto(Fab(fab.hash_str, fab.content, {})),
            override_config=user_config_to_proto(dict(run_config)),
            federation="",
            override_federation_config=simulation,
        )
        res = self._call(self.control.StartRun, req)
        if not res.HasField("run_id"):
            raise DeployError("the SuperLink did not start the run")
        return int(res.run_id)

    def run_status(self, run_id: int) -> RunStatus:
        res = self._call(self.control.ListRuns, ListRunsRequest(run_id=run_id))
        st = res.run_dict[run_id].status
        return RunStatus(st.status, st.sub_status, st.details)

    def run_log(self, run_id: int) -> str:
        """The output of a finished run's ServerApp process (``flwr log``), which the SuperLink keeps."""
        chunks = self._call(lambda r: list(self.control.StreamLogs(r)), StreamLogsRequest(run_id=run_id))
        return "".join(c.log_output for c in chunks)

    def stop_run(self, run_id: int) -> None:
        self._call(self.control.StopRun, StopRunRequest(run_id=run_id))

    def close(self) -> None:
        self.control.close()
