"""Batch zero-shot when the batch's defects recur (most cells cracked alike), chosen WITHOUT
test labels (issue 18).

Mutual scoring assumes a defect is rare across the batch. On a line where most parts carry
the same kind of defect, a crack patch meets look-alike cracks in other cells: the mean of
its lowest `fraction` of per-image distances is low, and the second pass's "most normal"
references carry cracks too, whose nearest patch hides every similar crack. The dev sets
`mono-crack` / `poly-crack` (benchmarks/zeroshot_dev.load_dev: 150 clean ELPV TRAIN cells
and the rest cracked by data_sim's crack generator alone) make that case; the mixed-kind
dev sets and textures check that a remedy costs nothing where defects do not recur.

Variants, all on the same features (224 px, pool 3, 100 partners):
  first fF          the first pass with fraction F (the default F = 0.3)
  p2 nn             the default second pass: nearest patch over the 64 most normal images
  p2 twinsK         the mean similarity of the K nearest patches over those references'
                    patches (as `self` mode's twins): a crack shared by a few references
                    still meets normal patches among its K nearest
  p2 refF           per reference, the nearest-patch distance; the mean of the lowest F
  self              `self` mode as shipped (modes.score_self with the default settings)
  p2 nn + self      the two maps, each divided by its median image score over the batch, added
                    (modes.fuse_by_median, as `zero_shot.batch_self` does)
  p2 nn, joint refs the second pass against the images most normal by the sum of their
                    first-pass and self ranks (self picks the references, the score stays batch)

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_batch_recurring_dev.py mono-crack
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import rankdata

from anomalygpt.config import ZeroShotConfig
from anomalygpt.zeroshot.batch_mutual import lowest_fraction_mean, partner_distances
from anomalygpt.zeroshot.features import average_maps, encoder_patches
from anomalygpt.zeroshot.modes import (ZeroShotContext, fuse_by_median, image_scores, reference_banks,
                                       reference_scores, score_self)
from anomalygpt.zeroshot.thresholds import most_normal
from benchmarks.zeroshot_dev import DevScores, dev_batches, dev_encoder
from benchmarks.zeroshot_refpass_dev import ref_fraction_scores

SIZE = (224, 224)
SIGMA = 4.0


def twin_reference_scores(feats: torch.Tensor, refs: np.ndarray, k: int) -> torch.Tensor:
    """N x P: 1 - mean similarity of the k nearest patches among the references' patches
    (a reference leaves itself out)."""
    out = torch.empty(feats.shape[:2])
    for i, bank in reference_banks(feats, refs):
        out[i] = 1.0 - (feats[i] @ bank.t()).topk(k, 1).values.mean(1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set")
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--fractions", default="0.3,0.5,1.0")
    ap.add_argument("--twins", default="8,32")
    ap.add_argument("--ref-fractions", default="0.3")
    ap.add_argument("--no-self", action="store_true")
    ap.add_argument("--save", default="", help="npz of every variant's image scores, kinds and groups "
                                               "(for label-free fusion rules read off the saved scores)")
    args = ap.parse_args()
    enc = dev_encoder()
    t0 = time.perf_counter()
    record = DevScores()
    ctx = ZeroShotContext(enc, ZeroShotConfig(), SIZE[0], SIGMA)  # `self` as shipped
    for grp, kinds, x in dev_batches(args.set, args.max):
        feats, (h, w), _ = encoder_patches(enc, x, 224)
        stacks = partner_distances(feats)
        as_map = lambda m: average_maps([m.view(-1, 1, h, w)], SIZE)  # noqa: E731
        maps: dict[str, torch.Tensor] = {}
        for f in [float(v) for v in args.fractions.split(",")]:
            maps[f"first f{f}"] = as_map(lowest_fraction_mean(stacks, f))
        s1 = image_scores(maps["first f0.3"], SIGMA).numpy()
        refs = most_normal(s1, 0.2, maximum=64)
        maps["p2 nn"] = as_map(reference_scores(feats, refs))
        for k in [int(v) for v in args.twins.split(",") if v]:
            maps[f"p2 twins{k}"] = as_map(twin_reference_scores(feats, refs, k))
        for f in [float(v) for v in args.ref_fractions.split(",") if v]:
            maps[f"p2 ref{f}"] = as_map(ref_fraction_scores(feats, refs, f))
        if not args.no_self:
            maps["self"] = score_self(x, ctx).anomaly_map
            fused = lambda a: fuse_by_median(maps[a], image_scores(maps[a], SIGMA),  # noqa: E731
                                             maps["self"], image_scores(maps["self"], SIGMA))
            maps["p2 nn + self"], maps["first f0.3 + self"] = fused("p2 nn"), fused("first f0.3")
            # references picked by both signals (the sum of the two ranks): a cell whose own
            # twins show a crack is not trusted as normal, though the batch let it through
            s_self = image_scores(maps["self"], SIGMA).numpy()
            joint = most_normal(rankdata(s1) + rankdata(s_self), 0.2, maximum=64)
            maps["p2 nn, joint refs"] = as_map(reference_scores(feats, joint))
            print(f"{grp}: joint references {len(joint)}, {int((kinds[joint] != 'good').sum())} anomalous", flush=True)
        for name, amap in maps.items():
            scores = image_scores(amap, SIGMA).numpy()
            record.add(name, scores, kinds)
        record.end_batch(grp, kinds)
        print(f"{grp}: {len(x)} images, {len(refs)} references, {int((kinds[refs] != 'good').sum())} anomalous "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    record.finish(args.save)


if __name__ == "__main__":
    main()
