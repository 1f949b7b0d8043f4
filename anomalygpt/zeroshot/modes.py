"""The zero-shot modes behind one interface: a registry of mode name -> scorer.

A scorer takes the images of one call (N x 3 x S x S floats in 0..1, S = the largest input
size the mode asked for) and a `ZeroShotContext` (encoder, settings, the map size wanted)
and returns a `ZeroShotResult`: per-image maps at the detector's size, image scores, the
verdict threshold of each image and where it came from. The inspector turns that into the
same reports, regions, 3x3 cells and LLM answers as every other mode.

Adding a mode is one entry: `register(ZeroShotMode("language", scorer, needs_batch=False,
input_size=...))`. `needs_batch`: the scorer must see every image of the call at once
(batch mode compares the images with each other; self mode thresholds by the call's score
distribution), so `inspect_many` collects the stream first instead of scoring it in chunks.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..calibrate import threshold_rule
from ..config import ZeroShotConfig
from ..models.detector import gaussian_blur
from ..models.encoders import ImageEncoder
from ..models.memory_bank import nn_similarity
from .batch_mutual import mutual_scores
from .features import average_maps, encoder_patches, oriented_patch_sets
from .rescore import knn_rescore
from .self_similarity import self_similarity_scores
from .thresholds import MIN_SET, carry_share, most_normal, robust_z, set_threshold

# `batch` calls of this many images or more show progress bars of the mutual pass and the
# second pass on a terminal (2,000 images take about four minutes on 2 cores; docs/speed.md)
PROGRESS_MIN_IMAGES = 200


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
    min_images: int = 1            # batch mode compares images: it needs two
    # the scorer gets each image padded to a square (images.letterbox) instead of squashed,
    # and its maps are cropped back to the image before resizing (the language modes: CLIP)
    keep_aspect: bool = False


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


def image_scores(amap: torch.Tensor, sigma: float, chunk: int = 64) -> torch.Tensor:
    """N: the max of each blurred map. Blurred `chunk` maps at a time: the blur's convolution
    works on an unfolded copy of its input (~17 floats per pixel at sigma 4), which for the
    whole call of 2,000 images took the peak from 5.3 to 12.4 GB (docs/speed.md)."""
    if len(amap) <= chunk:
        return gaussian_blur(amap, sigma).flatten(1).amax(1)
    return torch.cat([gaussian_blur(amap[i:i + chunk], sigma).flatten(1).amax(1) for i in range(0, len(amap), chunk)])


# ---------------------------------------------------------------------------- self
def score_self(images: torch.Tensor, ctx: ZeroShotContext, chunk: int = 16) -> ZeroShotResult:
    """FADE's vision-guided zero-shot, multi-scale: maps at each size in `cfg.scales`, averaged.

    Each image is scored alone; only the verdict threshold looks at the call's other images
    (`self_call_threshold`)."""
    cfg, size = ctx.cfg, (ctx.map_size, ctx.map_size)
    amaps, globs, n_patches = [], [], 0
    for start in range(0, len(images), chunk):  # grid maps only are kept: memory stays flat
        maps, glob = [], None
        for s in scale_sizes(cfg.scales, ctx.map_size):
            feat_sets, copies, (h, w), g = oriented_patch_sets(ctx.encoder, images[start:start + chunk], s, cfg.pools,
                                                                cfg.self_orientations)
            glob = g if glob is None or s == ctx.map_size else glob  # the LLM saw embeddings at the detector size
            n_patches = h * w if not n_patches or s == ctx.map_size else n_patches
            # on a small grid (a small scale, a 64 px model) the window is capped so that every
            # patch keeps some patches to compare with
            for k, feats in enumerate(feat_sets):  # one map per aggregation degree, averaged
                maps.append(self_similarity_scores(feats, h, w, min(cfg.window, (max(h, w) - 2) // 2),
                                                   [c[k] for c in copies],
                                                   twin_count(cfg.self_twins, h * w, len(copies))))
        amaps.append(average_maps(maps, size))
        globs.append(glob)
    amap, glob = torch.cat(amaps), torch.cat(globs)
    scores = image_scores(amap, ctx.smooth_sigma)
    thr, info, source = self_call_threshold(amap, scores, ctx.smooth_sigma, n_patches, cfg)
    return ZeroShotResult(amap, scores, thr, source, glob, info | {"scales": list(cfg.scales), "window": cfg.window,
                                                                    "pools": list(cfg.pools),
                                                                    "orientations": cfg.self_orientations,
                                                                    "twins": cfg.self_twins})


def twin_count(share: float, n_patches: int, n_copies: int) -> int:
    """How many nearest twins score a patch in `self` mode: `share` of the patches it is
    compared with (its image's grid and the turned copies'), at least one. 0.02 gives 63 on
    the 28 x 28 grid of a 224 px Lite0 map with three copies, and scales with the grid for
    other encoders and sizes (a defect's share of the image, not its patch count, is what
    stays alike)."""
    return max(1, int(round(share * n_patches * (1 + n_copies))))


def self_call_threshold(amap: torch.Tensor, scores: torch.Tensor, sigma: float,
                        n_patches: int, cfg: ZeroShotConfig) -> tuple[np.ndarray, dict[str, Any], str]:
    """A call with MIN_SET (8) or more images (a folder, a lot) is thresholded by its own score
    distribution (`thresholds.set_threshold`, rule `cfg.set_rule`); a smaller call falls back
    on each image's own map (`self_thresholds`). On the dev set (ELPV train normals + simulated
    anomalies) the set rule's verdict accuracy was 0.920 and the per-image rule's 0.630: the
    peak's contrast within its own map separates normal from defective images poorly (AUROC
    0.65-0.72, against 0.91-0.97 for the raw peak), so it is the fallback, not the rule.
    The nearest twins (`cfg.self_twins`) made that fallback usable: on 150 clean + 150
    simulated mono dev cells its false alarms fell from 75% to 5% (balanced accuracy 0.517 ->
    0.727; poly 0.597 -> 0.667; benchmarks/zeroshot_self_single_dev.py).
    Set rules on the self dev scores with the defects' share varied 0/10/30/50/70%
    (benchmarks/zeroshot_threshold_dev.py, mean verdict accuracy mono / poly): posterior
    crossing of two Gaussians ("gmm", the default: best over these and the batch dev scores,
    see ZeroShotConfig.set_rule) 0.887 / 0.646 (a clean poly set: 0.325, two thirds flagged);
    lower population + 2 std ("lower") 0.910 / 0.648 (clean sets 0.967 / 0.700); median +
    1 MAD 0.722 / 0.776; densest 20% + 1 lower spread 0.707 / 0.764."""
    per_image, info, per_image_source = self_thresholds(amap, sigma, gumbel_k(n_patches))
    if len(scores) >= MIN_SET:
        thr, source = set_threshold(scores.numpy(), cfg.set_rule, cfg.set_k, cfg.mode_fraction)
        return np.full(len(scores), thr), info, source
    return per_image, info, per_image_source


def gumbel_k(n_patches: int) -> float:
    """How many robust std above its median the PEAK of a normal image's map is expected to
    lie, plus one std of that peak: the max of n independent standard normal values follows
    a Gumbel law with location a = sqrt(2 ln n) and scale 1/a, whose mean + 1 std is
    a + (0.5772 + 1.2825) / a (Euler's constant and pi/sqrt(6)). The project's one verdict
    rule (mean + 1 std of normal scores, calibrate.threshold_rule) applied to a normal
    image's peak, with nothing measured: 4.16 for the 28 x 28 grid of a 224 px Lite0 map."""
    a = float(np.sqrt(2.0 * np.log(max(n_patches, 2))))
    return a + 1.8597 / a


def self_thresholds(amap: torch.Tensor, sigma: float, k: float) -> tuple[np.ndarray, dict[str, Any], str]:
    """Per-image threshold from the image's own map: median + k x robust spread (1.4826 MAD)
    of its smoothed map's pixels. With no other image and no reference, the one thing known
    about normality is the image itself: most of a part is normal, so the bulk of its map
    says how far a normal patch lies from its twins; the peak must stand out of that bulk by
    more than the peak of a normal map would (`gumbel_k`). Returns (thresholds, per-image
    {"z": the peak's robust z}, source)."""
    smooth = gaussian_blur(amap, sigma).flatten(1).numpy()
    thr, zs = np.empty(len(smooth)), []
    for i, m in enumerate(smooth):
        med, spread = robust_z(m)
        thr[i] = med + k * spread
        zs.append((float(m.max()) - med) / spread)
    return thr, {"z": zs}, f"the image's own map: median + {k:.2f} robust std"


# ---------------------------------------------------------------------------- batch
def score_batch(images: torch.Tensor, ctx: ZeroShotContext) -> ZeroShotResult:
    """MuSc-style mutual scoring of the call's images, then (optionally) a second pass
    against the images the first pass found most normal; see batch_mutual.py."""
    cfg, size = ctx.cfg, (ctx.map_size, ctx.map_size)
    n = len(images)
    if n < 2:
        raise ValueError("zero-shot 'batch' needs at least 2 images of the same product (better 20 or more); "
                         "give a folder, or use zero_shot='self' for a single image")
    first, glob, feats_all = [], None, []
    for s in scale_sizes(cfg.batch_scales, ctx.map_size):
        feats, (h, w), g = encoder_patches(ctx.encoder, images, s)
        glob = g if glob is None or s == ctx.map_size else glob
        feats_all.append((feats, h, w))
        turned = encoder_patches(ctx.encoder, images, s, rot90=True)[0] if cfg.batch_rot90 else None
        with step_progress(n, f"batch zero-shot, {n} images at {s} px") as progress:
            first.append(mutual_scores(feats, cfg.n_compare, cfg.fraction, progress=progress,
                                       rotated=turned).view(n, 1, h, w))
    amap = average_maps(first, size)
    scores = image_scores(amap, ctx.smooth_sigma)
    info: dict[str, Any] = {"n_images": n, "n_compare": min(cfg.n_compare, n - 1), "fraction": cfg.fraction}
    # the first pass's split says how many images are defective; every later step only
    # re-ranks, and its threshold flags as many (thresholds.carry_share)
    first_scores = scores.numpy()
    first_thr, source = batch_threshold(first_scores, cfg)
    thr = first_thr
    if cfg.second_pass and n >= 5:
        # the most normal-scored images become references; a reference is scored against the
        # others only (config.ZeroShotConfig.second_pass gives the dev numbers that turned it on)
        refs = most_normal(first_scores, cfg.ref_fraction, maximum=cfg.max_refs)
        second = []
        for feats, h, w in feats_all:
            with step_progress(n, f"batch zero-shot, second pass against {len(refs)}", unit="img") as progress:
                second.append(reference_scores(feats, refs, progress=progress).view(n, 1, h, w))
        amap = average_maps(second, size)
        scores = image_scores(amap, ctx.smooth_sigma)
        thr = carry_share(first_scores, first_thr, scores.numpy())
        source = f"{source}; as many flagged, ranked by the second pass against the {len(refs)} most normal"
        info |= {"n_refs": len(refs)}
    if cfg.batch_self != "off" and n >= MIN_SET:
        own = score_self(images, ctx)
        agree = self_agreement(scores.numpy(), own.scores.numpy())
        info |= {"self_agreement": round(agree, 3)}
        if cfg.batch_self == "on" or agree >= cfg.batch_self_gate:
            amap = fuse_by_median(amap, scores, own.anomaly_map, own.scores)
            scores = image_scores(amap, ctx.smooth_sigma)
            thr = carry_share(first_scores, first_thr, scores.numpy())
            source += f"; each image's own twins added (self agrees {agree:.2f} with the batch's surest images)"
            info |= {"self_fused": True}
        else:
            source += f"; own twins not added (self agrees {agree:.2f} < {cfg.batch_self_gate:g} with the batch)"
            info |= {"self_fused": False}
    if cfg.rescore_k > 0:  # image level: blended with the k nearest images' scores (RsCIN)
        scores = torch.from_numpy(knn_rescore(scores.numpy(), glob, cfg.rescore_k)).to(scores.dtype)
        thr = carry_share(first_scores, first_thr, scores.numpy())  # re-scoring reorders; the count stays
        info |= {"rescore_k": cfg.rescore_k}
    return ZeroShotResult(amap, scores, np.full(n, thr), source, glob, info)


class step_progress:
    """Context manager giving a long step (`mutual_scores`, `reference_scores`) a progress
    callback(done, total): a tqdm bar on stderr for calls of PROGRESS_MIN_IMAGES or more,
    shown only on a terminal (tqdm's own check), so logs and scripts stay quiet; None (no
    bar) for smaller calls."""

    def __init__(self, n_images: int, desc: str, unit: str = "pair") -> None:
        self.bar = None
        if n_images >= PROGRESS_MIN_IMAGES:
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, unit=unit, disable=None, file=sys.stderr, leave=False)

    def __enter__(self) -> Callable[[int, int], None] | None:
        if self.bar is None:
            return None

        def update(done: int, total: int) -> None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def self_agreement(batch_scores: np.ndarray, self_scores: np.ndarray, share: float = 0.2) -> float:
    """How far `self` agrees with the batch pass where the batch pass is surest: the AUROC of
    the self scores between the batch's lowest `share` (taken as normal) and its highest
    `share` (taken as defective). No label: only the batch's own extremes.

    Why a gate at all: the query's own twins catch a defect that the batch hides (a crack meets
    look-alike cracks in other cracked cells, and the second pass's references may carry
    some), but on busy textures `self` calls whole-surface changes normal and rare-but-normal
    spots defective, and added to the batch map it costs there. On the dev sets the two cases
    lay far apart: ELPV cells (mixed and crack-only anomalies, full and faint) 0.99-1.00, the
    five dev textures 0.28-0.83 (benchmarks/zeroshot_fusion_gate_dev.py). On the textures
    benchmark two surfaces agreed 0.98 and still lost with `self` added, so the fusion is off
    by default (config.ZeroShotConfig.batch_self)."""
    b, o = np.asarray(batch_scores, np.float64).ravel(), np.asarray(self_scores, np.float64).ravel()
    if b.shape != o.shape:
        raise ValueError(f"batch and self scores must be of the same images, got {b.shape} and {o.shape}")
    m = max(2, int(round(share * len(b))))
    if 2 * m > len(b):
        raise ValueError(f"{len(b)} images are too few to compare the lowest and highest {m}")
    from sklearn.metrics import roc_auc_score  # only when the gate is asked; keeps the import light

    order = np.argsort(b, kind="stable")
    return float(roc_auc_score(np.r_[np.zeros(m), np.ones(m)], np.r_[o[order[:m]], o[order[-m:]]]))


