"""The zero-shot modes behind one interface: a registry of mode name -> scorer.

A scorer takes the images of one call (N x 3 x S x S floats in 0..1, S = the largest input
size the mode asked for) and a `ZeroShotContext` (encoder, settings, the map size wanted)
and returns a `ZeroShotResult`: per-image maps at the detector's size, image scores, the
verdict threshold of each image and where it came from. The inspector turns that into the
same reports, regions, 3x3 cells and LLM answers as every other mode.

Adding a mode is one entry: `register(ZeroShotMode("language", scorer, needs_batch=False,
input_size=...))`. `needs_batch`: the scorer must see every image of the call at once
(batch mode compares the images with each other), so `inspect_many` collects the stream
first instead of scoring it in chunks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..calibrate import threshold_rule
from ..config import ZeroShotConfig
from ..models.detector import gaussian_blur
from ..models.encoders import ImageEncoder
from ..models.memory_bank import nn_similarity
from .batch_mutual import mutual_scores
from .features import average_maps, encoder_patches
from .self_similarity import self_similarity_scores
from .thresholds import most_normal, robust_z


@dataclass
class ZeroShotContext:
    encoder: ImageEncoder
    cfg: ZeroShotConfig
    map_size: int                  # maps come back at map_size x map_size (the detector's size)
    smooth_sigma: float            # px at map_size: the image score is the max of the blurred map
    object_name: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # what other modes need (text model, prompts)


@dataclass
class ZeroShotResult:
    anomaly_map: torch.Tensor      # N x 1 x map_size x map_size, unsmoothed
    scores: torch.Tensor           # N, max of the smoothed map
    thresholds: np.ndarray         # N, the verdict threshold of each image
    threshold_source: str
    global_emb: torch.Tensor       # N x D, for the LLM's image tokens
    info: dict[str, Any] = field(default_factory=dict)


Scorer = Callable[[torch.Tensor, ZeroShotContext], ZeroShotResult]


@dataclass
class ZeroShotMode:
    name: str
    scorer: Scorer
    needs_batch: bool
    input_size: Callable[[ZeroShotConfig, int], int]  # (settings, detector size) -> px the scorer wants
    description: str = ""


MODES: dict[str, ZeroShotMode] = {}


def register(mode: ZeroShotMode) -> None:
    MODES[mode.name] = mode


def get_mode(name: str) -> ZeroShotMode:
    if name not in MODES:
        raise ValueError(f"unknown zero-shot mode {name!r}; use one of: {', '.join(sorted(MODES))}")
    return MODES[name]


def scale_sizes(factors: list[float], base: int) -> list[int]:
    """Input sizes in px: factors of the encoder's size, rounded to a multiple of 16 (>= 32)."""
    return [max(32, int(round(f * base / 16)) * 16) for f in factors]


