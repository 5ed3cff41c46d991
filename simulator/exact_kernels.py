"""Exact kernels for the vectorised cohort: every weight layer runs each client's own call, as the per-client
loop does, so that the cohort's training is bit-identical to :func:`simulator.training.train_local`.

Under ``vmap`` a layer whose weights are stacked per client runs as one batched kernel (a convolution becomes
a grouped convolution, a linear layer a batched matrix product). That is the same arithmetic summed in another
order, ~1e-7 apart per step. Local SGD amplifies such differences: on quickstart's CNN (lr 0.05, momentum 0.9)
they reach 2e-3-5e-3 in accuracy after 3 rounds, as much as switching PyTorch's own convolution back-end
(oneDNN on/off) on the per-client path, and a max-pooling window whose two largest values are that close sends
the gradient to the other one.

:class:`ExactKernels` is a ``TorchFunctionMode`` active around the vectorised step. It routes each weight
layer (linear, 1-3d convolution, group and layer norm) and each transcendental activation (sigmoid, tanh, GELU
...: their SIMD and scalar code paths round differently) through an ``autograd.Function`` whose ``vmap`` rule
loops over the clients: client ``i``'s own ``k_i`` real examples of the step (its rows, the padding dropped)
through its own weights, with ordinary autograd, keeping each client's graph. The backward rule asks each
graph for its gradients. So every weight layer sees exactly the inputs, shapes and kernels the per-client loop
gives it. The other parameter-free operations (ReLU, pooling, flatten, the loss's log-softmax) stay batched
under ``vmap``: they compute every element on its own and round as they do per client. The optimizer update is
element-wise too. When the per-client loop trains in channels-last (``simulation.memory_format``), each
client's call gets its tensors in the formats that loop gives them (:func:`_as_per_client`): a convolution's
result does not depend on its input's format once the weight is channels-last, but a 1-channel weight is
channels-last only with the strides ``model.to(memory_format=channels_last)`` gives it, and an activation's
SIMD and scalar elements depend on the format. ``tests/test_exact_kernels.py`` checks bit-identical weights
against ``train_local`` in both formats.

On a CPU this path costs about what the per-client loop costs (the same kernels). It exists so that the
vectorised path reproduces the per-client path exactly where batched kernels cannot: convolutional models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["AVG_POOLS", "MAX_POOLS", "ExactKernels", "why_not_exact"]

MAX_POOLS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
AVG_POOLS: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)

# the functions these modules call on their weights, intercepted by ExactKernels
_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.GroupNorm,
    nn.LayerNorm,
)
# element-wise activations with transcendental functions: their SIMD and scalar code paths round
# differently (measured on LeNet's sigmoid: 1 ulp), and which elements take the scalar path depends on the
# tensor's length, so they run per client too
_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Mish,
    nn.LogSigmoid,
)
# parameter-free modules whose batched computation rounds as per client: each output element is computed on
# its own (comparisons, one multiplication, sums over one window or one row)
_EXACT_BATCHED: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardtanh,
    *MAX_POOLS,
    *AVG_POOLS,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
)
_FUNCTIONS = frozenset(
    {
        F.linear,
        F.conv1d,
        F.conv2d,
        F.conv3d,
        F.group_norm,
        F.layer_norm,
        torch.sigmoid,
        torch.Tensor.sigmoid,
        torch.tanh,
        torch.Tensor.tanh,
        F.gelu,
        F.silu,
        F.elu,
        F.celu,
        F.selu,
        F.softplus,
        F.mish,
        F.logsigmoid,
    }
)


def why_not_exact(model: nn.Module) -> str | None:
    """Why exact kernels cannot reproduce this model's per-client training, or None. Every parameter must
    belong to a layer whose weight function :class:`ExactKernels` intercepts; a parameter used elsewhere
    (a custom module's own ``nn.Parameter``) would run batched and round differently. Every parameter-free
    leaf module must be one known to round as per client (batched or intercepted). Operations written inside a
    custom ``forward`` are not inspected."""
    known = (*_LAYERS, *_ACTIVATIONS, *_EXACT_BATCHED)
    unknown = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if not any(True for _ in m.children()) and not isinstance(m, known)
        }
    )
    bad = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, _LAYERS)
        }
    )
    if bad:
        allowed = ", ".join(t.__name__ for t in _LAYERS)
        return f"exact kernels cover the weights of {allowed}; this model has weights in {', '.join(bad)} too"
    if unknown:
        return (
            f"exact kernels do not know whether {', '.join(unknown)} rounds as per client when batched "
            f"(known: {', '.join(t.__name__ for t in (*_ACTIVATIONS, *_EXACT_BATCHED))})"
        )
    return None


_Graph = tuple[torch.Tensor, list[torch.Tensor | None]]  # one client's output and its leaf inputs


@dataclass
class _Step:
    """One local step's bookkeeping: each client's number of real rows (0: no batch this step), the padded
    batch size, and the per-client graphs kept from forward to backward (by call number)."""

    rows: list[int]
    batch: int
    channels_last: bool = False  # the per-client loop trains in channels-last memory (mirror its formats)
    graphs: dict[int, list[_Graph | None]] = field(default_factory=dict)
    calls: int = 0


@dataclass(frozen=True)
class _Call:
    """How to call one intercepted function for one client: ``fn(*args, **kwargs)`` with the tensor
    arguments (the data first, then the weights) substituted at ``slots``."""

    fn: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    slots: tuple[tuple[str, int | str], ...]  # ("a", position) or ("k", name), one per tensor
    grads: tuple[bool, ...]  # which tensors need a gradient (the data only past the first layer)
    step: _Step
    key: int

    def run(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        args, kwargs = list(self.args), dict(self.kwargs)
        for (kind, where), t in zip(self.slots, tensors):
            if kind == "a":
                args[int(where)] = t
            else:
                kwargs[str(where)] = t
        out = self.fn(*args, **kwargs)
        assert isinstance(out, torch.Tensor)
        return out


class _Layer(torch.autograd.Function):
    """A weight layer under ``vmap``: one call per client on its own rows (forward), its graph's gradients
    (backward)."""

    @staticmethod
    def forward(call: _Call, *tensors: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # reached without vmap (nothing batched): the plain call
        return call.run(tensors)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.call = inputs[0]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return (None, *_LayerGrad.apply(ctx.call, grad_out))

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], call: _Call, *tensors: torch.Tensor) -> Any:
        step, dims = call.step, in_dims[1:]
        rows_in = tensors[0].shape[1] if dims[0] == 0 else tensors[0].shape[0]
        if rows_in != step.batch:
            raise ValueError(
                f"simulation.vectorise_kernels = 'exact' needs layers whose input has the batch first; "
                f"{getattr(call.fn, '__name__', call.fn)} got {rows_in} rows for a batch of {step.batch}; "
                "use vectorise_kernels = 'batched' or vectorise = 'off'"
            )
        outs: list[torch.Tensor | None] = []
        graphs: list[_Graph | None] = []
        for i in range(info.batch_size):
            k = step.rows[i]
            if k == 0:  # no batch this step: its weights are frozen by the caller
                outs.append(None)
                graphs.append(None)
                continue
            mine: list[torch.Tensor | None] = []
            for j, (t, d) in enumerate(zip(tensors, dims)):
                if t is None:
                    mine.append(None)
                    continue
                own = t[i] if d == 0 else t
                if j == 0:
                    own = own[:k]
                own = own.detach()
                if call.grads[j]:
                    own.requires_grad_(True)
                mine.append(own)
            with torch.enable_grad():
                out = call.run(_as_per_client(mine, call) if step.channels_last else mine)
            outs.append(out.detach())
            graphs.append((out, mine))
        step.graphs[call.key] = graphs
        return _stack_rows(outs, (step.batch, *next(o for o in outs if o is not None).shape[1:])), 0


class _LayerGrad(torch.autograd.Function):
    """The backward of :class:`_Layer`: each client's graph differentiated on its own rows."""

    @staticmethod
    def forward(call: _Call, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        raise RuntimeError("exact kernels differentiate only under vmap")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # pragma: no cover - no double backward
        raise RuntimeError("exact kernels do not support double backward")

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], call: _Call, grad_out: torch.Tensor) -> Any:
        step = call.step
        graphs = step.graphs.pop(call.key)
        go = grad_out if in_dims[1] == 0 else grad_out.unsqueeze(0).expand(info.batch_size, *grad_out.shape)
        per: list[list[torch.Tensor | None] | None] = []
        for i, g in enumerate(graphs):
            if g is None:
                per.append(None)
                continue
            out, mine = g
            wanted = [t for t in mine if t is not None and t.requires_grad]
            got = iter(torch.autograd.grad(out, wanted, go[i, : out.shape[0]]))
            per.append([next(got) if t is not None and t.requires_grad else None for t in mine])
        like = next(p for p in per if p is not None)
        results: list[torch.Tensor | None] = []
        for j, ref in enumerate(like):  # the data's gradient has the step's rows, a weight's its own shape
            if ref is None:
                results.append(None)
                continue
            shape = (step.batch, *ref.shape[1:]) if j == 0 else tuple(ref.shape)
            results.append(_stack_rows([None if p is None else p[j] for p in per], shape))
        return tuple(results), tuple(None if r is None else 0 for r in results)


