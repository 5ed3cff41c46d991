"""privsim's runs behind a SuperLink: the ``ray`` engine and the ``deployment`` engine.

``ray``: what ``flwr run`` does for a local simulation (Flower 1.41's supported path; ``run_simulation``
is deprecated). A ``flower-superlink --simulation`` on 127.0.0.1 and a free port; the App is submitted
through the Control API with the scenario in its run config and the federation size and Ray resources in its
federation config; the SuperLink starts ``flwr-simulation``, which runs the ServerApp and the ClientApps on
Ray.

``deployment``: a SuperLink and one ``flower-supernode`` per client (or per group of clients), as separate
processes on this machine, SuperNode g of M with ``--node-config "partition-id=g num-partitions=M"``
(:mod:`simulator.flower.nodes`). Secure by default: TLS on every API (a throwaway CA and server
certificate, :mod:`simulator.deploy.certs`) and SuperNode authentication
(``--enable-supernode-auth``; each SuperNode's public key is registered through the Control API before it
starts, as ``flwr supernode register`` does, and it signs its requests with its private key). ``insecure``
turns both off: for testing only.

Both: the ServerApp hands rounds and its outcome back through :mod:`simulator.deploy.exchange`, so the calling
``simulator.run`` writes the run folder and the store as for the inline engine; every wait is bounded; every
process started is stopped on return, on error and on Ctrl-C. Flower's and Ray's output goes to log files in
``work_dir`` (``superlink.log``, ``serverapp.log``, ``supernode-<i>.log``), none to the terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.proto.federation_config_pb2 import SimulationConfig

from simulator.deploy.certs import make_node_keys, make_tls
from simulator.deploy.exchange import ExchangeReader, make_exchange
from simulator.deploy.fab import build_fab
from simulator.deploy.processes import DeployError, ProcessGroup, free_ports, wait_for
from simulator.deploy.superlink import HOST, SuperLink, flower_env, flower_executable
from simulator.flower.runtime import num_nodes
from simulator.flower.server_app import RoundSink, ServerOutcome
from simulator.scenario import Problem, Scenario, ScenarioError

__all__ = ["DeployOptions", "clients_per_node_for", "run_deployment", "run_simulation", "simulation_config"]

_STATUS_EVERY = 2.0  # seconds between run-status queries while waiting for rounds
_POLL = 0.2  # seconds between looks at the exchange folder
_SERVERAPP_LOG = "serverapp.log"


@dataclass(frozen=True)
class DeployOptions:
    """How ``privsim deploy`` (engine ``deployment``) runs."""

    insecure: bool = False  # no TLS and no SuperNode authentication: for testing only
    timeout: float = 24 * 3600.0  # seconds the whole run may take, start-up included
    start_timeout: float = 600.0  # seconds for the SuperLink to answer and every SuperNode to come online


def simulation_config(
    num_supernodes: int, ray_init: Mapping[str, Any], client_resources: Mapping[str, float]
) -> tuple[SimulationConfig, dict[str, str]]:
    """Ray's init arguments and the clients' resources as Flower 1.41's federation config (what
    ``flwr run --federation-config`` sets), plus the environment the rest needs (a cluster address).

    >>> cfg, env = simulation_config(4, {"num_cpus": 2, "log_to_driver": True}, {"num_cpus": 1.0})
    >>> cfg.num_supernodes, cfg.init_args_num_cpus, cfg.client_resources_num_cpus, env
    (4, 2, 1, {})
    """
    init = dict(ray_init)
    env: dict[str, str] = {}
    if init.pop("include_dashboard", False):
        raise ValueError(
            "Flower's simulation runtime starts Ray without its dashboard (include_dashboard=False)"
        )
    address = init.pop("address", None)
    if address is not None:
        env["RAY_ADDRESS"] = str(address)  # ray.init() joins the cluster named there
    kw: dict[str, Any] = {"num_supernodes": num_supernodes, "backend": "ray", "verbose": False}
    cpus = client_resources.get("num_cpus")
    if cpus is not None:
        if float(cpus) != int(cpus):
            raise ValueError(f"Flower's simulation runtime takes whole CPUs per client, not {cpus}")
        kw["client_resources_num_cpus"] = int(cpus)
    if (gpus := client_resources.get("num_gpus")) is not None:
        kw["client_resources_num_gpus"] = float(gpus)
    for key, field in (
        ("num_cpus", "init_args_num_cpus"),
        ("num_gpus", "init_args_num_gpus"),
        ("logging_level", "init_args_logging_level"),
        ("log_to_driver", "init_args_log_to_driver"),
    ):
        if key in init:
            kw[field] = init.pop(key)
    if init:
        raise ValueError(f"Ray init arguments Flower's simulation runtime cannot pass: {sorted(init)}")
    return SimulationConfig(**kw), env


def clients_per_node_for(num_clients: int, supernodes: int) -> int:
    """``simulation.clients_per_node`` that makes ``supernodes`` SuperNodes play ``num_clients`` clients
    (:mod:`simulator.flower.nodes`: ⌈N / c⌉ nodes); a ValueError naming the counts that work otherwise.

    >>> clients_per_node_for(10, 10), clients_per_node_for(10, 4), clients_per_node_for(20, 5)
    (1, 3, 4)
    """
    if not 1 <= supernodes <= num_clients:
        raise ValueError(f"{supernodes} SuperNodes for {num_clients} clients: give 1 to {num_clients}")
    c = -(-num_clients // supernodes)
    if -(-num_clients // c) != supernodes:
        ok = sorted({-(-num_clients // c) for c in range(1, num_clients + 1)})
        raise ValueError(
            f"{supernodes} SuperNodes cannot split {num_clients} clients into equal groups; possible: "
            + ", ".join(map(str, ok))
        )
    return c


@contextlib.contextmanager
def _folder(work_dir: Path | None) -> Iterator[Path]:
    """``work_dir`` (kept: logs, certificates), or a temporary folder removed afterwards."""
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        yield work_dir
        return
    with tempfile.TemporaryDirectory(prefix="privsim-flower-") as d:
        yield Path(d)


def _copy_outcome(src: ServerOutcome, dst: ServerOutcome) -> None:
    for f in dataclasses.fields(ServerOutcome):
        setattr(dst, f.name, getattr(src, f.name))


def _failed(outcome: ServerOutcome, error: BaseException) -> None:
    outcome.error = error
    outcome.status = f"failed: {error}"


def _follow(
    s: Scenario,
    sink: RoundSink,
    outcome: ServerOutcome,
    link: SuperLink,
    *,
    scratch: Path,
    logs: Path,
    simulation: SimulationConfig | None,
    deadline: float,
) -> None:
    """Submit the App with the scenario, replay its rounds into ``sink`` as they come, then take the
    outcome."""
    root = make_exchange(scratch)
    run_config = {"scenario": s.model_dump_json(exclude_unset=True), "exchange": str(root)}
    run_id = link.start_run(build_fab(), run_config, simulation)
    reader = ExchangeReader(root)
    try:
        _wait(s, sink, link, reader, run_id, deadline)
        _copy_outcome(reader.outcome(), outcome)
        # let Flower close the run (its ServerApp process returns) before the processes are stopped
        with contextlib.suppress(DeployError):
            wait_for(lambda: True if link.run_status(run_id).finished else None, timeout=30.0, what="run end")
    except DeployError as e:
        tail = "\n".join(_save_run_log(link, run_id, logs).rstrip().splitlines()[-15:])
        raise DeployError(f"{e}\nthe ServerApp's last lines ({logs / _SERVERAPP_LOG}):\n{tail}") from e
    _save_run_log(link, run_id, logs)


def _save_run_log(link: SuperLink, run_id: int, logs: Path) -> str:
    """Write the ServerApp process's output to ``serverapp.log`` once Flower has all of it (the run has
    ended; Flower hands it out once); '' otherwise."""
    try:
        if not link.run_status(run_id).finished:
            return ""
        text = link.run_log(run_id)
    except DeployError:
        return ""
    (logs / _SERVERAPP_LOG).write_text(text)
    return text


def _wait(
    s: Scenario, sink: RoundSink, link: SuperLink, reader: ExchangeReader, run_id: int, deadline: float
) -> None:
    """Replay rounds into ``sink`` until the outcome is there, the run ends without one, a process dies, or
    the deadline passes."""
    next_status = time.monotonic() + _STATUS_EVERY
    steps = int(max(deadline - time.monotonic(), 0.0) / _POLL) + 2
    for _ in range(steps):
        if reader.poll(sink, s):
            return
        if (why := link.process.exited()) is not None:
            raise DeployError(why)
        if time.monotonic() >= next_status:
            st = link.run_status(run_id)
            if st.finished and not reader.poll(sink, s):
                raise DeployError(
                    f"the Flower run ended ({st.sub_status}) without privsim's results: "
                    f"{st.details or 'no details'}"
                )
            if st.finished:
                return
            next_status = time.monotonic() + _STATUS_EVERY
        if time.monotonic() >= deadline:
            link.stop_run(run_id)
            raise DeployError(f"the run did not finish within its time limit (log: {link.process.log})")
        time.sleep(_POLL)
    raise DeployError(f"the run did not finish within its time limit (log: {link.process.log})")


def run_simulation(
    s: Scenario,
    sink: RoundSink,
    outcome: ServerOutcome,
    *,
    work_dir: Path | None,
    num_nodes: int,
    ray_init: Mapping[str, Any],
    client_resources: Mapping[str, float],
    timeout: float = 24 * 3600.0,
) -> None:
    """The ``ray`` engine: Flower's simulation runtime behind a SuperLink started for this run."""
    deadline = time.monotonic() + timeout
    try:
        federation, env_extra = simulation_config(num_nodes, ray_init, client_resources)
    except ValueError as e:
        raise ScenarioError(s.source, [Problem("simulation", str(e))]) from None
    with (
        _folder(work_dir) as work,
        tempfile.TemporaryDirectory(prefix="privsim-flwr-") as scratch,
        ProcessGroup(work) as group,
    ):
        try:
            link = SuperLink(group, flower_env(Path(scratch) / "home", env_extra), tls=None, simulation=True)
            try:
                link.wait_ready()
                _follow(
                    s,
                    sink,
                    outcome,
                    link,
                    scratch=Path(scratch),
                    logs=work,
                    simulation=federation,
                    deadline=deadline,
                )
            finally:
                link.close()
        except (DeployError, OSError) as e:
            _failed(outcome, e)