def image_scores(amap: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian_blur(amap, sigma).flatten(1).amax(1)


# ---------------------------------------------------------------------------- self
def score_self(images: torch.Tensor, ctx: ZeroShotContext) -> ZeroShotResult:
    """FADE's vision-guided zero-shot, multi-scale: maps at each size in `cfg.scales`, averaged."""
    cfg, size = ctx.cfg, (ctx.map_size, ctx.map_size)
    maps, glob = [], None
    for s in scale_sizes(cfg.scales, ctx.map_size):
        feats, (h, w), g = encoder_patches(ctx.encoder, images, s)
        glob = g if glob is None or s == ctx.map_size else glob  # the LLM saw embeddings at the detector size
        maps.append(torch.cat([self_similarity_scores(feats[i:i + 16], h, w, cfg.window)
                               for i in range(0, len(feats), 16)]))
    amap = average_maps(maps, size)
    scores = image_scores(amap, ctx.smooth_sigma)
    thr, info, source = self_thresholds(amap, ctx.smooth_sigma)
    return ZeroShotResult(amap, scores, thr, source, glob, info | {"scales": list(cfg.scales), "window": cfg.window})


def self_thresholds(amap: torch.Tensor, sigma: float, k: float | None = None) -> tuple[np.ndarray, dict[str, Any], str]:
    """Per-image threshold from the image's own map: median + k x robust spread (1.4826 MAD)
    of its smoothed map's pixels. With no other image and no reference, the one thing known
    about normality is the image itself: most of a part is normal, so the bulk of its map
    says how far a normal patch lies from its twins; the peak must stand out of that bulk.
    `k`: SELF_K unless given. Returns (thresholds, per-image {"z": peak's robust z}, source)."""
    k = SELF_K if k is None else k
    smooth = gaussian_blur(amap, sigma).flatten(1).numpy()
    thr, zs = np.empty(len(smooth)), []
    for i, m in enumerate(smooth):
        med, spread = robust_z(m)
        thr[i] = med + k * spread
        zs.append((float(m.max()) - med) / spread)
    return thr, {"z": zs}, f"the image's own map: median + {k:g} robust std"


SELF_K = 6.0  # placeholder until chosen on the dev set


# ---------------------------------------------------------------------------- batch
def score_batch(images: torch.Tensor, ctx: ZeroShotContext) -> ZeroShotResult:
    """MuSc-style mutual scoring of the call's images, then (optionally) a second pass
    against the images the first pass found most normal; see batch_mutual.py."""
    cfg, size = ctx.cfg, (ctx.map_size, ctx.map_size)
    n = len(images)
    if n < 2:
        raise ValueError("zero-shot 'batch' needs at least 2 images of the same product (better 20 or more); "
                         "give a folder, or use zero_shot='self' for a single image")
    first, second, glob, feats_all = [], [], None, []
    for s in scale_sizes(cfg.batch_scales, ctx.map_size):
        feats, (h, w), g = encoder_patches(ctx.encoder, images, s)
        glob = g if glob is None or s == ctx.map_size else glob
        feats_all.append((feats, h, w))
        first.append(mutual_scores(feats, cfg.n_compare, cfg.fraction).view(n, 1, h, w))
    amap = average_maps(first, size)
    scores = image_scores(amap, ctx.smooth_sigma)
    info: dict[str, Any] = {"n_images": n, "n_compare": min(cfg.n_compare, n - 1), "fraction": cfg.fraction}
    if not cfg.second_pass or n < 5:
        med, spread = robust_z(scores.numpy())
        thr = med + 2.0 * spread
        return ZeroShotResult(amap, scores, np.full(n, thr), f"batch median + 2 robust std over {n} images",
                              glob, info)
    refs = most_normal(scores.numpy(), cfg.ref_fraction, maximum=cfg.max_refs)
    for feats, h, w in feats_all:
        second.append(reference_scores(feats, refs).view(n, 1, h, w))
    amap = average_maps(second, size)
    scores = image_scores(amap, ctx.smooth_sigma)
    thr = threshold_rule(scores[torch.as_tensor(refs)].numpy().astype(np.float64))[0]
    info |= {"n_refs": len(refs)}
    return ZeroShotResult(amap, scores, np.full(n, thr),
                          f"leave-one-out over the {len(refs)} images of {n} the first pass scored most normal",
                          glob, info)


def reference_scores(feats: torch.Tensor, refs: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    """N x P: 1 - max cosine of each patch to the patches of the reference images; a
    reference is scored against the OTHER references only (leave-one-out)."""
    n, p, c = feats.shape
    ref_list = [int(r) for r in refs]
    bank = feats[ref_list].reshape(-1, c)
    owners = torch.tensor(ref_list).repeat_interleave(p)
    out = torch.empty(n, p, dtype=feats.dtype)
    for i in range(n):
        b = bank if i not in ref_list else bank[owners != i]
        out[i] = 1.0 - nn_similarity(feats[i], b, chunk)
    return out


register(ZeroShotMode("self", score_self, needs_batch=False,
                      input_size=lambda cfg, s: max([s, *scale_sizes(cfg.scales, s)]),
                      description="each image alone: a patch against the image's own patches outside a window"))
register(ZeroShotMode("batch", score_batch, needs_batch=True,
                      input_size=lambda cfg, s: max([s, *scale_sizes(cfg.batch_scales, s)]),
                      description="unlabeled images of one product score each other (mutual scoring)"))
