"""Keep the engine's log lines a user cannot act on out of the terminal, in ``<run folder>/engine.log``.

Flower logs INFO/WARNING lines about its own machinery (``run_simulation`` is deprecated,
``fraction_evaluate is set to 0.0``), and the libraries it calls warn about theirs (``pathspec``'s
``GitWildMatchPattern`` deprecation while Flower builds an app bundle). None of these is about the experiment,
so while a :class:`RunLog` is active in the process that runs the scenario:

* the ``flwr`` and ``ray`` loggers write to the run's ``engine.log`` instead of the terminal;
* Python ``warnings`` raised by code of the ``flwr`` and ``ray`` packages (or by a library they called, with
  none of privsim's own code in between) go to the same file.

Flower's runtime processes (SuperLink, the ServerApp's ``flwr-simulation`` process with Ray and its
``ClientAppActor`` workers) are started by :mod:`simulator.deploy` with their output in
``<run>/flower/*.log``; :func:`ray_init_args` is what that Ray is started with. privsim's own progress bar
and per-round lines are untouched. ``verbose=True`` (``privsim run --verbose``) keeps this process's engine
lines in the terminal as well as in the file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import os
import warnings
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

__all__ = ["ENGINE_LOG", "RunLog", "ray_init_args"]

ENGINE_LOG = "engine.log"  # its name in the run folder
_LOGGERS = ("flwr", "ray")  # the engine's loggers
_PACKAGES = ("flwr", "ray")  # warnings raised from code inside these packages are the engine's
_OWN = ("simulator", "attacks", "defenses")  # ... unless privsim's own code is nearer on the stack
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_ACTIVE: list[RunLog] = []  # the RunLogs entered and not yet left, innermost last


def ray_init_args() -> dict[str, Any]:
    """Keys to merge into ``ray.init``'s arguments for this run (the runner's ``_run_ray`` does).

    ``log_to_driver=True``: Ray's workers (the ``ClientAppActor`` processes that run the ClientApps) forward
    their output, "Manually terminating ClientAppActor" included, to the process that started Ray, Flower's
    ``flwr-simulation`` process, whose output :mod:`simulator.deploy` keeps in ``<run>/flower/`` and never
    in the terminal; with ``False`` it would stay only in Ray's session folder under ``/tmp/ray``, outside
    the run folder. ``logging_level="INFO"`` inside a run that writes its folder: Ray's start-up lines go to
    that log too, so that it says which Ray ran."""
    active = _ACTIVE[-1] if _ACTIVE else None
    if active is None or active.path is None:
        return {"log_to_driver": True}
    return {"log_to_driver": True, "logging_level": "INFO"}


def _package_dirs(names: tuple[str, ...]) -> tuple[str, ...]:
    dirs: list[str] = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for d in spec.submodule_search_locations:  # as imported, and with symlinks resolved
                dirs.extend({os.path.join(d, ""), os.path.join(os.path.realpath(d), "")})
    return tuple(dirs)


class RunLog(contextlib.AbstractContextManager["RunLog"]):
    """Route the engine's log lines and warnings to ``path`` (see the module doc) while active.

    Parameters
    ----------
    path:
        The log file (``<run folder>/engine.log``); ``None`` (a run that writes nothing) keeps the engine's
        WARNING lines in the terminal, as there is no file to put them in.
    verbose:
        Also keep everything in the terminal.
    """

    def __init__(self, path: str | Path | None, *, verbose: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.verbose = verbose
        self._handler: logging.Handler | None = None
        self._saved: dict[str, tuple[list[logging.Handler], bool, int]] = {}
        self._showwarning: Any = None
        self._dirs: tuple[str, ...] = ()
        self._own: tuple[str, ...] = ()

    # ------------------------------------------------------------------ enter / exit
    def __enter__(self) -> RunLog:
        if self.path is None:
            lg = logging.getLogger("flwr")
            self._saved["flwr"] = (list(lg.handlers), lg.propagate, lg.level)
            if not self.verbose:
                lg.setLevel(logging.WARNING)
            _ACTIVE.append(self)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")  # a new file per run; forked worker processes then append to it
        self._handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(_FORMAT))
        self._dirs, self._own = _package_dirs(_PACKAGES), _package_dirs(_OWN)
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._route_warning
        for name in _LOGGERS:
            lg = logging.getLogger(name)
            self._saved[name] = (list(lg.handlers), lg.propagate, lg.level)
            lg.setLevel(logging.INFO)
            if self.verbose:
                lg.addHandler(self._handler)
            else:
                lg.handlers = [self._handler]
                lg.propagate = False
        _ACTIVE.append(self)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
        for name, (handlers, propagate, level) in self._saved.items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
        if self._handler is not None:
            self._handler.close()
            self._point_to_runtime_logs()

    # ------------------------------------------------------------------ warnings
    def _route_warning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        engine = self._from_engine(filename)
        if engine and self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(warnings.formatwarning(message, category, filename, lineno, line))
        if not engine or self.verbose:
            self._showwarning(message, category, filename, lineno, file, line)

    def _from_engine(self, filename: str) -> bool:
        """The warning names a file of flwr / ray, or was raised by a library that flwr / ray called (Ray's
        ``pathspec`` deprecation warnings): walking up the stack from the warning, a flwr / ray frame comes
        before any of privsim's own (a warning from torch inside privsim's client training stays shown)."""
        if not self._dirs:
            return False
        if os.path.realpath(filename).startswith(self._dirs):
            return True
        frame: FrameType | None = inspect.currentframe()
        while frame is not None:
            path = frame.f_code.co_filename
            if path.startswith(self._own) and path != __file__:
                return False
            if path.startswith(self._dirs):
                return True
            frame = frame.f_back
        return False

    # ------------------------------------------------------------------ Flower's runtime processes
    def _point_to_runtime_logs(self) -> None:
        """Name the logs of Flower's runtime processes (engines ``ray`` and ``deployment``) at the end of the
        file, so that whoever opens ``engine.log`` finds the rest."""
        assert self.path is not None
        logs = sorted((self.path.parent / "flower").glob("*.log"))
        if logs:
            with open(self.path, "a", encoding="utf-8") as f:
                names = ", ".join(str(p.relative_to(self.path.parent)) for p in logs)
                f.write(f"---- Flower's runtime processes (SuperLink, ServerApp, Ray) logged to: {names}\n")
