"""High-resolution fine level of the reference map: small defects need more pixels per patch.

Why: the reference map compares stride-8 patches pooled 3x3 (a 24 px window at 224 px). A
defect a few pixels wide covers under 2% of that window, so its patch still has a close
neighbour in the references and the map barely moves. Scoring the same patches on more
pixels of the image makes the defect a larger share of each window:

    off    the 224 px map only (the default path, unchanged)
    2x     the whole image at twice the encoder's size (448 px), encoded in one piece
    tiles  the image at its own resolution (each side clamped to 1-2x the encoder's size),
           cut into overlapping encoder-size tiles; no upsampling of pixels that were never
           there, and the encoder works at the size it was trained for

Each tile's map is brought back to the tile's pixels and pasted onto the image's canvas
(overlaps averaged), then resized to the output grid, so the fine map lies on the same grid
as the 224 px map and the two can be combined per pixel (`combine`). The references' fine
patches live in a second memory bank built the same way (Detector.build_bank).

Pure torch, no I/O: the caller supplies the fine-resolution pixels (anomalygpt.images.fine_tensor).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

HiresMode = Literal["off", "2x", "tiles"]
HIRES_MODES: tuple[str, ...] = ("off", "2x", "tiles")
MIN_OVERLAP = 0.25  # tiles overlap by at least a quarter of their side: no seam falls on a defect alone

Box = tuple[int, int]  # (top, left) of a tile on the fine canvas


def fine_canvas(height: int, width: int, mode: str, size: int) -> tuple[int, int]:
    """(H, W) the image is brought to for the fine level: 2x = a square of twice the encoder's
    size; tiles = its own resolution with each side clamped to size..2*size (an image larger
    than that is shrunk, so the tile count and the cost stay bounded)."""
    if mode == "2x":
        return 2 * size, 2 * size
    if mode == "tiles":
        return min(max(height, size), 2 * size), min(max(width, size), 2 * size)
    raise ValueError(f"hires mode {mode!r} has no fine canvas; use one of {', '.join(HIRES_MODES[1:])}")


def tile_starts(length: int, tile: int, min_overlap: float = MIN_OVERLAP) -> list[int]:
    """Evenly spaced start offsets of tiles of `tile` px covering 0..length, neighbours
    overlapping by at least `min_overlap` of a tile; the last tile ends at `length`."""
    if length < tile:
        raise ValueError(f"a side of {length} px is smaller than the tile ({tile} px)")
    if length == tile:
        return [0]
    step = tile * (1.0 - min_overlap)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_boxes(height: int, width: int, tile: int, min_overlap: float = MIN_OVERLAP) -> list[Box]:
    """(top, left) of every tile of a height x width canvas, row by row."""
    return [(y, x) for y in tile_starts(height, tile, min_overlap) for x in tile_starts(width, tile, min_overlap)]


def cut_tiles(image: torch.Tensor, boxes: list[Box], tile: int) -> torch.Tensor:
    """C x H x W -> N x C x tile x tile, one crop per box."""
    return torch.stack([image[:, y:y + tile, x:x + tile] for y, x in boxes])


def paste_tiles(maps: torch.Tensor, boxes: list[Box], tile: int, canvas: tuple[int, int]) -> torch.Tensor:
    """N x 1 x h x w tile maps -> 1 x 1 x H x W: each map resized to its tile's pixels and
    added at its box; where tiles overlap, the mean of their values."""
    total = maps.new_zeros(1, 1, *canvas)
    count = maps.new_zeros(1, 1, *canvas)
    up = F.interpolate(maps, size=(tile, tile), mode="bilinear", align_corners=False)
    for m, (y, x) in zip(up, boxes):
        total[0, :, y:y + tile, x:x + tile] += m
        count[0, :, y:y + tile, x:x + tile] += 1
    if bool((count == 0).any()):
        raise ValueError("the tiles do not cover the canvas")
    return total / count


def split_fine(image: torch.Tensor, mode: str, size: int) -> tuple[torch.Tensor, list[Box], int]:
    """One fine-resolution image (C x H x W) -> (encoder inputs N x C x t x t, boxes, t):
    2x = the whole image as one input; tiles = overlapping tiles of `size` px."""
    if mode == "2x":
        return image.unsqueeze(0), [(0, 0)], image.shape[-1]
    boxes = tile_boxes(image.shape[-2], image.shape[-1], size)
    return cut_tiles(image, boxes, size), boxes, size


def combine(ref_map: torch.Tensor, fine_map: torch.Tensor, fusion: str, weight: float) -> torch.Tensor:
    """The reference map with its fine level: "mean" = (1 - weight) x 224 px map + weight x
    fine map (weight 1 = the fine map alone); "max" = the larger of the two per pixel (a
    defect seen at either scale counts). Both are 1 - cosine maps, so they share units."""
    if fusion == "max":
        return torch.maximum(ref_map, fine_map)
    if fusion == "mean":
        return (1.0 - weight) * ref_map + weight * fine_map
    raise ValueError(f"unknown hires fusion {fusion!r}; use mean or max")
