"""Generative image priors that an attacker trains on public data, for generative-prior gradient inversion.

The GEN-GIA attacks (:mod:`attacks.inversion.generative`) search the range of a generator ``G``: GIAS (Jeon et
al., NeurIPS 2021), GGL (Li et al., CVPR 2022) and GIFD (Fang et al., ICCV 2023) use large GANs pretrained on
ImageNet or FFHQ. None ships with privsim and none fits 28×28 digits or 32×32 crops, so the attacker trains
its own prior here, on :class:`~attacks.base.PublicData` only (a split disjoint from the victims' data).

Why a variational auto-encoder (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014), not a GAN:
on a 2-core CPU a GAN needs many epochs and careful balancing to avoid mode collapse, and its training is
hard to make reproducible; a small convolutional VAE trains in well under a minute on a few thousand 28×28
digits, deterministically from a seed, and its decoder is a generator with the latent prior ``N(0, I)``
that the attacks need. Its samples are blurrier than a GAN's, which caps the PSNR of a pure latent search
(the benchmark reports that ceiling); GIFD's feature-domain stages are designed to go past such a cap.
The decoder is class-conditional (the one-hot label is concatenated to ``z``), as the class-conditional
BigGAN of GGL and GIFD is: the attacks feed it the labels recovered from the gradient.

Decoder layout (what GIFD's intermediate stages optimise): ``stem`` (a linear map of ``[z, onehot(y)]``
to a ``2w × h₀ × w₀`` feature map), then ``n`` blocks of (2× nearest upsampling, 3×3 conv, LeakyReLU), then
a 3×3 conv head, a sigmoid and a centre crop to ``(H, W)``, with ``n = clip(⌊log₂(min(H, W) / 7)⌋, 1, 3)``
blocks and ``h₀ = ⌈H / 2ⁿ⌉`` (8 px: one block from 4×4; 28: two from 7×7; 32: two from 8×8; 64: three from
8×8).

Trained weights are cached on disk (``$PRIVSIM_CACHE``, default ``~/.cache/privsim/priors``) under a digest of
the public images and labels, the input shape, the class count and the prior configuration, so repeated
experiments do not retrain; a cache hit loads exactly the stored weights.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import PublicData
from attacks.progress import steps

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "PriorConfig",
    "PriorInfo",
    "VAEPrior",
    "data_digest",
    "default_cache_dir",
    "image_digests",
    "load_or_train_prior",
    "prior_key",
    "project_l1_ball",
    "train_prior",
]

#: bump when the architecture or the training recipe changes: old cache entries are then ignored
_FORMAT = "privsim-vae-prior-v1"


def project_l1_ball(v: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto the L1 ball ``{u : ‖u‖₁ ≤ r}`` (exact).

    The sort-based algorithm of Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient Projections onto the
    ℓ1-Ball for Learning in High Dimensions", ICML 2008 (Fig. 1 with the simplex step applied to ``|v|``):
    the projection is ``sign(v) · max(|v| − θ, 0)`` with the threshold ``θ ≥ 0`` that puts the result on
    the sphere ``‖u‖₁ = r`` when ``v`` lies outside the ball, and ``v`` itself otherwise.

    Parameters
    ----------
    v : torch.Tensor
        ``(B, ...)``; every ``v[b]`` is projected on its own.
    radius : torch.Tensor or float
        The radius, one for all rows or one per row (shape ``(B,)``), ``≥ 0``.

    Returns
    -------
    torch.Tensor
        The projections, shaped like ``v``.

    Examples
    --------
    >>> project_l1_ball(torch.tensor([[3.0, -2.0, 0.5]]), 3.0).tolist()  # θ = 1
    [[2.0, -1.0, 0.0]]
    >>> project_l1_ball(torch.tensor([[0.25, -0.5]]), 1.0).tolist()  # inside: unchanged
    [[0.25, -0.5]]
    """
    flat = v.flatten(1)
    b, n = flat.shape
    r = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(b)
    if bool((r < 0).any()):
        raise ValueError("an L1 ball needs a radius >= 0")
    a = flat.abs()
    inside = a.sum(1) <= r
    mu = torch.sort(a, dim=1, descending=True).values
    css = torch.cumsum(mu, dim=1)
    j = torch.arange(1, n + 1, dtype=flat.dtype, device=flat.device)
    # the number of non-zero entries of the projection: the largest j with mu_j > (css_j - r) / j; the
    # condition holds for a prefix of j (Duchi et al., Lemma 2), so the largest index where it holds is it
    holds = mu * j > css - r[:, None]
    rho = torch.where(holds, j, torch.zeros_like(j)).amax(1).clamp(min=1).long()
    theta = ((css.gather(1, (rho - 1)[:, None])[:, 0] - r) / rho.to(flat.dtype)).clamp(min=0)
    proj = torch.sign(flat) * (a - theta[:, None]).clamp(min=0)
    return torch.where(inside[:, None], flat, proj).view_as(v)


