"""The processes one run starts (SuperLink, SuperNodes), their logs, and stopping all of them.

Every process is started in its own session with its output in a log file (nothing reaches the terminal), and,
on Linux, with a parent-death signal: if privsim dies without cleaning up, its SuperLink and SuperNodes get
SIGTERM. :meth:`ProcessGroup.stop` ends each started process *and everything it started* (Flower's
SuperExec, ``flwr-simulation`` / ``flwr-serverapp`` / ``flwr-clientapp`` processes, Ray's), found from
``/proc`` before the first signal: SIGTERM, a bounded wait, then SIGKILL. It runs on normal exit, on errors
and on Ctrl-C (the group is a context manager).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

__all__ = ["DeployError", "Managed", "ProcessGroup", "free_ports", "log_tail", "terminate_tree", "wait_for"]

T = TypeVar("T")


class DeployError(RuntimeError):
    """A SuperLink / SuperNode process could not be started or reached; the message says which and why."""


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Call ``probe`` until it returns something other than None; at most ``timeout`` seconds (and
    ``timeout / interval + 1`` calls). ``alive`` returns a reason to give up early (a process died)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        got = probe()
        if got is not None:
            return got
        if alive is not None and (why := alive()) is not None:
            raise DeployError(f"{what}: {why}")
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise DeployError(f"{what}: not within {timeout:.0f} s")


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1


def _children() -> dict[int, list[int]]:
    """Parent pid → child pids, from /proc (empty where there is no /proc)."""
    out: dict[int, list[int]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command may contain spaces and ')'
        out.setdefault(ppid, []).append(int(d.name))
    return out


def _descendants(pids: Sequence[int]) -> list[int]:
    tree = _children()
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        for child in tree.get(pid, []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits for its parent to reap it
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def terminate_tree(
    roots: Sequence[int], *, grace: float = 10.0, reap: Callable[[], object] | None = None
) -> None:
    """SIGTERM the processes ``roots``, their process groups and all their descendants (found before the first
    signal); SIGKILL whatever is left after ``grace`` seconds. ``reap`` collects the exit status of those that
    are this process's children (``Popen.poll``), so they do not linger as zombies."""
    pids = list(roots) + [p for p in _descendants(roots) if p not in roots]
    for pid in roots:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)  # a process started in its own session leads its group
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for _ in range(int(grace / 0.1) + 1):
        if reap is not None:
            reap()
        if not any(_alive(p) for p in pids) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Managed:
    """One started process and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def exited(self) -> str | None:
        """None while it runs; else how it ended, with the end of its log."""
        code = self.popen.poll()
        if code is None:
            return None
        tail = log_tail(self.log)
        return f"{self.name} exited with code {code} (log {self.log})" + (f":\n{tail}" if tail else "")


class ProcessGroup:
    """The processes of one run, stopped together (with their descendants) on exit."""

    def __init__(self, log_dir: Path, *, grace: float = 10.0) -> None:
        self.log_dir = log_dir
        self.grace = grace
        self.started: list[Managed] = []
        self._files: list[IO[bytes]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Managed:
        log = self.log_dir / f"{name}.log"
        f = log.open("ab")
        self._files.append(f)
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        m = Managed(name, popen, log)
        self.started.append(m)
        return m

    def stop(self) -> None:
        """Stop every started process and everything it started (:func:`terminate_tree`)."""
        terminate_tree(
            [m.popen.pid for m in self.started],
            grace=self.grace,
            reap=lambda: [m.popen.poll() for m in self.started],
        )
        for m in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.popen.wait(timeout=5)
        for f in self._files:
            f.close()
        self._files.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