def run_deployment(
    s: Scenario,
    sink: RoundSink,
    outcome: ServerOutcome,
    *,
    work_dir: Path | None,
    options: DeployOptions,
) -> None:
    """The ``deployment`` engine: a SuperLink and SuperNode processes on this machine, one per client (or
    per group of ``simulation.clients_per_node`` clients)."""
    k = num_nodes(s)
    deadline = time.monotonic() + options.timeout
    secure = not options.insecure
    with (
        _folder(work_dir) as work,
        tempfile.TemporaryDirectory(prefix="privsim-flwr-") as scratch,
        ProcessGroup(work) as group,
    ):
        tls = make_tls(work / "tls") if secure else None
        keys = make_node_keys(work / "keys", k) if secure else []
        try:
            link = SuperLink(group, flower_env(Path(scratch) / "superlink"), tls=tls, auth=secure)
            try:
                link.wait_ready(timeout=options.start_timeout)
                for i, key in enumerate(keys):  # flwr supernode register, before the SuperNode starts
                    link.register(key, f"supernode-{i}")
                nodes = []
                for i, port in enumerate(free_ports(k, HOST)):
                    argv = [flower_executable("flower-supernode"), "--superlink", link.address]
                    argv += ["--node-config", f"partition-id={i} num-partitions={k}"]
                    argv += ["--host", HOST, "--port", str(port)]
                    if tls is None:
                        argv.append("--insecure")
                    else:
                        argv += ["--root-certificates", str(tls.ca_cert)]
                        argv += ["--auth-supernode-private-key", str(keys[i].private_key)]
                        argv += ["--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key)]
                        argv += ["--ssl-ca-certfile", str(tls.ca_cert)]
                    env = flower_env(Path(scratch) / f"supernode-{i}")
                    nodes.append(group.start(f"supernode-{i}", argv, env))

                def online() -> bool | None:
                    return True if sum(v == "online" for v in link.nodes().values()) >= k else None

                def dead() -> str | None:
                    return next((w for p in [link.process, *nodes] if (w := p.exited()) is not None), None)

                wait_for(online, timeout=options.start_timeout, what=f"{k} SuperNodes online", alive=dead)
                _follow(
                    s,
                    sink,
                    outcome,
                    link,
                    scratch=Path(scratch),
                    logs=work,
                    simulation=None,
                    deadline=deadline,
                )
            finally:
                link.close()
        except (DeployError, OSError) as e:
            _failed(outcome, e)
        finally:
            for key in keys:  # throwaway: no private key outlives the run
                key.private_key.unlink(missing_ok=True)
            if tls is not None:
                tls.server_key.unlink(missing_ok=True)
