"""Simulated anomalies on normal images: NSA, CutPaste and the drawn EL defect modes.

NSA (Schlüter et al., "Natural Synthetic Anomalies for Self-Supervised Anomaly Detection
and Localization", ECCV 2022) cuts a patch from a normal image, rescales it and blends it
into another normal image with Poisson image editing (``cv2.seamlessClone``). The blend
hides the patch border, so the decoder has to learn what is *inside* an anomaly rather
than spot rectangle edges (which is what plain CutPaste teaches). Patch half-widths come
from a clipped gamma distribution: mostly small anomalies, occasionally large ones, as in
real inspection data.

The label is measured, not assumed: a pixel is anomalous only if it actually changed
noticeably. A blend that reproduced the background gives no label, so the decoder is never
told that an unchanged pixel is a defect.

Guarantees of ``synthesize`` (tested):

* all randomness comes from the ``numpy.random.Generator`` passed in: same seed, same output;
* pixels farther than ``KEEP_RADIUS`` from ``mask`` are bit-identical to the input;
* ``mask`` is empty exactly when ``label == 0``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Literal, Optional, Sequence

import cv2
import numpy as np

from data_sim.imageio import ImageLike, load_image
from data_sim.masks import object_mask
from data_sim.structural import blotch, crack, line_break

Mode = Literal["mix", "nsa", "cutpaste", "crack", "blotch", "line"]
KINDS: tuple[str, ...] = ("nsa", "cutpaste", "crack", "blotch", "line")
KEEP_RADIUS = 3  # px: a synthesized image equals its input beyond this distance from the mask
DEFAULT_WEIGHTS: dict[str, float] = {"nsa": 0.25, "cutpaste": 0.05, "crack": 0.4, "blotch": 0.15, "line": 0.15}


@dataclass
class Synthesis:
    """One simulated sample.

    ``image``: RGB uint8 HxWx3. ``mask``: bool HxW, pixels that changed noticeably.
    ``soft``: float32 HxW in 0..1, strength of the change inside ``mask`` (0 outside).
    ``boxes``: one ``(y0, x0, y1, x1)`` per anomaly (exclusive ends), aligned with
    ``parts`` (bool HxW per anomaly) and ``kinds`` (the mode that made it).
    """

    image: np.ndarray
    mask: np.ndarray
    soft: Optional[np.ndarray] = None
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    @property
    def label(self) -> int:
        """1 if anything anomalous was made, else 0."""
        return int(bool(self.mask.any()))


@dataclass(frozen=True)
class PatchConfig:
    """NSA/CutPaste patch geometry, as fractions of the shorter image side.

    Half-width = clip(gamma(shape, scale) + min_half, min_half, max_half): the defaults
    give a median around 0.1 (a patch of ~20% of the side) and a long tail of large ones.
    """

    gamma_shape: float = 2.0
    gamma_scale: float = 0.04
    min_half: float = 0.03
    max_half: float = 0.25
    max_aspect: float = 3.0
    resize_bounds: tuple[float, float] = (0.7, 1.3)
    min_overlap: float = 0.5  # share of the patch that must lie on the object (dest and source)
    aligned_prob: float = 0.5  # other-image source taken at the same place (+- max_shift), unscaled
    max_shift: float = 0.05
    tries: int = 30


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Bool mask grown by ``radius`` pixels (square structuring element)."""
    if radius <= 0:
        return mask.astype(bool)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


@lru_cache(maxsize=32)
def _cached_source(path: str) -> np.ndarray:
    """Source images named by path are decoded once per process (read-only)."""
    arr = load_image(path)
    arr.setflags(write=False)
    return arr


