"""Client attacks that misbehave on purpose, for tests of reply validation (inline engine only).

They are registered only inside :func:`registered` (``CLIENT_ATTACKS.temporarily``), never in the production
registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from attacks.base import CLIENT_ATTACKS, ClientAttack


class NaNUpdate(ClientAttack):
    """Test only: the update is all NaN."""

    def transform(self, delta: torch.Tensor, ctx) -> torch.Tensor:
        return torch.full_like(delta, float("nan"))


class Misbehave(ClientAttack):
    """Test only: the lowest acting id sends NaN, the next a wrong-length update, the next raises."""

    def transform(self, delta: torch.Tensor, ctx) -> torch.Tensor:
        rank = sorted(ctx.colluders).index(ctx.partition_id)
        if rank == 0:
            return torch.full_like(delta, float("nan"))
        if rank == 1:
            return delta[:-5]
        raise RuntimeError("client crashed on purpose")


@contextmanager
def registered() -> Iterator[None]:
    """``test_nan_update`` and ``test_misbehave`` in the attack registry for the duration of the block."""
    with ExitStack() as stack:
        stack.enter_context(CLIENT_ATTACKS.temporarily("test_nan_update", NaNUpdate))
        stack.enter_context(CLIENT_ATTACKS.temporarily("test_misbehave", Misbehave))
        yield
