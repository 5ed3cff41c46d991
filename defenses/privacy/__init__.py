"""Privacy defenses applied on the client (clipping, noise, pruning ...); importing registers them."""

from defenses.privacy import clip, gaussian_noise, model_inspection, prune, soteria  # noqa: F401
