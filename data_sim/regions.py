"""Anomalous regions measured from a binary mask: box, area share, centre and 3x3 cell.

One function shared by the Q&A generator (ground-truth masks) and the report (predicted
masks), so the words a model is trained on and the words it is graded with are computed
the same way. Pure numpy/OpenCV, no I/O.

Conventions: boxes are ``(y0, x0, y1, x1)`` in pixels with exclusive ends (numpy slice
``mask[y0:y1, x0:x1]``), centroids are ``(y, x)`` floats, ``area_share`` is the share of
the whole image (0..1).
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np

from data_sim.grid import cell_of_point

Region = dict[str, Any]


def _region(box: tuple[int, int, int, int], area: int, centroid: tuple[float, float], shape: tuple[int, int]) -> Region:
    h, w = shape
    cy, cx = centroid
    return {
        "box": tuple(int(v) for v in box),
        "area": int(area),
        "area_share": float(area) / float(h * w),
        "centroid": (float(cy), float(cx)),
        "cell": cell_of_point(cy, cx, h, w),
    }


def regions_from_mask(mask: np.ndarray, min_area: int = 1) -> list[Region]:
    """Connected components (8-connectivity) of ``mask`` with at least ``min_area`` pixels.

    Returns dicts with ``box``, ``area`` (pixels), ``area_share``, ``centroid`` and
    ``cell``, largest first (ties by position) so "the anomaly" means the biggest one.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {m.shape}")
    n, _, stats, cents = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), connectivity=8)
    out: list[Region] = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        out.append(_region((y, x, y + bh, x + bw), area, (cents[i][1], cents[i][0]), m.shape))
    out.sort(key=lambda r: (-r["area"], r["box"]))
    return out


def regions_from_parts(parts: Sequence[np.ndarray], min_area: int = 1) -> list[Region]:
    """One region per anomaly mask (a crack with a gap stays one anomaly).

    Use this when the simulator knows which pixels belong to which anomaly, so that two
    touching anomalies are still named by their own cells.
    """
    out: list[Region] = []
    for part in parts:
        p = np.asarray(part) > 0
        area = int(p.sum())
        if area < max(1, min_area):
            continue
        ys, xs = np.nonzero(p)
        out.append(
            _region((ys.min(), xs.min(), ys.max() + 1, xs.max() + 1), area, (ys.mean(), xs.mean()), p.shape)
        )
    out.sort(key=lambda r: (-r["area"], r["box"]))
    return out
