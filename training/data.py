"""Training data: simulated anomalies on normal images, made on the fly and seeded per index.

Why on the fly and per index: item `i` draws all its randomness from
`np.random.default_rng([seed, i])`, so any sample can be re-made exactly, two workers or
ranks never share a random stream, and resuming a run needs only the step counter (the
order of items is a pure function of seed and position too, see `StepBatchSampler`). The
simulation runs at the encoder's input size, so the mask labels exactly the pixels the
model sees (a 1-px crack drawn on a 1000-px photo would vanish when resized).

Each epoch of `n_samples` items is a fixed plan: `anomalous_fraction` of the items are
anomalies simulated on an image, and the normal items walk the same image order, so every
image that gets an anomaly also appears untouched (the decoder learns the *difference*, not
"this image is always anomalous"). This holds whenever anomalous_fraction <= 0.5.

A fixed share of the image list (`VAL_FRACTION`, chosen by a constant seed, independent of
the training seed) is held out for validation and calibration and never trained on.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from anomalygpt.config import SimConfig
from anomalygpt.report import Region, facts_text

VAL_FRACTION = 0.1        # share of the normal images held out for validation / calibration
SPLIT_SEED = 0            # fixed: the held-out images must not change with the training seed
# Scores and thresholds written into the training facts. Real ones depend on the checkpoint
# and the references (ELPV: thresholds ~2-7, scores ~1-15), so the scale is drawn log-uniformly
# and the chat learns to copy numbers, not to expect typical ones; a share are close calls.
FACTS_THRESHOLD_RANGE = (0.3, 20.0)
NARROW_PROB = 0.3         # share of items whose score is within the narrow margin of the threshold
# score / threshold ratios drawn per (label, narrow): inside or outside data_sim.qa.NARROW_MARGIN (0.15),
# never at its edge, so the margin word of every training item is unambiguous
SCORE_RATIOS = {(1, True): (1.01, 1.14), (1, False): (1.16, 3.5), (0, True): (0.86, 0.99), (0, False): (0.2, 0.84)}
OBJECT_NAME_PROB = 0.5    # share of items whose facts name the part (as `inspect(object_name=...)` does)
OBJECT_NAMES = ("solar cell", "bottle", "cable", "capsule", "carpet", "circuit board", "gear", "hazelnut",
                "leather", "metal nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood panel",
                "zipper", "casting", "weld seam", "fabric", "glass panel", "connector", "bearing", "label")
FOLLOWUP_PROB = 0.5       # share of items trained on a follow-up question instead of the main one
MIN_AREA = 16             # px: regions below this are specks (same as data_sim's default)
MAIN_QUESTION = "Is there any anomaly in the image?"


def split_images(paths: Sequence[Path], val_fraction: float = VAL_FRACTION) -> tuple[list[Path], list[Path]]:
    """(train, held-out) images: a fixed `val_fraction` of the list (at least one each side)."""
    paths = list(paths)
    if len(paths) < 2:
        raise ValueError(f"training needs at least 2 normal images (one is held out for validation), got {len(paths)}; "
                         "add images with --data (e.g. --data skimage or --data folder:PATH)")
    n_val = min(len(paths) - 1, max(1, round(val_fraction * len(paths))))
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(paths))
    val = sorted(int(i) for i in perm[:n_val])
    train = sorted(int(i) for i in perm[n_val:])
    return [paths[i] for i in train], [paths[i] for i in val]


def load_resized(path: Path | str, size: int) -> np.ndarray:
    """RGB uint8 size x size, resampled exactly as at inference (`anomalygpt.images`)."""
    from anomalygpt.images import load_image, resize_square

    return resize_square(load_image(path), size)


def facts_score(label: int, rng: np.random.Generator) -> tuple[float, float]:
    """(threshold, score) for a training item's facts: on the right side of the threshold
    for its label, a close call with probability NARROW_PROB (see `data_sim.qa.margin_word`)."""
    lo, hi = np.log(FACTS_THRESHOLD_RANGE)
    threshold = float(np.exp(rng.uniform(lo, hi)))
    narrow = rng.random() < NARROW_PROB
    return threshold, threshold * float(rng.uniform(*SCORE_RATIOS[int(label), bool(narrow)]))


@dataclass
class Item:
    """One training sample (tensors are CPU; strings go to the LLM)."""
    image: torch.Tensor            # 3 x S x S float 0..1
    mask: torch.Tensor             # 1 x S x S float 0/1
    label: int                     # 1 = anomalous
    question: str
    answer: str
    facts: str
    history: list[tuple[str, str]]  # earlier turns (for follow-up questions)
    cells: list[str]               # ground-truth cells of the regions (for validation)
    index: int


class SimulatedAnomalyDataset(Dataset):
    """`n` items over `images`; see the module docstring for the plan and the seeding."""

    def __init__(self, images: Sequence[Path], size: int, n: int, seed: int, sim: SimConfig,
                 sources: Sequence[Path] | None = None, stream: int | None = None,
                 followup_prob: float = FOLLOWUP_PROB, object_name: str | None = None,
                 canonical_prob: float = 0.0, intent_weights: dict[str, float] | None = None,
                 followups: int = 3) -> None:
        if not images:
            raise ValueError("no images to simulate anomalies on")
        if n < 1:
            raise ValueError(f"dataset size must be >= 1, got {n}")
        self.images = [Path(p) for p in images]
        self.sources = [str(p) for p in (sources if sources is not None else images)]
        self.size = size
        self.n = n
        self.seed = seed
        self.sim = sim
        self.stream = stream
        self.followup_prob = followup_prob
        self.object_name = object_name
        self.canonical_prob = canonical_prob
        self.intent_weights = dict(intent_weights or {})
        self.followups = followups
        self.n_anomalous = int(round(sim.anomalous_fraction * n))
        # image order: one seeded permutation; anomalous slot k and normal slot k share an image
        key = [seed, 2**31 - 1] if stream is None else [seed, stream, 2**31 - 1]
        self.order = np.random.default_rng(key).permutation(len(self.images))

    def __len__(self) -> int:
        return self.n

    def plan(self, index: int) -> tuple[Path, bool]:
        """(base image, should be anomalous) of an item; anomalous items come first."""
        anomalous = index < self.n_anomalous
        slot = index if anomalous else index - self.n_anomalous
        return self.images[int(self.order[slot % len(self.order)])], anomalous

    def rng(self, index: int) -> np.random.Generator:
        key = [self.seed, index] if self.stream is None else [self.seed, self.stream, index]
        return np.random.default_rng(key)

    def __getitem__(self, index: int) -> Item:
        from data_sim.nsa import synthesize
        from data_sim.qa import affected_cells, conversation, to_regions

        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = self.rng(index)
        path, anomalous = self.plan(index)
        base = load_resized(path, self.size)
        parts: list[np.ndarray] = []
        mask = np.zeros(base.shape[:2], bool)
        image = base
        if anomalous:
            syn = synthesize(base, rng, sources=self.sources, mode=self.sim.mode, n_max=self.sim.n_max,
                             texture=self.sim.texture, min_area=MIN_AREA)
            image, mask, parts = syn.image, syn.mask, list(syn.parts)
        gt = parts if parts else mask
        regions = to_regions(gt, MIN_AREA)
        label = int(bool(regions))  # a simulation that left only specks is a normal sample
        threshold, score = facts_score(label, rng)
        name = self.object_name
        if rng.random() < OBJECT_NAME_PROB and name is None:
            name = OBJECT_NAMES[int(rng.integers(len(OBJECT_NAMES)))]
        conv = conversation(gt, rng, min_area=MIN_AREA, n_followups=self.followups, score=score, threshold=threshold,
                            canonical_prob=self.canonical_prob, intent_weights=self.intent_weights or None)
        union = np.logical_or.reduce(parts) if parts else mask
        facts = facts_text(score, threshold, [Region.from_measured(r, score) for r in regions] if label else [],
                           base.shape[:2], affected_cells(union, regions, min_pixels=MIN_AREA) if label else None,
                           name)
        if len(conv) > 1 and rng.random() < self.followup_prob:
            # a chat goes on for several turns: the question is any follow-up, after the main
            # turn and the follow-ups before it (in a random order), as in the chat UI
            turns = [conv[0]] + [conv[1 + int(i)] for i in rng.permutation(len(conv) - 1)]
            p = 1 + int(rng.integers(len(turns) - 1))
            (q, a), history = turns[p], turns[:p]
        else:
            (q, a), history = conv[0], []
        return Item(
            image=torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
            mask=torch.from_numpy(mask.astype(np.float32))[None],
            label=label, question=q, answer=a, facts=facts, history=history,
            cells=sorted({r["cell"] for r in regions}), index=index)


def collate(items: list[Item]) -> dict[str, Any]:
    """Stack tensors, keep strings and histories as lists (the LLM takes them per sample)."""
    return {
        "images": torch.stack([it.image for it in items]),
        "masks": torch.stack([it.mask for it in items]),
        "labels": torch.tensor([it.label for it in items]),
        "questions": [it.question for it in items],
        "answers": [it.answer for it in items],
        "facts": [it.facts for it in items],
        "histories": [it.history for it in items],
        "cells": [it.cells for it in items],
        "indices": [it.index for it in items],
    }


class StepBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for optimizer steps `start_step`, `start_step+1`, ...

    The item stream is a concatenation of epochs, each a permutation seeded by
    (seed, epoch). Optimizer step s consumes global positions [s*G, (s+1)*G) with
    G = batch_size * grad_accum * world_size; micro-batch m of rank r takes the slice
    starting at s*G + (m*world_size + r)*batch_size. So the data position is a pure
    function of the step: resuming at step k needs nothing but k, and the union over ranks
    is exactly what one process with the same global batch would see.
    """

    def __init__(self, n: int, batch_size: int, grad_accum: int, world_size: int, rank: int,
                 seed: int, start_step: int, end_step: int) -> None:
        self.n, self.b, self.accum = n, batch_size, grad_accum
        self.world, self.rank, self.seed = world_size, rank, seed
        self.start, self.end = start_step, end_step
        self._perm_epoch = -1
        self._perm = np.arange(n)

    def _index(self, pos: int) -> int:
        epoch, off = divmod(pos, self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[off])

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        g = self.b * self.accum * self.world
        for step in range(self.start, self.end):
            for m in range(self.accum):
                first = step * g + (m * self.world + self.rank) * self.b
                yield [self._index(p) for p in range(first, first + self.b)]
