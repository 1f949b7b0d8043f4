"""Zero-shot `self` with orientation twins, chosen WITHOUT test labels (issue 18).

A normal patch's twin may be a turned or mirrored copy of another patch of the same part: the
four cut corners of a mono solar cell are one corner in four orientations, the two ends of a
busbar mirror each other. Plain self-similarity gives each corner no twin, so the corners of
every normal cell score as defects. Here the query's own patches are also compared with the
patches of its turned / mirrored copies (each copy's grid turned back onto the query's, so the
excluded window around a patch also excludes the patch's own copy).

Dev sets only: ELPV TRAIN normals with data_sim anomalies (benchmarks/zeroshot_dev.py, mono /
poly) and the textures dev set of benchmarks/detector_dev.py (left halves, dev seeds, data_sim
anomalies and three whole-surface changes). Prints image AUROC per orientation setting and
saves the scores (npz) for the fusion check.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_twins_dev.py mono --max 500
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_twins_dev.py textures
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalygpt.images import batch_tensor
from anomalygpt.zeroshot.features import average_maps, oriented_patch_sets
from anomalygpt.zeroshot.modes import image_scores
from anomalygpt.zeroshot.self_similarity import self_similarity_scores
from benchmarks.detector_dev import auroc_by_kind
from benchmarks.zeroshot_dev import dev_encoder, load_dev

SETTINGS = ("none", "rot180", "rot90", "dihedral")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["mono", "poly", "textures"])
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--window", type=int, default=6)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    enc = dev_encoder()
    imgs, kinds, groups = load_dev(args.set, args.max)
    labels = kinds != "good"
    x = batch_tensor(imgs, 224)
    print(f"dev {args.set}: {len(imgs)} images, {int(labels.sum())} anomalous", flush=True)
    saved = {"labels": labels, "kinds": kinds, "groups": groups}
    for setting in args.settings.split(","):
        t0 = time.perf_counter()
        maps = []
        for i in range(0, len(x), 16):
            feats, copies, (h, w), _ = oriented_patch_sets(enc, x[i:i + 16], 224, [3], setting)
            maps.append(self_similarity_scores(feats[0], h, w, args.window, [c[0] for c in copies]))
        amap = average_maps([torch.cat(maps)], (224, 224))
        s = image_scores(amap, 4.0).numpy()
        saved[setting] = s
        line = f"{setting:9s} AUROC {roc_auc_score(labels, s):.3f}"
        if args.set == "textures":
            line += "  " + " ".join(f"{k} {v:.3f}" for k, v in auroc_by_kind(list(kinds), s, list(groups)).items())
        print(line + f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.out:
        np.savez(args.out, **saved)


if __name__ == "__main__":
    main()
