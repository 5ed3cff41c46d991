"""Shared pieces of the optimisation-based inversion attacks: what the server can simulate.

Given the :class:`ServerView`, :class:`PayloadSimulator` recomputes the payload a client would
have sent for candidate inputs ``x`` and labels ``y``, differentiably in ``x``:

* ``kind="gradient"`` (FedSGD): ``∇θ L(f_θ(x), y)``;
* ``kind="update"`` (FedAvg): K plain SGD steps with the public learning rate η and batch size,
  ``θ_{t+1} = θ_t − η ∇θ L(f_θ(x_t), y_t)``, returning ``Δ = θ_K − θ_0`` (functional SGD through
  ``torch.func.functional_call``, as in Geiping et al. 2020, Sec. 5 "federated averaging").

On the aggregate of K > 1 clients (``ProtocolInfo.num_clients``) the server's payload is the
example-weighted mean of K payloads, each computed alone from the same global model: the candidate
batch is split into K equal shares in order (client c holds rows ``c·n/K … (c+1)·n/K − 1``), each share
runs its own local steps, and the simulator returns the mean of the K results. For a FedAvg update this
is not the update of the pooled batch (K clients take K independent trajectories, each with the
per-client step count); for a FedSGD gradient it differs only through batch statistics (BatchNorm), so
the split is used there only for models with BatchNorm layers, and the pooled gradient, which is the
same mean, otherwise.

Everything is written with ``torch.func`` so that one restart is a pure function of its inputs,
several restarts run as one batched tensor under ``torch.func.vmap``, and the whole step can be
captured by ``torch.compile`` (a CUDA graph on the GPU). The simulation runs on a private copy of the
model whose BatchNorm layers keep no running statistics: in train mode BatchNorm normalises with the
batch's statistics either way, so the payload is the same, but nothing is written into the server's
model on each call, and vmap and graph capture see a pure function.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from attacks.base import ServerView
from simulator.flat import layout_of, unflatten

__all__ = [
    "PayloadSimulator",
    "client_loss",
    "compile_step_fn",
    "first_layer_input",
    "gradient_distance",
    "simulation_copy",
    "total_variation",
]


def client_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard labels (int) or soft labels (probabilities, float (B, K))."""
    if y.is_floating_point():
        return -(y * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    return F.cross_entropy(logits, y)


def gradient_distance(
    sim: tuple[torch.Tensor, ...], target: tuple[torch.Tensor, ...], kind: str
) -> torch.Tensor:
    """Distance between a simulated and the received payload, summed over all layers.

    ``"euclidean"``: ``Σ ‖g − t‖²`` (Zhu et al. 2019); ``"cosine"``: ``1 − ⟨g, t⟩ / (‖g‖ ‖t‖)`` over the
    whole concatenated vector (Geiping et al. 2020)."""
    # sum() types a sum of tensors as ``Tensor | Literal[0]``; the 0 is only for no layers at all
    if kind == "euclidean":
        return cast(torch.Tensor, sum(((g - t) ** 2).sum() for g, t in zip(sim, target)))
    if kind == "cosine":
        dot = cast(torch.Tensor, sum((g * t).sum() for g, t in zip(sim, target)))
        gn = cast(torch.Tensor, sum((g * g).sum() for g in sim))
        tn = cast(torch.Tensor, sum((t * t).sum() for t in target))
        return 1.0 - dot / (torch.sqrt(gn) * torch.sqrt(tn) + 1e-12)
    raise ValueError(f"unknown gradient distance {kind!r}; known: euclidean, cosine")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean of ``|∂x|`` and ``|∂y|`` over pixels (Rudin et al. 1992)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return 0.5 * (dx + dy)


class PayloadSimulator:
    """Recompute a client's payload from candidate data, using only the ServerView."""

    def __init__(self, view: ServerView) -> None:
        if view.sketch is not None:
            raise ValueError("optimisation attacks here match a plain (de-sketched) payload")
        layout = layout_of(view.model)  # the payload's layout includes BatchNorm statistics
        self.model = simulation_copy(view.model)
        self.protocol = view.protocol
        self.names = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        self.params = tuple(p.detach() for n, p in self.model.named_parameters() if p.requires_grad)
        self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        parts = unflatten(view.payload.detach().float(), layout)
        self.target = tuple(parts[n].to(p.dtype) for n, p in zip(self.names, self.params))
        self.kind = view.protocol.kind
        if self.kind not in ("gradient", "update"):
            raise ValueError(f"unknown protocol kind {self.kind!r}")
        self.clients = max(int(view.protocol.num_clients), 1)
        norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        has_bn = any(isinstance(m, norms) for m in self.model.modules())
        #: simulate each client's share alone and average (an aggregate of FedAvg updates, or of FedSGD
        #: gradients through BatchNorm's batch statistics); else one pass over the whole candidate batch
        self.split = self.clients > 1 and (self.kind == "update" or has_bn)
        if self.kind == "update":
            # local steps of one client: ``total_steps`` of the per-client example count (the protocol's
            # ``num_examples`` of an aggregate is the cohort's sum)
            own = view.protocol
            if self.clients > 1 and own.num_examples is not None:
                own = dataclasses.replace(own, num_examples=-(-own.num_examples // self.clients))
            if view.protocol.lr is None or own.total_steps is None:
                raise ValueError("an update attack needs the public local lr and number of local steps")
            self.lr = float(view.protocol.lr)
            self.steps = int(own.total_steps)

    def _loss(self, params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(self.names, params)), **self.buffers}
        return client_loss(functional_call(self.model, state, (x,)), y)

    def simulate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The payload for inputs ``x`` (B, C, H, W) and labels ``y`` (hard or soft); on an aggregate of K
        clients, the mean of the K clients' payloads on equal shares of the batch (B a multiple of K)."""
        if not self.split:
            return self._client(x, y)
        n, k = int(x.shape[0]), self.clients
        if n % k:
            raise ValueError(
                f"the payload aggregates {k} clients: the candidate batch of {n} images must split into "
                f"{k} equal shares (set num_images to a multiple of {k})"
            )
        per = n // k
        total: tuple[torch.Tensor, ...] | None = None
        for c in range(k):  # equal shares: the example-weighted mean is the plain mean
            own = self._client(x[c * per : (c + 1) * per], y[c * per : (c + 1) * per])
            total = own if total is None else tuple(a + b for a, b in zip(total, own))
        assert total is not None  # k >= 2
        return tuple(t / k for t in total)

    def _client(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One client's payload on its batch ``(x, y)``."""
        g = grad(self._loss)
        if self.kind == "gradient":
            return tuple(g(self.params, x, y))
        n = x.shape[0]
        bs = min(self.protocol.batch_size or n, n)
        p = self.params
        start = 0
        for _ in range(self.steps):  # the server does not know the client's shuffle: batches in order
            if start >= n:
                start = 0
            idx = slice(start, start + bs)
            start += bs
            step = g(p, x[idx], y[idx])
            p = tuple(a - self.lr * s for a, s in zip(p, step))
        return tuple(a - b for a, b in zip(p, self.params))

    def objective(
        self, *, distance: str, tv: float = 0.0
    ) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """``f(x, y) -> (loss, matching loss)`` with ``loss = distance + tv · TV(x)``."""

        def f(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            match = gradient_distance(self.simulate(x, y), self.target, distance)
            loss = match + tv * total_variation(x) if tv else match
            return loss, match.detach()

        return f


def simulation_copy(model: nn.Module) -> nn.Module:
    """A train-mode copy of ``model`` (the client computes its update in training mode) whose BatchNorm
    layers use batch statistics without tracking running ones
    (``torch.func.replace_all_batch_norm_modules_``)."""
    sim = copy.deepcopy(model).train()
    torch.func.replace_all_batch_norm_modules_(sim)
    return sim


def compile_step_fn(
    fn: Callable[[torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    *,
    device: torch.device,
    backend: str,
    required: bool,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """``fn`` captured by ``torch.compile`` and run once on ``example`` (so that it compiles now, not
    mid-attack).

    On CUDA the inductor backend uses ``mode="reduce-overhead"``: the step is replayed as a CUDA graph.
    Returns ``(compiled fn, True)``; when compilation fails, raises if it was ``required``, else warns and
    returns ``(fn, False)`` so the attack goes on eagerly."""
    mode = "reduce-overhead" if backend == "inductor" and device.type == "cuda" else None
    compiled = torch.compile(fn, backend=backend, mode=mode, dynamic=False)
    try:
        compiled(example)
    except Exception as e:  # any backend failure: run eagerly, and say so
        if required:
            raise RuntimeError(
                f"compile_step='on' but torch.compile(backend={backend!r}) failed: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        warnings.warn(
            f"torch.compile(backend={backend!r}) failed ({type(e).__name__}); the attack runs eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        return fn, False
    return compiled, True


def first_layer_input(
    model: nn.Module, input_shape: tuple[int, ...], who: str
) -> tuple[str, nn.Module, bool]:
    """The model's first parameterised layer that runs, found with forward pre-hooks on a seeded probe input
    (registration order need not be execution order): ``(name, module, raw)``, ``raw`` telling whether it
    receives the probe itself, flattened (nothing transforms the input before it). ``who`` names the caller in
    errors."""
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []

    def grab(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(mod: nn.Module, args: tuple) -> None:
            if not seen:
                seen.append((name, mod, args[0].detach().clone()))

        return hook

    handles = [
        m.register_forward_pre_hook(grab(n))
        for n, m in model.named_modules()
        if next(m.parameters(recurse=False), None) is not None
    ]
    try:
        device = next(model.parameters()).device
    except StopIteration:
        raise ValueError(f"{who} needs a model with parameters") from None
    probe = torch.rand((1, *input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ValueError(f"{who}: no parameterised layer ran on the input")
    name, mod, inp = seen[0]
    raw = inp.numel() == probe.numel() and bool(torch.allclose(inp.flatten(), probe.flatten()))
    return name, mod, raw
