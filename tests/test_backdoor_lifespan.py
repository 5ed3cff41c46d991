"""Backdoor lifespan: rounds after the last attack round until BA < 10%, checked on hand-made curves."""

from __future__ import annotations

import math

from simulator.backdoor_metrics import backdoor_lifespan


def _curve(*ba: float | None) -> list[tuple[int, float | None]]:
    return [(r, b) for r, b in enumerate(ba, start=1)]


def test_first_round_below_the_threshold_counts_from_the_last_attack_round():
    ba = _curve(0.0, 0.9, 0.5, 0.95, 0.6, 0.3, 0.12, 0.09, 0.5)
    got = backdoor_lifespan(ba, [2, 4])
    assert got == {
        "after_round": 4,
        "threshold": 0.1,
        "rounds": 4,
        "censored": False,
    }  # round 8 is the first < 0.1


def test_a_backdoor_that_never_fades_is_a_censored_lower_bound():
    got = backdoor_lifespan(_curve(0.9, 0.95, 0.8, 0.7), [1, 2])
    assert got["rounds"] == 2 and got["censored"] is True


def test_unevaluated_rounds_are_skipped_and_the_threshold_is_strict():
    ba = _curve(0.9, None, math.nan, 0.1, 0.05)
    assert backdoor_lifespan(ba, [1])["rounds"] == 4  # 0.1 is not below 0.1; round 5 is
    assert backdoor_lifespan(ba, [1], threshold=0.2)["rounds"] == 3


def test_nothing_to_measure_without_attacks_or_with_an_attack_in_the_last_round():
    assert backdoor_lifespan(_curve(0.1, 0.2), [])["after_round"] is None
    got = backdoor_lifespan(_curve(0.1, 0.9), [1, 2])
    assert got["after_round"] == 2 and got["rounds"] is None and got["censored"] is False


def test_a_run_reports_the_lifespan_after_its_last_attack_round():
    from simulator import load_scenario
    from simulator.runner import run

    s = load_scenario(
        "scenarios/backdoor_badnets.toml",
        [
            "simulation.engine='inline'",
            "data.max_examples=600",
            "data.num_clients=6",
            "federation.clients_per_round=4",
            "federation.rounds=4",
            "federation.local_epochs=1",
            "model.name='mlp'",
            "model.params={hidden=[32]}",
            "attacks.plan.start_round=1",
            "attacks.plan.every=1",
            "attacks.plan.end_round=2",
        ],
    )
    r = run(s, write=False)
    life = r.attack["lifespan"]
    assert r.attack["acting_rounds"] == [1, 2] and life["after_round"] == 2
    assert life == backdoor_lifespan([(x.round, x.backdoor_accuracy) for x in r.rounds], [1, 2])
    assert life["rounds"] in (1, 2) and (
        life["censored"] == (min(x.backdoor_accuracy for x in r.rounds[2:]) >= 0.1)
    )
