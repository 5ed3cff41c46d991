"""Hand a run's rounds and outcome from the ServerApp process back to the privsim process that submitted it.

Under the ``ray`` and ``deployment`` engines the ServerApp runs in a process Flower starts
(``flwr-simulation`` or ``flwr-serverapp``), not in ``privsim run``'s. The ServerApp writes each finished
round, then its whole :class:`~simulator.flower.server_app.ServerOutcome`, as pickles into a private folder
(mode 0700) that the submitting process created and passed in the run config; the submitting process reads
them back in order and keeps the progress bar, the results store and the run folder, exactly as with the
inline engine. Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, cast

from simulator.flower.server_app import RoundSink, ServerOutcome

if TYPE_CHECKING:
    from simulator.flower.runtime import Runtime
    from simulator.results import RoundRecord
    from simulator.scenario import Scenario

__all__ = ["ExchangeReader", "ExchangeSink", "make_exchange", "write_outcome"]

_ROUNDS = "rounds"
_OUTCOME = "outcome.pkl"
_STARTED = "started"

log = logging.getLogger(__name__)


def make_exchange(parent: Path) -> Path:
    """A new private folder (0700) under ``parent`` for one run's hand-over."""
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="exchange-", dir=parent))
    (root / _ROUNDS).mkdir()
    return root


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ExchangeSink:
    """The ServerApp side: a :class:`~simulator.flower.server_app.RoundSink` that writes to the folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def on_start(self, scenario: Scenario, runtime: Runtime) -> None:
        _write(self.root / _STARTED, b"")

    def on_round(self, record: RoundRecord) -> None:
        _write(self.root / _ROUNDS / f"{record.round:06d}.pkl", pickle.dumps(record))


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives a pickle round trip (exceptions with extra ``__init__`` arguments do not),
    else a RuntimeError with the same message."""
    try:
        back = pickle.loads(pickle.dumps(error))
    except Exception:  # any failure to round-trip: keep the message
        back = None
    if isinstance(back, BaseException):
        return back
    return RuntimeError(f"{type(error).__name__}: {error}")


def write_outcome(root: Path, outcome: ServerOutcome) -> None:
    """The ServerApp's last act: the whole outcome (the rounds are in it too)."""
    if outcome.error is not None:
        err = outcome.error
        log.error("privsim ServerApp failed:\n%s", "".join(traceback.format_exception(err)))
        outcome.error = _portable(err)
    _write(root / _OUTCOME, pickle.dumps(outcome))


class ExchangeReader:
    """The submitting side: replays rounds into a sink as they appear, then reads the outcome."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started = False
        self.rounds_seen = 0

    def poll(self, sink: RoundSink, scenario: Scenario) -> bool:
        """Replay what is new into ``sink`` (start, then rounds in order); True once the outcome is there and
        every round has been passed on."""
        done = (self.root / _OUTCOME).exists()  # checked first: the last round was written before it
        if not self.started and (self.root / _STARTED).exists():
            self.started = True
            # the runtime lives in the ServerApp's process; privsim's own sinks do not read it
            sink.on_start(scenario, cast("Runtime", None))
        names = sorted(p.name for p in (self.root / _ROUNDS).glob("*.pkl"))
        for name in names[self.rounds_seen :]:
            sink.on_round(pickle.loads((self.root / _ROUNDS / name).read_bytes()))
            self.rounds_seen += 1
        return done

    def outcome(self) -> ServerOutcome:
        got = pickle.loads((self.root / _OUTCOME).read_bytes())
        if not isinstance(got, ServerOutcome):
            raise TypeError(f"{self.root / _OUTCOME} does not hold a ServerOutcome")
        return got
