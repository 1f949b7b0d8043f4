"""``anomalygpt simulate``: make simulated anomalies from a folder of normal images.

The point is that a person can check the simulation before training on it: besides the
images, masks and Q&A it writes one ``preview.png`` (image | mask | red overlay rows).
All files are written atomically (temp file, then ``os.replace``), so an interrupted run
never leaves a half-written file that looks complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from tqdm.auto import tqdm

from data_sim.imageio import list_images, load_image, write_png, write_text
from data_sim.nsa import Mode, synthesize
from data_sim.qa import conversation

PathLike = Union[str, os.PathLike]
PREVIEW_ROWS = 8
TILE = 224  # px: preview tile height


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image with the mask tinted red and outlined, so thin cracks stay visible."""
    out = image.astype(np.float32).copy()
    red = np.array([255, 0, 0], np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * red
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 0, 0), 1)
    return out


def preview_grid(rows: list[tuple[np.ndarray, np.ndarray]], tile: int = TILE) -> np.ndarray:
    """Rows of image | mask | overlay, each tile ``tile`` px high (aspect kept), 4 px gaps."""
    lines = []
    for image, mask in rows:
        h, w = image.shape[:2]
        tw = max(1, round(w * tile / h))
        small = lambda a, interp: cv2.resize(a, (tw, tile), interpolation=interp)  # noqa: E731
        m = np.repeat((mask.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
        gap = np.full((tile, 4, 3), 255, np.uint8)
        lines.append(
            np.hstack([small(image, cv2.INTER_AREA), gap, small(m, cv2.INTER_NEAREST), gap, small(overlay(image, mask), cv2.INTER_AREA)])
        )
    width = max(line.shape[1] for line in lines)
    padded = [np.pad(line, ((0, 4), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    return np.vstack(padded)


def run_simulate(
    images_dir: PathLike,
    out_dir: PathLike,
    n: int = 16,
    seed: int = 0,
    texture: bool = False,
    mode: Mode = "mix",
    n_max: int = 3,
    progress: bool = True,
) -> Path:
    """Simulate ``n`` anomalous images from the normal images under ``images_dir``.

    Writes ``out_dir/images/*.png``, ``out_dir/masks/*.png``, ``out_dir/qa.jsonl`` (one
    JSON object per image: image, mask, source, label, kinds, boxes, conversation) and
    ``out_dir/preview.png``. Base images are taken in a seeded shuffled order (cycling if
    ``n`` exceeds their number); NSA patches come from the other images. Returns
    ``out_dir``.
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    paths = list_images(images_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(paths))
    records, shown = [], []
    for i in tqdm(range(n), desc="simulating", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, i])
        base = paths[int(order[i % len(paths)])]
        syn = synthesize(load_image(base), rng, sources=paths, mode=mode, texture=texture, n_max=n_max)
        name = f"{i:05d}_{base.stem}.png"
        write_png(out / "images" / name, syn.image)
        write_png(out / "masks" / name, syn.mask)
        conv = conversation(syn.parts if syn.parts else syn.mask, rng)
        records.append(
            {
                "image": f"images/{name}",
                "mask": f"masks/{name}",
                "source": str(base),
                "label": syn.label,
                "kinds": syn.kinds,
                "boxes": [list(b) for b in syn.boxes],
                "conversation": [{"question": q, "answer": a} for q, a in conv],
            }
        )
        if len(shown) < PREVIEW_ROWS:
            shown.append((syn.image, syn.mask))
    write_text(out / "qa.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_png(out / "preview.png", preview_grid(shown))
    return out
