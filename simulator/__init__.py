"""privsim: a federated-learning privacy simulator on Flower.

>>> from simulator import load_scenario, run          # doctest: +SKIP
>>> result = run(load_scenario("scenarios/quickstart.toml", ["federation.rounds=2"]))  # doctest: +SKIP
"""

from simulator.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["RunResult", "Scenario", "ScenarioError", "load_scenario", "run"]


def __getattr__(name: str):  # keep `import simulator` light: Flower and torch load on first use
    if name == "run":
        from simulator.runner import run

        return run
    if name == "RunResult":
        # deferred: keeps `import simulator` free of torch until a result is needed
        from simulator.results import RunResult

        return RunResult
    raise AttributeError(name)
