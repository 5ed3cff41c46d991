"""privsim as a Flower App (fast checks; the runs on real Flower processes are in tests/test_deployment.py):
the App module does no work at import, ``[tool.flwr.app]`` resolves and matches the FAB privsim submits, the
run config becomes the scenario, rounds and outcomes survive the hand-over between processes, the ray
engine's settings map onto Flower's federation config, the throwaway TLS and SuperNode credentials are
well-formed, and a process group is stopped with everything it started."""

from __future__ import annotations

import importlib
import os
import ssl
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.config import validate_config
from flwr.serverapp import ServerApp

from simulator.deploy.certs import make_node_keys, make_tls
from simulator.deploy.exchange import ExchangeReader, ExchangeSink, make_exchange, write_outcome
from simulator.deploy.fab import COMPONENTS, RUN_CONFIG, app_pyproject, build_fab
from simulator.deploy.processes import ProcessGroup
from simulator.deploy.run import clients_per_node_for, simulation_config
from simulator.flower.app import scenario_json
from simulator.flower.server_app import ServerOutcome
from simulator.results import RoundRecord
from simulator.runner import DeployOptions, run
from simulator.scenario import Problem, Scenario, ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[1]
TINY_SETS = ["data.num_clients=3", "data.max_examples=300", "federation.rounds=1", "model.name='mlp'"]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_importing_the_app_does_no_work() -> None:
    code = textwrap.dedent(
        """
        import simulator.flower.app as app
        import simulator.flower.runtime as rt
        from flwr.clientapp import ClientApp
        from flwr.serverapp import ServerApp
        assert isinstance(app.server, ServerApp) and isinstance(app.client, ClientApp)
        assert rt._CACHE == {}, "a runtime (data, model) was built at import"
        assert app._client_app.cache_info().currsize == 0
        import sys
        from simulator.flower.runtime import build_runtime
        from simulator.scenario import load_scenario
        build_runtime(load_scenario("scenarios/quickstart.toml", ["data.max_examples=600"]))
        assert "dp_accounting" not in sys.modules, "dp-accounting (2 s of imports) loaded without DP"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_the_flwr_app_table_resolves_and_matches_the_fab_privsim_submits() -> None:
    cfg = _pyproject()
    app = cfg["tool"]["flwr"]["app"]
    assert app["components"] == COMPONENTS
    assert app["config"] == RUN_CONFIG
    assert "federations" not in cfg["tool"]["flwr"]  # flwr 1.41 would migrate it out of this file
    ok, errors, _ = validate_config(cfg, check_module=True, project_dir=ROOT)
    assert ok, errors
    for kind, ref in app["components"].items():
        module, _, attr = ref.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        assert isinstance(obj, ServerApp if kind == "serverapp" else ClientApp)
    fab = build_fab()
    with zipfile.ZipFile(BytesIO(fab.content)) as z:
        submitted = tomllib.loads(z.read("pyproject.toml").decode())
    assert submitted["tool"]["flwr"]["app"]["components"] == COMPONENTS
    assert submitted["tool"]["flwr"]["app"]["config"] == RUN_CONFIG
    assert tomllib.loads(app_pyproject())["project"]["name"] == "privsim"


def _context(**run_config: object) -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=dict(run_config))


def test_the_run_config_gives_the_scenario() -> None:
    ctx = _context(scenario="scenarios/quickstart.toml", overrides="federation.rounds=1; model.name='mlp'")
    s = Scenario.model_validate_json(scenario_json(ctx))
    ref = load_scenario(ROOT / "scenarios/quickstart.toml", ["federation.rounds=1", "model.name='mlp'"])
    assert s.digest() == ref.digest()
    as_json = ref.model_dump_json(exclude_unset=True)
    assert scenario_json(_context(scenario=as_json, overrides="")) == as_json
    for bad, field in (
        ({"scenario": as_json, "overrides": "federation.rounds=2"}, "overrides"),
        ({"scenario": ""}, "scenario"),
        ({"scenario": 3}, "scenario"),
    ):
        with pytest.raises(ScenarioError) as e:
            scenario_json(_context(**bad))
        assert [p.path for p in e.value.problems] == [field]


def test_rounds_and_outcome_cross_the_exchange_in_order(tmp_path: Path) -> None:
    root = make_exchange(tmp_path)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    server_side = ExchangeSink(root)
    server_side.on_start(None, None)  # type: ignore[arg-type]  # the sink reads neither
    records = [RoundRecord(round=r, main_accuracy=0.1 * r, sampled=[r, r + 1]) for r in (1, 2, 3)]
    outcome = ServerOutcome(records=records, status="completed", privacy={"epsilon": 1.5})
    outcome.error = ScenarioError("x.toml", [Problem("data.num_clients", "too few")])  # no plain pickle
    seen: list[RoundRecord] = []
    started: list[bool] = []

    class Sink:
        def on_start(self, scenario: object, runtime: object) -> None:
            started.append(True)

        def on_round(self, record: RoundRecord) -> None:
            seen.append(record)

    reader = ExchangeReader(root)
    for r in records[:2]:
        server_side.on_round(r)
    assert not reader.poll(Sink(), None)  # type: ignore[arg-type]
    assert started == [True] and [r.round for r in seen] == [1, 2]
    server_side.on_round(records[2])
    write_outcome(root, outcome)
    assert reader.poll(Sink(), None)  # type: ignore[arg-type]
    assert [r.round for r in seen] == [1, 2, 3] and started == [True]
    got = reader.outcome()
    assert [r.main_accuracy for r in got.records] == [r.main_accuracy for r in records]
    assert got.privacy == {"epsilon": 1.5} and got.status == "completed"
    assert isinstance(got.error, RuntimeError) and "data.num_clients" in str(got.error)


def test_ray_settings_map_onto_flowers_federation_config() -> None:
    cfg, env = simulation_config(
        5,
        {"include_dashboard": False, "log_to_driver": False, "logging_level": "INFO", "address": "local"},
        {"num_cpus": 1.0, "num_gpus": 0.25},
    )
    assert (cfg.num_supernodes, cfg.client_resources_num_cpus, cfg.client_resources_num_gpus) == (5, 1, 0.25)
    assert (cfg.init_args_log_to_driver, cfg.init_args_logging_level) == (False, "INFO")
    assert env == {"RAY_ADDRESS": "local"}  # a Ray of the run's own, not the last cluster started here
    with pytest.raises(ValueError, match="whole CPUs"):
        simulation_config(2, {}, {"num_cpus": 0.5})
    with pytest.raises(ValueError, match="cannot pass"):
        simulation_config(2, {"object_store_memory": 10**9}, {})
    with pytest.raises(ValueError, match="dashboard"):
        simulation_config(2, {"include_dashboard": True}, {})


def test_supernode_counts_split_clients_into_equal_groups() -> None:
    assert [clients_per_node_for(12, k) for k in (12, 6, 4, 3, 1)] == [1, 2, 3, 4, 12]
    with pytest.raises(ValueError, match="possible: 1, 2, 3, 4, 5, 10"):
        clients_per_node_for(10, 6)
    with pytest.raises(ValueError):
        clients_per_node_for(3, 4)


def test_throwaway_tls_and_supernode_keys(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))  # what Flower's clients load
    ctx.load_cert_chain(tls.server_cert, tls.server_key)  # the key matches the certificate
    assert stat.S_IMODE(tls.server_key.stat().st_mode) == 0o600
    keys = make_node_keys(tmp_path / "keys", 2)
    assert len({k.registration for k in keys}) == 2
    for k in keys:
        priv = load_ssh_private_key(k.private_key.read_bytes(), None)
        pub = load_ssh_public_key(k.public_key.read_bytes())
        assert isinstance(priv, ec.EllipticCurvePrivateKey) and isinstance(priv.curve, ec.SECP384R1)
        assert (
            isinstance(pub, ec.EllipticCurvePublicKey)
            and pub.public_numbers() == priv.public_key().public_numbers()
        )
        assert stat.S_IMODE(k.private_key.stat().st_mode) == 0o600
        assert k.registration.startswith(b"-----BEGIN PUBLIC KEY-----")


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds descendants through /proc")
def test_a_process_group_stops_what_its_processes_started(tmp_path: Path) -> None:
    """A child that starts a grandchild in its own session (as the SuperLink starts its SuperExec): both
    end."""
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n"
        "                     start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    with ProcessGroup(tmp_path / "logs", grace=5.0) as group:
        child = group.start("child", [sys.executable, "-c", script], os.environ)
        for _ in range(300):  # at most 30 s for the grandchild to start
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.1)
        grandchild = int(pidfile.read_text())
        assert _alive(grandchild) and child.exited() is None
    assert child.popen.poll() is not None
    for _ in range(50):  # SIGTERM was sent; allow 5 s for the kernel to reap it
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_settings_flower_cannot_honour_are_refused_before_any_process_starts() -> None:
    base = [*TINY_SETS, "simulation.engine='ray'", "simulation.num_cpus_per_client=0.5"]
    with pytest.raises(ScenarioError) as e:
        run(load_scenario(ROOT / "scenarios/quickstart.toml", base), write=False)
    assert [p.path for p in e.value.problems] == ["simulation.num_cpus_per_client"]
    inline = load_scenario(ROOT / "scenarios/quickstart.toml", [*TINY_SETS, "simulation.engine='inline'"])
    with pytest.raises(ScenarioError) as e:
        run(inline, write=False, deployment=DeployOptions())
    assert [p.path for p in e.value.problems] == ["simulation.engine"]
