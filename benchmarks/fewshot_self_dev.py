"""Few-shot + zero-shot `self`: does the query's own self-similarity add to the reference
map? Chosen WITHOUT test labels (issue 19).

FADE combines its vision-guided and reference-guided maps. Here the image score of the
shipped few-shot detector (decoder + reference map + distribution score, from
benchmarks/detector_dev.py --json) gets w x the query's zero-shot `self` score in units of
the references' own `self` scores (their mean): no label and no hand-set scale, only the
references the user gave. Prints dev image AUROC per weight, shots and set (mean over
seeds).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/detector_dev.py elpv-mono --orientations rot90 --weights 0 --json out/det_mono.json
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/fewshot_self_dev.py elpv-mono out/det_mono.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from anomalygpt.images import batch_tensor
from anomalygpt.inspector import AnomalyGPT
from anomalygpt.zeroshot.modes import ZeroShotContext, score_self
from benchmarks.detector_dev import auroc_by_kind, elpv_dev, textures_dev


def self_scores(ctx: ZeroShotContext, imgs: list[np.ndarray]) -> np.ndarray:
    out = []
    for i in range(0, len(imgs), 16):
        out.append(score_self(batch_tensor(imgs[i:i + 16], ctx.map_size), ctx).scores.numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["elpv-mono", "elpv-poly", "textures"])
    ap.add_argument("json")
    ap.add_argument("--weights", default="0,0.25,0.5,1,2,4")
    args = ap.parse_args()
    torch.set_num_threads(1)
    a = AnomalyGPT.from_pretrained("embedded", with_llm=False)
    ctx = ZeroShotContext(a.detector.encoder, a.cfg.zero_shot, a.detector.image_size, a.detector.smooth_sigma)
    if args.set == "textures":
        imgs, kinds, pools, groups = textures_dev()
    else:
        imgs, kinds, pool = elpv_dev(args.set.split("-")[1])
        pools, groups = {args.set: pool}, [args.set] * len(imgs)
    d = json.load(open(args.json))
    if d["kinds"] != list(kinds):
        raise SystemExit(f"{args.json} is not a detector_dev run of {args.set}")
    q_self = self_scores(ctx, imgs)
    pool_self = {g: self_scores(ctx, p) for g, p in pools.items()}
    g_arr = np.array(groups)
    print(f"self alone: " + " ".join(f"{k} {v:.3f}" for k, v in auroc_by_kind(kinds, q_self, groups).items()), flush=True)
    table: dict[tuple[int, float], list[float]] = {}
    for run in d["runs"]:
        base = np.array(run["scores"])
        rel = np.empty(len(imgs))
        for g, p in pools.items():
            pick = np.random.default_rng(run["seed"]).choice(len(p), run["shots"], replace=False)
            idx = np.flatnonzero(g_arr == g)
            rel[idx] = q_self[idx] / pool_self[g][pick].mean()
        for w in [float(v) for v in args.weights.split(",")]:
            table.setdefault((run["shots"], w), []).append(auroc_by_kind(kinds, base + w * rel, groups)["all"])
    for (shots, w), v in sorted(table.items()):
        print(f"{args.set} {shots}-shot w {w:<5} AUROC {np.mean(v):.3f} (seeds {' '.join(f'{x:.3f}' for x in v)})")


if __name__ == "__main__":
    main()