def _resolve_source(src: ImageLike, shape: tuple[int, int]) -> np.ndarray:
    """A source image as RGB uint8 of the destination's size."""
    arr = _cached_source(str(src)) if isinstance(src, (str, os.PathLike)) else load_image(src)
    if arr.shape[:2] != shape:  # NSA assumes equal sizes so patch scales mean the same thing
        arr = cv2.resize(arr, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return arr


def _place_patch(
    allowed: np.ndarray,
    src_allowed: np.ndarray,
    same: bool,
    rng: np.random.Generator,
    cfg: PatchConfig,
) -> Optional[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Destination ``(y0, x0, ph, pw)`` and source ``(sy0, sx0, sh, sw)`` rectangles.

    The destination keeps one pixel clear of the image border (``seamlessClone`` needs a
    border around its region); both rectangles must overlap the object by
    ``min_overlap``; a same-image source must be displaced by at least half a patch.
    With ``aligned_prob`` an other-image source sits at the destination's place (NSA's
    setting for aligned objects): in a series of the same product, structure lines up
    (busbars, edges), so the patch brings only that part's own texture and defects of
    scale, not a displaced busbar whose cut ends the Poisson blend smears into halos.
    """
    h, w = allowed.shape
    side = min(h, w)
    aligned = not same and rng.random() < cfg.aligned_prob
    for _ in range(cfg.tries):
        half = float(np.clip(rng.gamma(cfg.gamma_shape, cfg.gamma_scale) + cfg.min_half, cfg.min_half, cfg.max_half))
        ar = math.exp(float(rng.uniform(-math.log(cfg.max_aspect), math.log(cfg.max_aspect))))
        ph = int(np.clip(round(2 * half * side * math.sqrt(ar)), 4, h - 3))
        pw = int(np.clip(round(2 * half * side / math.sqrt(ar)), 4, w - 3))
        y0 = int(rng.integers(1, h - ph))
        x0 = int(rng.integers(1, w - pw))
        if aligned:
            sh, sw = ph, pw
            shift = max(1, int(cfg.max_shift * side))
            sy0 = int(np.clip(y0 + rng.integers(-shift, shift + 1), 0, h - sh))
            sx0 = int(np.clip(x0 + rng.integers(-shift, shift + 1), 0, w - sw))
        else:
            scale = float(rng.uniform(*cfg.resize_bounds))
            sh = int(np.clip(round(ph / scale), 2, h))
            sw = int(np.clip(round(pw / scale), 2, w))
            sy0 = int(rng.integers(0, h - sh + 1))
            sx0 = int(rng.integers(0, w - sw + 1))
        if allowed[y0 : y0 + ph, x0 : x0 + pw].mean() < cfg.min_overlap:
            continue
        if src_allowed[sy0 : sy0 + sh, sx0 : sx0 + sw].mean() < cfg.min_overlap:
            continue
        if same and abs(sy0 - y0) < ph / 2 and abs(sx0 - x0) < pw / 2:
            continue
        return (y0, x0, ph, pw), (sy0, sx0, sh, sw)
    return None


def _patch_anomaly(
    work: np.ndarray,
    allowed: np.ndarray,
    rng: np.random.Generator,
    sources: Sequence[ImageLike],
    same_image_prob: float,
    texture: bool,
    blend: Optional[int],
    cfg: PatchConfig,
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """One NSA (``blend`` = an OpenCV clone flag) or CutPaste (``blend=None``) patch."""
    h, w = allowed.shape
    dst = np.clip(np.rint(work), 0, 255).astype(np.uint8)
    same = not sources or rng.random() < same_image_prob
    if same:
        src, src_allowed = dst, allowed
    else:
        src = _resolve_source(sources[int(rng.integers(len(sources)))], (h, w))
        src_allowed = object_mask(src, texture=texture)
    placed = _place_patch(allowed, src_allowed, same, rng, cfg)
    if placed is None:
        return None
    (y0, x0, ph, pw), (sy0, sx0, sh, sw) = placed
    patch = cv2.resize(src[sy0 : sy0 + sh, sx0 : sx0 + sw], (pw, ph), interpolation=cv2.INTER_LINEAR)
    region = np.zeros((h, w), bool)
    region[y0 : y0 + ph, x0 : x0 + pw] = allowed[y0 : y0 + ph, x0 : x0 + pw]
    if blend is None:  # CutPaste: hard paste with a mild brightness/contrast jitter
        gain = float(rng.uniform(0.85, 1.15))
        bias = float(rng.uniform(-12, 12))
        jittered = np.clip(patch.astype(np.float32) * gain + bias, 0, 255)
        new = work.copy()
        sub = new[y0 : y0 + ph, x0 : x0 + pw]
        sub[region[y0 : y0 + ph, x0 : x0 + pw]] = jittered[region[y0 : y0 + ph, x0 : x0 + pw]]
        return new, region
    full_src = dst.copy()
    full_src[y0 : y0 + ph, x0 : x0 + pw] = patch
    m = region.astype(np.uint8) * 255
    bx, by, bw, bh = cv2.boundingRect(m)
    # OpenCV places the mask's bounding box centred on `center`; this centre maps it onto itself
    center = (bx + bw // 2, by + bh // 2)
    out = cv2.seamlessClone(full_src, dst, m, center, blend)
    return out.astype(np.float32), region


def _measure(
    original: np.ndarray, result: np.ndarray, change_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(changed, strength): per-pixel max-channel change, lightly smoothed so a 1-px
    crack and noisy blends give coherent labels; strong single pixels always count."""
    diff = np.abs(result.astype(np.int16) - original.astype(np.int16)).max(axis=2).astype(np.float32)
    smooth = cv2.blur(diff, (3, 3))
    changed = (smooth > change_threshold) | (diff > 2 * change_threshold)
    return changed, np.maximum(smooth, diff)


def _clean(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Close pinholes and gaps (kernel ~1/60 of the image side, at least 3 px) and drop
    specks below ``min_area`` pixels: a blend into grainy texture changes scattered pixels
    by more than the threshold, and the decoder should learn one region, not confetti."""
    k = max(3, (min(mask.shape) // 60) | 1)
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def synthesize(
    image: ImageLike,
    rng: np.random.Generator,
    sources: Optional[Sequence[ImageLike]] = None,
    mode: Mode = "mix",
    n_max: int = 3,
    texture: bool = False,
    allowed: Optional[np.ndarray] = None,
    weights: Optional[dict[str, float]] = None,
    same_image_prob: float = 0.25,
    blend: Literal["auto", "normal", "mixed"] = "auto",
    patch: PatchConfig = PatchConfig(),
    change_threshold: float = 8.0,
    min_area: int = 16,
    max_attempts: int = 8,
) -> Synthesis:
    """Paste or draw 1..``n_max`` anomalies on a normal ``image``.

    ``mode``: one kind for all anomalies ("nsa", "cutpaste", "crack", "blotch", "line")
    or "mix" (each anomaly draws its kind from ``weights``, default ``DEFAULT_WEIGHTS``).
    ``sources``: other normal images (arrays or paths) NSA/CutPaste cut patches from;
    with none, or with probability ``same_image_prob``, the patch comes from ``image``
    itself. ``texture``: the whole image may hold anomalies and NSA blends with
    MIXED_CLONE (NORMAL_CLONE for objects) unless ``blend`` says otherwise. ``allowed``
    overrides the automatic object mask. If nothing noticeable was made after
    ``max_attempts`` the result is returned with ``label == 0``.
    """
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if mode != "mix" and mode not in KINDS:
        raise ValueError(f"unknown mode {mode!r}; use one of mix, {', '.join(KINDS)}")
    w_all = dict(DEFAULT_WEIGHTS if weights is None else weights)
    bad = sorted(set(w_all) - set(KINDS))
    if bad or sum(w_all.values()) <= 0 or any(v < 0 for v in w_all.values()):
        raise ValueError(f"weights must be non-negative over {', '.join(KINDS)} with a positive sum, got {w_all}")
    kinds_list = [k for k in KINDS if w_all.get(k, 0) > 0]
    probs = np.array([w_all[k] for k in kinds_list], np.float64)
    probs /= probs.sum()

    original = load_image(image)
    h, w = original.shape[:2]
    if allowed is None:
        allowed = object_mask(original, texture=texture)
    allowed = allowed.astype(bool)
    if allowed.shape != (h, w):
        raise ValueError(f"allowed mask shape {allowed.shape} does not match image {h}x{w}")
    flag = {"normal": cv2.NORMAL_CLONE, "mixed": cv2.MIXED_CLONE}.get(
        blend, cv2.MIXED_CLONE if texture else cv2.NORMAL_CLONE
    )
    srcs = list(sources) if sources else []
    ops: dict[str, Callable[[np.ndarray], Optional[tuple[np.ndarray, np.ndarray]]]] = {
        "nsa": lambda wk: _patch_anomaly(wk, allowed, rng, srcs, same_image_prob, texture, flag, patch),
        "cutpaste": lambda wk: _patch_anomaly(wk, allowed, rng, srcs, same_image_prob, texture, None, patch),
        "crack": lambda wk: crack(wk, allowed, rng),
        "blotch": lambda wk: blotch(wk, allowed, rng),
        "line": lambda wk: line_break(wk, allowed, rng),
    }

    result = original
    mask = np.zeros((h, w), bool)
    strength = np.zeros((h, w), np.float32)
    regions: list[np.ndarray] = []
    made: list[str] = []
    for _ in range(max_attempts):
        work = original.astype(np.float32)
        regions, made = [], []
        for _ in range(int(rng.integers(1, n_max + 1))):
            kind = mode if mode != "mix" else kinds_list[int(rng.choice(len(kinds_list), p=probs))]
            out = ops[kind](work)
            if out is None:
                continue
            new, region = out
            keep = dilate(region, 1) & allowed  # never touch pixels outside the object
            work = np.where(keep[:, :, None], new, work)
            regions.append(keep)
            made.append(kind)
        if not regions:
            continue
        result = np.clip(np.rint(work), 0, 255).astype(np.uint8)
        changed, strength = _measure(original, result, change_threshold)
        union = np.logical_or.reduce(regions)
        mask = _clean(changed & union, min_area) & union
        if mask.any():
            break
    if not mask.any():
        return Synthesis(image=original.copy(), mask=mask, soft=np.zeros((h, w), np.float32))

    # the guarantee: nothing changes beyond KEEP_RADIUS of the label
    near = dilate(mask, KEEP_RADIUS)
    final = np.where(near[:, :, None], result, original).astype(np.uint8)
    soft = np.where(mask, np.clip(strength / (4 * change_threshold), 0, 1), 0).astype(np.float32)
    parts, boxes, kinds = [], [], []
    for region, kind in zip(regions, made):
        part = mask & region
        if part.sum() < min_area:
            continue
        ys, xs = np.nonzero(part)
        parts.append(part)
        boxes.append((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1))
        kinds.append(kind)
    return Synthesis(image=final, mask=mask, soft=soft, boxes=boxes, parts=parts, kinds=kinds)
