"""Choose the set-level verdict rule of the zero-shot modes on dev scores, with the share of
defects varied (0, 10, 30, 50, 70%): a folder from the line may be clean, or a bad lot.

Input: .npz files written by `zeroshot_rules.py --save` (dev sets of ELPV TRAIN normals +
data_sim simulated anomalies; never a test image). For each anomaly share, 30 seeded subsets
of up to 150 normals with the matching number of anomalies are drawn and every rule is
scored by verdict accuracy; a rule's figure is the mean over shares. Note: the scores are
those of the whole dev set; in batch mode a subset's scores would shift a little with its
composition (the images score each other).

    PYTHONPATH=$PWD python benchmarks/zeroshot_threshold_dev.py /tmp/zs/self_mono.npz /tmp/zs/self_poly.npz
"""
from __future__ import annotations

import argparse

import numpy as np

from anomalygpt.zeroshot.thresholds import gmm_lower_threshold, gmm_threshold, left_tail_threshold, robust_z

RATES = (0.0, 0.1, 0.3, 0.5, 0.7)


def subsets(y: np.ndarray, rate: float, reps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    norm, anom = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    n_norm = len(norm)
    n_anom = int(round(rate / (1 - rate) * n_norm)) if rate < 1 else len(anom)
    if n_anom > len(anom):  # not enough anomalies: fewer normals instead
        n_anom, n_norm = len(anom), int(round(len(anom) * (1 - rate) / rate))
    for _ in range(reps):
        yield np.r_[rng.choice(norm, n_norm, replace=False), rng.choice(anom, n_anom, replace=False)]


def rules(ks: list[float]):
    out = {"gmm (current)": lambda s: gmm_threshold(s)[0]}
    for k in ks:
        out[f"median+{k}MAD(log)"] = lambda s, k=k: float(np.exp(sum(np.array(robust_z(np.log(s))) * [1, k])))
        out[f"gmm-lower+{k}"] = lambda s, k=k: gmm_lower_threshold(s, k)[0]
        for q in (0.1, 0.2, 0.3):
            out[f"mode{q}+{k}left(log)"] = lambda s, k=k, q=q: left_tail_threshold(s, k, q)[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("npz", nargs="+")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--ks", default="1,1.5,2,2.5,3,3.5,4,5")
    args = ap.parse_args()
    ks = [float(v) for v in args.ks.split(",")]
    table: dict[str, list[float]] = {}
    for path in args.npz:
        d = np.load(path)
        s, y = d["scores"], d["labels"].astype(int)
        for name, rule in rules(ks).items():
            accs = []
            for rate in RATES:
                a = [np.mean((s[i] >= rule(s[i])) == (y[i] == 1)) for i in subsets(y, rate, args.reps)]
                accs.append(float(np.mean(a)))
            table.setdefault(name, []).append(float(np.mean(accs)))
            print(f"{path} {name}: " + " ".join(f"{r:.0%}:{a:.3f}" for r, a in zip(RATES, accs))
                  + f" mean {np.mean(accs):.3f}", flush=True)
    print("mean over files:")
    for name, v in sorted(table.items(), key=lambda kv: -np.mean(kv[1])):
        print(f"  {name}: {np.mean(v):.3f}  ({' '.join(f'{x:.3f}' for x in v)})")


if __name__ == "__main__":
    main()
