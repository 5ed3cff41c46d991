"""privsim's Flower App description (``[tool.flwr.app]``) and the FAB privsim submits to its own SuperLinks.

The repository's pyproject.toml declares the same App for ``flwr run .`` (a test keeps the two equal). The FAB
that ``privsim run`` (engine ``ray``) and ``privsim deploy`` submit holds this pyproject.toml only: the
ServerApp and ClientApp are imported from the installed privsim, the one those processes run with anyway.

Run config keys (``--run-config`` of ``flwr run``; every key must be declared, with its default, in
``[tool.flwr.app.config]``):

``scenario``
    A scenario TOML file, or the scenario itself as JSON (what privsim submits). A relative path is
    resolved against the App's folder (the FAB, which carries ``scenarios/``), the same on every node.
``overrides``
    ``--set``-style overrides for a scenario file, separated by ``;``:
    ``"federation.rounds=1; model.name='mlp'"``.
``out-dir``, ``store``
    The run folder and the SQLite results store the ServerApp writes (default: the scenario's
    ``output`` section, resolved in the ServerApp's working directory).
``exchange``
    Set by privsim only: the folder through which the ServerApp hands rounds and the outcome back to the
    privsim process that submitted the run (:mod:`simulator.deploy.exchange`); that process then writes the
    run folder and the store.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
from dataclasses import dataclass

from flwr.cli.build import build_fab_from_files

__all__ = ["COMPONENTS", "PUBLISHER", "RUN_CONFIG", "AppBundle", "app_pyproject", "build_fab"]

PUBLISHER = "privsim"
COMPONENTS = {"serverapp": "simulator.flower.app:server", "clientapp": "simulator.flower.app:client"}
RUN_CONFIG: dict[str, str] = {
    "scenario": "scenarios/quickstart.toml",
    "overrides": "",
    "out-dir": "",
    "store": "",
    "exchange": "",
}


@dataclass(frozen=True)
class AppBundle:
    """A built FAB: its bytes and their SHA-256 (Flower's FAB hash)."""

    content: bytes
    hash_str: str


def _version() -> str:
    try:
        return md.version("privsim")
    except md.PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
        return "0.0.0"


def app_pyproject() -> str:
    """The pyproject.toml of the FAB privsim submits."""
    lines = [
        "[project]",
        'name = "privsim"',
        f'version = "{_version()}"',
        'description = "privsim as a Flower App (submitted by privsim itself)"',
        'license = "Apache-2.0"',
        "",
        "[tool.flwr.app]",
        f'publisher = "{PUBLISHER}"',
        "",
        "[tool.flwr.app.components]",
        *(f'{k} = "{v}"' for k, v in COMPONENTS.items()),
        "",
        "[tool.flwr.app.config]",
        *(f'{k} = "{v}"' for k, v in RUN_CONFIG.items()),
        "",
    ]
    return "\n".join(lines)


def build_fab() -> AppBundle:
    """The FAB: the pyproject.toml above, nothing else."""
    content, _ = build_fab_from_files({"pyproject.toml": app_pyproject().encode()})
    return AppBundle(content, hashlib.sha256(content).hexdigest())
