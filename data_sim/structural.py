"""Drawn ("structural") anomalies modelled on electroluminescence (EL) images of solar cells.

Pasting patches of other normal images (NSA, CutPaste) never produces what actually goes
wrong in a cell: cracks are thin, mostly straight dark lines that branch and cross the
busbars; a crack that runs from edge to edge can cut a piece of the cell off, which then
goes dark (inactive); contact problems show as dark blotches; broken finger lines show as
short dark (sometimes bright) segments running across the busbars. These are drawn here
as multiplicative darkening of the image, so they keep the local texture and noise.

Each function takes the float32 working image (HxWx3, 0..255), the bool mask of where
anomalies are allowed and the ``numpy.random.Generator`` that is the only source of
randomness, and returns ``(new_image, region)`` or ``None`` when no valid placement was
found. ``region`` bounds every pixel the function may have changed.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import cv2
import numpy as np

Result = Optional[tuple[np.ndarray, np.ndarray]]


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Low-frequency random field in 0..1: irregular shapes and uneven darkness.

    Bicubic upsampling of a coarse grid of uniform values is cheap and gives blobs of
    about ``size / cells`` pixels, the scale of real blotches.
    """
    h, w = shape
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    field = cv2.resize(coarse, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo + 1e-6)


def finger_axis(gray: np.ndarray) -> int:
    """Axis along which finger-line defects run: 0 = vertical segments, 1 = horizontal.

    Busbars are long straight dark lines; they make the mean profile across them spiky.
    Fingers, and hence their interruptions, run perpendicular to the busbars. For
    images without such lines the answer is arbitrary but deterministic.
    """
    g = gray.astype(np.float32)
    rows, cols = g.mean(axis=1), g.mean(axis=0)

    def spikiness(p: np.ndarray) -> float:
        k = max(3, (len(p) // 20) | 1)
        smooth = cv2.GaussianBlur(p.reshape(-1, 1), (1, k), 0).ravel()
        return float(np.abs(p - smooth).mean())

    return 0 if spikiness(rows) >= spikiness(cols) else 1  # horizontal busbars -> vertical fingers


def _gray(work: np.ndarray) -> np.ndarray:
    return work.mean(axis=2)


def _random_allowed_point(allowed: np.ndarray, rng: np.random.Generator, margin: int = 0) -> Optional[tuple[float, float]]:
    h, w = allowed.shape
    inner = allowed
    if margin > 0 and min(h, w) > 4 * margin:
        inner = np.zeros_like(allowed)
        inner[margin : h - margin, margin : w - margin] = allowed[margin : h - margin, margin : w - margin]
    ys, xs = np.nonzero(inner)
    if len(ys) == 0:
        return None
    i = int(rng.integers(len(ys)))
    return float(ys[i]) + float(rng.random()), float(xs[i]) + float(rng.random())


def _walk(
    start: tuple[float, float],
    theta: float,
    length: float,
    step: float,
    rng: np.random.Generator,
    inside: Callable[[float, float], bool],
    wiggle: float,
    kink_prob: float,
) -> list[tuple[float, float]]:
    """A nearly straight random walk: cracks in crystalline silicon follow lattice planes,
    so they run straight with small wobble and occasional kinks."""
    y, x = start
    pts = [(y, x)]
    travelled = 0.0
    while travelled < length:
        theta += float(rng.normal(0.0, wiggle))
        if rng.random() < kink_prob:
            theta += float(rng.normal(0.0, 0.35))
        y += step * math.sin(theta)
        x += step * math.cos(theta)
        pts.append((y, x))
        travelled += step
        if not inside(y, x):
            break
    return pts


def _draw_polyline(canvas: np.ndarray, pts: list[tuple[float, float]], thickness: int) -> None:
    """Anti-aliased sub-pixel polyline (value 1.0) on a float canvas."""
    if len(pts) < 2:
        return
    arr = np.round(np.array([(x, y) for y, x in pts], dtype=np.float64) * 16).astype(np.int32)
    cv2.polylines(canvas, [arr.reshape(-1, 1, 2)], False, 1.0, thickness, cv2.LINE_AA, shift=4)


def _streaks(shape: tuple[int, int], axis: int, rng: np.random.Generator, depth: float) -> np.ndarray:
    """1 +- depth stripes along the finger direction: inactive areas in EL images are
    striped because each finger conducts on its own."""
    h, w = shape
    n = w if axis == 0 else h
    line = rng.random(n).astype(np.float32)
    line = cv2.GaussianBlur(line.reshape(1, -1), (0, 0), sigmaX=float(rng.uniform(1.0, 3.0))).ravel()
    line = (line - line.mean()) / (line.std() + 1e-6)
    mod = 1.0 + depth * np.clip(line, -2, 2) / 2
    return np.broadcast_to(mod[None, :] if axis == 0 else mod[:, None], (h, w)).astype(np.float32)


def crack(work: np.ndarray, allowed: np.ndarray, rng: np.random.Generator, cut_prob: float = 0.35) -> Result:
    """Thin dark branching crack; with ``cut_prob`` it runs edge to edge and darkens the
    smaller piece it cuts off (an inactive cell area)."""
    h, w = allowed.shape
    side = float(min(h, w))
    step = max(1.5, side / 120)
    full = bool(allowed.all())
    cut = rng.random() < cut_prob

    def inside(y: float, x: float) -> bool:
        if not (0 <= y < h and 0 <= x < w):
            return False
        return full or bool(allowed[int(y), int(x)])

    wiggle = float(rng.uniform(0.003, 0.03))
    kink = float(rng.uniform(0.0, 0.03))
    paths: list[list[tuple[float, float]]] = []
    if full and (cut or rng.random() < 0.6):
        # start on an image edge, heading inwards; diagonal directions are common in EL
        edge = int(rng.integers(4))
        pos = float(rng.uniform(0.05, 0.95))
        start = [(0.0, pos * w), (h - 1.0, pos * w), (pos * h, 0.0), (pos * h, w - 1.0)][edge]
        inward = [math.pi / 2, -math.pi / 2, 0.0, math.pi][edge]
        theta = inward + float(rng.uniform(-1.1, 1.1))
        length = 3 * side if cut else float(rng.uniform(0.3, 1.1)) * side
        paths.append(_walk(start, theta, length, step, rng, inside, wiggle, kink))
    else:
        start = _random_allowed_point(allowed, rng, margin=2)
        if start is None:
            return None
        theta = float(rng.uniform(0, 2 * math.pi))
        length = float(rng.uniform(0.12, 0.45)) * side
        paths.append(_walk(start, theta, length, step, rng, inside, wiggle, kink))
        paths.append(_walk(start, theta + math.pi, length * float(rng.uniform(0.2, 1.0)), step, rng, inside, wiggle, kink))
    main_len = sum(len(p) for p in paths) * step
    for _ in range(int(min(3, rng.poisson(0.9)))):
        base = paths[int(rng.integers(len(paths)))]
        if len(base) < 4:
            continue
        i = int(rng.integers(1, len(base) - 1))
        (y0, x0), (y1, x1) = base[i - 1], base[i]
        theta = math.atan2(y1 - y0, x1 - x0) + float(rng.choice([-1, 1]) * rng.uniform(0.4, 1.3))
        paths.append(_walk(base[i], theta, float(rng.uniform(0.1, 0.5)) * main_len, step, rng, inside, wiggle, kink))

    canvas = np.zeros((h, w), np.float32)
    thickness = 1 if rng.random() < 0.75 else 2
    for p in paths:
        _draw_polyline(canvas, p, thickness)
    canvas = np.clip(canvas, 0, 1)
    if not full:
        canvas *= allowed
    if canvas.max() <= 0:
        return None
    # darkness: a sharp core plus a soft halo, fading in and out along the crack
    core = float(rng.uniform(0.3, 0.75))
    halo = cv2.GaussianBlur(canvas, (0, 0), sigmaX=float(rng.uniform(0.8, 2.0)))
    halo = halo / (halo.max() + 1e-6) * core * float(rng.uniform(0.25, 0.6))
    fade = 0.55 + 0.45 * smooth_noise((h, w), rng, cells=4)
    dark = np.maximum(canvas * core, halo) * fade

    if cut:
        barrier = cv2.dilate((canvas > 0.15).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        free = (allowed & ~barrier).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(free, connectivity=4)
        shares = stats[1:, cv2.CC_STAT_AREA] / float(h * w)
        cands = [i + 1 for i, s in enumerate(shares) if 0.02 <= s <= 0.3]
        if cands:
            piece = (labels == cands[int(rng.integers(len(cands)))]).astype(np.float32)
            piece = np.maximum(piece, (barrier & allowed).astype(np.float32) * 0.5)
            piece = cv2.GaussianBlur(piece, (0, 0), sigmaX=float(rng.uniform(0.6, 1.5)))
            level = float(rng.uniform(0.35, 0.85))
            stripes = _streaks((h, w), finger_axis(_gray(work)), rng, float(rng.uniform(0.0, 0.25)))
            inactive = np.clip(piece * level * stripes, 0, 0.95)
            dark = 1.0 - (1.0 - dark) * (1.0 - inactive)  # a crack inside the dark piece stays darker
    dark = np.clip(dark, 0, 0.95)
    region = dark > 0.01
    return work * (1.0 - dark[:, :, None]), region


def blotch(work: np.ndarray, allowed: np.ndarray, rng: np.random.Generator, edge_prob: float = 0.35) -> Result:
    """Irregular dark area with soft or sharp edges (inactive region, contact fault).

    In EL images such areas often sit at an edge or a corner of the cell, so textures
    get an edge-anchored blotch with ``edge_prob``.
    """
    h, w = allowed.shape
    side = float(min(h, w))
    full = bool(allowed.all())
    if full and rng.random() < edge_prob:
        cy = float(rng.choice([rng.uniform(0, 0.08), rng.uniform(0.92, 1.0), rng.uniform(0, 1)])) * h
        cx = float(rng.choice([rng.uniform(0, 0.08), rng.uniform(0.92, 1.0)])) * w
        if rng.random() < 0.5:
            cy, cx = cx / w * h, cy / h * w
    else:
        pt = _random_allowed_point(allowed, rng)
        if pt is None:
            return None
        cy, cx = pt
    r = float(rng.uniform(0.04, 0.2)) * side
    half = int(math.ceil(1.6 * r)) + 2
    y0, y1 = max(0, int(cy) - half), min(h, int(cy) + half + 1)
    x0, x1 = max(0, int(cx) - half), min(w, int(cx) + half + 1)
    if y1 - y0 < 3 or x1 - x0 < 3:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ang = float(rng.uniform(0, math.pi))
    ratio = float(rng.uniform(0.45, 1.0))
    dy, dx = yy - cy, xx - cx
    u = (dx * math.cos(ang) + dy * math.sin(ang)) / r
    v = (-dx * math.sin(ang) + dy * math.cos(ang)) / (r * ratio)
    dist = np.sqrt(u * u + v * v)
    field = smooth_noise((y1 - y0, x1 - x0), rng, cells=int(rng.integers(3, 8)))
    shape = (1.0 - dist) + float(rng.uniform(0.3, 0.9)) * (field - 0.5)
    blob = (shape > 0).astype(np.float32)
    if blob.sum() < 4:
        return None
    soft = float(rng.uniform(0.03, 0.35)) * r
    alpha_box = cv2.GaussianBlur(blob, (0, 0), sigmaX=max(0.6, soft))
    alpha = np.zeros((h, w), np.float32)
    alpha[y0:y1, x0:x1] = alpha_box
    if not full:
        alpha *= allowed
    level = float(rng.uniform(0.25, 0.8))
    texture = 0.75 + 0.25 * smooth_noise((h, w), rng, cells=int(rng.integers(6, 16)))
    dark = np.clip(alpha * level * texture, 0, 0.95)
    region = dark > 0.01
    if not region.any():
        return None
    return work * (1.0 - dark[:, :, None]), region


def _busbar_positions(gray: np.ndarray, axis: int) -> np.ndarray:
    """Coordinates of long dark lines across the finger direction (busbars), found as
    deep dips of the mean profile away from the image border; empty if there are none."""
    prof = gray.mean(axis=1) if axis == 0 else gray.mean(axis=0)
    n = len(prof)
    med, lo = float(np.median(prof)), float(prof.min())
    idx = np.arange(n)
    dips = (prof < med - 0.35 * (med - lo)) & (idx > 0.06 * n) & (idx < 0.94 * n)
    return idx[dips]


def line_break(work: np.ndarray, allowed: np.ndarray, rng: np.random.Generator) -> Result:
    """Short soft dark (sometimes bright) segments along rows or columns: interrupted
    finger lines. They run perpendicular to the busbars (see ``finger_axis``) and often
    start at one, so a segment is snapped to a busbar when the image has them."""
    h, w = allowed.shape
    side = float(min(h, w))
    gray = _gray(work)
    axis = finger_axis(gray) if rng.random() < 0.9 else int(rng.integers(2))
    pt = _random_allowed_point(allowed, rng, margin=2)
    if pt is None:
        return None
    cy, cx = pt
    base_len = float(rng.uniform(0.05, 0.22)) * side
    direction = 1.0
    bars = _busbar_positions(gray, axis)
    if len(bars) and rng.random() < 0.6:
        along = cy if axis == 0 else cx
        bar = float(bars[np.argmin(np.abs(bars - along))])
        direction = 1.0 if along >= bar else -1.0
        if axis == 0:
            cy = bar
        else:
            cx = bar
    n_lines = int(min(5, rng.geometric(0.5)))
    spacing = float(rng.uniform(3, max(4.0, side / 15)))
    canvas = np.zeros((h, w), np.float32)
    thickness = 1 if rng.random() < 0.6 else 2
    for k in range(n_lines):
        off = k * spacing + float(rng.normal(0, 1))
        ln = direction * base_len * float(rng.uniform(0.6, 1.3))
        if axis == 0:  # vertical segments, side by side
            pts = [(cy, cx + off), (cy + ln, cx + off)]
        else:
            pts = [(cy + off, cx), (cy + off, cx + ln)]
        _draw_polyline(canvas, pts, thickness)
    canvas = cv2.GaussianBlur(np.clip(canvas, 0, 1), (0, 0), sigmaX=float(rng.uniform(0.6, 1.4)))
    canvas = canvas / (canvas.max() + 1e-6)
    if not allowed.all():
        canvas *= allowed
    if canvas.max() <= 0:
        return None
    if rng.random() < 0.85:
        gain = 1.0 - canvas * float(rng.uniform(0.2, 0.55))
    else:
        gain = 1.0 + canvas * float(rng.uniform(0.15, 0.35))
    region = canvas > 0.01
    return np.clip(work * gain[:, :, None], 0, 255), region
