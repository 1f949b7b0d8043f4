"""Verdict thresholds of the zero-shot modes, from the images themselves: no labels and no
hand-set number. Pure numpy."""
from __future__ import annotations

import numpy as np

MAD_TO_STD = 1.4826  # MAD x this = standard deviation for a normal distribution


def robust_z(values: np.ndarray) -> tuple[float, float]:
    """(median, robust spread = 1.4826 x MAD) of values; the spread never reaches zero."""
    v = np.asarray(values, np.float64).ravel()
    med = float(np.median(v))
    return med, max(MAD_TO_STD * float(np.median(np.abs(v - med))), 1e-6)


def most_normal(scores: np.ndarray, fraction: float, minimum: int = 4, maximum: int | None = None) -> np.ndarray:
    """Indices of the `fraction` lowest scores (at least `minimum`, at most `maximum` and
    all but one image): the images a batch's second pass trusts as normal references.

    The assumption it rests on is weak on purpose: only that the lowest-scored fifth of a
    batch is mostly normal, not that normals are the majority (ELPV's test split is 71%
    defective, and a bad lot on a line can be too)."""
    n = len(scores)
    k = int(round(fraction * n))
    k = max(min(minimum, n - 1), k)
    if maximum is not None:
        k = min(k, maximum)
    k = max(1, min(k, n - 1))
    return np.argsort(np.asarray(scores), kind="stable")[:k]
