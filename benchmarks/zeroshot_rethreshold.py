"""Verdict accuracy of a zero-shot set threshold rule applied to the per-image scores an
`anomalygpt eval --zero-shot MODE --out OUT` run saved (nothing is re-run; the scores of a
mode do not depend on the rule). For a rule fixed BEFORE reading the numbers (on the dev sets
of zeroshot_threshold_dev.py): a test run's scores are only read, never used to choose.

    PYTHONPATH=$PWD python benchmarks/zeroshot_rethreshold.py OUT [--rule lower --k 2.0]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from anomalygpt.config import ZeroShotConfig
from anomalygpt.zeroshot.thresholds import set_threshold


def main() -> None:
    d = ZeroShotConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rule", default=d.set_rule)
    ap.add_argument("--k", type=float, default=d.set_k)
    ap.add_argument("--fraction", type=float, default=d.mode_fraction)
    args = ap.parse_args()
    for path in sorted(Path(args.out, "runs").glob("*.json")):
        run = json.loads(path.read_text())
        s = np.array([r["score"] for r in run["rows"]])
        y = np.array([r["label"] for r in run["rows"]]) == 1
        thr, src = set_threshold(s, args.rule, args.k, args.fraction)
        v = s >= thr
        print(f"{path.stem}: n={len(s)} AUROC {roc_auc_score(y, s):.3f} | saved rule ({run['threshold_source']}): "
              f"verdict acc {np.mean(np.array([r['anomalous'] for r in run['rows']]) == y):.3f} | {args.rule} k={args.k:g} "
              f"({src}): verdict acc {np.mean(v == y):.3f}, normals flagged {v[~y].mean():.3f}, "
              f"anomalies missed {1 - v[y].mean():.3f}")


if __name__ == "__main__":
    main()
