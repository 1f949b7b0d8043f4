"""Image inputs -> encoder tensors, and anomaly maps -> overlays people can read.

Loading any path / PIL / array in any mode is `data_sim.imageio.load_image` (one place for
odd inputs: grayscale, RGBA, 16-bit); this module resizes to the encoder's square input
and draws the heat map with the 3x3 grid.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from data_sim.imageio import ImageLike, load_image

from .models.hires import fine_canvas

__all__ = ["load_image", "resize_square", "to_tensor", "batch_tensor", "fine_tensor", "overlay", "report_overlay",
           "ImageLike"]


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 -> size x size (area resampling when shrinking). Training and inference both
    use this, so the model sees the same pixels in both."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def to_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 H x W x 3 -> float 3 x size x size in 0..1."""
    return torch.from_numpy(resize_square(rgb, size)).permute(2, 0, 1).float().div_(255.0)


def batch_tensor(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    return torch.stack([to_tensor(im, size) for im in images])


def fine_tensor(rgb: np.ndarray, mode: str, size: int) -> torch.Tensor:
    """The fine level's input of an image (models/hires.py), made from its own pixels:
    "2x" a square of 2 x size, "tiles" its own resolution with sides clamped to size..2*size.
    Float 3 x H x W in 0..1."""
    h, w = rgb.shape[:2]
    fh, fw = fine_canvas(h, w, mode, size)
    if (fh, fw) != (h, w):
        interp = cv2.INTER_AREA if fh * fw < h * w else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (fw, fh), interpolation=interp)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


Box = tuple[float, float, float, float]  # top, left, height, width as fractions of a square's side


def letterbox(rgb: np.ndarray) -> tuple[np.ndarray, Box]:
    """Pad an image to a square with its own edge pixels (replicated), so that the square
    resize of `batch_tensor` keeps its proportions: a scorer that compares the image with
    text or with what it learned on square crops of real proportions (CLIP) sees a round
    blob round. Returns (square, content box as fractions of the side)."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    sq = cv2.copyMakeBorder(rgb, top, side - h - top, left, side - w - left, cv2.BORDER_REPLICATE)
    return sq, (top / side, left / side, h / side, w / side)


def crop_to_content(square_map: np.ndarray, box: Box) -> np.ndarray:
    """The part of a square map (any size) that covers the letterboxed image's content (at
    least one cell each way), ready for `resize_map` to the image's own size."""
    sh, sw = square_map.shape[:2]
    top, left, h, w = box
    y0, x0 = min(int(round(top * sh)), sh - 1), min(int(round(left * sw)), sw - 1)
    y1, x1 = max(y0 + 1, int(round((top + h) * sh))), max(x0 + 1, int(round((left + w) * sw)))
    return square_map[y0:y1, x0:x1]


def resize_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(amap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def overlay(rgb: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None, vmax: float | None = None,
            grid: bool = True, alpha: float = 0.6) -> np.ndarray:
    """Heat map blended on the image, region outlines in white, the 3x3 grid in thin lines.

    The heat's opacity follows its value, so normal areas keep the part visible and only
    the anomalous ones are coloured strongly.
    """
    h, w = rgb.shape[:2]
    m = resize_map(amap, h, w) if amap.shape != (h, w) else amap.astype(np.float32)
    top = vmax if vmax is not None else max(float(m.max()), 1e-6)
    level = np.clip(m / top, 0, 1)
    heat = cv2.cvtColor(cv2.applyColorMap((255 * level).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    a = (alpha * (0.15 + 0.85 * level))[..., None]
    out = np.clip(rgb * (1 - a) + heat * a, 0, 255).astype(np.uint8)
    thick = max(1, round(min(h, w) / 200))
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), thick + 1)
    if grid:
        for i in (1, 2):
            cv2.line(out, (i * w // 3, 0), (i * w // 3, h - 1), (230, 230, 230), thick)
            cv2.line(out, (0, i * h // 3), (w - 1, i * h // 3), (230, 230, 230), thick)
    return out


def heat_scale(report) -> float:
    """Top of the heat-map colour scale: the map's peak, but never below 1.25 x threshold, so
    the threshold sits at red-orange and a normal part does not glow red from its own small peak."""
    return max(float(report.anomaly_map.max()), 1.25 * float(report.threshold), 1e-6)


def report_overlay(rgb: np.ndarray, report) -> np.ndarray:
    """The overlay shown for a report (CLI, demo and chat UI use the same picture)."""
    return overlay(rgb, report.anomaly_map, report.mask if report.is_anomalous else None, vmax=heat_scale(report))
