"""Batch zero-shot, second pass variants, chosen WITHOUT test labels (issue 18).

The first pass scores each image against random partners of the batch, most of which may be
defective (ELPV's test split is 71% defective), so a crack meets cracks in other cells. The
second pass compares every image with the images the first pass found most normal only.
How it aggregates over those references decides how much one defective reference hurts:
  nn      the nearest patch over ALL references (the existing `second_pass`): one cracked
          reference hides every similar crack;
  frac=f  per reference, the distance to its nearest patch; the mean of the lowest f of these
          (mutual scoring restricted to the references): robust to a few defective ones.

Dev sets only (as benchmarks/zeroshot_fusion_dev.py): ELPV TRAIN normals with data_sim
anomalies (mono / poly) and the textures dev set (each texture its own batch).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_refpass_dev.py mono
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from anomalygpt.zeroshot.features import average_maps
from anomalygpt.zeroshot.modes import image_scores, reference_scores
from anomalygpt.zeroshot.thresholds import most_normal
from benchmarks.zeroshot_dev import add_aurocs, dev_batches, dev_encoder, dev_first_pass, print_aurocs


def ref_fraction_scores(feats: torch.Tensor, refs: np.ndarray, fraction: float) -> torch.Tensor:
    """N x P: per reference (itself left out), the nearest-patch distance; mean of the lowest
    `fraction` of them."""
    n, p, _ = feats.shape
    out = torch.empty(n, p)
    for i in range(n):
        d = torch.stack([1.0 - (feats[i] @ feats[int(r)].t()).amax(1) for r in refs if int(r) != i])
        k = max(1, math.ceil(fraction * len(d)))
        out[i] = d.topk(k, dim=0, largest=False).values.mean(0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["mono", "poly", "textures"])
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--ref-fraction", type=float, default=0.2)
    ap.add_argument("--max-refs", type=int, default=64)
    ap.add_argument("--fractions", default="0.1,0.3,0.5")
    args = ap.parse_args()
    enc = dev_encoder()
    t0 = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {}
    for grp, k, x in dev_batches(args.set, args.max):
        feats, (h, w), first, s1 = dev_first_pass(enc, x)
        refs = most_normal(s1, args.ref_fraction, maximum=args.max_refs)
        maps = {"first pass": first,
                "second, nn": average_maps([reference_scores(feats, refs).view(-1, 1, h, w)], (224, 224))}
        for f in [float(v) for v in args.fractions.split(",")]:
            maps[f"second, frac={f}"] = average_maps([ref_fraction_scores(feats, refs, f).view(-1, 1, h, w)], (224, 224))
        for name, amap in maps.items():
            add_aurocs(rows, name, image_scores(amap, 4.0).numpy(), k)
        print(f"{grp}: {len(refs)} references, {int((k[refs] != 'good').sum())} of them anomalous "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    print_aurocs(rows)

if __name__ == "__main__":
    main()
