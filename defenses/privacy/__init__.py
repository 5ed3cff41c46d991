"""Privacy defenses applied on the client (clipping, noise, pruning ...); importing registers them."""

from defenses.privacy import clip, gaussian_noise, prune  # noqa: F401,E402
