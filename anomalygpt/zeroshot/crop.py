"""Find the named object, score only the crop, paste the map back (prompt-and-crop seed).

CLIP scores the whole frame; a small part on a large backdrop gets few patches and the
backdrop's clutter pulls the language similarity around. Cropping to the object first
gives the part the full input resolution. Grounding DINO (open-vocabulary detector,
`IDEA-Research/grounding-dino-tiny` through transformers) finds "a <object>." when its
weights are on disk; otherwise the offline foreground mask of data_sim (Otsu + morphology)
gives the box. The crop's map is pasted into a frame-sized map, so regions, boxes and 3x3
cells stay in the ORIGINAL image's coordinates; outside the crop the map is 0 (not scored).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

log = logging.getLogger(__name__)

GROUNDING_DINO = "IDEA-Research/grounding-dino-tiny"
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass(frozen=True)
class CropChoice:
    """Which part of the image was scored and who chose it ('grounding-dino', 'foreground'
    or 'full'); `detail` says why (detector score, or why the fallback was taken)."""
    box: Box
    source: str
    detail: str = ""

    def describe(self) -> str:
        x0, y0, x1, y1 = self.box
        return f"crop {self.source} x={x0}..{x1} y={y0}..{y1}" + (f" ({self.detail})" if self.detail else "")


def full_box(image: np.ndarray) -> Box:
    return 0, 0, int(image.shape[1]), int(image.shape[0])


def expand_box(box: Box, shape: tuple[int, ...], margin: float = 0.1, min_size: int = 8) -> Box:
    """Grow a box by `margin` of its size on each side (defects sit on the object's edge),
    clip to the image, and keep it at least `min_size` pixels wide and high."""
    h, w = shape[:2]
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    x0, x1 = max(0, int(np.floor(x0 - mx))), min(w, int(np.ceil(x1 + mx)))
    y0, y1 = max(0, int(np.floor(y0 - my))), min(h, int(np.ceil(y1 + my)))
    if x1 - x0 < min_size:
        x0, x1 = max(0, min(x0, w - min_size)), min(w, max(x0, 0) + min_size)
    if y1 - y0 < min_size:
        y0, y1 = max(0, min(y0, h - min_size)), min(h, max(y0, 0) + min_size)
    return x0, y0, x1, y1


def foreground_box(image: np.ndarray) -> Box | None:
    """Bounding box of data_sim's object mask; None when the mask is the whole image (no
    separable object, e.g. a texture or a cell filling the frame)."""
    from data_sim.masks import object_mask

    mask = object_mask(image)
    if mask.all():
        return None
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


class GroundingDinoDetector:
    """Best box for "a <object>." from a transformers Grounding DINO model and processor."""

    def __init__(self, model: Any, processor: Any, box_threshold: float = 0.3, text_threshold: float = 0.25) -> None:
        self.model, self.processor = model.eval(), processor
        self.box_threshold, self.text_threshold = box_threshold, text_threshold

    def __call__(self, image: np.ndarray, object_name: str) -> tuple[Box, float] | None:
        import torch

        h, w = image.shape[:2]
        inputs = self.processor(images=image, text=f"a {object_name.strip().lower()}.", return_tensors="pt")
        with torch.no_grad():
            out = self.model(**inputs)
        res = self.processor.post_process_grounded_object_detection(
            out, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(h, w)])[0]
        if len(res["scores"]) == 0:
            return None
        i = int(res["scores"].argmax())
        x0, y0, x1, y1 = (float(v) for v in res["boxes"][i])
        box = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))), min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1))))
        if box[2] <= box[0] or box[3] <= box[1]:
            return None
        return box, float(res["scores"][i])


def load_grounding_dino(name: str = GROUNDING_DINO, local_files_only: bool = True, **kwargs: Any) -> GroundingDinoDetector:
    """The detector from local weights (a folder or the Hugging Face cache). Raises
    hub.ModelNotAvailable naming the download command when they are not on disk."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from ..hub import ModelNotAvailable

    try:
        processor = AutoProcessor.from_pretrained(name, local_files_only=local_files_only)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(name, local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise ModelNotAvailable(f"Grounding DINO '{name}' is not available offline ({str(e).splitlines()[0][:120]}); "
                                f"fix: hf download {name}") from None
    return GroundingDinoDetector(model, processor, **kwargs)


Detector = Callable[[np.ndarray, str], "tuple[Box, float] | None"]


def choose_crop(image: np.ndarray, object_name: str | None, detector: Detector | None = None,
                margin: float = 0.1) -> CropChoice:
    """Grounding DINO's box when a detector is given and finds the object, else the
    foreground box, else the whole image. The box is grown by `margin`."""
    reason = "no detector"
    if detector is not None and object_name:
        found = detector(image, object_name)
        if found is not None:
            box, score = found
            return CropChoice(expand_box(box, image.shape, margin), "grounding-dino", f"score {score:.2f}")
        reason = f"grounding-dino found no '{object_name}'"
    fg = foreground_box(image)
    if fg is not None:
        return CropChoice(expand_box(fg, image.shape, margin), "foreground", reason)
    return CropChoice(full_box(image), "full", f"{reason}; no separable foreground")


def paste(crop_map: np.ndarray, box: Box, shape: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
    """A frame-sized float32 map: `crop_map` resized to the box and placed on it, `fill`
    elsewhere."""
    x0, y0, x1, y1 = box
    out = np.full(shape[:2], fill, dtype=np.float32)
    m = crop_map.astype(np.float32)
    if m.shape != (y1 - y0, x1 - x0):
        m = cv2.resize(m, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out[y0:y1, x0:x1] = m
    return out


def crop_score_paste(image: np.ndarray, score_fn: Callable[[np.ndarray], tuple[np.ndarray, float]],
                     choice: CropChoice) -> tuple[np.ndarray, float]:
    """Score the crop with `score_fn(crop) -> (map, score)` and return (frame-sized map, score)."""
    x0, y0, x1, y1 = choice.box
    crop_map, score = score_fn(np.ascontiguousarray(image[y0:y1, x0:x1]))
    return paste(crop_map, choice.box, image.shape), score
