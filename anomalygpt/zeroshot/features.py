"""Patch features of any ImageEncoder at several input sizes (pure encoder: nothing trained
on the product; the embedded checkpoint's decoder is not used).

The same multi-level features as the few-shot memory bank (`memory_bank.patch_features`:
coarser levels upsampled to the finest grid, concatenated, 3x3 local pool, L2-normalized),
so zero-shot and few-shot maps mean the same thing. Pure torch, no I/O.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.encoders import ImageEncoder
from ..models.memory_bank import grid_size, patch_features
from ..models.orientations import orientation_copies


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """B x 3 x H x W in 0..1 -> B x 3 x size x size (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < max(images.shape[-2:])).clamp_(0, 1)


@torch.no_grad()
def encoder_patches(encoder: ImageEncoder, images: torch.Tensor, size: int, pool: int = 3,
                    batch_size: int = 16, rot90: bool = False) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
    """(patch features B x (h*w) x C, grid (h, w), global embedding B x D) at input `size`;
    `rot90`: of the images turned by 90 degrees (the grid is then turned too)."""
    feats, hw, glob = encoder_patch_sets(encoder, images, size, [pool], batch_size, rot90)
    return feats[0], hw, glob


@torch.no_grad()
def encoder_patch_sets(encoder: ImageEncoder, images: torch.Tensor, size: int, pools: Sequence[int],
                       batch_size: int = 16, rot90: bool = False
                       ) -> tuple[list[torch.Tensor], tuple[int, int], torch.Tensor]:
    """Patch features at several aggregation degrees (local pool sizes, MuSc's r = 1, 3, 5)
    from ONE encoder pass: ([B x (h*w) x C per pool], grid (h, w), global embedding B x D)."""
    if not pools:
        raise ValueError("no pool sizes given; use e.g. [3]")
    feats: list[list[torch.Tensor]] = [[] for _ in pools]
    globs, hw = [], (0, 0)
    for i in range(0, len(images), batch_size):
        x = resize_batch(images[i:i + batch_size], size)
        maps, glob = encoder(torch.rot90(x, 1, (2, 3)) if rot90 else x)
        hw = grid_size(maps)
        for k, pool in enumerate(pools):
            feats[k].append(patch_features(maps, pool))
        globs.append(glob.float())
    return [torch.cat(f) for f in feats], hw, torch.cat(globs)


@torch.no_grad()
def oriented_patch_sets(encoder: ImageEncoder, images: torch.Tensor, size: int, pools: Sequence[int],
                        orientations: str, batch_size: int = 16
                        ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], tuple[int, int], torch.Tensor]:
    """Patch features of the images AND of their turned / mirrored copies
    (models.orientations: "none", "rot180", "rot90", "dihedral"), each copy's grid turned
    back onto the images' own grid: position p of a copy holds patch p seen turned.
    Returns ([B x (h*w) x C per pool], [[copy features per pool] per copy], grid, global
    embedding of the images as given). Copies need a square grid (square inputs here)."""
    transforms = orientation_copies(orientations)
    feats, hw, glob = encoder_patch_sets(encoder, images, size, pools, batch_size)
    copies: list[list[torch.Tensor]] = []
    for turn in transforms[1:]:
        turned, (h, w), _ = encoder_patch_sets(encoder, turn(resize_batch(images, size)), size, pools, batch_size)
        if (h, w) != hw:
            raise ValueError(f"orientation copies need a square patch grid, got {hw} and {(h, w)}")
        # where each position of the turned grid came from: the same transform on an index grid
        source = turn(torch.arange(h * w).view(1, 1, h, w)).flatten()
        back = []
        for f in turned:
            restored = torch.empty_like(f)
            restored[:, source] = f
            back.append(restored)
        copies.append(back)
    return feats, copies, hw, glob


def to_image(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x 1 x h x w grid scores -> B x 1 x H x W (bilinear), so maps of several scales add up."""
    return F.interpolate(grid_map, size=size, mode="bilinear", align_corners=False)


def average_maps(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Mean of grid maps of different resolutions, each brought to `size` first."""
    if not maps:
        raise ValueError("no maps to average; give at least one scale")
    return torch.stack([to_image(m, size) for m in maps]).mean(0)
