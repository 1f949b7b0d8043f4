"""Where on a normal image a simulated anomaly may go.

A defect on the background of an object image (a screw on a table) is not a defect the
product can have, and teaching the decoder that background changes are anomalous makes it
fire on lighting changes. So for objects the synthesis is restricted to the object
found by Otsu thresholding; for textures (fabric, solar cells) the whole image is allowed.

Otsu is deliberately simple: it needs no training, runs in a millisecond and is good
enough for the usual inspection setup (a part on a uniform backdrop). When its result is
implausible (almost nothing, or everything) the whole image is used instead, because
a wrong restriction is worse than none.
"""
from __future__ import annotations

import cv2
import numpy as np


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes (a dark print on a bright part is still part of the part)."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask.astype(np.uint8)
    flood = padded.copy()
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 1)  # 1 now marks background reachable from outside
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


def _keep_largest(mask: np.ndarray, max_components: int, min_ratio: float) -> np.ndarray:
    """Largest connected components (up to ``max_components``, each at least
    ``min_ratio`` of the largest): drops specks of noise and dust on the backdrop."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas, kind="stable")
    keep = [i + 1 for i in order[:max_components] if areas[i] >= min_ratio * areas[order[0]]]
    return np.isin(labels, keep)


def object_mask(
    image: np.ndarray,
    texture: bool = False,
    min_fraction: float = 0.03,
    max_fraction: float = 0.995,
    max_components: int = 3,
) -> np.ndarray:
    """Bool HxW mask of where anomalies may be placed.

    ``texture=True`` allows the whole image. Otherwise: Otsu on the blurred gray image,
    the class that dominates the image border is taken as background, then closing,
    opening, hole filling and the largest components. Falls back to the whole image when
    the object covers less than ``min_fraction`` or more than ``max_fraction`` of it.
    """
    h, w = image.shape[:2]
    full = np.ones((h, w), dtype=bool)
    if texture:
        return full
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    gray = cv2.GaussianBlur(gray, (5, 5), 0)
    _, th = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = th.astype(bool)
    border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
    if border.mean() > 0.5:  # bright backdrop: the object is the dark class
        fg = ~fg
    k = max(3, (min(h, w) // 64) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel).astype(bool)
    m = _fill_holes(_keep_largest(m, max_components, min_ratio=0.1))
    share = float(m.mean())
    if share < min_fraction or share > max_fraction:
        return full
    return m