def _as_per_client(mine: list[torch.Tensor | None], call: _Call) -> list[torch.Tensor | None]:
    """The tensors of one client's call in the memory format the per-client loop gives them when it trains
    in channels-last (``model.to(memory_format=channels_last)``): every 4-d weight, and every 4-d activation
    computed from a weight (a channels-last convolution's output stays channels-last through ReLU, pooling
    and activations), is channels-last; the step's data, which no weight has touched, keeps its own format.
    The copy is part of the graph, so the gradients reach the client's tensors."""
    return [
        t.clone(memory_format=torch.channels_last)
        if t is not None and t.dim() == 4 and (j > 0 or call.grads[0])
        else t
        for j, t in enumerate(mine)
    ]


def _stack_rows(parts: Sequence[torch.Tensor | None], shape: tuple[int, ...]) -> torch.Tensor:
    """``[clients, *shape]``: each client's part in its first rows, zeros elsewhere (padding, and clients with
    no part: no batch this step)."""
    like = next(p for p in parts if p is not None)
    full = like.new_zeros((len(parts), *shape))
    for i, p in enumerate(parts):
        if p is not None:
            full[i, : p.shape[0]] = p
    return full


class ExactKernels(TorchFunctionMode):
    """Active around one vectorised local step (``vmap(grad(loss))`` over the clients): the weight layers'
    functions run per client on ``rows[i]`` real examples of a ``batch``-row padded step; ``channels_last``:
    in the memory formats of a per-client loop that trains in channels-last (:func:`_as_per_client`).

    >>> import torch
    >>> from torch.func import functional_call, vmap
    >>> lin = torch.nn.Linear(3, 2)
    >>> w = torch.randn(4, 2, 3); b = torch.randn(4, 2); x = torch.randn(4, 5, 3)
    >>> with ExactKernels(rows=[5, 5, 2, 0], batch=5):
    ...     out = vmap(lambda w, b, x: functional_call(lin, {"weight": w, "bias": b}, (x,)))(w, b, x)
    >>> bool((out[2, :2] == torch.nn.functional.linear(x[2, :2], w[2], b[2])).all())
    True
    >>> out[3].abs().sum().item()  # no rows this step
    0.0
    """

    def __init__(self, *, rows: Sequence[int], batch: int, channels_last: bool = False) -> None:
        super().__init__()
        self.step = _Step(rows=list(rows), batch=batch, channels_last=channels_last)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func not in _FUNCTIONS:
            return func(*args, **kwargs)
        if not args or not isinstance(args[0], torch.Tensor):
            raise ValueError(
                f"exact kernels need the input of {getattr(func, '__name__', func)} as its first positional "
                "argument; use simulation.vectorise_kernels = 'batched' or vectorise = 'off'"
            )
        tensors: list[torch.Tensor] = []
        slots: list[tuple[str, int | str]] = []
        for pos, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                tensors.append(a)
                slots.append(("a", pos))
        for name, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                tensors.append(v)
                slots.append(("k", name))
        step = self.step
        step.calls += 1
        call = _Call(
            fn=func,
            args=tuple(None if isinstance(a, torch.Tensor) else a for a in args),
            kwargs={k: (None if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()},
            slots=tuple(slots),
            grads=tuple(t.requires_grad for t in tensors),
            step=step,
            key=step.calls,
        )
        return _Layer.apply(call, *tensors)
