"""Zero-shot `self` on ONE image (the web chat's zero-shot choice, `inspect --zero-shot self`
on a single file): its verdict comes from the image's own map (modes.self_thresholds:
median + gumbel_k robust std), not from a set. How do the nearest twins
(`zero_shot.self_twins`) change that rule's false alarms and hits? Dev sets only.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_self_single_dev.py mono --twins 0,0.02
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from anomalygpt.images import batch_tensor
from anomalygpt.inspector import AnomalyGPT
from anomalygpt.zeroshot.modes import ZeroShotContext, gumbel_k, score_self, self_thresholds
from benchmarks.zeroshot_dev import load_dev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["mono", "poly", "mono-faint", "poly-faint", "textures"])
    ap.add_argument("--twins", default="0,0.02")
    ap.add_argument("--max", type=int, default=300)
    ap.add_argument("--ks", default="", help="robust stds above the median instead of gumbel_k (e.g. 2.5,3,3.5)")
    args = ap.parse_args()
    a = AnomalyGPT.from_pretrained("embedded", with_llm=False)
    imgs, kinds, _ = load_dev(args.set, args.max)
    y = kinds != "good"
    for share in [float(v) for v in args.twins.split(",")]:
        cfg = dataclasses.replace(a.cfg.zero_shot, self_twins=share)
        ctx = ZeroShotContext(a.detector.encoder, cfg, a.detector.image_size, a.detector.smooth_sigma)
        grid = a.detector.image_size // min(a.detector.encoder.strides)  # the encoder's finest grid, as score_self
        ks = [float(v) for v in args.ks.split(",")] if args.ks else [gumbel_k(grid * grid)]
        flagged: dict[float, list[np.ndarray]] = {k: [] for k in ks}
        for i in range(0, len(imgs), 16):
            res = score_self(batch_tensor(imgs[i:i + 16], ctx.map_size), ctx)
            for k in ks:
                thr, _, _ = self_thresholds(res.anomaly_map, ctx.smooth_sigma, k)
                flagged[k].append(res.scores.numpy() >= thr)
        for k in ks:
            f = np.concatenate(flagged[k])
            print(f"{args.set} self_twins {share} k {k:.2f}: false alarms {f[~y].mean():.3f} of {int((~y).sum())}, "
                  f"hits {f[y].mean():.3f} of {int(y.sum())}, balanced accuracy {0.5 * ((~f[~y]).mean() + f[y].mean()):.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
