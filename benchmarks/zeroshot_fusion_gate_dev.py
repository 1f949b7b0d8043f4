"""A label-free switch for fusing `self` into `batch`, read off saved dev scores (issue 18).

`self` added to `batch` helps on solar cells (the query's own twins catch a crack that other
cracked cells hide) and hurts on textures, where `self` ranks whole-surface changes as
normal and flags rare-but-normal parts of a busy surface (docs/experiments.md, session 11).
The rank correlation of the two over a whole set did not tell the cases apart. Here the
question put to each batch is narrower: on the images the batch pass is SUREST about (its
lowest share as normal, its highest as defective), does `self` agree? The agreement is the
AUROC of the self scores between those two groups (modes.self_agreement, the shipped gate's
own code): no label, only the batch's own extremes. Fused (map level, each map over its median image score) where
the agreement reaches `gate`, batch alone elsewhere; and a soft image-level blend with
weight max(0, 2 x agreement - 1).

Input: the npz files of benchmarks/zeroshot_batch_recurring_dev.py --save (keys "p2 nn",
"self", "p2 nn + self", "kinds", "groups"; one group = one batch).

    PYTHONPATH=$PWD python benchmarks/zeroshot_fusion_gate_dev.py out/dev/rec_*.npz
"""
from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from anomalygpt.zeroshot.modes import self_agreement


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--gates", default="0.6,0.7,0.8,0.9")
    ap.add_argument("--shares", default="0.1,0.2,0.4", help="the batch's lowest and highest share compared "
                                                             "(0.2 as shipped)")
    args = ap.parse_args()
    gates = [float(v) for v in args.gates.split(",")]
    shares = [float(v) for v in args.shares.split(",")]
    for path in args.files:
        d = np.load(path, allow_pickle=False)
        for grp in sorted(set(d["groups"])):
            sel = d["groups"] == grp
            kinds = d["kinds"][sel]
            y = kinds != "good"
            b, s, fused = d["p2 nn"][sel], d["self"][sel], d["p2 nn + self"][sel]
            auc = {name: roc_auc_score(y, v) for name, v in (("batch", b), ("self", s), ("sum", fused))}
            line = f"{grp:22s} n {len(y):3d} batch {auc['batch']:.3f} self {auc['self']:.3f} sum {auc['sum']:.3f} |"
            for h in shares:
                a = self_agreement(b, s, h)
                w = max(0.0, 2 * a - 1)
                soft = roc_auc_score(y, b / np.median(b) + w * s / np.median(s))
                line += f" h{h}: agree {a:.2f} soft {soft:.3f} gated " + "/".join(
                    f"{auc['sum'] if a >= g else auc['batch']:.3f}" for g in gates) + " |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
