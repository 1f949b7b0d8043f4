"""Second round of zero-shot variants on the dev sets of zeroshot_dev.py (ELPV TRAIN normals,
150 clean + data_sim simulated anomalies; never a test image), all from features encoded once:

self : aggregation degrees (local pool r = 1, 3, 5, and their average, as MuSc), one level
       at a time vs the concatenated levels;
batch: the same aggregation degrees; orientation-invariant matching (each compared image
       also as its 90-degree-rotated copy); image-level re-scoring with the k nearest images
       in global-feature space (MuSc's RsCIN idea); a second pass against the most-normal images.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_dev_variants.py mono --max 500 --m 50
Prints AUROC and seconds of each variant.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalygpt.images import batch_tensor
from anomalygpt.inspector import AnomalyGPT
from anomalygpt.models.memory_bank import patch_features
from anomalygpt.zeroshot.batch_mutual import mutual_scores
from anomalygpt.zeroshot.features import average_maps, resize_batch
from anomalygpt.zeroshot.modes import reference_scores
from anomalygpt.zeroshot.rescore import knn_rescore
from anomalygpt.zeroshot.thresholds import most_normal
from anomalygpt.zeroshot.self_similarity import self_similarity_scores

from zeroshot_dev import dev_set, image_scores


def auroc(y: np.ndarray, amap: torch.Tensor) -> float:
    return roc_auc_score(y, image_scores(average_maps([amap], (224, 224))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", nargs="?", default="mono")
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--m", type=int, default=50, help="partners per image in batch mode")
    ap.add_argument("--skip-self", action="store_true")
    ap.add_argument("--skip-pools", action="store_true", help="batch: pool 3 only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    enc = AnomalyGPT.from_pretrained("embedded", with_llm=False).detector.encoder
    images, y = dev_set(args.kind, args.max)
    print(f"dev set {args.kind}: {len(y)} images, {int(y.sum())} with simulated anomalies", flush=True)
    x = batch_tensor(images, 224)
    raw, raw90, glob = [], [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), 16):
            b = resize_batch(x[i:i + 16], 224)
            maps, g = enc(b)
            raw.append([m.float() for m in maps])
            glob.append(g.float())
            maps90, _ = enc(torch.rot90(b, 1, (2, 3)))
            raw90.append([m.float() for m in maps90])
    print(f"encode x2 orientations: {time.perf_counter() - t0:.1f}s", flush=True)
    levels = [torch.cat([r[k] for r in raw]) for k in range(len(raw[0]))]
    levels90 = [torch.cat([r[k] for r in raw90]) for k in range(len(raw90[0]))]
    glob = torch.nn.functional.normalize(torch.cat(glob), dim=-1)
    h, w = levels[0].shape[2:]

    def feats(pool: int, lv=None, rot=False):
        src = levels90 if rot else levels
        return patch_features(src if lv is None else [src[lv]], pool)

    if not args.skip_self:
        maps = {}
        for pool in (1, 3, 5):
            f = feats(pool)
            maps[pool] = torch.cat([self_similarity_scores(f[i:i + 32], h, w, 6) for i in range(0, len(f), 32)])
            print(f"self pool {pool}: {auroc(y, maps[pool]):.3f}", flush=True)
        print(f"self pools 1+3+5: {auroc(y, (maps[1] + maps[3] + maps[5]) / 3):.3f}", flush=True)
        print(f"self pools 3+5: {auroc(y, (maps[3] + maps[5]) / 2):.3f}", flush=True)
        for lv in range(len(levels)):
            f = feats(3, lv)
            hl, wl = levels[lv].shape[2:]
            wnd = 6 * hl // h  # the same excluded area in px on a coarser grid
            m = torch.cat([self_similarity_scores(f[i:i + 32], hl, wl, wnd) for i in range(0, len(f), 32)])
            print(f"self level {lv} pool 3: {auroc(y, m):.3f}", flush=True)

    bmaps = {}
    for pool in ((3,) if args.skip_pools else (1, 3, 5)):
        t0 = time.perf_counter()
        bmaps[pool] = mutual_scores(feats(pool), args.m, 0.3).view(-1, 1, h, w)
        print(f"batch pool {pool} M {args.m}: {auroc(y, bmaps[pool]):.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    if not args.skip_pools:
        print(f"batch pools 1+3+5: {auroc(y, (bmaps[1] + bmaps[3] + bmaps[5]) / 3):.3f}", flush=True)
        print(f"batch pools 3+5: {auroc(y, (bmaps[3] + bmaps[5]) / 2):.3f}", flush=True)
    t0 = time.perf_counter()
    rot = mutual_scores(feats(3), args.m, 0.3, rotated=feats(3, rot=True)).view(-1, 1, h, w)
    print(f"batch pool 3 rot90-invariant: {auroc(y, rot):.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    for frac in (0.1, 0.5):
        m = mutual_scores(feats(3), args.m, frac).view(-1, 1, h, w)
        print(f"batch pool 3 fraction {frac}: {auroc(y, m):.3f}", flush=True)
    base = image_scores(average_maps([bmaps[3]], (224, 224)))
    refs = most_normal(base, 0.2, maximum=64)
    second = reference_scores(feats(3), refs).view(-1, 1, h, w)
    print(f"batch pool 3 second pass ({len(refs)} refs): {auroc(y, second):.3f}", flush=True)
    rs = image_scores(average_maps([rot], (224, 224)))
    for k in (3, 5, 10, 20):
        print(f"  rescore k={k}: base {roc_auc_score(y, knn_rescore(base, glob, k)):.3f} "
              f"rot {roc_auc_score(y, knn_rescore(rs, glob, k)):.3f}", flush=True)
    pf = torch.nn.functional.normalize(feats(3).mean(1), dim=-1)
    for k in (5, 10):
        print(f"  rescore patch-mean k={k}: base {roc_auc_score(y, knn_rescore(base, pf, k)):.3f} "
              f"rot {roc_auc_score(y, knn_rescore(rs, pf, k)):.3f}", flush=True)


if __name__ == "__main__":
    main()
