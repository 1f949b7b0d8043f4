"""data_sim.masks and data_sim.nsa: labels match the pixels, nothing leaks outside, seeds rule."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from data_sim.masks import object_mask
from data_sim.nsa import KEEP_RADIUS, KINDS, dilate, synthesize

MODES = list(KINDS) + ["mix"]


def _texture(seed: int, size: int = 96) -> np.ndarray:
    """A noisy cell-like texture with two dark 'busbars' (so structural modes have context)."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.normal(150, 30, (size, size)).astype(np.float32), (0, 0), 1.5)
    base[size // 3 : size // 3 + 2, :] *= 0.5
    base[2 * size // 3 : 2 * size // 3 + 2, :] *= 0.5
    g = np.clip(base, 0, 255).astype(np.uint8)
    return np.stack([g, g, g], axis=2)


def _object(seed: int, size: int = 96) -> np.ndarray:
    """A textured bright disk on a dark, flat backdrop."""
    img = _texture(seed, size)
    yy, xx = np.mgrid[0:size, 0:size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.32) ** 2
    img[~disk] = 20
    return img


def test_object_mask_finds_the_disk_and_texture_allows_all() -> None:
    img = _object(0)
    m = object_mask(img)
    yy, xx = np.mgrid[0:96, 0:96]
    disk = (yy - 48) ** 2 + (xx - 48) ** 2 < (96 * 0.32) ** 2
    assert (m & disk).sum() / disk.sum() > 0.95 and (m & ~disk).sum() / (~disk).sum() < 0.05
    assert object_mask(img, texture=True).all()
    assert object_mask(np.full((64, 64, 3), 128, np.uint8)).all(), "degenerate result falls back to the whole image"


@pytest.mark.parametrize("mode", MODES)
def test_mask_nonempty_inside_object_and_outside_unchanged(mode: str) -> None:
    for seed in range(3):
        img = _object(seed)
        allowed = object_mask(img)
        syn = synthesize(img, np.random.default_rng(seed), sources=[_object(10 + seed)], mode=mode, n_max=2)
        assert syn.image.shape == img.shape and syn.image.dtype == np.uint8
        assert syn.label == 1 and syn.mask.any()
        assert not (syn.mask & ~allowed).any(), "anomaly outside the object"
        outside = ~dilate(syn.mask, KEEP_RADIUS)
        assert (syn.image[outside] == img[outside]).all(), "pixels outside the dilated mask changed"
        assert len(syn.boxes) == len(syn.parts) == len(syn.kinds) >= 1
        for (y0, x0, y1, x1), part in zip(syn.boxes, syn.parts):
            ys, xs = np.nonzero(part)
            assert (y0, x0, y1, x1) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        assert syn.soft is not None and syn.soft.min() >= 0 and syn.soft.max() <= 1
        assert (syn.soft[~syn.mask] == 0).all()


@pytest.mark.parametrize("mode", ["nsa", "crack", "mix"])
def test_texture_mode_changes_are_labelled(mode: str) -> None:
    img = _texture(3)
    syn = synthesize(img, np.random.default_rng(7), sources=[_texture(4)], mode=mode, texture=True)
    assert syn.mask.any()
    diff = np.abs(syn.image.astype(int) - img.astype(int)).max(axis=2)
    assert (diff[~dilate(syn.mask, KEEP_RADIUS)] == 0).all()
    assert diff[syn.mask].mean() > 5, "labelled pixels must have visibly changed"


def test_same_seed_same_output_different_seed_different() -> None:
    img, src = _texture(1), _texture(2)
    for mode in MODES:
        a = synthesize(img, np.random.default_rng(123), sources=[src], mode=mode, texture=True)
        b = synthesize(img, np.random.default_rng(123), sources=[src], mode=mode, texture=True)
        c = synthesize(img, np.random.default_rng(124), sources=[src], mode=mode, texture=True)
        assert (a.image == b.image).all() and (a.mask == b.mask).all() and a.boxes == b.boxes
        assert not ((a.image == c.image).all() and (a.mask == c.mask).all())


def test_inputs_are_not_modified_and_sizes_may_differ() -> None:
    img = _texture(5)
    before = img.copy()
    src = cv2.resize(_texture(6, 64), (80, 70))
    syn = synthesize(img[:, :, 0], np.random.default_rng(0), sources=[src], mode="nsa", texture=True, same_image_prob=0.0)
    assert (img == before).all()
    assert syn.image.shape == (96, 96, 3)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        synthesize(_texture(0), np.random.default_rng(0), mode="scratch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_max"):
        synthesize(_texture(0), np.random.default_rng(0), n_max=0)
    with pytest.raises(ValueError, match="weights"):
        synthesize(_texture(0), np.random.default_rng(0), weights={"nope": 1.0})
