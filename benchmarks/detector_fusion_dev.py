"""Pick the distribution-score fusion (memory.dist_weight, memory.dist_floor) from the dev
runs of benchmarks/detector_dev.py (--json files): image score = map max + w * max(0,
log(dist / floor)). Prints, per (w, floor), the dev image AUROC of each file (mean over its
shots and seeds) and their mean; no test label is read.

    PYTHONPATH=$PWD python benchmarks/detector_fusion_dev.py /tmp/det/dev2_*.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import roc_auc_score


def auroc(kinds: np.ndarray, groups: np.ndarray, s: np.ndarray) -> float:
    return float(np.mean([roc_auc_score(kinds[groups == g] != "good", s[groups == g]) for g in np.unique(groups)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--weights", default="0,0.5,1,2,3,4,6")
    ap.add_argument("--floors", default="1,1.5,2,3,4,6")
    args = ap.parse_args()
    data = [json.load(open(f)) for f in args.files]
    for f, d in zip(args.files, data):
        good = np.array(d["kinds"]) == "good"
        qs = [np.quantile(np.array(r["dist_scores"])[good], [0.5, 0.9, 0.99]) for r in d["runs"]]
        print(f"{f}: normal dist median/p90/p99 over runs: " + " ".join(
            f"{r['shots']}s{r['seed']}:{q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f}" for r, q in zip(d["runs"], qs)))
    best = []
    for w in [float(v) for v in args.weights.split(",")]:
        for fl in [float(v) for v in args.floors.split(",")]:
            per = []
            for d in data:
                k, g = np.array(d["kinds"]), np.array(d["groups"])
                per.append(np.mean([auroc(k, g, np.array(r["scores"]) + w * np.maximum(
                    0, np.log(np.maximum(np.array(r["dist_scores"]), 1e-6) / fl))) for r in d["runs"]]))
            best.append((float(np.mean(per)), w, fl, per))
            print(f"w {w:<4} floor {fl:<4} " + " ".join(f"{p:.4f}" for p in per) + f"  mean {np.mean(per):.4f}")
    best.sort(reverse=True)
    print("best:", " | ".join(f"w {w} floor {fl}: {m:.4f}" for m, w, fl, _ in best[:5]))


if __name__ == "__main__":
    main()
