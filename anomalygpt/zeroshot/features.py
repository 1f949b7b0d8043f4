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


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """B x 3 x H x W in 0..1 -> B x 3 x size x size (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < max(images.shape[-2:])).clamp_(0, 1)


@torch.no_grad()
def encoder_patches(encoder: ImageEncoder, images: torch.Tensor, size: int, pool: int = 3,
                    batch_size: int = 16) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
    """(patch features B x (h*w) x C, grid (h, w), global embedding B x D) at input `size`."""
    feats, globs, hw = [], [], (0, 0)
    for i in range(0, len(images), batch_size):
        maps, glob = encoder(resize_batch(images[i:i + batch_size], size))
        hw = grid_size(maps)
        feats.append(patch_features(maps, pool))
        globs.append(glob.float())
    return torch.cat(feats), hw, torch.cat(globs)


def to_image(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x 1 x h x w grid scores -> B x 1 x H x W (bilinear), so maps of several scales add up."""
    return F.interpolate(grid_map, size=size, mode="bilinear", align_corners=False)


def average_maps(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Mean of grid maps of different resolutions, each brought to `size` first."""
    if not maps:
        raise ValueError("no maps to average; give at least one scale")
    return torch.stack([to_image(m, size) for m in maps]).mean(0)
