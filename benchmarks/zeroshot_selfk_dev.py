"""Zero-shot `self`: score a patch by its k nearest twins instead of the nearest one; chosen
WITHOUT test labels (issue 18).

Why: a crack is a long thin line. With the nearest twin only, a patch at one end of a crack
finds its twin at the other end, outside the excluded window, and scores as normal. But a
normal patch of a solar cell (a finger, a busbar, the grain) has hundreds of twins in the
image, a crack's patch only the few others of its own crack. The mean similarity of the k
nearest twins (MuSc's "a normal patch is similar to MANY patches", used within one image)
separates common from rare once k exceeds the length of a defect in patches.

Also printed, "k=auto" (not adopted): each image its own k, from how many twins its patches
have (below); it gave every dev image of any surface a k of 18-256, separating nothing.

Dev sets only (benchmarks/zeroshot_dev.load_dev): ELPV TRAIN normals with data_sim anomalies
(mono / poly, and `-faint` whose anomalies keep 25-50% of their contrast) and the textures
dev set. Window 6, 224 px, pool 3, rot90 copies as the shipped defaults.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_selfk_dev.py mono-faint --ks 1,4,16,64
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from anomalygpt.zeroshot.features import average_maps, oriented_patch_sets
from anomalygpt.zeroshot.modes import image_scores
from anomalygpt.zeroshot.self_similarity import window_mask
from benchmarks.zeroshot_dev import add_aurocs, dev_batches, dev_encoder, print_aurocs


def self_knn_scores(feats: torch.Tensor, copies: list[torch.Tensor], h: int, w: int, window: int,
                    ks: list[int]) -> dict[int, torch.Tensor]:
    """{k: B x 1 x h x w}: 1 - mean of the k highest similarities of each patch to the
    image's patches (and their turned copies) outside the window."""
    near = window_mask(h, w, window)
    sims = torch.cat([torch.einsum("bpc,bqc->bpq", feats, bank).masked_fill_(near, -2.0)
                      for bank in (feats, *copies)], -1)
    top = sims.topk(max(max(ks), AUTO_CAP), -1).values
    out = {k: (1.0 - top[..., :k].mean(-1)).view(-1, 1, h, w) for k in ks}
    # "auto" (k = 0 here): each image its own k, the twins a typical patch of it has: the
    # median over patches of how many patches are at least as similar to it as the image's
    # poorly matched patches (the AUTO_Q quantile over patches) are to their nearest twin
    s1 = top[..., 0].quantile(AUTO_Q, dim=1)
    k_img = (sims >= s1[:, None, None]).sum(-1).median(1).values.clamp(1, AUTO_CAP)
    AUTO_KS.extend(k_img.tolist())
    csum = top.cumsum(-1)
    idx = (k_img - 1).view(-1, 1, 1).expand(-1, top.shape[1], 1)
    out[0] = (1.0 - csum.gather(-1, idx).squeeze(-1) / k_img.view(-1, 1)).view(-1, 1, h, w)
    return out


AUTO_CAP = 256
AUTO_Q = 0.1
AUTO_KS: list[int] = []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["mono", "poly", "mono-faint", "poly-faint", "textures", "textures-small"])
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--window", type=int, default=6)
    ap.add_argument("--ks", default="1,4,16,64")
    ap.add_argument("--save", default="", help="folder: one SET_k{K}.npz (scores, labels) per k, for "
                    "benchmarks/zeroshot_threshold_dev.py (the verdict rule on these scores)")
    args = ap.parse_args()
    ks = [int(v) for v in args.ks.split(",")]
    enc = dev_encoder()
    t0 = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {}
    saved: dict[int, list[np.ndarray]] = {k: [] for k in [*ks, 0]}
    all_kinds: list[np.ndarray] = []
    for grp, kinds, x in dev_batches(args.set, args.max):
        maps: dict[int, list[torch.Tensor]] = {k: [] for k in [*ks, 0]}
        AUTO_KS.clear()
        for i in range(0, len(x), 16):
            feats, copies, (h, w), _ = oriented_patch_sets(enc, x[i:i + 16], 224, [3], "rot90")
            for k, m in self_knn_scores(feats[0], [c[0] for c in copies], h, w, args.window, ks).items():
                maps[k].append(m)
        print(f"{grp}: auto k per image, quartiles {np.percentile(AUTO_KS, [10, 25, 50, 75, 90]).round().tolist()}", flush=True)
        for k in [*ks, 0]:
            scores = image_scores(average_maps([torch.cat(maps[k])], (224, 224)), 4.0).numpy()
            add_aurocs(rows, f"k={k}" if k else "k=auto", scores, kinds)
            saved[k].append(scores)
        all_kinds.append(kinds)
        print(f"{grp} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    print_aurocs(rows)
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        labels = np.concatenate(all_kinds) != "good"
        for k in [*ks, 0]:
            np.savez(Path(args.save) / f"{args.set}_k{k}.npz", scores=np.concatenate(saved[k]), labels=labels)


if __name__ == "__main__":
    main()
