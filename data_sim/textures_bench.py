"""A non-ELPV benchmark made from textures that ship inside scikit-image, from a seed.

Why: ELPV measures one product. A user's product is something the checkpoint never saw,
so this set asks whether detection *generalizes*: textured surfaces (brick, grass, gravel,
the moon's craters, and ``blobs``: a smoothed ``skimage.data.binary_blobs`` field, a
surface no training set here contains; the other four are among the shipped checkpoint's
training normals, ``configs/embedded.yaml`` data ``skimage``) photographed under varied conditions (crop position, small rotation
and zoom, brightness, contrast, gamma, slight blur, sensor noise), with defects drawn by
generators that the training simulation (``nsa.py`` patches / CutPaste, ``structural.py``
cracks, blotches, broken lines) does not have:

    speck    a blob of a few pixels (radius 1.5-3 px), brighter or darker    (small defect)
    scratch  a thin curved arc, 1 px wide, 14-28 px long                       (small defect)
    stain    a soft-edged colour tint, radius 12-28 px                         (local, colour)
    hole     missing material: an irregular dark pit with a lit rim, 5-12 px   (local, shape)
    grain    the whole surface at another scale (zoom 1.7-2.2x): coarser grain (texture-wide)
    blur     the whole surface out of focus (Gaussian sigma 1.8-2.6)           (texture-wide)

Train and test crops come from disjoint halves of each source image (left / right), so a
test normal is never a re-augmented train image. Pure maths: no file I/O besides reading
the packaged images through ``skimage.data``; every random number comes from one
``numpy.random.Generator`` per (seed, texture), so a seed fixes the whole set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

VERSION = 1                       # bump when generated images change, so cached copies are remade
TEXTURES = ("brick", "grass", "gravel", "moon", "blobs")   # append only: the index seeds each set
KINDS = ("speck", "scratch", "stain", "hole", "grain", "blur")
TEXTURE_WIDE = ("grain", "blur")  # kinds whose mask is the whole image
SIZE = 224
N_TRAIN = 16
N_TEST_NORMAL = 20
N_PER_KIND = 10


@dataclass(frozen=True)
class Item:
    """One generated image; ``mask`` is None for normals."""
    image: np.ndarray          # HxWx3 uint8
    mask: np.ndarray | None    # HxW bool for anomalies
    kind: str                  # "good" or one of KINDS


def source_image(name: str) -> np.ndarray:
    """The packaged scikit-image texture as float32 gray 0..255."""
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; use one of {', '.join(TEXTURES)}")
    import skimage.data as skd

    if name == "blobs":  # a fixed procedural surface: the product, the same for every seed
        field = skd.binary_blobs(512, blob_size_fraction=0.04, volume_fraction=0.45, rng=7).astype(np.float32)
        return 70 + 120 * cv2.GaussianBlur(field, (0, 0), 2.0)
    img = np.asarray(getattr(skd, name)(), dtype=np.float32)
    return img if img.ndim == 2 else img[..., :3].mean(axis=2)


def _window(src: np.ndarray, half: str, rng: np.random.Generator, zoom: float, angle: float) -> np.ndarray:
    """A SIZE x SIZE crop of one half of ``src`` seen rotated by ``angle`` degrees and
    magnified by ``zoom`` (reflected borders, so no black corners)."""
    h, w = src.shape
    x0, x1 = (0, w // 2) if half == "left" else (w // 2, w)
    r = SIZE / 2 / zoom * math.sqrt(2) + 2       # the rotated window's reach from its centre
    lo_x, hi_x = x0 + r, x1 - r
    cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (x0 + x1) / 2
    cy = rng.uniform(r, h - r)
    m = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
    m[:, 2] += (SIZE / 2 - cx, SIZE / 2 - cy)
    return cv2.warpAffine(src, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def _photograph(gray: np.ndarray, rng: np.random.Generator, max_blur: float = 0.7) -> np.ndarray:
    """Vary the capture conditions: exposure, contrast, gamma, focus and noise."""
    x = gray / 255.0
    x = (x - x.mean()) * rng.uniform(0.85, 1.15) + x.mean() + rng.uniform(-0.06, 0.06)
    x = np.clip(x, 0, 1) ** rng.uniform(0.9, 1.1)
    sigma = rng.uniform(0.0, max_blur)
    if sigma > 0.3:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    x = x * 255 + rng.normal(0, rng.uniform(0.5, 2.5), x.shape)
    return x.astype(np.float32)


def _rgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=2) if x.ndim == 2 else x


def _centre(rng: np.random.Generator, margin: int) -> tuple[float, float]:
    return rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin)


def _speck(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = _centre(rng, 12)
    rad = rng.uniform(1.5, 3.0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    d = np.hypot(xx - cx, yy - cy)
    w = np.clip(rad + 0.5 - d, 0, 1)                 # anti-aliased disc
    level = 235.0 if rng.random() < 0.5 else 20.0
    out = img * (1 - w[..., None]) + level * w[..., None]
    return out, w > 0.5


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = _centre(rng, 24)
    length, theta = rng.uniform(14, 28), rng.uniform(0, math.pi)
    bend = rng.uniform(-0.5, 0.5) * length
    a = np.array([cx - math.cos(theta) * length / 2, cy - math.sin(theta) * length / 2])
    b = np.array([cx + math.cos(theta) * length / 2, cy + math.sin(theta) * length / 2])
    c = (a + b) / 2 + bend * np.array([-math.sin(theta), math.cos(theta)])
    t = np.linspace(0, 1, 64)[:, None]
    pts = (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t ** 2 * b  # quadratic Bezier arc
    canvas = np.zeros((SIZE * 4, SIZE * 4), np.uint8)         # drawn at 4x, then averaged: sub-pixel AA
    cv2.polylines(canvas, [np.rint(pts * 4).astype(np.int32)], False, 255, thickness=4, lineType=cv2.LINE_AA)
    w = cv2.resize(canvas.astype(np.float32) / 255, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    level = 240.0 if rng.random() < 0.6 else 15.0
    out = img * (1 - w[..., None]) + level * w[..., None]
    return out, w > 0.3


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = _centre(rng, 30)
    rad = rng.uniform(12, 28)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (rad / 1.5) ** 2)) * rng.uniform(0.45, 0.7)
    tint = rng.choice(np.array([[1.25, 0.95, 0.6], [0.6, 0.85, 1.2], [1.2, 1.05, 0.55], [0.7, 1.15, 0.7]]))
    out = img * (1 - w[..., None] + w[..., None] * tint)
    return out, w > 0.5 * w.max()


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = _centre(rng, 20)
    n = int(rng.integers(6, 10))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = rng.uniform(5, 12) * rng.uniform(0.6, 1.0, n)
    poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [np.rint(poly).astype(np.int32)], 1)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)
    rim = np.clip(cv2.dilate(mask, np.ones((3, 3), np.uint8)) - mask, 0, 1).astype(np.float32)
    rim = np.roll(rim, (-1, -1), (0, 1)) * 0.6                    # lit upper-left edge of the pit
    depth = rng.uniform(8, 25) + rng.normal(0, 3, (SIZE, SIZE))
    out = img * (1 - soft[..., None]) + depth[..., None] * soft[..., None]
    out = out * (1 - rim[..., None]) + 230.0 * rim[..., None]
    return out, mask.astype(bool)


LOCAL: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "speck": _speck, "scratch": _scratch, "stain": _stain, "hole": _hole}


def _normal(src: np.ndarray, half: str, rng: np.random.Generator) -> np.ndarray:
    gray = _window(src, half, rng, rng.uniform(0.95, 1.05), rng.uniform(-5, 5))
    return _photograph(gray, rng)


def _anomaly(src: np.ndarray, kind: str, rng: np.random.Generator) -> Item:
    if kind == "grain":
        gray = _window(src, "right", rng, rng.uniform(1.7, 2.2), rng.uniform(-5, 5))
        return Item(_rgb(_photograph(gray, rng)), np.ones((SIZE, SIZE), bool), kind)
    if kind == "blur":
        gray = cv2.GaussianBlur(_window(src, "right", rng, rng.uniform(0.95, 1.05), rng.uniform(-5, 5)),
                                (0, 0), rng.uniform(1.8, 2.6))
        return Item(_rgb(_photograph(gray, rng, max_blur=0.0)), np.ones((SIZE, SIZE), bool), kind)
    base = np.repeat(_normal(src, "right", rng)[..., None], 3, axis=2)
    out, mask = LOCAL[kind](base, rng)
    return Item(_rgb(out), mask, kind)


def generate(texture: str, seed: int = 0, n_train: int = N_TRAIN, n_test_normal: int = N_TEST_NORMAL,
             n_per_kind: int = N_PER_KIND, kinds: tuple[str, ...] = KINDS) -> dict[str, list[Item]]:
    """``{"train": normals, "test": normals then n_per_kind anomalies of each kind}`` of one
    texture. The generator is seeded by (seed, texture index), so one texture's set does not
    depend on which other textures are generated."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown defect kinds {sorted(unknown)}; use {', '.join(KINDS)}")
    src = source_image(texture)
    rng = np.random.default_rng([int(seed), TEXTURES.index(texture), VERSION])
    train = [Item(_rgb(_normal(src, "left", rng)), None, "good") for _ in range(n_train)]
    test = [Item(_rgb(_normal(src, "right", rng)), None, "good") for _ in range(n_test_normal)]
    test += [_anomaly(src, k, rng) for k in kinds for _ in range(n_per_kind)]
    return {"train": train, "test": test}
