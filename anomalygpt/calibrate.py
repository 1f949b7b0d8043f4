"""Calibration from held-out normal images: map scales for fusion, and verdict thresholds.

Why normals only: anomalies of a user's product are not known in advance, but normal parts
are. The threshold is set where normal parts stop (few false alarms); the scales put the
decoder map and the reference map in the same units (their spread over normal parts), so
the fused score needs no weight tuned on anomalies.
"""
from __future__ import annotations

import numpy as np
import torch

from .models.detector import Detector


def threshold_rule(scores: np.ndarray) -> tuple[float, dict[str, float]]:
    """mean + 1 std of normal scores: the one verdict rule, for the checkpoint's held-out
    normals and for a user's leave-one-out references alike.

    Why not a far tail (99th percentile, max, mean + 3 std): real defects are often subtle
    and score inside the upper tail of normal parts. On ELPV the tail rules called nearly
    every cell normal without references and at 1 shot (verdict accuracy 0.25-0.29, 0.62-0.72
    with this rule); mean + 1 std buys far fewer misses with more false alarms (10-13% of
    normal cells there, more when few noisy leave-one-out scores set it; README, "Results").
    """
    mean, std = float(scores.mean()), float(scores.std())
    p99 = float(np.quantile(scores, 0.99))
    return mean + std, {"mean": mean, "std": std, "p99": p99}


@torch.no_grad()
def calibrate(detector: Detector, normals: torch.Tensor, references: torch.Tensor,
              batch_size: int = 8) -> dict[str, float]:
    """Set `detector.dec_scale` / `ref_scale` and return thresholds and statistics.

    normals: held-out normal images (N x 3 x S x S, never trained on); references: a few
    other normal images (k x 3 x S x S) forming the bank of the fused setting.
    """
    bank = detector.build_bank(references)
    size = (normals.shape[-2], normals.shape[-1])
    dec_maps, ref_maps = [], []
    for i in range(0, len(normals), batch_size):
        maps, _ = detector.encode(normals[i:i + batch_size])
        dec_maps.append(detector.decoder(maps, size)[0])
        ref_maps.append(detector.reference_map(maps, bank, size))
    dec_s = torch.cat([detector.image_score(m) for m in dec_maps]).numpy()
    ref_s = torch.cat([detector.image_score(m) for m in ref_maps]).numpy()
    detector.dec_scale.fill_(max(float(dec_s.std()), 1e-4))
    detector.ref_scale.fill_(max(float(ref_s.std()), 1e-4))
    # the fused scores need the scales just set: fuse the kept maps, no second encoder pass
    fused = [detector.image_score(detector.fuse(d, r)) for d, r in zip(dec_maps, ref_maps)]
    thr, stats = threshold_rule(dec_s)
    fthr, fstats = threshold_rule(torch.cat(fused).numpy())
    return {"threshold": thr, "normal_mean": stats["mean"], "normal_std": stats["std"], "p99": stats["p99"],
            "fused_threshold": fthr, "fused_normal_mean": fstats["mean"], "fused_normal_std": fstats["std"],
            "dec_scale": float(detector.dec_scale), "ref_scale": float(detector.ref_scale),
            "n_normal": len(normals), "fused_references": len(references)}
