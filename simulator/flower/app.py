"""privsim as a Flower App: the ``server`` (ServerApp) and ``client`` (ClientApp) that Flower loads by name.

``[tool.flwr.app.components]`` (pyproject.toml, and the FAB of :mod:`simulator.deploy.fab`) point here, so
``flwr run . <superlink>`` runs privsim on Flower's simulation runtime or on a deployment, and privsim's own
``ray`` and ``deployment`` engines submit the same App to a SuperLink they start. Importing this module does
no work: every Ray worker and every ``flwr-clientapp`` process imports it, and a module that builds data at
import kills Ray workers. The scenario arrives in the run config (keys: :mod:`simulator.deploy.fab`); the
ClientApp is :func:`~simulator.flower.client_app.make_client_app` around it, built on first use in each
process.

Two modes for the ServerApp:

* submitted by privsim (the run config has an ``exchange`` folder):
  :func:`~simulator.flower.server_app.server_main` runs, each round and the outcome go back to the submitting
  process (:mod:`simulator.deploy.exchange`), which writes the run folder and the store;
* a plain ``flwr run``: the ServerApp does what ``privsim run`` does (:func:`simulator.runner.run` on the grid
  Flower gives it), writing the run folder and the store itself, and logs where they are.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from simulator.deploy.exchange import ExchangeSink, write_outcome
from simulator.deploy.run import clients_per_node_for
from simulator.flower.client_app import make_client_app
from simulator.flower.polling import prompt_simulation_dispatch
from simulator.flower.server_app import ServerOutcome, make_server_app
from simulator.runner import run, seed_everything
from simulator.scenario import (
    Problem,
    Scenario,
    ScenarioError,
    apply_overrides,
    load_scenario,
    scenario_from_dict,
)

__all__ = ["client", "scenario_json", "server"]

# relative scenario paths resolve here: the folder that holds this `simulator` package (the FAB's, if any)
_ROOT = Path(__file__).resolve().parents[2]


def _config(context: Context, key: str) -> str:
    value = context.run_config.get(key, "")
    if not isinstance(value, str):
        raise ScenarioError(
            "run config", [Problem(key, f"{value!r}: a string is expected (--run-config \"{key}='...'\")")]
        )
    return value.strip()


def _overrides(text: str) -> list[str]:
    return [item.strip() for item in text.split(";") if item.strip()]


@functools.lru_cache(maxsize=4)
def _from_file(path: str, overrides: tuple[str, ...]) -> Scenario:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = _ROOT / p
    return load_scenario(p, overrides)


def _scenario(context: Context, extra: tuple[str, ...] = ()) -> Scenario:
    """The run's scenario: the file or JSON of ``scenario``, the user's ``overrides`` (files only), then
    ``extra`` (privsim's own: the engine, the clients per node)."""
    spec = _config(context, "scenario")
    user = _overrides(_config(context, "overrides"))
    if spec.startswith("{"):
        if user:
            raise ScenarioError(
                "run config",
                [Problem("overrides", "applies to a scenario file, not to a scenario given as JSON")],
            )
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ScenarioError("run config", [Problem("scenario", f"not valid JSON: {e}")]) from None
        return scenario_from_dict(apply_overrides(data, extra))
    if not spec:
        raise ScenarioError(
            "run config", [Problem("scenario", "empty: give a scenario TOML file (or its JSON)")]
        )
    return _from_file(spec, (*user, *extra))


def scenario_json(context: Context) -> str:
    """The scenario of this run as the ClientApp takes it (JSON, as the user wrote it)."""
    spec = _config(context, "scenario")
    if spec.startswith("{") and not _config(context, "overrides"):
        return spec
    return _scenario(context).model_dump_json(exclude_unset=True)


@functools.lru_cache(maxsize=2)
def _client_app(scenario: str) -> ClientApp:
    return make_client_app(scenario)


class _PrivsimClientApp(ClientApp):
    """A ClientApp whose scenario comes from the run config: each message goes to the scenario's
    :func:`~simulator.flower.client_app.make_client_app` (train, query, whatever it handles)."""

    def __call__(self, message: Message, context: Context) -> Message:
        return _client_app(scenario_json(context))(message, context)


client = _PrivsimClientApp()
server = ServerApp()


def _federation_size(grid: Grid, *, timeout: float, settle: float) -> int:
    """The number of SuperNodes, once it has not changed for ``settle`` seconds (at most ``timeout``)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    for _ in range(int(timeout / 0.5) + 1):
        n = len(list(grid.get_node_ids()))
        if n != last:
            last, since = n, time.monotonic()
        elif n > 0 and time.monotonic() - since >= settle:
            return n
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    raise RuntimeError(
        f"the federation had {max(last, 0)} SuperNode(s) after {timeout:.0f} s, still changing"
    )


@server.main()
def _main(grid: Grid, context: Context) -> None:
    if type(grid).__name__ == "InMemoryGrid":  # before the runtime starts its dispatch thread
        prompt_simulation_dispatch()
    exchange = _config(context, "exchange")
    if exchange:  # submitted by privsim run / privsim deploy: hand everything back
        s = _scenario(context)
        seed_everything(s.seed)
        root = Path(exchange)
        outcome = ServerOutcome()
        make_server_app(s, ExchangeSink(root), outcome)(grid, context)
        write_outcome(root, outcome)
        return
    # Flower's simulation runtime (the class is not imported: that costs seconds in every ClientApp process)
    simulation = type(grid).__name__ == "InMemoryGrid"
    engine = f"simulation.engine='{'ray' if simulation else 'deployment'}'"
    n = _scenario(context, (engine,)).data.num_clients
    # the federation's SuperNodes decide how the clients are grouped (simulator.flower.nodes): M nodes play
    # N clients, ⌈N/M⌉ each; a simulation registers its nodes at once, a deployment's may still be joining
    m = _federation_size(grid, timeout=600.0, settle=2.0 if simulation else 10.0)
    try:
        per_node = clients_per_node_for(n, m)
    except ValueError as e:
        raise ScenarioError(
            "run config", [Problem("data.num_clients", f"{n} clients on {m} SuperNodes: {e}")]
        ) from None
    s = _scenario(context, (engine, f"simulation.clients_per_node={per_node}"))
    result = run(
        s,
        out_dir=_config(context, "out-dir") or None,
        store=_config(context, "store") or None,
        on_grid=(grid, context),
    )
    print(
        f"privsim: {s.name}: {result.status}; results in {Path(result.out_dir or '.').resolve()}", flush=True
    )
