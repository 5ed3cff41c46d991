"""Progress bars for the long loops of an attack: an Inverting Gradients run of 24 000 steps takes
hours on a CPU, and a user should see how far it is and how long is left.

Attacks iterate with :func:`steps` instead of ``range``. Nothing is shown unless the code that owns the
terminal asks for it with :func:`shown` (``privsim run`` does for a leakage experiment): library calls,
tests, benchmarks and in-run observers, which run under the federated run's own progress bar, print nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["shown", "steps"]

_SHOW: contextvars.ContextVar[bool] = contextvars.ContextVar("privsim_attack_progress", default=False)


@contextmanager
def shown(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`steps` draws a progress bar on stderr (when ``enabled``)."""
    token = _SHOW.set(enabled)
    try:
        yield
    finally:
        _SHOW.reset(token)


def steps(total: int, what: str) -> Iterator[int]:
    """``range(total)``, drawn as a progress bar named ``what`` with elapsed and remaining time when shown."""
    if not _SHOW.get() or total < 2:
        yield from range(total)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=total)
        for i in range(total):
            yield i
            bar.advance(task)