def fuse_by_median(amap_a: torch.Tensor, scores_a: torch.Tensor, amap_b: torch.Tensor,
                   scores_b: torch.Tensor) -> torch.Tensor:
    """The sum of two maps, each divided by the median image score of its kind over the call:
    the set-level scale of each signal, learned from no label, so neither drowns the other."""
    return amap_a / scores_a.median().clamp_min(1e-6) + amap_b / scores_b.median().clamp_min(1e-6)


def batch_threshold(scores: np.ndarray, cfg: ZeroShotConfig) -> tuple[float, str]:
    """The set's own score distribution decides (`thresholds.set_threshold`, rule
    `cfg.set_rule`; "gmm" by default: a two-component mixture on the log scores split at the
    posterior crossing; on the batch mono dev scores with the defects' share varied it beat
    the lower component + 2 std, 0.898 against 0.804, which only wins on clean sets, 0.973
    against 0.847; see ZeroShotConfig.set_rule). Earlier, on the mono dev set, a
    set-level split beat the references' leave-one-out rule, which sat too low because the
    references are the most normal images by selection (0.884 against 0.811).
    Under MIN_SET images the set is one population: mean + 1 std."""
    if len(scores) < MIN_SET:
        return float(threshold_rule(np.asarray(scores, np.float64))[0]), \
            f"mean + 1 std of the {len(scores)} images (too few for a two-population split)"
    return set_threshold(scores, cfg.set_rule, cfg.set_k, cfg.mode_fraction)


