"""Detection rates of an aggregator: which clients it rejected versus who was malicious."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["detection_rates"]


def detection_rates(
    accepted: Iterable[int], all_ids: Iterable[int], malicious_ids: Iterable[int]
) -> tuple[float, float]:
    """True- and false-positive rates of a round's rejection, a positive being a *rejected* client.

    TPR = rejected malicious / malicious, FPR = rejected benign / benign, each NaN when its
    denominator is 0. Ids in ``accepted`` or ``malicious_ids`` that are not in ``all_ids`` are
    ignored (a malicious client that did not take part is neither detected nor missed).

    >>> detection_rates({1, 2, 3}, [0, 1, 2, 3, 4], {0, 3})
    (0.5, 0.3333333333333333)
    >>> detection_rates({1}, [1], set())
    (nan, 0.0)
    """
    everyone = set(all_ids)
    rejected = everyone - set(accepted)
    malicious = set(malicious_ids) & everyone
    benign = everyone - malicious
    tpr = len(rejected & malicious) / len(malicious) if malicious else math.nan
    fpr = len(rejected & benign) / len(benign) if benign else math.nan
    return tpr, fpr
