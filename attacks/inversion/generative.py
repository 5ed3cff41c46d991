"""Generative-prior gradient inversion (GEN-GIA): search the range of a generator trained on public data.

Two attacks, both with an attacker-trained prior (:mod:`attacks.inversion.priors`: a conditional conv VAE
whose decoder ``G(z, y)`` is the generator) built in :meth:`prepare` from :class:`~attacks.base.PublicData`:

``generative_latent`` — latent-space search, the first family of generative gradient inversion: Jeon,
Kim, Lee, Ko & Ok, "Gradient Inversion with Generative Image Prior" (GIAS), NeurIPS 2021 (its latent stage);
Li, Guo, Kocak, Lyu & Zhang (GGL), "Auditing Privacy Defenses in Federated Learning via Generative Gradient
Leakage", CVPR 2022; and the first stage of GIFD. One latent ``z ∈ R^d`` per image, several restarts,
initialised from ``N(0, I)``, optimised with Adam (cosine-decayed step size) on

    ``1 − cos(P(G(z, ŷ)), g) + λ_z · mean ‖z‖² + α · TV(G(z, ŷ))``

where ``P`` recomputes the client's payload from candidate inputs (:class:`PayloadSimulator`: the
gradient, or K local SGD steps for FedAvg), ``g`` is the received payload, ``ŷ`` the labels recovered from
the last layer (:func:`attacks.labels.recover_labels`) and ``λ_z ‖z‖²`` the Gaussian prior's negative
log-density (GIFD's "L2 norm" term on the latent). The restart with the lowest matching loss wins.
GGL optimises with CMA-ES and no gradients; gradient-based Adam is what GIAS and GIFD use, and on a CPU it is
the cheaper choice for a 16-dimensional latent.

``gifd`` — Fang, Chen, Wang, Zhang, Xu & Wang, "GIFD: A Generative Gradient Inversion Method with Feature
Domain Optimization", ICCV 2023. Start from the latent search's best restart; then, for each intermediate
layer k of the generator in order (the stem's output, then every upsampling block's), optimise that
layer's output feature map ``h_k`` — initialised at its current value ``h_k⁰`` — by passing it through the
remaining layers and minimising the same matching loss, and after every Adam step project ``h_k`` back
onto the L1 ball ``‖h_k − h_k⁰‖₁ ≤ r_k`` (exact Euclidean projection, Duchi et al. 2008;
:func:`attacks.inversion.priors.project_l1_ball`), per image. The next layer's starting point is computed
from the optimised ``h_k``. Each stage's result is scored by its matching loss, and the stage with the
lowest one (the latent stage included) is returned, as GIFD's ``inter_optimizer`` does.

Deviations, all for a CPU budget: the generator is a small VAE decoder trained by the attacker, not a
pretrained BigGAN or StyleGAN2; radii are relative, ``r_k = ρ_k · ‖h_k⁰‖₁`` per image (GIFD's absolute
radii of 1000–8000 are tuned to BigGAN's feature sizes and have no meaning for another generator); the
feature stages continue the best latent restart only (GIFD keeps every restart through every stage).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn
from torch.func import grad

from attacks.base import INVERSION_ATTACKS, InversionAttack, PublicData, Reconstruction, ServerView
from attacks.inversion._common import PayloadSimulator, total_variation
from attacks.inversion.priors import (
    ConvDecoder,
    PriorConfig,
    PriorInfo,
    VAEPrior,
    load_or_train_prior,
    project_l1_ball,
)
from attacks.labels import LabelStrategy, num_images_of, recover_labels
from attacks.progress import steps

__all__ = ["GIFD", "GenerativeLatent", "cosine_lr"]


def cosine_lr(t: float, base: float, *, warmup: float = 0.05) -> float:
    """Step size at progress ``t ∈ [0, 1)``: a linear warm-up over the first ``warmup`` fraction, then a
    half-cosine decay to 0 (the shape of the StyleGAN2 projector's schedule, which GIFD's stages use).

    >>> round(cosine_lr(0.5, 1.0), 3)
    0.5
    """
    ramp = min(1.0, t / warmup) if warmup > 0 else 1.0
    return base * ramp * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


@INVERSION_ATTACKS.register("generative_latent")
class GenerativeLatent(InversionAttack):
    """Latent-space search in an attacker-trained generator (GIAS: Jeon et al., NeurIPS 2021; GGL: Li et al.,
    CVPR 2022; the latent stage of GIFD: Fang et al., ICCV 2023).

    Parameters
    ----------
    latent_dim, prior_width, prior_epochs, prior_batch_size, prior_lr, prior_beta, conditional, max_public
        The prior (:class:`~attacks.inversion.priors.PriorConfig`): latent size, decoder width, training
        epochs, batch size, Adam step size, KL weight, class conditioning, cap on public images used.
    cache_dir, use_cache
        Where trained priors are cached (default ``$PRIVSIM_CACHE`` or ``~/.cache/privsim/priors``);
        ``use_cache = False`` always retrains.
    iterations, lr, restarts
        Adam steps on the latents, the peak step size (cosine schedule), independent restarts.
    z_weight, tv
        Weights of the ``mean ‖z‖²`` prior term and of total variation.
    label_strategy, num_images
        Label recovery (:mod:`attacks.labels`) and the batch size if the client does not report it.
    seed
        Seeds the prior's training and the latents' initialisation.
    """

    needs_public_data = True

    def __init__(
        self,
        *,
        latent_dim: Annotated[int, Field(ge=1, le=512)] = 16,
        prior_width: Annotated[int, Field(ge=1, le=256)] = 8,
        prior_epochs: Annotated[int, Field(ge=1)] = 10,
        prior_batch_size: Annotated[int, Field(ge=1)] = 64,
        prior_lr: Annotated[float, Field(gt=0)] = 2e-3,
        prior_beta: Annotated[float, Field(ge=0)] = 1.0,
        conditional: bool = True,
        max_public: Annotated[int, Field(ge=1)] = 4000,
        cache_dir: str | None = None,
        use_cache: bool = True,
        iterations: Annotated[int, Field(ge=1)] = 200,
        lr: Annotated[float, Field(gt=0)] = 0.1,
        restarts: Annotated[int, Field(ge=1)] = 4,
        z_weight: Annotated[float, Field(ge=0)] = 1e-3,
        tv: Annotated[float, Field(ge=0)] = 0.0,
        label_strategy: LabelStrategy = "llg",
        num_images: Annotated[int, Field(ge=1)] | None = None,
        seed: int = 0,
    ) -> None:
        self.prior_config = PriorConfig(
            latent_dim=latent_dim,
            width=prior_width,
            epochs=prior_epochs,
            batch_size=prior_batch_size,
            lr=prior_lr,
            beta=prior_beta,
            conditional=conditional,
            max_images=max_public,
            seed=seed,
        )
        self.cache_dir, self.use_cache = cache_dir, use_cache
        self.iterations, self.lr, self.restarts = iterations, lr, restarts
        self.z_weight, self.tv = z_weight, tv
        self.label_strategy, self.num_images, self.seed = label_strategy, num_images, seed
        self.prior: VAEPrior | None = None
        self.prior_info: PriorInfo | None = None
        self._shape: tuple[int, ...] | None = None

    # ---------------------------------------------------------------- attacker-side set-up (public data)
    def prepare(
        self, public: PublicData | None, *, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        """Train (or load from the cache) the generative prior on ``public``; ``model`` is not used."""
        if public is None:
            raise ValueError(f"{type(self).__name__} needs public data to train its generative prior")
        self.prior, self.prior_info = load_or_train_prior(
            public,
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            config=self.prior_config,
            cache_dir=None if self.cache_dir is None else Path(self.cache_dir),
            use_cache=self.use_cache,
        )
        self._shape = tuple(int(s) for s in input_shape)

    def _generator(self, view: ServerView) -> ConvDecoder:
        if self.prior is None:
            raise RuntimeError(
                f"{type(self).__name__}.reconstruct called before prepare(): the attack needs "
                "a generative prior trained on public data first"
            )
        if tuple(view.input_shape) != self._shape:
            raise ValueError(
                f"the prior was built for inputs {self._shape}, the view has {tuple(view.input_shape)}"
            )
        device = next(view.model.parameters()).device
        return self.prior.decoder.to(device)

    # ---------------------------------------------------------------- the latent stage
    def _latent_search(self, view: ServerView) -> dict[str, Any]:
        """Run the restarts; returns the best restart's latents, images, loss and the per-restart losses."""
        G = self._generator(view)
        device = next(view.model.parameters()).device
        n = num_images_of(view, self.num_images)
        labels = recover_labels(view, strategy=self.label_strategy, num_images=n).to(device)
        sim = PayloadSimulator(view)
        match = sim.objective(distance="cosine")
        ylab = labels.repeat(self.restarts)

        def total(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = G(z.flatten(0, 1), ylab).view(self.restarts, n, *view.input_shape)
            losses = torch.stack([match(x[r], labels)[0] for r in range(self.restarts)])
            loss = losses.sum() + self.z_weight * z.pow(2).mean(-1).mean(-1).sum()
            if self.tv:
                loss = loss + self.tv * sum(total_variation(x[r]) for r in range(self.restarts))
            return loss, losses.detach()

        step = grad(total, has_aux=True)
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn((self.restarts, n, self.prior_config.latent_dim), generator=g).to(device)
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        first: list[float] | None = None
        for it in steps(self.iterations, "latent search"):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(it / self.iterations, self.lr)
            gz, losses = step(z.detach())
            if first is None:
                first = [float(v) for v in losses]
            z.grad = gz
            opt.step()
        with torch.no_grad():
            zf = z.detach()
            x = G(zf.flatten(0, 1), ylab).view(self.restarts, n, *view.input_shape)
            final = [float(match(x[r], labels)[1]) for r in range(self.restarts)]
        best = min(range(self.restarts), key=lambda r: final[r] if math.isfinite(final[r]) else math.inf)
        return {
            "z": zf[best],
            "images": x[best],
            "loss": final[best],
            "restart_losses": final,
            "initial_losses": first or [],
            "best_restart": best,
            "labels": labels,
            "match": match,
        }

    def _info(self, **extra: Any) -> dict[str, Any]:
        assert self.prior_info is not None
        return {
            "prior": self.prior_info.summary(),
            "latent_iterations": self.iterations,
            "restarts": self.restarts,
            "label_strategy": self.label_strategy,
            **extra,
        }

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        res = self._latent_search(view)
        return Reconstruction(
            images=res["images"].clamp(0, 1),
            labels=res["labels"],
            losses=tuple(res["restart_losses"]),
            info=self._info(
                attack="generative_latent",
                best_restart=res["best_restart"],
                initial_losses=res["initial_losses"],
                matching_loss=res["loss"],
                seconds=time.perf_counter() - t0,
            ),
        )


@INVERSION_ATTACKS.register("gifd")
class GIFD(GenerativeLatent):
    """GIFD (Fang et al., ICCV 2023): latent search, then feature-domain search layer by layer in L1 balls.

    Parameters
    ----------
    feature_iterations
        Adam steps per intermediate layer.
    feature_lr
        Peak step size of the feature stages (cosine schedule).
    radii
        Relative L1 radii ``ρ_k``: layer k's feature map may move by ``ρ_k · ‖h_k⁰‖₁`` (L1, per image)
        from its starting value; entry k is used for layer k, the last entry for any deeper layer.
    **others
        As :class:`GenerativeLatent`.
    """

    def __init__(
        self,
        *,
        feature_iterations: Annotated[int, Field(ge=1)] = 200,
        feature_lr: Annotated[float, Field(gt=0)] = 0.05,
        radii: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)] = [0.1, 0.2, 0.3],  # noqa: B006
        **latent: Any,
    ) -> None:
        super().__init__(**latent)  # the latent stage's and the prior's parameters (the registry lists them)
        self.feature_iterations, self.feature_lr, self.radii = feature_iterations, feature_lr, list(radii)

    def _feature_stage(
        self,
        G: ConvDecoder,
        k: int,
        h0: torch.Tensor,
        labels: torch.Tensor,
        match: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, float]:
        """Optimise layer ``k``'s output inside its L1 ball; returns the final feature map and its loss."""
        radius = self.radii[min(k, len(self.radii) - 1)] * h0.flatten(1).abs().sum(1)

        def loss_of(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = G.from_feature(k, h)
            loss, m = match(x, labels)
            return (loss + self.tv * total_variation(x) if self.tv else loss), m

        step = grad(loss_of, has_aux=True)
        h = h0.clone().requires_grad_(True)
        opt = torch.optim.Adam([h], lr=self.feature_lr)
        for it in steps(self.feature_iterations, f"gifd: generator layer {k}"):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(it / self.feature_iterations, self.feature_lr)
            gh, _ = step(h.detach())
            h.grad = gh
            opt.step()
            with torch.no_grad():
                h.copy_(h0 + project_l1_ball(h - h0, radius))
        hf = h.detach()
        with torch.no_grad():
            final = float(match(G.from_feature(k, hf), labels)[1])
        return hf, final

    def reconstruct(self, view: ServerView) -> Reconstruction:
        t0 = time.perf_counter()
        res = self._latent_search(view)
        G = self._generator(view)
        labels, match = res["labels"], res["match"]
        stages: list[dict[str, Any]] = [{"stage": "latent", "loss": res["loss"]}]
        images = [res["images"]]
        with torch.no_grad():
            h = G.feature(0, res["z"], labels)
        for k in range(G.num_features):
            h, loss = self._feature_stage(G, k, h, labels, match)
            with torch.no_grad():
                images.append(G.from_feature(k, h))
            stages.append({"stage": f"layer{k}", "loss": loss, "shape": list(h.shape[1:])})
            if k + 1 < G.num_features:
                with torch.no_grad():
                    h = G.next_feature(k, h)
        losses = [s["loss"] if math.isfinite(s["loss"]) else math.inf for s in stages]
        chosen = min(range(len(stages)), key=lambda i: losses[i])
        return Reconstruction(
            images=images[chosen].clamp(0, 1),
            labels=labels,
            losses=tuple(res["restart_losses"]),
            info=self._info(
                attack="gifd",
                best_restart=res["best_restart"],
                initial_losses=res["initial_losses"],
                stages=stages,
                stage_losses=[s["loss"] for s in stages],
                chosen_stage=chosen,
                chosen_name=stages[chosen]["stage"],
                matching_loss=losses[chosen],
                feature_iterations=self.feature_iterations,
                radii=self.radii,
                seconds=time.perf_counter() - t0,
            ),
        )
