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


MIN_SET = 8  # fewer scores give no usable picture of two populations


def set_threshold(scores: np.ndarray) -> tuple[float, str]:
    """Threshold from the score distribution of a set of images of one product, no labels:
    a two-component Gaussian mixture on log scores (normal parts and defective ones; the log
    makes the long right tail of defect scores closer to Gaussian), split where the upper
    component's posterior passes 0.5. It adapts to the share of defects, which a rule such as
    median + k MAD cannot (that one assumes most parts are normal; ELPV's test split is 71%
    defective). When BIC prefers ONE component the set looks like one population, taken as
    normal parts, and the project's rule for normal scores applies (mean + 1 std,
    `calibrate.threshold_rule`), so a folder of good parts is not split in two."""
    from sklearn.mixture import GaussianMixture

    s = np.asarray(scores, np.float64).ravel()
    if len(s) < MIN_SET:
        raise ValueError(f"a set threshold needs at least {MIN_SET} images, got {len(s)}")
    x = np.log(np.maximum(s, 1e-6)).reshape(-1, 1)
    one = GaussianMixture(1, random_state=0).fit(x)
    two = GaussianMixture(2, random_state=0, n_init=3).fit(x)
    if one.bic(x) <= two.bic(x):
        from ..calibrate import threshold_rule  # the one rule for normal scores

        return threshold_rule(s)[0], f"mean + 1 std of the {len(s)} images (one population)"
    lo, hi = np.sort(two.means_.ravel())
    grid = np.linspace(lo, hi, 512).reshape(-1, 1)
    upper = int(np.argmax(two.means_.ravel()))
    post = two.predict_proba(grid)[:, upper]
    cross = grid[np.argmax(post >= 0.5), 0] if (post >= 0.5).any() else (lo + hi) / 2
    return float(np.exp(cross)), f"two-population split of the {len(s)} images' scores"
