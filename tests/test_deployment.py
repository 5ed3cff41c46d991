"""privsim on real Flower processes (slow: each test starts a SuperLink, and SuperNodes or Ray).

* ``privsim deploy``'s engine (SuperLink + one SuperNode per client, TLS and SuperNode authentication) gives
  the inline engine's per-round numbers on a 2-round scenario, and stops every process it started;
* a SuperLink with SuperNode authentication refuses a SuperNode whose key was never registered, and one that
  comes without a key, while a registered one joins;
* ``flwr run . local`` (Flower's own CLI, on the App declared in pyproject.toml and Flower's local simulation
  SuperLink) completes a 1-round scenario and writes the run folder.

Every wait is bounded; servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from simulator import load_scenario
from simulator.deploy.certs import make_node_keys, make_tls
from simulator.deploy.processes import Managed, ProcessGroup, free_ports, terminate_tree, wait_for
from simulator.deploy.superlink import SuperLink, flower_env, flower_executable
from simulator.results import ResultsStore
from simulator.runner import run

ROOT = Path(__file__).resolve().parents[1]
TINY = [  # 3 clients, all sampled, a small MLP on 300 digits
    "data.num_clients=3",
    "data.max_examples=300",
    "federation.clients_per_round=3",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "federation.lr=0.1",
    "model.name='mlp'",
    "model.params={hidden=[16]}",
]


def _cmdlines() -> dict[int, str]:
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


@pytest.mark.slow
def test_a_local_deployment_gives_the_inline_numbers(tmp_path: Path) -> None:
    inline = run(
        load_scenario(ROOT / "scenarios/quickstart.toml", [*TINY, "simulation.engine='inline'"]), write=False
    )
    s = load_scenario(ROOT / "scenarios/quickstart.toml", [*TINY, "simulation.engine='deployment'"])
    out = tmp_path / "run"
    dep = run(s, out_dir=out, store=tmp_path / "store.sqlite")
    assert dep.status == "completed" and dep.engine == "deployment"
    assert [r.round for r in dep.rounds] == [1, 2]
    assert [r.sampled for r in dep.rounds] == [r.sampled for r in inline.rounds]
    assert [r.main_accuracy for r in dep.rounds] == pytest.approx(
        [r.main_accuracy for r in inline.rounds], abs=1e-6
    )
    assert [r.main_loss for r in dep.rounds] == pytest.approx([r.main_loss for r in inline.rounds], rel=1e-5)
    # the run folder and the store, as privsim run writes them
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "deployment" and len(summary["rounds"]) == 2
    store = ResultsStore(tmp_path / "store.sqlite")
    assert [len(store.rounds(r["id"])) for r in store.runs()] == [2]
    # secure by default: TLS and SuperNode authentication; public material kept, private keys removed
    flower = out / "flower"
    assert (flower / "tls" / "ca.pem").exists() and not (flower / "tls" / "server.key").exists()
    assert sorted(p.name for p in (flower / "keys").iterdir()) == [f"supernode-{i}.pub" for i in range(3)]
    link_log = (flower / "superlink.log").read_text()
    assert link_log.count("RegisterNode] Created node_id") == 3
    assert "SuperNode authentication is disabled" not in link_log
    assert "https://127.0.0.1" in link_log
    # every process it started is gone (their command lines name the run's TLS folder)
    assert [c for c in _cmdlines().values() if str(flower) in c] == []


def _supernode(group: ProcessGroup, link: SuperLink, tmp: Path, name: str, key: Path | None) -> Managed:
    assert link.tls is not None
    (port,) = free_ports(1)
    argv = [flower_executable("flower-supernode"), "--superlink", link.address]
    argv += ["--root-certificates", str(link.tls.ca_cert), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--node-config", "partition-id=0 num-partitions=1"]
    if key is not None:
        argv += ["--auth-supernode-private-key", str(key)]
    return group.start(name, argv, flower_env(tmp / f"home-{name}"))


@pytest.mark.slow
def test_supernodes_that_are_not_registered_are_refused(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    known_key, stranger_key = make_node_keys(tmp_path / "keys", 2)
    with ProcessGroup(tmp_path / "logs") as group:
        link = SuperLink(group, flower_env(tmp_path / "home-link"), tls=tls, auth=True)
        try:
            link.wait_ready(timeout=300.0)
            known_id = link.register(known_key, "known")  # flwr supernode register
            known = _supernode(group, link, tmp_path, "known", known_key.private_key)
            stranger = _supernode(
                group, link, tmp_path, "stranger", stranger_key.private_key
            )  # never registered
            anonymous = _supernode(
                group, link, tmp_path, "anonymous", None
            )  # no key: asks to register itself
            for node in (stranger, anonymous):
                code = wait_for(node.popen.poll, timeout=300.0, what=f"{node.name} to be turned away")
                assert code != 0, node.log.read_text()[-2000:]
                assert "Failed to initialize the connection to the SuperLink" in node.log.read_text()
            assert "SuperNode authentication is enabled" in anonymous.log.read_text()
            assert "Failed to activate SuperNode" in stranger.log.read_text()
            wait_for(
                lambda: True if link.nodes().get(known_id) == "online" else None,
                timeout=300.0,
                what="the registered SuperNode online",
                alive=known.exited,
            )
            assert link.nodes() == {known_id: "online"}  # the refused ones never became nodes
        finally:
            link.close()


@pytest.mark.slow
def test_flwr_run_runs_the_app_on_flowers_local_simulation(tmp_path: Path) -> None:
    port, control = free_ports(2)
    env = flower_env(
        tmp_path / "flwr-home",
        {
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),  # Flower's `local` SuperLink, on free ports
            "FLWR_LOCAL_CONTROL_API_PORT": str(control),
            "RAY_ADDRESS": "local",  # a Ray of its own, not a cluster another process started on this machine
        },
    )
    out, store = tmp_path / "run", tmp_path / "store.sqlite"
    overrides = "; ".join([*TINY, "federation.rounds=1"])
    cmd = [flower_executable("flwr"), "run", ".", "local", "--stream"]
    cmd += ["--run-config", f"scenario='scenarios/quickstart.toml' out-dir='{out}' store='{store}'"]
    cmd += ["--run-config", f'overrides="{overrides}"']
    cmd += ["--federation-config", "num-supernodes=3 client-resources-num-cpus=1 init-args-num-cpus=2"]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    finally:  # `flwr run` leaves its local SuperLink running: stop it (and what it started) by its pid
        terminate_tree(
            [pid for pid, c in _cmdlines().items() if "flower-superlink" in c and f"--port {port}" in c]
        )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "privsim: quickstart: completed" in res.stdout, res.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["engine"] == "ray"
    assert len(summary["rounds"]) == 1 and summary["rounds"][0]["main_accuracy"] > 0.1
