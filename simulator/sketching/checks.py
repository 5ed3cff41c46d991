"""Load-time checks of ``[compression]`` (registered with :func:`~simulator.scenario.scenario_check`).

The registry validates each param on its own; the compressor's constructor checks how they combine (noise
without a clip norm, a ratio that leaves no rows…). Building the compressor here — cheap, nothing is allocated
before the first round — turns those into load-time problems that name the field.
"""

from __future__ import annotations

from simulator.scenario.loader import Problem, scenario_check
from simulator.scenario.schema import Scenario
from simulator.sketching.base import COMPRESSORS, Compressor

__all__ = ["compression_problems", "scenario_compressor"]


@scenario_check
def compression_problems(s: Scenario) -> list[Problem]:
    c = s.compression
    try:
        comp = COMPRESSORS.create(c.name, c.params)
    except (ValueError, TypeError) as e:
        return [Problem("compression.params", f"{c.name!r}: {e}")]
    out: list[Problem] = []
    if comp.aggregates_in_sketch_space and s.defenses.aggregator.name != "fedavg":
        out.append(
            Problem(
                "defenses.aggregator.name",
                f"{s.defenses.aggregator.name!r} with compressor {c.name!r}, which aggregates in sketch "
                f"space: the aggregator would never see a per-client update (it would be ignored); use "
                f'"fedavg", or a compressor that decodes each client (e.g. srht with '
                f"aggregate_in_sketch_space = false)",
            )
        )
    params = getattr(comp, "privacy_params", lambda: None)()
    if params is not None and s.privacy.level == "record":
        return [
            Problem(
                "privacy.level",
                "compression noise_multiplier > 0 is accounted as client-level DP on the "
                "sketch; combining it with record-level DP-SGD is not analysed; set "
                'privacy.level = "none" or compression.params.noise_multiplier = 0',
            )
        ]
    return out


def scenario_compressor(s: Scenario) -> Compressor | None:
    """The scenario's compressor, for other checks to read its capability flags; None when it cannot be
    built (:func:`compression_problems` reports why)."""
    try:
        return COMPRESSORS.create(s.compression.name, s.compression.params)
    except (ValueError, TypeError, KeyError):
        return None
