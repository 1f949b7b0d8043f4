"""Rank zero-shot settings on REAL defects without touching the test split: the ELPV dev set
of `data_sim.datasets.elpv_dev_split` (the probability-1/3 cells the benchmark leaves out,
plus a fixed draw of TRAIN normals at the test split's anomaly share: mono 48 + 117, poly
59 + 178). The earlier dev sets (train normals + simulated anomalies, zeroshot_dev.py) sat at
0.96-0.97 AUROC and could not rank variants; these subtle real defects do not saturate.

Every variant runs through the modes' own scorers (`anomalygpt.zeroshot.modes`, the code
path of `anomalygpt eval --zero-shot MODE`) with `ZeroShotConfig` fields overridden.
Per variant: image AUROC, the verdict accuracy of each set-threshold rule on the whole dev
set (its anomaly share is the test split's) and averaged over defect shares 0/10/30/50/70%
(subsets as in zeroshot_threshold_dev.py), and the paired bootstrap of its AUROC minus the
baseline's (the current defaults): 2000 resamples of the images, normals and anomalies
drawn separately, 95% interval. The bootstrap holds each image's score fixed, which in
batch mode (the images score each other) understates the noise a little.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_dev13.py mono --mode self --out /tmp/zs13
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_dev13.py poly --mode batch --only base,frac0.1
    python benchmarks/zeroshot_dev13.py mono --mode self --out /tmp/zs13 --summary   # re-read saved scores
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_dev13.py mono --mode self --normals 390 --out /tmp/zs13
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalygpt.images import batch_tensor, load_image
from anomalygpt.inspector import AnomalyGPT
from anomalygpt.zeroshot.modes import ZeroShotContext, get_mode
from anomalygpt.zeroshot.thresholds import set_threshold
from data_sim.datasets import elpv_dev_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zeroshot_threshold_dev import RATES, subsets  # noqa: E402

# name -> ZeroShotConfig overrides; "base" is the shipped default of each mode
VARIANTS: dict[str, dict[str, dict]] = {
    "self": {
        "base": {},
        "window4": {"window": 4},
        "window8": {"window": 8},
        "pool1": {"pools": [1]},
        "pool5": {"pools": [5]},
        "pool1+3+5": {"pools": [1, 3, 5]},
        "scales224+288": {"scales": [1.0, 1.2857]},
        "scales192+256+320": {"scales": [0.8571, 1.1429, 1.4286]},
    },
    "batch": {
        "base": {},
        "frac0.1": {"fraction": 0.1},
        "frac0.5": {"fraction": 0.5},
        "m25": {"n_compare": 25},
        "m50": {"n_compare": 50},
        "m-all": {"n_compare": 10_000},
        "192px": {"batch_scales": [0.8571]},
        "second-pass": {"second_pass": True},
        "192px+frac0.1+second": {"batch_scales": [0.8571], "fraction": 0.1, "second_pass": True},
    },
}
RULES = {"gmm": ("gmm", 2.0), "lower2": ("lower", 2.0), "lower1.5": ("lower", 1.5), "mode": ("mode", 2.0)}


def rule_accuracy(s: np.ndarray, y: np.ndarray, rule: str, k: float, reps: int = 20) -> tuple[float, float]:
    """(verdict accuracy on the whole dev set, mean over the defect shares of RATES)."""
    full = float(np.mean((s >= set_threshold(s, rule, k)[0]) == (y == 1)))
    per_rate = []
    for rate in RATES:
        accs = [np.mean((s[i] >= set_threshold(s[i], rule, k)[0]) == (y[i] == 1)) for i in subsets(y, rate, reps)]
        per_rate.append(float(np.mean(accs)))
    return full, float(np.mean(per_rate))


def paired_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of AUROC(b) - AUROC(a) over stratified resamples of the same images."""
    rng = np.random.default_rng(seed)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    d = []
    for _ in range(n):
        i = np.r_[rng.choice(neg, len(neg)), rng.choice(pos, len(pos))]
        d.append(roc_auc_score(y[i], b[i]) - roc_auc_score(y[i], a[i]))
    lo, hi = np.quantile(d, [0.025, 0.975])
    return float(lo), float(hi)


def summary(saved: dict[str, dict], y: np.ndarray) -> None:
    base = np.asarray(saved["base"]["scores"]) if "base" in saved else None
    print(f"{'variant':<24}{'AUROC':>7}{'dAUROC 95% CI vs base':>26}{'own rule':>9}"
          + "".join(f"{r + ' dev/mean':>20}" for r in RULES))
    for name, v in saved.items():
        s = np.asarray(v["scores"])
        ci = "" if base is None or name == "base" else "[{:+.3f}, {:+.3f}]".format(*paired_bootstrap(y, base, s))
        accs = "".join(f"{a:>13.3f}/{m:.3f}" for a, m in (rule_accuracy(s, y, *RULES[r]) for r in RULES))
        print(f"{name:<24}{roc_auc_score(y, s):>7.3f}{ci:>26}{v['verdict_acc']:>9.3f}{accs}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("mono", "poly"))
    ap.add_argument("--mode", choices=("self", "batch"), default="self")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all of the mode)")
    ap.add_argument("--out", default="", help="folder: scores of each variant saved / re-used as JSON")
    ap.add_argument("--summary", action="store_true", help="only print the table from the saved scores")
    ap.add_argument("--normals", type=int, default=None,
                    help="dev normals (default: the test split's anomaly share); more normals narrow the AUROC "
                         "interval of self mode, whose image scores do not depend on the set")
    args = ap.parse_args()
    variants = VARIANTS[args.mode]
    names = [n for n in args.only.split(",") if n] or list(variants)
    unknown = set(names) - set(variants)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(variants)}")
    samples = elpv_dev_split(args.kind, args.normals)["test"]
    y = np.array([s.label for s in samples])
    tag = f"{args.mode}_{args.kind}" + (f"_n{args.normals}" if args.normals else "")
    store = Path(args.out) / f"{tag}.json" if args.out else None
    saved = json.loads(store.read_text()) if store and store.is_file() else {}
    if not args.summary:
        torch.set_num_threads(1)
        det = AnomalyGPT.from_pretrained("embedded", with_llm=False).detector
        images = [load_image(s.image_path) for s in samples]
        mode = get_mode(args.mode)
        print(f"dev set {args.kind}: {len(y)} images, {int(y.sum())} prob-1/3 cells ({y.mean():.1%})", flush=True)
        for name in names:
            cfg = type(det.cfg.zero_shot)(**{**vars(det.cfg.zero_shot), **variants[name]})
            x = batch_tensor(images, mode.input_size(cfg, det.image_size))
            t0 = time.perf_counter()
            res = mode.scorer(x, ZeroShotContext(det.encoder, cfg, det.image_size, det.smooth_sigma))
            s = res.scores.numpy().astype(float)
            acc = float(np.mean((s >= res.thresholds) == (y == 1)))
            saved[name] = {"overrides": variants[name], "scores": s.tolist(), "verdict_acc": acc,
                           "threshold_source": res.threshold_source, "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{args.kind} {args.mode} {name}: AUROC {roc_auc_score(y, s):.3f} verdict acc {acc:.3f} "
                  f"({res.threshold_source}; {saved[name]['seconds']}s)", flush=True)
            if store:
                store.parent.mkdir(parents=True, exist_ok=True)
                tmp = store.with_suffix(".tmp")
                tmp.write_text(json.dumps(saved))
                tmp.replace(store)
    summary({n: saved[n] for n in (["base"] if "base" in saved else []) + [n for n in saved if n != "base"]}, y)


if __name__ == "__main__":
    main()
