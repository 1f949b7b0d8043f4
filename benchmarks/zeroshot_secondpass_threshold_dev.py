"""Verdicts of batch zero-shot with the second pass, chosen WITHOUT test labels (issue 18).

The second pass scores the images the first pass found most normal against each other only,
so they form a low population of their own and a two-population split of the second-pass
scores cuts between them and the rest, whatever the set holds. Rules compared, by verdict
accuracy on sets whose defect share is varied (a folder may be clean or a bad lot):
  first pass only     the two-population split of the first pass (second pass off);
  split second pass   the same split on the second-pass scores;
  carried share       as many images flagged as the first pass's split flags, chosen by the
                      second pass's ranking (`thresholds.carry_share`).

Dev sets only: ELPV TRAIN normals with data_sim anomalies (mono / poly, benchmarks/
zeroshot_dev.py; 150 clean) and the textures dev set (benchmarks/detector_dev.py; each
texture its own set, 16 clean). Each subset is a batch of its own (the passes rerun).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_secondpass_threshold_dev.py mono
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalygpt.config import ZeroShotConfig
from anomalygpt.zeroshot.batch_mutual import mutual_scores
from anomalygpt.zeroshot.features import average_maps, encoder_patches
from anomalygpt.zeroshot.modes import batch_threshold, image_scores, reference_scores
from anomalygpt.zeroshot.thresholds import carry_share, most_normal
from benchmarks.zeroshot_dev import dev_batches, dev_encoder

SHARES = (0.0, 0.3, 0.5, 0.7)


def passes(feats: torch.Tensor, h: int, w: int, cfg: ZeroShotConfig) -> tuple[np.ndarray, np.ndarray]:
    first = image_scores(average_maps([mutual_scores(feats, cfg.n_compare, cfg.fraction).view(-1, 1, h, w)],
                                      (224, 224)), 4.0).numpy()
    refs = most_normal(first, cfg.ref_fraction, maximum=cfg.max_refs)
    second = image_scores(average_maps([reference_scores(feats, refs).view(-1, 1, h, w)], (224, 224)), 4.0).numpy()
    return first, second


def subset(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    norm, anom = np.flatnonzero(~labels), np.flatnonzero(labels)
    n_anom = min(len(anom), int(round(share / (1 - share) * len(norm))))
    n_norm = len(norm) if n_anom < len(anom) or share == 0 else int(round(n_anom * (1 - share) / share))
    return np.r_[rng.choice(norm, min(n_norm, len(norm)), replace=False), rng.choice(anom, n_anom, replace=False)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["mono", "poly", "textures"])
    ap.add_argument("--max", type=int, default=500)
    args = ap.parse_args()
    cfg = ZeroShotConfig()
    enc = dev_encoder()
    t0 = time.perf_counter()
    acc: dict[str, dict[float, list[float]]] = {}
    for grp, kinds, x in dev_batches(args.set, args.max):
        labels = kinds != "good"
        feats, (h, w), _ = encoder_patches(enc, x, 224)
        for share in SHARES:
            idx = subset(labels, share, np.random.default_rng(0))
            y = labels[idx]
            first, second = passes(feats[torch.from_numpy(idx)], h, w, cfg)
            t1 = batch_threshold(first, cfg)[0]
            verdicts = {"first pass only": first >= t1,
                        "split second pass": second >= batch_threshold(second, cfg)[0],
                        "carried share": second >= carry_share(first, t1, second)}
            for name, v in verdicts.items():
                acc.setdefault(name, {}).setdefault(share, []).append(float((v == y).mean()))
            auc = f"AUROC first {roc_auc_score(y, first):.3f} second {roc_auc_score(y, second):.3f}" if 0 < y.mean() < 1 else ""
            print(f"{grp} share {share:.0%} ({len(idx)} images): " + " ".join(
                f"{k} {float((v == y).mean()):.3f}" for k, v in verdicts.items()) + f" {auc} ({time.perf_counter() - t0:.0f}s)",
                flush=True)
    print("verdict accuracy, mean over groups; per share " + " / ".join(f"{s:.0%}" for s in SHARES) + "; mean")
    for name, per in acc.items():
        means = [float(np.mean(per[s])) for s in SHARES]
        print(f"{name:18s} " + " / ".join(f"{m:.3f}" for m in means) + f"; {np.mean(means):.3f}", flush=True)


if __name__ == "__main__":
    main()
