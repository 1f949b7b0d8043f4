"""Verdict thresholds of the zero-shot modes, from the images themselves: no labels and no
hand-set number. Pure numpy."""
from __future__ import annotations

from typing import Any

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


def carry_share(first: np.ndarray, first_threshold: float, second: np.ndarray) -> float:
    """A threshold on the `second` scores that flags as many images as `first_threshold`
    flags on the `first` scores of the same images.

    Why: the batch mode's second pass scores every image against the images the first pass
    found most normal, and those references are scored against each other only: picked for
    being alike, they come out lower than any other normal image. Their scores form a
    population of their own, and a two-population split of the second pass cuts between
    them and everything else (a clean folder of 500 cells: about 87% flagged). The first
    pass privileges no image, so its split says how many are defective; the second pass,
    whose ranking is better, says which."""
    a, b = np.asarray(first, np.float64).ravel(), np.sort(np.asarray(second, np.float64).ravel())
    if a.shape != b.shape:
        raise ValueError(f"first and second scores must be of the same images, got {a.shape} and {b.shape}")
    n, k = len(b), int((a > first_threshold).sum())
    if k == 0:
        return float(np.nextafter(b[-1], np.inf))
    if k == n:
        return float(np.nextafter(b[0], -np.inf))
    return float((b[n - k - 1] + b[n - k]) / 2)


SET_RULES = ("lower", "gmm", "mode")


def set_threshold(scores: np.ndarray, rule: str = "gmm", k: float = 2.0, fraction: float = 0.2) -> tuple[float, str]:
    """Threshold from the score distribution of a set (MIN_SET or more images) of one
    product, no labels. "lower": `gmm_lower_threshold` (the lower of two log-score
    populations + k std); "gmm": `gmm_threshold` (the two populations' posterior crossing);
    "mode": `left_tail_threshold` (the densest `fraction` + k x the spread below it).
    Returns (threshold, source)."""
    s = np.asarray(scores, np.float64).ravel()
    if len(s) < MIN_SET:
        raise ValueError(f"a set threshold needs at least {MIN_SET} images, got {len(s)}")
    if rule == "lower":
        return gmm_lower_threshold(s, k)
    if rule == "gmm":
        return gmm_threshold(s)
    if rule != "mode":
        raise ValueError(f"unknown set threshold rule {rule!r}; use one of: {', '.join(SET_RULES)}")
    thr, _, _ = left_tail_threshold(s, k, fraction)
    return thr, f"densest {fraction:.0%} of the {len(s)} images' log scores + {k:g} x the spread below it"


def log_mixture(s: np.ndarray) -> tuple[np.ndarray, Any, bool]:
    """(log scores as a column, the two-component mixture fitted to them, whether BIC prefers
    ONE component): the fit both mixture rules below read."""
    from sklearn.mixture import GaussianMixture

    x = np.log(np.maximum(s, 1e-6)).reshape(-1, 1)
    one = GaussianMixture(1, random_state=0).fit(x)
    two = GaussianMixture(2, random_state=0, n_init=3).fit(x)
    return x, two, one.bic(x) <= two.bic(x)


def gmm_lower_threshold(scores: np.ndarray, k: float) -> tuple[float, str]:
    """Two-component mixture on log scores (BIC picks one or two); the LOWER component is
    the normal population and the threshold is its mean + k std (one component: the whole
    set's median + k robust std). Unlike the posterior crossing it does not move with the
    defects' share, only with how the normal parts spread."""
    s = np.asarray(scores, np.float64).ravel()
    x, two, one_population = log_mixture(s)
    if one_population:
        med, spread = robust_z(x)
        return float(np.exp(med + k * spread)), f"median + {k:g} robust std of the {len(s)} images' log scores (one population)"
    lo = int(np.argmin(two.means_.ravel()))
    mu, sd = float(two.means_.ravel()[lo]), float(np.sqrt(two.covariances_.ravel()[lo]))
    return float(np.exp(mu + k * sd)), f"lower of two populations in the {len(s)} images' log scores + {k:g} std"


def gmm_threshold(scores: np.ndarray) -> tuple[float, str]:
    """Threshold from the score distribution of a set of images of one product, no labels:
    a two-component Gaussian mixture on log scores (normal parts and defective ones; the log
    makes the long right tail of defect scores closer to Gaussian), split where the upper
    component's posterior passes 0.5. It adapts to the share of defects, which a rule such as
    median + k MAD cannot (that one assumes most parts are normal; ELPV's test split is 71%
    defective). When BIC prefers ONE component the set looks like one population, taken as
    normal parts, and the project's rule for normal scores applies (mean + 1 std,
    `calibrate.threshold_rule`), so a folder of good parts is not split in two."""
    s = np.asarray(scores, np.float64).ravel()
    if len(s) < MIN_SET:
        raise ValueError(f"a set threshold needs at least {MIN_SET} images, got {len(s)}")
    _, two, one_population = log_mixture(s)
    if one_population:
        from ..calibrate import threshold_rule  # the one rule for normal scores

        return threshold_rule(s)[0], f"mean + 1 std of the {len(s)} images (one population)"
    lo, hi = np.sort(two.means_.ravel())
    grid = np.linspace(lo, hi, 512).reshape(-1, 1)
    upper = int(np.argmax(two.means_.ravel()))
    post = two.predict_proba(grid)[:, upper]
    cross = grid[np.argmax(post >= 0.5), 0] if (post >= 0.5).any() else (lo + hi) / 2
    return float(np.exp(cross)), f"two-population split of the {len(s)} images' scores"


def densest_point(values: np.ndarray, fraction: float = 0.2) -> float:
    """Mode of a 1-D sample: the mean of the shortest run of ceil(fraction x n) sorted values
    (the "shorth" at that fraction). Unlike the median it stays on the densest population
    when another one holds most of the sample but is spread out (a bad lot: many defective
    parts with widely varying scores), as long as the normal parts are at least `fraction`
    of the set and packed tighter than the defects."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    if len(x) == 0:
        raise ValueError("densest_point of an empty sample")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    h = max(1, min(len(x), int(np.ceil(fraction * len(x)))))
    start = int(np.argmin(x[h - 1:] - x[:len(x) - h + 1]))
    return float(x[start:start + h].mean())


def left_tail_threshold(scores: np.ndarray, k: float, fraction: float = 0.2) -> tuple[float, float, float]:
    """(threshold, mode, spread) on log scores: mode + k x the spread of the values BELOW the
    mode (1.4826 x their median distance to it). Defects only raise scores, so the lower side
    of the normal population is the one part of the distribution they do not contaminate,
    whatever their share; its width says how far normal parts spread."""
    x = np.log(np.maximum(np.asarray(scores, np.float64).ravel(), 1e-6))
    mode = densest_point(x, fraction)
    below = mode - x[x <= mode]
    spread = max(MAD_TO_STD * float(np.median(below)) if len(below) else 0.0, 1e-6)
    return float(np.exp(mode + k * spread)), mode, spread
