"""dp-accounting, imported when first used.

Importing ``dp_accounting`` costs about 2 s on this machine (its PLD module pulls in ``scipy.signal`` and
``scipy.stats``), and every process that plays clients imports :mod:`simulator.dp` (the privacy mechanisms
are plug-ins) while most of them never compute an ε: an inline worker, each deployment ``flwr-clientapp``
process, the CLI before it runs anything. The privacy modules name dp-accounting's modules through the
proxies here; the first attribute read imports the real module, and from then on it is Python's own module
object that answers (``importlib.import_module`` returns it from ``sys.modules``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["E", "M", "P", "pld", "privacy_accountant", "rdp"]


class _Lazy:
    """Stands in for the module ``name``: each attribute comes from the real module, imported on first use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


if TYPE_CHECKING:  # the type checker sees the real modules
    from dp_accounting import dp_event as E
    from dp_accounting import pld, privacy_accountant, rdp
    from dp_accounting.pld import privacy_loss_distribution as P
    from dp_accounting.pld import privacy_loss_mechanism as M
else:
    E = _Lazy("dp_accounting.dp_event")
    pld = _Lazy("dp_accounting.pld")
    rdp = _Lazy("dp_accounting.rdp")
    privacy_accountant = _Lazy("dp_accounting.privacy_accountant")
    P = _Lazy("dp_accounting.pld.privacy_loss_distribution")
    M = _Lazy("dp_accounting.pld.privacy_loss_mechanism")
