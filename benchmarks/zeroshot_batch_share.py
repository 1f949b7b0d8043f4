"""Batch zero-shot on ELPV test cells at the defect shares of a production line (a
measurement, not a choice: no setting is picked here).

The benchmark's test split is 71% (mono) / 75% (poly) defective, the opposite of what
mutual scoring assumes (a defect is rare, so its patches find no twins in most other
images). A line's unlabeled folder is mostly good parts. This scores batches made of the
150 test normals and a random draw of the test's anomalous cells at a given defect share
(5%, 10%, 25%), several draws each, with the shipped settings, the same encoder and the
same image score as `anomalygpt eval --dataset elpv --shots 0 --zero-shot batch`; "all"
is the benchmark's own split (one batch, which must reproduce that eval's AUROC).
Reports image AUROC and verdict accuracy, mean and range over the draws.

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 python benchmarks/zeroshot_batch_share.py mono --shares 0.05,0.1,0.25,all --draws 5
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalygpt.images import batch_tensor
from anomalygpt.inspector import AnomalyGPT
from anomalygpt.zeroshot.modes import ZeroShotContext, score_batch
from data_sim.datasets import elpv_split
from data_sim.imageio import load_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["mono", "poly"])
    ap.add_argument("--shares", default="0.05,0.1,0.25,all")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="", help="write the per-draw results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    assistant = AnomalyGPT.from_pretrained("embedded", with_llm=False)
    det, cfg = assistant.detector, assistant.cfg
    size = cfg.encoder.image_size
    test = elpv_split(args.kind)["test"]
    labels = np.array([s.label for s in test])
    x = batch_tensor([load_image(s.image_path) for s in test], size)
    normals, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    ctx = ZeroShotContext(det.encoder, cfg.zero_shot, size, det.smooth_sigma)
    out: dict[str, list[dict[str, float]]] = {}
    for share in args.shares.split(","):
        if share == "all":
            picks = [np.arange(len(test))]
        else:
            k = max(1, round(float(share) * len(normals) / (1 - float(share))))
            picks = [np.sort(np.concatenate([normals, np.random.default_rng(d).choice(anomalous, k, replace=False)]))
                     for d in range(args.draws)]
        for sel in picks:
            t = time.perf_counter()
            res = score_batch(x[torch.from_numpy(sel)], ctx)
            y, s = labels[sel], res.scores.numpy()
            flagged = s >= res.thresholds  # InspectionReport.is_anomalous
            out.setdefault(share, []).append({
                "n": len(sel), "n_defective": int(y.sum()), "auroc": float(roc_auc_score(y, s)),
                "verdict_accuracy": float((flagged == (y == 1)).mean()), "n_flagged": int(flagged.sum()),
                "seconds": round(time.perf_counter() - t, 1)})
        r = out[share]
        au, acc = [d["auroc"] for d in r], [d["verdict_accuracy"] for d in r]
        print(f"{args.kind} share {share}: {r[0]['n']} images, {r[0]['n_defective']} defective, {len(r)} batch(es): "
              f"AUROC {np.mean(au):.3f} ({min(au):.3f}-{max(au):.3f}), verdict accuracy {np.mean(acc):.3f} "
              f"({min(acc):.3f}-{max(acc):.3f}), flagged {np.mean([d['n_flagged'] for d in r]):.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
