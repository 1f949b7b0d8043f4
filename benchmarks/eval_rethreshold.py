"""Verdict accuracy of a saved k-shot evaluation under the current threshold code, without
scoring the test images again: the run's references are drawn again (same seed, same
benchmark draw), the threshold is rebuilt from them, and each saved image score is compared
with it. Valid when only the threshold changed since the run (the saved scores are what the
current code gives), e.g. after the leave-one-out threshold started to include the
distribution term (commit 1e0a20c).

    PYTHONPATH=$PWD python benchmarks/eval_rethreshold.py OUT_DIR [--set memory.KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from anomalygpt.config import parse_override
from anomalygpt.evaluation.harness import dataset_groups, pick_references
from anomalygpt.inspector import AnomalyGPT
from data_sim.datasets import load_sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    res = json.loads((Path(args.out_dir) / "results.json").read_text())
    a = AnomalyGPT.from_pretrained(res["checkpoint"], with_llm=False)
    for item in args.overrides:
        key, value = parse_override(item)
        setattr(a.cfg.memory, key.split(".", 1)[1], value)
    groups = {g.name: g for g in dataset_groups(res["dataset"])}
    means = []
    for name in res["groups"]:
        accs = []
        for seed in res["seeds"]:
            run = json.loads((Path(args.out_dir) / "runs" / f"{name}_seed{seed}.json").read_text())
            refs = pick_references(groups[name].train_normals, res["shots"], seed)
            rs = a.build_references([load_sample(s)[0] for s in refs])
            thr, src = a.threshold_for(rs)
            y = np.array([r["label"] for r in run["rows"]], bool)
            s = np.array([r["score"] for r in run["rows"]])
            acc = float(((s >= thr) == y).mean())
            accs.append(acc)
            print(f"{name} seed {seed}: threshold {run['threshold']:.4f} -> {thr:.4f} ({src}); verdict accuracy "
                  f"{run['metrics']['verdict_accuracy']:.4f} -> {acc:.4f}", flush=True)
        print(f"{name}: mean verdict accuracy {np.mean(accs):.4f}")
        means.append(np.mean(accs))
    print(f"mean over groups: {np.mean(means):.4f}")


if __name__ == "__main__":
    main()
