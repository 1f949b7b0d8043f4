"""False alarms, misses and image AUROC per defect type, read from an `anomalygpt eval` output.

    python benchmarks/eval_breakdown.py out/docs/k4

`anomalygpt eval` keeps every image's score and verdict in OUT/runs/<group>_<seed>.json;
its results.json holds the headline metrics only. The verdict accuracy alone does not say
*how* a threshold fails (too many false alarms or too many misses), and ELPV's two defect
grades (label probability 1.0 and 2/3, the latter mostly thin cracks) behave very
differently, so the docs report both from here. Nothing is re-run: this reads the rows.
Means are over the seeds of a group, as `anomalygpt eval` averages its metrics.
`oracle_threshold_accuracy` is the verdict accuracy of the best threshold picked with the
test labels: it only says how far any threshold rule could get at this ranking.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score


def run_breakdown(rows: list[dict[str, Any]]) -> dict[str, float]:
    """One run's rates: false alarms = normal images called anomalous (share of normals),
    misses = anomalous images called normal (share of anomalies), and the image AUROC of
    each defect type against all normals."""
    labels = np.array([r["label"] for r in rows], dtype=int)
    called = np.array([bool(r["anomalous"]) for r in rows])
    scores = np.array([r["score"] for r in rows], dtype=float)
    out: dict[str, float] = {}
    if (labels == 0).any():
        out["false_alarms"] = float(called[labels == 0].mean())
    if (labels == 1).any():
        out["misses"] = float((~called[labels == 1]).mean())
    if (labels == 0).any() and (labels == 1).any():
        # the accuracy of the best single threshold, chosen ON THE TEST LABELS: a diagnosis of
        # how far any threshold rule could go at this ranking, never a threshold to use
        order = np.sort(np.unique(scores))
        cuts = np.concatenate([order, [order[-1] + 1.0]])
        out["oracle_threshold_accuracy"] = float(max(((scores >= c) == (labels == 1)).mean() for c in cuts))
    answered = [r for r in rows if r.get("answer") is not None]
    if answered:  # a run with LLM answers: does the answer say what the verdict says?
        from anomalygpt.evaluation.metrics import answer_says_anomalous

        out["answer_agrees_with_verdict"] = float(np.mean(
            [answer_says_anomalous(r["answer"]) == bool(r["anomalous"]) for r in answered]))
    kinds = np.array([r.get("defect_type") or "" for r in rows])
    for kind in sorted(set(kinds[labels == 1])):
        keep = (labels == 0) | (kinds == kind)
        if (labels[keep] == 0).any():
            out[f"auroc[{kind}]"] = float(roc_auc_score(labels[keep], scores[keep]))
    return out


def breakdown(out_dir: Path) -> dict[str, dict[str, float]]:
    """Per group (ELPV type / category): the mean over its runs (seeds) of each rate."""
    run_files = sorted((out_dir / "runs").glob("*.json"))
    if not run_files:
        raise FileNotFoundError(f"no run files in {out_dir / 'runs'}; pass the --out folder of `anomalygpt eval`")
    per_group: dict[str, list[dict[str, float]]] = defaultdict(list)
    for f in run_files:
        run = json.loads(f.read_text())
        group = run.get("fingerprint", {}).get("group") or f.stem.rsplit("_", 1)[0]
        per_group[group].append(run_breakdown(run["rows"]))
    result: dict[str, dict[str, float]] = {}
    for group, runs in per_group.items():
        keys = sorted({k for r in runs for k in r})
        result[group] = {k: float(np.mean([r[k] for r in runs if k in r])) for k in keys} | {"runs": len(runs)}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="the --out folder of an `anomalygpt eval` run")
    args = p.parse_args(argv)
    try:
        result = breakdown(args.out_dir)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for group, vals in result.items():
        print(f"{group} ({int(vals.pop('runs'))} runs): " + ", ".join(f"{k} {v:.3f}" for k, v in vals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
