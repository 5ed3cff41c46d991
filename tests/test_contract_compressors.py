"""Contract of every registered compressor, parametrised by registry name (a new plug-in is covered without
editing this file): the payload matches ``spec`` (names, shapes, dtypes), ``encode`` is deterministic for
the same :class:`ClientContext` and leaves its input alone, ``decode`` / ``decode_aggregate`` return a finite
float32 tensor of the right shape, a zero update decodes to zero, and the declared capability flags hold:

* ``decodes_alone``: one payload decoded on its own equals its row of a batch of three, decoding is
  stateless (twice gives the same), and linear in float payload arrays;
* ``is_sketch``: the payload is the single float array ``"sketch"`` equal to
  ``operator(seed, round, dim).sketch(Δ)``, the same R for every client of a round (shared randomness),
  linear in Δ;
* ``aggregates_in_sketch_space``: ``decode_aggregate`` returns one (d,) update, otherwise ``decode`` one row
  per payload.

Every compressor runs with its default parameters (no DP noise by default). ``OVERRIDES`` is the only place
for per-name parameters (today none is needed). Privacy noise comes from ``ctx.private_generator``, so every
context here carries a fixed ``noise_key``; compressors that take ``clip_norm`` and ``noise_multiplier`` are
also run with noise on. ``tests/test_sketching_compressors.py`` covers multi-round runs and the numerics of
each family; this file covers the per-plug-in promises.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from simulator.context import ClientContext
from simulator.flat import Layout
from simulator.registry import import_plugins
from simulator.sketching.base import COMPRESSORS, Compressor
from simulator.sketching.testing import check_payload, client_context, round_context

import_plugins()

#: per-name parameters for a compressor whose defaults cannot run on the layout below (none today)
OVERRIDES: dict[str, dict[str, Any]] = {}
NAMES = COMPRESSORS.names()
#: a model-like layout of d = 3000 (a 56→50→3 MLP, no bias on the last layer)
LAYOUT = Layout(("fc1.weight", "fc1.bias", "fc2.weight"), ((50, 56), (50,), (3, 50)))
D = LAYOUT.dim
NOISE_KEY = 1234
IDS = (4, 7, 9)  # partition ids of the three clients of a round
FLAGS = ("aggregates_in_sketch_space", "decodes_alone", "is_sketch")


def build(name: str, **extra: Any) -> Compressor:
    return COMPRESSORS.create(name, {**OVERRIDES.get(name, {}), **extra})


def _with(flag: str) -> list[str]:
    return [n for n in NAMES if getattr(build(n), flag)]


def deltas(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 0.01


def ctx_for(
    pid: int = IDS[0], *, server_round: int = 1, noise_key: int | None = NOISE_KEY, state: dict | None = None
) -> ClientContext:
    ctx = client_context(
        LAYOUT, partition_id=pid, server_round=server_round, seed=11, state=state, num_clients=10
    )
    return dataclasses.replace(ctx, noise_key=noise_key)


def to_tensors(p: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in p.items()}


def encode_round(comp: Compressor, xs: torch.Tensor, server_round: int = 1) -> list[dict[str, torch.Tensor]]:
    return [to_tensors(comp.encode(x, ctx_for(pid, server_round=server_round))) for pid, x in zip(IDS, xs)]


def decode_round(
    comp: Compressor,
    payloads: list[dict[str, torch.Tensor]],
    ids: tuple[int, ...] = IDS,
    server_round: int = 1,
) -> torch.Tensor:
    rctx = round_context(LAYOUT, client_ids=ids, server_round=server_round, seed=11)
    if comp.aggregates_in_sketch_space:
        return comp.decode_aggregate(payloads, torch.ones(len(payloads)), rctx)
    return comp.decode(payloads, rctx)


@pytest.mark.parametrize("name", NAMES)
def test_flags_are_bools(name: str) -> None:
    comp = build(name)
    for flag in FLAGS:
        assert isinstance(getattr(comp, flag), bool), f"{name}.{flag} is not a bool"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("server_round", [1, 3])
def test_encode_matches_spec_and_keeps_its_input(name: str, server_round: int) -> None:
    comp = build(name)
    x = deltas(1)[0]
    before = x.clone()
    payload = comp.encode(x, ctx_for(server_round=server_round))
    check_payload(payload, comp.spec(LAYOUT, server_round))
    for k, a in payload.items():
        if np.issubdtype(a.dtype, np.floating):
            assert np.isfinite(a).all(), f"{name}: {k} has non-finite entries"
    assert torch.equal(x, before), f"{name}.encode modified its input"


@pytest.mark.parametrize("name", NAMES)
def test_encode_is_deterministic_for_the_same_context(name: str) -> None:
    x = deltas(1)[0]
    runs = []
    for comp in (build(name), build(name)):  # two fresh instances ...
        for _ in range(2):  # ... each called twice, every time with a fresh client state
            ctx = ctx_for(server_round=2, state={})
            runs.append((comp.encode(x, ctx), dict(ctx.state)))
    first, first_state = runs[0]
    for payload, state in runs[1:]:
        assert payload.keys() == first.keys()
        for k in payload:
            assert payload[k].dtype == first[k].dtype and np.array_equal(payload[k], first[k]), f"{name}: {k}"
        assert state.keys() == first_state.keys()
        assert all(np.array_equal(state[k], first_state[k]) for k in state), f"{name}: client state differs"


@pytest.mark.parametrize("name", NAMES)
def test_decode_returns_a_finite_float32_tensor_of_the_right_shape(name: str) -> None:
    comp = build(name)
    out = decode_round(comp, encode_round(comp, deltas()))
    expected = (D,) if comp.aggregates_in_sketch_space else (len(IDS), D)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == expected
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", NAMES)
def test_zero_update_decodes_to_zero(name: str) -> None:
    comp = build(name)  # fresh state, default params: no DP noise
    out = decode_round(comp, encode_round(comp, torch.zeros(len(IDS), D)))
    assert torch.equal(out, torch.zeros_like(out)), f"{name}: a zero update does not decode to zero"


@pytest.mark.parametrize("name", _with("decodes_alone"))
def test_decodes_alone_means_a_payload_decodes_like_its_row_of_a_batch(name: str) -> None:
    payloads = encode_round(build(name), deltas())
    batch = decode_round(build(name), payloads)
    assert batch.shape == (len(IDS), D)
    comp = build(name)
    for i, (pid, p) in enumerate(zip(IDS, payloads)):
        alone = decode_round(comp, [p], ids=(pid,))
        again = decode_round(comp, [p], ids=(pid,))
        assert alone.shape == (1, D)
        assert torch.equal(alone, again), f"{name}: decoding is not stateless"
        torch.testing.assert_close(alone[0], batch[i], atol=1e-6, rtol=1e-5)
    # linear: in the float arrays of the payload (index arrays are not a vector space)
    if all(torch.is_floating_point(v) for v in payloads[0].values()):
        mixed = {k: 2.0 * payloads[0][k] - 0.5 * payloads[1][k] for k in payloads[0]}
        torch.testing.assert_close(
            decode_round(comp, [mixed], ids=(IDS[0],))[0],
            2.0 * batch[0] - 0.5 * batch[1],
            atol=1e-5,
            rtol=1e-4,
        )


@pytest.mark.parametrize("name", _with("is_sketch"))
def test_is_sketch_means_a_shared_linear_sketch(name: str) -> None:
    comp = build(name)
    xs = deltas(2, seed=5)
    y0 = comp.encode(xs[0], ctx_for(IDS[0], server_round=2))
    assert set(y0) == {"sketch"} and y0["sketch"].ndim == 1 and np.issubdtype(y0["sketch"].dtype, np.floating)
    # the same R for every client of the round (rebuilt by a fresh instance, as the server or an attack does)
    other = build(name).encode(xs[0], ctx_for(IDS[1], server_round=2, noise_key=NOISE_KEY + 1))
    assert np.array_equal(y0["sketch"], other["sketch"])
    op = build(name).operator(seed=11, server_round=2, dim=D)  # type: ignore[attr-defined]
    torch.testing.assert_close(op.sketch(xs[0]), torch.from_numpy(y0["sketch"]), atol=1e-6, rtol=1e-5)
    y1 = comp.encode(xs[1], ctx_for(IDS[0], server_round=2))["sketch"]
    y01 = comp.encode(2.0 * xs[0] - 3.0 * xs[1], ctx_for(IDS[0], server_round=2))["sketch"]
    np.testing.assert_allclose(y01, 2.0 * y0["sketch"] - 3.0 * y1, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", _with("aggregates_in_sketch_space"))
def test_aggregates_in_sketch_space_means_one_weighted_update(name: str) -> None:
    comp = build(name)
    payloads = encode_round(comp, deltas())
    rctx = round_context(LAYOUT, client_ids=IDS, seed=11)
    out = comp.decode_aggregate(payloads, torch.tensor([1.0, 2.0, 3.0]), rctx)
    assert tuple(out.shape) == (D,) and bool(torch.isfinite(out).all())


def _takes_noise(name: str) -> bool:
    return {"clip_norm", "noise_multiplier"} <= set(COMPRESSORS.get(name).params.model_fields)


@pytest.mark.parametrize("name", [n for n in NAMES if _takes_noise(n)])
def test_privacy_noise_is_reproducible_only_from_the_noise_key(name: str) -> None:
    x = deltas(1)[0]
    noisy = {"clip_norm": 1.0, "noise_multiplier": 1.0}

    def enc(key: int | None) -> dict[str, np.ndarray]:
        return build(name, **noisy).encode(x, ctx_for(server_round=2, noise_key=key, state={}))

    a, b = enc(NOISE_KEY), enc(NOISE_KEY)
    check_payload(a, build(name, **noisy).spec(LAYOUT, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a), f"{name}: same noise_key, different payload"
    c = enc(NOISE_KEY + 1)
    assert any(not np.allclose(a[k], c[k]) for k in a), f"{name}: the noise ignores the client's noise_key"
    d, e = enc(None), enc(None)  # no key: fresh OS entropy each time
    assert any(not np.allclose(d[k], e[k]) for k in d), f"{name}: keyless noise repeats"


def test_none_round_trips_exactly() -> None:
    comp = build("none")
    xs = deltas()
    out = decode_round(comp, encode_round(comp, xs))
    assert torch.equal(out, xs)