@dataclass(frozen=True)
class PriorConfig:
    """How the attacker's prior is built and trained (every field enters the cache key)."""

    latent_dim: int = 16
    width: int = 16  # channels of the last decoder block; earlier blocks and the stem use 2·width
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    beta: float = 1.0  # weight of the KL term (1: the VAE's evidence lower bound)
    conditional: bool = True
    max_images: int = 4000  # a seeded subset of the public data when it holds more
    seed: int = 0


@dataclass(frozen=True)
class PriorInfo:
    """What the attacker trained its prior on, and how (for ``Reconstruction.info`` and audits)."""

    key: str  # the cache key: digest of (data, shape, classes, config, format)
    data_digest: str  # digest of the public images and labels actually used
    num_images: int
    source: str
    cache_hit: bool
    path: str | None
    train_seconds: float
    final_loss: float  # mean negative ELBO per image over the last epoch (nats)
    image_digests: frozenset[str] = field(default_factory=frozenset, repr=False)  # one digest per used image

    def summary(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("image_digests")
        return d


def _num_blocks(h: int, w: int) -> int:
    return int(min(3, max(1, math.floor(math.log2(max(min(h, w), 1) / 7)))))


class ConvDecoder(nn.Module):
    """The generator ``G(z, y)``: stem, upsampling blocks and head (see the module docstring).

    ``feature(0, z, y)`` is the stem's output, ``feature(k, ...)`` the output of block ``k``;
    :meth:`from_feature` runs the rest of the network from layer ``k``'s output, which is how GIFD
    optimises an intermediate feature map.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        latent_dim: int,
        width: int,
        conditional: bool,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        self.out_shape = (c, h, w)
        self.latent_dim, self.num_classes, self.conditional = latent_dim, num_classes, conditional
        n = _num_blocks(h, w)
        self.h0, self.w0 = -(-h // 2**n), -(-w // 2**n)
        chans = [2 * width] * n + [width]  # stem, then the blocks' outputs
        self.c0 = chans[0]
        cin = latent_dim + (num_classes if conditional else 0)
        self.stem = nn.Linear(cin, self.c0 * self.h0 * self.w0)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1), nn.LeakyReLU(0.2)
            )
            for a, b in itertools.pairwise(chans)
        )
        self.head = nn.Conv2d(chans[-1], c, 3, padding=1)

    @property
    def num_features(self) -> int:
        """How many intermediate feature maps there are (the stem's and one per block)."""
        return 1 + len(self.blocks)

    def _cond(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.conditional:
            return z
        if y is None:
            raise ValueError("a class-conditional prior needs labels")
        onehot = y.float() if y.is_floating_point() else F.one_hot(y.long(), self.num_classes).to(z.dtype)
        return torch.cat([z, onehot.to(z.dtype)], dim=-1)

    def feature(self, k: int, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The output of layer ``k`` (0: the stem) for latents ``z`` (B, d) and labels ``y`` (B,)."""
        h = F.leaky_relu(self.stem(self._cond(z, y)), 0.2).view(-1, self.c0, self.h0, self.w0)
        for blk in self.blocks[:k]:
            h = blk(h)
        return h

    def next_feature(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Layer ``k + 1``'s output from layer ``k``'s output ``h``."""
        return self.blocks[k](h)

    def logits_from_feature(self, k: int, h: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks[k:]:
            h = blk(h)
        out = self.head(h)
        _c, hh, ww = self.out_shape
        top, left = (out.shape[-2] - hh) // 2, (out.shape[-1] - ww) // 2
        return out[..., top : top + hh, left : left + ww]

    def from_feature(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from layer ``k``'s output ``h`` (the remaining layers)."""
        return torch.sigmoid(self.logits_from_feature(k, h))

    def logits(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.logits_from_feature(0, self.feature(0, z, y))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(z, y))


class ConvEncoder(nn.Module):
    """``q(z | x, y)``: stride-2 4×4 convs (one per decoder block), then a linear map to (μ, log σ²)."""

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        latent_dim: int,
        width: int,
        conditional: bool,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        n = _num_blocks(h, w)
        chans = [c] + [width] * (n - 1) + [2 * width]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = int(self.body(torch.zeros(1, c, h, w)).shape[1])
        self.num_classes, self.conditional = num_classes, conditional
        self.head = nn.Linear(flat + (num_classes if conditional else 0), 2 * latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        if self.conditional and y is not None:
            f = torch.cat([f, F.one_hot(y.long(), self.num_classes).to(f.dtype)], dim=-1)
        mu, logvar = self.head(f).chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)


class VAEPrior(nn.Module):
    """A (conditional) convolutional VAE; :attr:`decoder` is the attacker's generator."""

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int, config: PriorConfig) -> None:
        super().__init__()
        kw = {
            "input_shape": tuple(input_shape),
            "num_classes": num_classes,
            "latent_dim": config.latent_dim,
            "width": config.width,
            "conditional": config.conditional,
        }
        self.encoder = ConvEncoder(**kw)  # type: ignore[arg-type]
        self.decoder = ConvDecoder(**kw)  # type: ignore[arg-type]
        self.config = config

    def elbo_loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Negative ELBO per image (mean over the batch): Bernoulli (binary cross-entropy) likelihood on
        [0, 1] pixels, summed over pixels, plus ``β`` times the KL to ``N(0, I)``."""
        mu, logvar = self.encoder(x, y)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = (
            F.binary_cross_entropy_with_logits(self.decoder.logits(z, y), x, reduction="none")
            .flatten(1)
            .sum(1)
        )
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return (rec + self.config.beta * kl).mean()


def data_digest(x: torch.Tensor, y: torch.Tensor | None = None) -> str:
    """SHA-256 of images (as contiguous float32) and labels (int64), with their shapes."""
    h = hashlib.sha256()
    xx = x.detach().cpu().float().contiguous()
    h.update(repr(tuple(xx.shape)).encode())
    h.update(xx.numpy().tobytes())
    if y is not None:
        yy = y.detach().cpu().long().contiguous()
        h.update(repr(tuple(yy.shape)).encode())
        h.update(yy.numpy().tobytes())
    return h.hexdigest()


def image_digests(x: torch.Tensor) -> frozenset[str]:
    """One short digest (SHA-1 of the float32 bytes) per image: lets an evaluator check which images a
    prior was trained on without keeping the images."""
    xx = x.detach().cpu().float().contiguous().numpy()
    return frozenset(hashlib.sha1(img.tobytes()).hexdigest() for img in xx)


def prior_key(digest: str, *, input_shape: tuple[int, ...], num_classes: int, config: PriorConfig) -> str:
    """The cache key of a prior: digest of the data digest, the shape, the classes and the configuration."""
    blob = json.dumps(
        {
            "format": _FORMAT,
            "data": digest,
            "shape": list(input_shape),
            "classes": num_classes,
            "config": asdict(config),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$PRIVSIM_CACHE`` if set, else ``~/.cache/privsim/priors``."""
    env = os.environ.get("PRIVSIM_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/privsim/priors").expanduser()


def _subset(public: PublicData, config: PriorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = public.x.detach().cpu().float(), public.y.detach().cpu().long()
    if x.shape[0] > config.max_images:
        g = torch.Generator().manual_seed(config.seed)
        idx = torch.randperm(x.shape[0], generator=g)[: config.max_images].sort().values
        x, y = x[idx], y[idx]
    return x.contiguous(), y.contiguous()


def train_prior(
    x: torch.Tensor, y: torch.Tensor, *, input_shape: tuple[int, ...], num_classes: int, config: PriorConfig
) -> tuple[VAEPrior, float]:
    """Train a :class:`VAEPrior` with Adam, deterministically from ``config.seed``.

    Returns
    -------
    (VAEPrior, float)
        The trained model (eval mode) and its mean negative ELBO per image over the last epoch.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = VAEPrior(input_shape=input_shape, num_classes=num_classes, config=config)
    g = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    n = int(x.shape[0])
    bs = min(config.batch_size, n)
    last = math.nan
    vae.train()
    for _ in steps(config.epochs, "training the prior (epochs)"):
        order = torch.randperm(n, generator=g)
        total, seen = 0.0, 0
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            loss = vae.elbo_loss(x[idx], y[idx], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        last = total / max(seen, 1)
    vae.eval()
    vae.requires_grad_(False)
    return vae, last


def load_or_train_prior(
    public: PublicData,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    config: PriorConfig,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> tuple[VAEPrior, PriorInfo]:
    """The prior for ``public``: loaded from the cache when present, else trained (and stored).

    Parameters
    ----------
    public : PublicData
        The attacker's public split; images must have shape ``input_shape``.
    input_shape, num_classes : tuple of int, int
        The task's image shape (C, H, W) and number of classes.
    config : PriorConfig
        Architecture and training settings.
    cache_dir : str or Path, optional
        Where weights are cached (default :func:`default_cache_dir`).
    use_cache : bool
        False: always train, never read or write the cache.
    """
    if tuple(public.x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"public images have shape {tuple(public.x.shape[1:])}, the task {tuple(input_shape)}"
        )
    if public.x.shape[0] == 0:
        raise ValueError("the public data is empty: a generative prior needs images to train on")
    x, y = _subset(public, config)
    digest = data_digest(x, y)
    key = prior_key(digest, input_shape=tuple(input_shape), num_classes=num_classes, config=config)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    file = path / f"vae-{key[:32]}.pt"
    info = {
        "key": key,
        "data_digest": digest,
        "num_images": int(x.shape[0]),
        "source": public.source,
        "image_digests": image_digests(x),
    }
    if use_cache and file.is_file():
        blob = torch.load(file, map_location="cpu", weights_only=True)
        if blob.get("key") == key:
            vae = VAEPrior(input_shape=input_shape, num_classes=num_classes, config=config)
            vae.load_state_dict(blob["state_dict"])
            vae.eval()
            vae.requires_grad_(False)
            return vae, PriorInfo(
                cache_hit=True,
                path=str(file),
                train_seconds=float(blob["train_seconds"]),
                final_loss=float(blob["final_loss"]),
                **info,  # type: ignore[arg-type]
            )
    t0 = time.perf_counter()
    vae, last = train_prior(x, y, input_shape=tuple(input_shape), num_classes=num_classes, config=config)
    seconds = time.perf_counter() - t0
    stored = None
    if use_cache:
        path.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        torch.save(
            {"key": key, "state_dict": vae.state_dict(), "train_seconds": seconds, "final_loss": last}, tmp
        )
        os.replace(tmp, file)  # atomic: a concurrent reader sees the old file or the whole new one
        stored = str(file)
    return vae, PriorInfo(
        cache_hit=False,
        path=stored,
        train_seconds=seconds,
        final_loss=last,
        **info,  # type: ignore[arg-type]
    )
