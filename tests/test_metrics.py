"""Metrics agree with scikit-learn, PRO behaves like the MVTec AD definition, the yes/no
parser reads the phrasings a chat model produces."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomalygpt.evaluation.metrics import (answer_accuracy, answer_says_anomalous, clean_number, image_metrics, pixel_auroc,
                                pro_score)


def _masks_and_maps(n: int = 6, size: int = 48, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n):
        m = np.zeros((size, size), bool)
        if i % 2:  # every other image has two defects of different size
            m[5:15, 5:20] = True
            m[30:34, 30:33] = True
        amap = rng.random((size, size)).astype(np.float32) * 0.6 + 0.5 * m
        masks.append(m)
        maps.append(amap)
    return masks, maps


def test_image_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = rng.random(200) + 0.4 * labels
    out = image_metrics(labels, scores)
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    p, r, t = precision_recall_curve(labels, scores)
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    assert out["f1_max"] == pytest.approx(f1.max(), abs=1e-12)
    # the returned threshold reaches that F1
    pred = scores >= out["f1_threshold"]
    tp = (pred & (labels == 1)).sum()
    assert 2 * tp / (pred.sum() + labels.sum()) == pytest.approx(out["f1_max"], abs=1e-12)


def test_image_metrics_one_class_is_nan_not_error() -> None:
    out = image_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert all(math.isnan(v) for v in out.values())
    assert clean_number(out["auroc"]) is None


def test_pixel_auroc_matches_sklearn_and_subsamples_deterministically() -> None:
    masks, maps = _masks_and_maps()
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    sub = pixel_auroc(masks, maps, max_pixels=5000)
    assert sub == pixel_auroc(masks, maps, max_pixels=5000)          # same subset every time
    assert sub == pytest.approx(roc_auc_score(y, s), abs=0.03)
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(masks, [a[:10] for a in maps])


def test_pro_perfect_shifted_and_random() -> None:
    masks, _ = _masks_and_maps()
    perfect = [m.astype(np.float32) for m in masks]
    assert pro_score(masks, perfect) == pytest.approx(1.0)
    # a perfect map shifted by 6 px misses part of every region and fires on normal pixels
    shifted = [np.roll(p, 6, axis=1) for p in perfect]
    assert pro_score(masks, shifted) < 0.9
    rng = np.random.default_rng(0)
    noise = [rng.random(m.shape).astype(np.float32) for m in masks]
    # random scores: PRO(fpr) ~ fpr, so the normalized area up to 0.3 is ~0.15
    assert pro_score(masks, noise) == pytest.approx(0.15, abs=0.05)
    # a soft but well-ranked map is close to perfect
    soft = [0.2 * rng.random(m.shape).astype(np.float32) + 0.8 * m for m in masks]
    assert pro_score(masks, soft) > 0.99


def test_pro_weights_regions_equally() -> None:
    """Finding the big defect but missing the small one: PRO = 0.5 + 0.5 * FPR (the small
    region is found only as fast as normal pixels are), area 0.575 up to FPR 0.3, although
    99% of the defect pixels are found (pixel AUROC stays high)."""
    m = np.zeros((64, 64), bool)
    m[5:35, 5:35] = True     # 900 px
    m[50:53, 50:53] = True   # 9 px
    amap = np.zeros((64, 64), np.float32)
    amap[5:35, 5:35] = 1.0
    assert pro_score([m], [amap]) == pytest.approx(0.575, abs=1e-6)
    assert pixel_auroc([m], [amap]) > 0.98
    assert math.isnan(pro_score([np.zeros((8, 8), bool)], [np.ones((8, 8), np.float32)]))


@pytest.mark.parametrize("text, expected", [
    ("Yes, there is an anomaly in the top left of the image.", True),
    ("Yes, there are 2 anomalies: top left and bottom right.", True),
    ("No, there are no anomalies in the image.", False),
    ("no. the part looks normal", False),
    ("**Yes**, a small crack at the center.", True),
    ("  Yes.", True),
    ("Nope, it's fine.", False),
    ("There is an anomaly in the bottom right.", True),
    ("There are no anomalies in this image.", False),
    ("I do not see any defect.", False),
    ("The image shows no visible damage.", False),
    ("The solar cell is normal.", False),
    ("The object is not normal: a dark area at the top.", True),
    ("A crack runs across the center.", True),
    ("The cell appears defective.", True),
    ("Anomaly detected in the top right.", True),
    ("I'm not sure.", None),
    ("", None),
    (None, None),
    ("??", None),
])
def test_answer_parser(text: str | None, expected: bool | None) -> None:
    assert answer_says_anomalous(text) is expected


def test_answer_accuracy_counts_unparsed_as_wrong() -> None:
    out = answer_accuracy([1, 0, 1, 0], ["Yes, there is.", "No, there are no anomalies.", "hmm", "Yes, a crack."])
    assert out == {"accuracy": 0.5, "unparsed": 0.25, "n": 4}
