"""What this process already computed of its scenarios' data, for a worker process it starts.

A worker that builds the scenario's runtime from scratch parses the embedded files and computes the
up-front partitions again (importing Hugging Face ``datasets`` and flwr-datasets: about 4 s of its start-up
on this machine, measured on quickstart). The same inputs give the same arrays, so the process that starts
the worker hands over what it has; the worker's runtime then reads them instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.data.embedded import adopt_arrays, loaded_arrays
from simulator.data.partition import PartitionKey, adopt_partitions, computed_partitions

__all__ = ["DataHandoff", "adopt", "handoff"]


@dataclass(frozen=True)
class DataHandoff:
    """Parsed embedded files (by data set) and up-front partitions (by their inputs)."""

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    partitions: list[tuple[PartitionKey, tuple[np.ndarray, ...]]] = field(default_factory=list)


def handoff() -> DataHandoff:
    """What this process has computed so far."""
    return DataHandoff(loaded_arrays(), computed_partitions())


def adopt(h: DataHandoff) -> None:
    """Use what another process computed (before building a runtime)."""
    adopt_arrays(h.arrays)
    adopt_partitions(h.partitions)
