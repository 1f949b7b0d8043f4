"""Evaluation metrics: image-level, pixel-level (AUROC, PRO) and the chat answer's yes/no.

Pure numpy + scikit-learn, no I/O, so the numbers in results files can be recomputed from
saved scores by anyone. Every function returns NaN (not an exception) when a metric is
undefined, e.g. AUROC over one class only: an evaluation of a category without normals
should still report its other numbers.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from ..chat.claims import opening_word

# roc_auc_score sorts every pixel; beyond this many (MVTec at full size has ~10^9) a fixed
# random subset gives the same AUROC to ~1e-3 at a fraction of the time and memory.
MAX_PIXELS = 4_000_000

ArrayList = Sequence[np.ndarray] | np.ndarray


def _two_classes(labels: np.ndarray) -> bool:
    return 0 < int(labels.sum()) < labels.size


def image_metrics(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Image AUROC, AUPR (average precision, the step-wise area sklearn defines) and F1-max.

    F1-max is the best F1 over all thresholds of the precision-recall curve: it shows what
    the score can do with an ideal threshold, independent of the calibrated one; the
    threshold that reaches it is returned as well.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not _two_classes(y):
        nan = float("nan")
        return {"auroc": nan, "aupr": nan, "f1_max": nan, "f1_threshold": nan}
    precision, recall, thresholds = precision_recall_curve(y, s)
    # the curve's last point (precision 1, recall 0) has no threshold
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    best = int(np.argmax(f1))
    return {"auroc": float(roc_auc_score(y, s)), "aupr": float(average_precision_score(y, s)),
            "f1_max": float(f1[best]), "f1_threshold": float(thresholds[best])}


def _flat_pairs(masks: ArrayList, maps: ArrayList) -> tuple[list[np.ndarray], list[np.ndarray]]:
    mk = [np.asarray(m).astype(bool) for m in masks]
    mp = [np.asarray(a, dtype=np.float32) for a in maps]
    if len(mk) != len(mp):
        raise ValueError(f"{len(mk)} masks but {len(mp)} maps")
    for i, (m, a) in enumerate(zip(mk, mp)):
        if m.shape != a.shape:
            raise ValueError(f"mask {i} has shape {m.shape} but its map {a.shape}; resize the map to the mask first")
    return mk, mp


def pixel_auroc(masks: ArrayList, maps: ArrayList, max_pixels: int = MAX_PIXELS, seed: int = 0) -> float:
    """AUROC over all pixels of all images (ground-truth mask vs anomaly map).

    Above `max_pixels` pixels a uniform random subset drawn with a fixed seed is used, so the
    number is reproducible; gathering per image avoids building one giant array first.
    """
    mk, mp = _flat_pairs(masks, maps)
    if not mk:
        return float("nan")
    sizes = np.array([m.size for m in mk], dtype=np.int64)
    total = int(sizes.sum())
    if total > max_pixels:
        idx = np.sort(np.random.default_rng(seed).choice(total, max_pixels, replace=False))
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        y_parts, s_parts = [], []
        for i, (m, a) in enumerate(zip(mk, mp)):
            lo, hi = np.searchsorted(idx, [bounds[i], bounds[i + 1]])
            local = idx[lo:hi] - bounds[i]
            y_parts.append(m.ravel()[local])
            s_parts.append(a.ravel()[local])
        y, s = np.concatenate(y_parts), np.concatenate(s_parts)
    else:
        y = np.concatenate([m.ravel() for m in mk])
        s = np.concatenate([a.ravel() for a in mp])
    if not _two_classes(y):
        return float("nan")
    return float(roc_auc_score(y, s))


def pro_score(masks: ArrayList, maps: ArrayList, max_fpr: float = 0.3, n_thresholds: int = 200) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr` (MVTec AD).

    PRO weights every ground-truth connected component (8-connected) equally, so a large
    defect cannot hide a missed small one the way it does in pixel AUROC. For a threshold t
    (pixels with score > t are predicted anomalous): PRO(t) = mean over components of the
    share of the component predicted; FPR(t) = share of all normal pixels predicted.

    Thresholds are quantiles of the normal-pixel scores at FPR levels evenly spaced in
    0..max_fpr, so the integration range is sampled evenly whatever the score scale; the
    curve starts at (0, 0), ends at (1, 1), is linear between samples and is cut at
    max_fpr by interpolation. A perfect map gives 1.0.
    """
    mk, mp = _flat_pairs(masks, maps)
    structure = np.ones((3, 3), bool)
    regions: list[np.ndarray] = []      # each component's scores, sorted
    negatives: list[np.ndarray] = []
    for m, a in zip(mk, mp):
        negatives.append(a[~m])
        if m.any():
            lab, n = ndimage.label(m, structure=structure)
            flat_lab, flat_a = lab.ravel(), a.ravel()
            order = np.argsort(flat_lab, kind="stable")
            cuts = np.searchsorted(flat_lab[order], np.arange(1, n + 2))
            for k in range(n):
                regions.append(np.sort(flat_a[order[cuts[k]:cuts[k + 1]]]))
    neg = np.sort(np.concatenate(negatives)) if negatives else np.empty(0, np.float32)
    if not regions or neg.size == 0:
        return float("nan")
    levels = np.linspace(0.0, max_fpr, n_thresholds)
    # quantile at 1 - f: the share of normals strictly above it is at most f
    thresholds = np.unique(np.quantile(neg, 1.0 - levels, method="higher"))[::-1]  # descending

    def above(sorted_scores: np.ndarray) -> np.ndarray:
        return 1.0 - np.searchsorted(sorted_scores, thresholds, side="right") / sorted_scores.size

    fpr = above(neg)
    pro = np.mean([above(r) for r in regions], axis=0)
    fpr = np.concatenate([[0.0], fpr, [1.0]])
    pro = np.concatenate([[0.0], pro, [1.0]])
    return float(_area_up_to(fpr, pro, max_fpr) / max_fpr)


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under a curve with non-decreasing x, from x[0] to x_max (interpolated)."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    if xs[-1] < x_max:
        j = int(np.searchsorted(x, x_max, side="right"))  # first point beyond x_max
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_cut = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.append(xs, x_max), np.append(ys, y_cut)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


