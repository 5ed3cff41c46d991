"""The audit's power and its cost: ε̂ (one-run lower bound, Gaussian estimate) beside the ledger's ε.

Part 1 (power): DP-FedAvg's mechanism with 1,000 canary clients, Poisson q = 0.25, fixed C, 20 rounds (the
setting of ``scenarios/dp_fedavg.toml``), for each noise multiplier z and seed; the last row is a broken
mechanism (a quarter of the accounted noise) that the audit must catch.

Part 2 (cost, ``--cost``): seconds per round of ``scenarios/dp_fedavg.toml`` with ``[audit]`` (inline engine)
and the part of it spent on the canaries (joining them to the round, scoring them against each release).

    python benchmarks/audit_table.py [--seeds 0 1 2] [--cost]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from simulator.audit.mechanism import audit_dp_fedavg


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2f}"


def power(zs: list[float], seeds: list[int], canaries: int) -> None:
    print(
        f"{'z':>5} {'seed':>4} {'ledger eps':>10} {'eps_lower':>9} {'lower/eps':>9} {'estimate':>8} "
        f"{'est/eps':>7} {'AUC':>6} {'final lower':>11} {'s':>5}"
    )
    rows = [(z, s, 1.0, 0.25, 20) for z in zs for s in seeds] + [(8.0, s, 0.25, 1.0, 9) for s in seeds]
    for z, seed, scale, q, rounds in rows:
        t0 = time.perf_counter()
        a = audit_dp_fedavg(
            noise_multiplier=z,
            seed=seed,
            canaries=canaries,
            noise_scale=scale,
            sampling_rate=q,
            rounds=rounds,
        )
        b, e = a.block, a.epsilon_upper
        est = b["epsilon_gaussian_estimate"] or 0.0
        tag = f"{z:g}" if scale == 1.0 else f"{z:g}/4*"
        print(
            f"{tag:>5} {seed:>4} {_fmt(e):>10} {b['epsilon_lower']:>9.2f} "
            f"{(b['epsilon_lower'] / e if math.isfinite(e) else 0):>9.2f} {est:>8.2f} "
            f"{(est / e if math.isfinite(e) else 0):>7.2f} {b['auc']:>6.3f} "
            f"{b['final_model']['epsilon_lower']:>11.2f} {time.perf_counter() - t0:>5.1f}"
        )
    print("* broken: the ledger accounts z = 8 (q = 1, 9 rounds) but the mechanism adds z = 2")


def cost(rounds: int) -> None:
    from simulator import load_scenario, run

    base = [
        "simulation.engine='inline'",
        f"federation.rounds={rounds}",
        "privacy.noise_seed=1",
        "audit={canaries=1000}",
    ]
    r = run(load_scenario("scenarios/dp_fedavg.toml", base), write=False)
    per = statistics.median(x.seconds for x in r.rounds[1:] or r.rounds)  # steady rounds (not the first)
    audit = r.audit["seconds_per_round"]
    print(
        f"dp_fedavg.toml with 1000 canary clients: round {per:.3f} s (median after round 1), of which the "
        f"audit (joining + scoring the canaries) {audit:.3f} s = {audit / per:.0%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--z", type=float, nargs="+", default=[0.0, 0.3, 0.5, 1.0, 2.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--cost", action="store_true", help="also time the audit inside a dp_fedavg.toml round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds for --cost")
    args = ap.parse_args()
    power(args.z, args.seeds, args.canaries)
    if args.cost:
        cost(args.rounds)


if __name__ == "__main__":
    main()
