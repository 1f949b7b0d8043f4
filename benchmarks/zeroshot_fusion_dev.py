"""Batch zero-shot fused with the query's own self-similarity, chosen WITHOUT test labels
(issue 18).

The two signals fail differently: mutual scoring misses a defect that many images of the
batch share (a crack finds cracks in other cells), self-similarity misses one that repeats
inside its own image and flags rare-but-normal parts of a busy surface. A batch call has
both at no extra encoder pass. Each map is divided by the median image score of its kind
over the call (set-level scale, no label), and the two are added.

Dev sets only (as benchmarks/zeroshot_twins_dev.py): ELPV TRAIN normals with data_sim
anomalies (mono / poly, benchmarks/zeroshot_dev.py) and the textures dev set (each texture
is its own batch). Prints image AUROC of batch, self, and the fused score.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_fusion_dev.py mono --max 500
"""
from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import spearmanr

from anomalygpt.zeroshot.batch_mutual import mutual_scores
from anomalygpt.zeroshot.features import average_maps, oriented_patch_sets
from anomalygpt.zeroshot.modes import image_scores
from anomalygpt.zeroshot.self_similarity import self_similarity_scores
from benchmarks.zeroshot_dev import add_aurocs, dev_batches, dev_encoder, print_aurocs


def maps_for(enc, x: torch.Tensor, twins: str, window: int, fractions: list[float]) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {"self": []}
    feats_all = []
    for i in range(0, len(x), 16):
        f, c, (h, w), _ = oriented_patch_sets(enc, x[i:i + 16], 224, [3], twins)
        out["self"].append(self_similarity_scores(f[0], h, w, window, [cc[0] for cc in c]))
        feats_all.append(f[0])
    feats = torch.cat(feats_all)
    res = {"self": average_maps([torch.cat(out["self"])], (224, 224))}
    for frac in fractions:
        res[f"batch{frac}"] = average_maps([mutual_scores(feats, 100, frac).view(-1, 1, h, w)], (224, 224))
    return res


def fused(a: torch.Tensor, b: torch.Tensor, how: str = "sum") -> torch.Tensor:
    sa, sb = image_scores(a, 4.0).median(), image_scores(b, 4.0).median()
    return a / sa + b / sb if how == "sum" else torch.maximum(a / sa, b / sb)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["mono", "poly", "textures"])
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--twins", default="none")
    ap.add_argument("--window", type=int, default=6)
    ap.add_argument("--fractions", default="0.3")
    args = ap.parse_args()
    fractions = [float(v) for v in args.fractions.split(",")]
    enc = dev_encoder()
    t0 = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {}
    for grp, kinds, x in dev_batches(args.set, args.max):
        m = maps_for(enc, x, args.twins, args.window, fractions)
        for frac in fractions:
            m[f"self+batch{frac}"] = fused(m["self"], m[f"batch{frac}"])
            m[f"max(self,batch{frac})"] = fused(m["self"], m[f"batch{frac}"], "max")
        for name, amap in m.items():
            add_aurocs(rows, name, image_scores(amap, 4.0).numpy(), kinds)
        rho = spearmanr(image_scores(m["self"], 4.0).numpy(), image_scores(m[f"batch{fractions[0]}"], 4.0).numpy())[0]
        print(f"{grp} done ({time.perf_counter() - t0:.0f}s); Spearman(self, batch) over the set {rho:.3f}", flush=True)
    print_aurocs(rows)

if __name__ == "__main__":
    main()
