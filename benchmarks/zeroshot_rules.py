"""Check a zero-shot setting end to end through the real scorers on the dev set of
zeroshot_dev.py (ELPV TRAIN normals, 150 clean + simulated anomalies; no test image):
image AUROC, the verdict accuracy of each mode's threshold rule, and for self mode the
per-image robust z of the map's peak (what the self threshold rule reads).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_rules.py mono --mode self \
        --set window=4 --set scales=[1.0]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score

from anomalygpt.images import batch_tensor
from anomalygpt.inspector import AnomalyGPT
from anomalygpt.zeroshot.modes import ZeroShotContext, get_mode
from anomalygpt.zeroshot.thresholds import MIN_SET, set_threshold

from zeroshot_dev import dev_set


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", nargs="?", default="mono")
    ap.add_argument("--mode", default="self")
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--save", default="", help="write scores and labels to this .npz")
    ap.add_argument("--set", action="append", default=[], help="zero_shot.KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    det = AnomalyGPT.from_pretrained("embedded", with_llm=False).detector
    cfg = det.cfg.zero_shot
    for item in args.set:
        k, v = item.split("=", 1)
        setattr(cfg, k, yaml.safe_load(v))
    images, y = dev_set(args.kind, args.max)
    mode = get_mode(args.mode)
    x = batch_tensor(images, mode.input_size(cfg, det.image_size))
    ctx = ZeroShotContext(det.encoder, cfg, det.image_size, det.smooth_sigma)
    t0 = time.perf_counter()
    res = mode.scorer(x, ctx)
    el = time.perf_counter() - t0
    s = res.scores.numpy()
    verdict = s >= res.thresholds
    print(f"{args.kind} {args.mode} {cfg}: n={len(y)} AUROC {roc_auc_score(y, s):.3f} verdict acc "
          f"{np.mean(verdict == y.astype(bool)):.3f} (normals called anomalous {verdict[y == 0].mean():.3f}, "
          f"anomalies missed {1 - verdict[y == 1].mean():.3f}) threshold {res.threshold_source}; {el:.1f}s", flush=True)
    if args.mode == "batch" or len(s) >= MIN_SET:  # the set rule, for comparison with the mode's own
        for rule in ("gmm", "lower", "mode"):
            thr, src = set_threshold(s, rule, cfg.set_k, cfg.mode_fraction)
            v = s >= thr
            print(f"  set rule {rule} ({src}): verdict acc {np.mean(v == y.astype(bool)):.3f} (normals called anomalous "
                  f"{v[y == 0].mean():.3f}, anomalies missed {1 - v[y == 1].mean():.3f})", flush=True)
    if args.save:
        np.savez(args.save, scores=s, labels=y, z=np.asarray(res.info.get("z", [])))
    if "z" in res.info:
        z = np.asarray(res.info["z"])
        print(f"  z AUROC {roc_auc_score(y, z):.3f}; z normals q10/50/90 {np.quantile(z[y == 0], [.1, .5, .9]).round(2)}"
              f" anomalies {np.quantile(z[y == 1], [.1, .5, .9]).round(2)}", flush=True)


if __name__ == "__main__":
    main()
