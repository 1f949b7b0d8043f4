"""Calibration from held-out normal images: map scales for fusion, and verdict thresholds.

Why normals only: anomalies of a user's product are not known in advance, but normal parts
are. The threshold is set where normal parts stop (few false alarms); the scales put the
decoder map and the reference map in the same units (their spread over normal parts), so
the fused score needs no weight tuned on anomalies.
"""
from __future__ import annotations

import numpy as np
import torch

from .detector import Detector


def threshold_rule(scores: np.ndarray) -> tuple[float, dict[str, float]]:
    """max(mean + 3 std, 99th percentile) of normal scores: robust to a heavy tail
    (percentile) and to a tiny sample (mean + 3 std)."""
    mean, std = float(scores.mean()), float(scores.std())
    p99 = float(np.quantile(scores, 0.99))
    return max(mean + 3 * std, p99), {"mean": mean, "std": std, "p99": p99}


@torch.no_grad()
def calibrate(detector: Detector, normals: torch.Tensor, references: torch.Tensor,
              batch_size: int = 8) -> dict[str, float]:
    """Set `detector.dec_scale` / `ref_scale` and return thresholds and statistics.

    normals: held-out normal images (N x 3 x S x S, never trained on); references: a few
    other normal images (k x 3 x S x S) forming the bank of the fused setting.
    """
    bank = detector.build_bank(references)
    dec, ref = [], []
    for i in range(0, len(normals), batch_size):
        x = normals[i:i + batch_size]
        maps, glob = detector.encode(x)
        size = (x.shape[-2], x.shape[-1])
        dec_map, _ = detector.decoder(maps, size)
        dec.append(detector.image_score(dec_map))
        ref.append(detector.image_score(detector.reference_map(maps, bank, size)))
    dec_s, ref_s = torch.cat(dec).numpy(), torch.cat(ref).numpy()
    detector.dec_scale.fill_(max(float(dec_s.std()), 1e-4))
    detector.ref_scale.fill_(max(float(ref_s.std()), 1e-4))
    fused = []
    for i in range(0, len(normals), batch_size):
        fused.append(detector(normals[i:i + batch_size], bank).scores)
    thr, stats = threshold_rule(dec_s)
    fthr, fstats = threshold_rule(torch.cat(fused).numpy())
    return {"threshold": thr, "normal_mean": stats["mean"], "normal_std": stats["std"], "p99": stats["p99"],
            "fused_threshold": fthr, "fused_normal_mean": fstats["mean"], "fused_normal_std": fstats["std"],
            "dec_scale": float(detector.dec_scale), "ref_scale": float(detector.ref_scale),
            "n_normal": len(normals), "fused_references": len(references)}
