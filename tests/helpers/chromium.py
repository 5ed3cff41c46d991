"""Headless Chromium for the tests that render HTML pages: found on PATH, never installed by a test.

A missing browser skips the test on a developer's machine and fails it in CI (the ``CI`` environment variable
is set), where ``.ci/run`` installs Debian's ``chromium`` before the tests run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["FLAGS", "chromium", "dump_dom", "screenshot"]

_NAMES = ("chromium", "chromium-browser", "google-chrome")
# no first-run UI, no network calls of its own, no GPU: a reproducible page load in a sandboxless container
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def chromium() -> str:
    """The browser's path; skips the test (fails it under CI) when there is none."""
    for name in _NAMES:
        path = shutil.which(name)
        if path:
            return path
    msg = (
        f"headless Chromium not found on PATH (tried {', '.join(_NAMES)}); "
        "install Debian's `chromium` package (.ci/run does)"
    )
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def _run(args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, f"chromium exited {res.returncode}: {res.stderr[-2000:]}"
    return res


def dump_dom(
    url: str, profile: Path, *, virtual_time_budget_ms: int | None = None, timeout: float = 120
) -> str:
    """The page's DOM after it loaded (and its scripts ran), as HTML text."""
    budget = [f"--virtual-time-budget={virtual_time_budget_ms}"] if virtual_time_budget_ms else []
    return _run([*budget, "--dump-dom", url], profile, timeout).stdout


def screenshot(
    url: str, png: Path, profile: Path, *, size: tuple[int, int] = (1200, 2000), timeout: float = 120
) -> Path:
    """A PNG of the page's first ``size`` pixels."""
    _run([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", url], profile, timeout)
    assert png.is_file(), f"chromium wrote no screenshot at {png}"
    return png
