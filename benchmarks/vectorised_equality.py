"""Same results on both paths (issue 20): per-round main accuracy and loss of a scenario trained per client
(``simulation.vectorise = "off"``) and as one vectorised cohort (``"on"``), side by side.

Default: quickstart as shipped (its max-pooling CNN, 10 of 20 Dirichlet clients × 2 epochs), 3 rounds, one
process, in-process engine, the vectorised step on ``--kernels auto`` (exact kernels for a CNN: each client's
own weight-layer calls, bit-identical). ``--kernels batched`` needs a model without max-pooling, e.g.
``--set "model.params={pool='avg'}"``: grouped convolutions, the same arithmetic in another order. The
vectorised CNN is no faster on a CPU (auto would not choose it); this checks that it computes the same thing.

    python benchmarks/vectorised_equality.py
    python benchmarks/vectorised_equality.py --kernels batched --set "model.params={pool='avg'}"
    python benchmarks/vectorised_equality.py --set "model.name='mlp'" --set "model.params={}"
"""

from __future__ import annotations

import argparse
import time

import torch

from simulator import load_scenario
from simulator.runner import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/quickstart.toml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="scenario override (repeatable)")
    ap.add_argument("--kernels", choices=["auto", "batched", "exact"], default="auto")
    a = ap.parse_args()
    torch.set_num_threads(1)
    curves = {}
    for mode in ("off", "on"):
        s = load_scenario(
            a.scenario,
            [
                *a.set,
                f"federation.rounds={a.rounds}",
                "simulation.engine='inline'",
                "simulation.workers=1",
                f"simulation.vectorise='{mode}'",
                *([f"simulation.vectorise_kernels='{a.kernels}'"] if mode == "on" else []),
            ],
        )
        t0 = time.perf_counter()
        r = run(s, write=False)
        curves[mode] = ([x.main_accuracy for x in r.rounds], [x.main_loss for x in r.rounds])
        print(f"vectorise={mode}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"\n{'round':>5} {'acc per client':>15} {'acc vectorised':>15} {'|Δ acc|':>9} {'loss rel Δ':>11}")
    worst_acc = worst_loss = 0.0
    (acc_off, loss_off), (acc_on, loss_on) = curves["off"], curves["on"]
    for i, (a0, a1, l0, l1) in enumerate(zip(acc_off, acc_on, loss_off, loss_on), start=1):
        d_acc, d_loss = abs(a0 - a1), abs(l0 - l1) / abs(l0)
        worst_acc, worst_loss = max(worst_acc, d_acc), max(worst_loss, d_loss)
        print(f"{i:>5} {a0:>15.4f} {a1:>15.4f} {d_acc:>9.1e} {d_loss:>11.1e}")
    print(f"max |Δ accuracy| {worst_acc:.1e}, max relative Δ loss {worst_loss:.1e}")


if __name__ == "__main__":
    main()