def reference_scores(feats: torch.Tensor, refs: np.ndarray, chunk: int = 4096,
                     progress: Callable[[int, int], None] | None = None,
                     copies: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """N x P: 1 - max cosine of each patch to the patches of the reference images (and of
    their `copies`, see `reference_banks`); a reference is scored against the OTHER
    references only (leave-one-out). `progress`: optional callable(n_done_images, n_images)."""
    out = torch.empty(feats.shape[:2], dtype=feats.dtype)
    for i, bank in reference_banks(feats, refs, copies):
        out[i] = 1.0 - nn_similarity(feats[i], bank, chunk)
        if progress is not None and (i + 1) % 16 == 0:
            progress(i + 1, len(out))
    return out


def reference_banks(feats: torch.Tensor, refs: np.ndarray,
                    copies: Sequence[torch.Tensor] = ()) -> Iterator[tuple[int, torch.Tensor]]:
    """(i, bank) for each image i of the call: the patches of the reference images (and of
    their `copies`, e.g. the same images' features turned, each N x P x C) as one K x C bank,
    a reference's own patches left out of its bank."""
    n, p, c = feats.shape
    ref_list = [int(r) for r in refs]
    parts = [feats[ref_list], *(t[ref_list] for t in copies)]
    bank = torch.cat([b.reshape(-1, c) for b in parts])
    owners = torch.tensor(ref_list).repeat_interleave(p).repeat(len(parts))
    for i in range(n):
        yield i, (bank if i not in ref_list else bank[owners != i])


register(ZeroShotMode("self", score_self, needs_batch=True,  # scored alone, thresholded by the call's set
                      input_size=lambda cfg, s: max([s, *scale_sizes(cfg.scales, s)]),
                      description="each image alone: a patch against the image's own patches outside a window"))
register(ZeroShotMode("batch", score_batch, needs_batch=True,
                      input_size=lambda cfg, s: max([s, *scale_sizes(cfg.batch_scales, s)]),
                      description="unlabeled images of one product score each other (mutual scoring)",
                      min_images=2))


def _score_language(images: torch.Tensor, ctx: ZeroShotContext) -> ZeroShotResult:
    from .language_mode import score_language  # cv2 + the CLIP scorer, only when the mode is used

    return ZeroShotResult(**score_language(images, ctx))


def _score_language_self(images: torch.Tensor, ctx: ZeroShotContext) -> ZeroShotResult:
    from .language_mode import score_language

    return ZeroShotResult(**score_language(images, ctx, vision=score_self))


register(ZeroShotMode("language", _score_language, needs_batch=False, input_size=lambda cfg, s: max(s, 512),
                      keep_aspect=True,
                      description="CLIP: the image against LLM-written normal/abnormal descriptions of the object "
                                  "(needs open_clip weights and --object)"))
register(ZeroShotMode("language+self", _score_language_self, needs_batch=False,
                      input_size=lambda cfg, s: max([s, 512, *scale_sizes(cfg.scales, s)]), keep_aspect=True,
                      description="the language map fused with the self-similarity map (FADE's combination)"))