# ---------------------------------------------------------------------------- answers
_WORD = re.compile(r"[a-z']+")
_YES = {"yes", "yeah", "yep", "yup", "correct", "affirmative", "true", "indeed"}
_NO = {"no", "nope", "nah", "negative", "false"}
# first-sentence phrases, checked in this order: negations first ("no visible defect"
# contains "defect"), then positives
_NEGATIVE = re.compile(
    r"\b(no|not|none|never|nothing|without|free of|zero)\b[^.;:!?]{0,40}?"
    r"\b(anomal\w*|defect\w*|abnormal\w*|damage\w*|flaw\w*|problem\w*|issue\w*|fault\w*|crack\w*|irregular\w*)"
    r"|\b(is|are|looks?|appears?|seems?)\s+(\w+\s+)?(normal|fine|ok|okay|good|flawless|intact|clean)\b"
    r"|\bno anomal|\bnothing (unusual|abnormal|wrong)|\bverdict:?\s+normal\b|\bnormal\b")
_NOT_NORMAL = re.compile(r"\b(not|isn't|aren't|doesn't|does not|do not|don't)\s+(\w+\s+)?(normal|fine|ok|okay|good|flawless|intact)\b")
_POSITIVE = re.compile(
    r"\b(anomal\w*|abnormal\w*|defect\w*|damage\w*|flaw\w*|crack\w*|scratch\w*|fault\w*|broken|"
    r"contaminat\w*|irregular\w*)\b|\bthere (is|are) (a|an|one|two|three|several|some)\b")


def opening_yes_no(text: str) -> int | None:
    """1 / 0 for an answer whose first word is exactly "yes" / "no", else None.

    Stricter than `answer_says_anomalous`: the trained answer format opens with yes or no,
    and the training validation and the follow-up check hold the model to that format. The
    word is read by the chat's claim checker (anomalygpt.chat.claims.opening_word), so the
    evaluation and the assistant's check can never read an opening differently."""
    return {"yes": 1, "no": 0}.get(opening_word(text) or "")


def answer_says_anomalous(text: str | None) -> bool | None:
    """What an answer says about the main question: True (anomalous), False (normal), None.

    Trained answers start with "Yes, there is/are ..." or "No, there are no anomalies ...";
    a model that drifts may drop the yes/no or wrap it in markdown, so the first word is
    read first and the first sentence's wording next. None means the answer takes no side,
    which the accuracy counts as wrong: an unclear answer is a failure of the assistant.
    """
    if not text:
        return None
    low = text.lower().replace("’", "'")
    words = _WORD.findall(low)
    if not words:
        return None
    if words[0] in _YES:
        return True
    if words[0] in _NO and not (len(words) > 1 and words[1] == "doubt"):
        return False
    first = re.split(r"(?<=[.!?])\s|\n", low.strip(" *_#>\"'`-"), maxsplit=1)[0]
    if _NOT_NORMAL.search(first):
        return True
    if _NEGATIVE.search(first):
        return False
    if _POSITIVE.search(first):
        return True
    return None


def answer_accuracy(labels: Sequence[int] | np.ndarray, answers: Sequence[str | None]) -> dict[str, float]:
    """Share of answers whose yes/no matches the label; unparsed answers count as wrong.

    Also returns the share that took no side, so a low accuracy can be told apart from
    answers that never say yes or no.
    """
    y = [bool(v) for v in np.asarray(labels).ravel()]
    if len(y) != len(answers):
        raise ValueError(f"{len(y)} labels but {len(answers)} answers")
    if not y:
        return {"accuracy": float("nan"), "unparsed": float("nan"), "n": 0}
    said = [answer_says_anomalous(a) for a in answers]
    ok = [s is not None and s == lab for s, lab in zip(said, y)]
    return {"accuracy": float(np.mean(ok)), "unparsed": float(np.mean([s is None for s in said])), "n": len(y)}


def clean_number(value: float | None, digits: int = 6) -> float | None:
    """JSON-safe rounding: NaN/inf become None (strict JSON has no NaN)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)
