"""Choose the detector's reference-side settings WITHOUT test labels (issue 19).

Dev sets (never an ELPV test image, never the textures benchmark's test split or kinds):
  elpv-mono / elpv-poly: ELPV TRAIN normals of one type, permuted with seed 1: 100 kept
      clean, 150 given simulated anomalies by data_sim (synthesize texture=True, mode mix,
      the training simulator), the rest is the pool references are drawn from.
  textures: the textures benchmark's generator run with dev seeds (1000 + i) on the LEFT
      half of each source image only (the test split comes from the right half): per
      texture 8 reference-pool images, 16 clean queries, 16 with data_sim anomalies and
      8 with each of three whole-surface changes that are neither the benchmark's kinds
      nor in the training simulation: "sharpen" (unsharp mask), "finer" (the surface
      shrunk to 0.5-0.65x: a finer grain, the benchmark's grain is coarser), "noise"
      (sensor noise sigma 9-15, photographs have 0.5-2.5).
For each orientation setting, shots and reference draw (seeds), prints image AUROC per
dev kind of: the fused map max (production score), the distribution score, and their
fusion map + w * log(dist) for a grid of w; and the verdict accuracy of the threshold
the assistant would use.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/detector_dev.py elpv-mono --shots 1,4
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import cv2
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalygpt.config import parse_override
from anomalygpt.images import batch_tensor, load_image
from anomalygpt.inspector import AnomalyGPT
from data_sim.datasets import elpv_split
from data_sim.nsa import synthesize

GLOBAL_DEV_KINDS = ("sharpen", "finer", "noise")
N_SMALL_ELPV = 60     # ELPV dev queries given a small defect (with_small)
N_SMALL_TEXTURE = 16  # per texture


def small_defect(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dev-only small defect, unlike the textures benchmark's speck (a round disc at a fixed
    grey level) and scratch (a thin curved arc): either an irregular blob (a random walk of
    3-8 one-pixel steps, stamped with 0.5-1.5 px dots) or a short straight line (4-9 px, 1-2 px
    wide), drawn in 224 px units and scaled to the image (2-5 px at the encoder's 224 px),
    soft-edged, brighter or darker than the surface by a random 35-110 grey levels."""
    h, w = img.shape[:2]
    s = min(h, w) / 224.0
    cx, cy = rng.uniform(14 * s, w - 14 * s), rng.uniform(14 * s, h - 14 * s)
    sub = 8  # drawn at 8x for sub-pixel positions, then averaged down
    canvas = np.zeros((h * sub, w * sub), np.float32)
    if rng.random() < 0.5:
        p = np.array([cx, cy])
        for _ in range(int(rng.integers(3, 9))):
            r = max(1, round(rng.uniform(0.5, 1.5) * s * sub))
            cv2.circle(canvas, tuple(np.rint(p * sub).astype(int).tolist()), r, 1.0, -1)
            p = p + rng.integers(-1, 2, 2) * s
    else:
        length, theta = rng.uniform(4, 9) * s, rng.uniform(0, np.pi)
        d = np.array([np.cos(theta), np.sin(theta)]) * length / 2
        a, b = np.rint((np.array([cx, cy]) - d) * sub).astype(int), np.rint((np.array([cx, cy]) + d) * sub).astype(int)
        cv2.line(canvas, tuple(a.tolist()), tuple(b.tolist()), 1.0, max(1, round(rng.uniform(1, 2) * s * sub)))
    m = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
    m = np.clip(cv2.GaussianBlur(m, (0, 0), 0.5 * s), 0, 1)[..., None]
    delta = rng.uniform(35, 110) * (1 if rng.random() < 0.5 else -1)
    return np.clip(np.rint(img.astype(np.float32) + delta * m), 0, 255).astype(np.uint8)


def elpv_dev(kind: str, with_small: bool = False) -> tuple[list[np.ndarray], list[str], list[np.ndarray]]:
    train = elpv_split(kind)["train"]
    order = np.random.default_rng(1).permutation(len(train))
    paths = [train[i].image_path for i in order]
    imgs, kinds = [], []
    for k, p in enumerate(paths[:250]):
        img = load_image(p)
        if k >= 100:
            syn = synthesize(img, np.random.default_rng([7, k]), sources=paths[100:250], texture=True, mode="mix")
            if not syn.label:
                continue
            img = syn.image
        imgs.append(img)
        kinds.append("good" if k < 100 else "sim")
    pool = [load_image(p) for p in paths[250:]]
    if with_small:  # small defects on the LAST train normals (outside the first draws of the pool)
        for k, p in enumerate(paths[-N_SMALL_ELPV:]):
            imgs.append(small_defect(load_image(p), np.random.default_rng([11, k])))
            kinds.append("small")
        pool = pool[:-N_SMALL_ELPV]
    return imgs, kinds, pool


def global_change(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    if kind == "sharpen":
        blur = cv2.GaussianBlur(x, (0, 0), rng.uniform(1.0, 1.5))
        x = x + rng.uniform(1.5, 2.5) * (x - blur)
    elif kind == "finer":
        f = rng.uniform(0.5, 0.65)
        h, w = x.shape[:2]
        small = cv2.resize(x, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        reps = (int(np.ceil(h / small.shape[0])) + 1, int(np.ceil(w / small.shape[1])) + 1, 1)
        tiled = np.concatenate([np.concatenate([small, small[:, ::-1]], 1), np.concatenate([small[::-1], small[::-1, ::-1]], 1)], 0)
        x = np.tile(tiled, (reps[0] // 2 + 1, reps[1] // 2 + 1, 1))[:h, :w]
    elif kind == "noise":
        x = x + rng.normal(0, rng.uniform(9, 15), x.shape[:2])[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def textures_dev(with_small: bool = False) -> tuple[list[np.ndarray], list[str], dict[str, list[np.ndarray]], list[str]]:
    from data_sim import textures_bench as tb

    imgs, kinds, pools, groups = [], [], {}, []
    n_base = 8 + 16 + 16 + 8 * len(GLOBAL_DEV_KINDS)
    for ti, name in enumerate(tb.TEXTURES):
        sets = tb.generate(name, seed=1000 + ti, n_train=n_base + (N_SMALL_TEXTURE if with_small else 0),
                           n_test_normal=0, n_per_kind=0, kinds=())
        normals = [it.image for it in sets["train"]]
        pools[name] = normals[:8]
        rng = np.random.default_rng([2000, ti])
        for img in normals[8:24]:
            imgs.append(img); kinds.append("good"); groups.append(name)
        for j, img in enumerate(normals[24:40]):
            syn = synthesize(img, np.random.default_rng([9, ti, j]), sources=normals[8:24], texture=True, mode="mix")
            if syn.label:
                imgs.append(syn.image); kinds.append("sim"); groups.append(name)
        for g, kind in enumerate(GLOBAL_DEV_KINDS):
            for img in normals[40 + 8 * g:48 + 8 * g]:
                imgs.append(global_change(img, kind, rng)); kinds.append(kind); groups.append(name)
        if with_small:  # extra normals drawn after the others: the sets above are unchanged
            for j, img in enumerate(normals[n_base:]):
                imgs.append(small_defect(img, np.random.default_rng([13, ti, j]))); kinds.append("small"); groups.append(name)
    return imgs, kinds, pools, groups


def auroc_by_kind(kinds: list[str], s: np.ndarray, groups: list[str]) -> dict[str, float]:
    """Per kind (its anomalies vs the normals), AUROC within each group (texture), then the
    mean over groups, as the benchmark reports it."""
    k, g = np.array(kinds), np.array(groups)
    out = {}
    for kind in sorted(set(kinds) - {"good"}) + ["all"]:
        vals = []
        for grp in sorted(set(groups)):
            sel = (g == grp) & ((k == "good") | (k == kind) if kind != "all" else True)
            vals.append(roc_auc_score(k[sel] != "good", s[sel]))
        out[kind] = float(np.mean(vals))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["elpv-mono", "elpv-poly", "textures"])
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--orientations", default="none,rot90,dihedral")
    ap.add_argument("--weights", default="0,0.25,0.5,1,2")
    ap.add_argument("--json", default="")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="memory.KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    a = AnomalyGPT.from_pretrained("embedded", with_llm=False)
    det = a.detector
    for item in args.overrides:
        key, value = parse_override(item)
        setattr(a.cfg.memory, key.split(".", 1)[1], value)
    t0 = time.perf_counter()
    if args.set == "textures":
        imgs, kinds, pools, groups = textures_dev()
    else:
        imgs, kinds, pool = elpv_dev(args.set.split("-")[1])
        pools, groups = {args.set: pool}, [args.set] * len(imgs)
    print(f"dev {args.set}: {len(imgs)} queries ({sum(k != 'good' for k in kinds)} anomalous) "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    x = batch_tensor(imgs, det.image_size)
    with torch.no_grad():
        feats = [det.encode(x[i:i + 32]) for i in range(0, len(x), 32)]
    maps_all = [torch.cat([f[0][l] for f in feats]) for l in range(len(feats[0][0]))]
    glob_all = torch.cat([f[1] for f in feats])
    size = (det.image_size, det.image_size)
    groups_arr = np.array(groups)
    weights = [float(w) for w in args.weights.split(",")]
    results = []
    for orient in args.orientations.split(","):
        det.cfg.memory.orientations = orient
        for shots in [int(s) for s in args.shots.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                t1 = time.perf_counter()
                fused_s = np.zeros(len(imgs)); dist_s = np.zeros(len(imgs))
                verdict = np.zeros(len(imgs), bool)
                verdict_ckpt = np.zeros(len(imgs), bool)
                thr_by_group = {}
                for gname, pool in pools.items():
                    idx = np.flatnonzero(groups_arr == gname)
                    pick = np.random.default_rng(seed).choice(len(pool), shots, replace=False)
                    refs = a.build_references([pool[i] for i in pick])
                    thr, _src = a.threshold_for(refs)
                    thr_by_group[gname] = thr
                    with torch.no_grad():
                        for i in range(0, len(idx), 32):
                            sl = torch.as_tensor(idx[i:i + 32])
                            m = [mm[sl] for mm in maps_all]
                            d = det.detect_features(m, glob_all[sl], size, refs.bank, refs.ref_scale)
                            fused_s[idx[i:i + 32]] = d.scores.numpy()
                            dist_s[idx[i:i + 32]] = refs.bank.distribution_score(m, det.cfg.memory.dist_shrink).numpy()
                    verdict[idx] = fused_s[idx] >= thr
                    verdict_ckpt[idx] = fused_s[idx] >= a.threshold_for(dataclasses.replace(refs, threshold=None))[0]
                y = np.array(kinds) != "good"
                row = {"orient": orient, "shots": shots, "seed": seed, "scores": fused_s.tolist(), "dist_scores": dist_s.tolist(),
                       "thresholds": thr_by_group, "map": auroc_by_kind(kinds, fused_s, groups),
                       "dist": auroc_by_kind(kinds, dist_s, groups), "verdict_acc": float((verdict == y).mean()),
                       "verdict_acc_checkpoint_threshold": float((verdict_ckpt == y).mean()),
                       "fused": {w: auroc_by_kind(kinds, fused_s + w * np.log(dist_s), groups) for w in weights}}
                results.append(row)
                print(f"{orient:9s} {shots}-shot seed {seed}: map " + " ".join(f"{k} {v:.3f}" for k, v in row["map"].items())
                      + f" | dist " + " ".join(f"{k} {v:.3f}" for k, v in row["dist"].items())
                      + f" | verdict {row['verdict_acc']:.3f} (checkpoint's threshold {row['verdict_acc_checkpoint_threshold']:.3f}) ({time.perf_counter() - t1:.0f}s)", flush=True)
    print("\nmean over seeds")
    for orient in args.orientations.split(","):
        for shots in [int(s) for s in args.shots.split(",")]:
            rows = [r for r in results if r["orient"] == orient and r["shots"] == shots]
            mk = lambda key: {k: np.mean([r[key][k] for r in rows]) for k in rows[0][key]}
            print(f"{orient:9s} {shots}-shot map   " + " ".join(f"{k} {v:.3f}" for k, v in mk("map").items())
                  + f"  verdict {np.mean([r['verdict_acc'] for r in rows]):.3f}"
                  + f" (checkpoint's threshold {np.mean([r['verdict_acc_checkpoint_threshold'] for r in rows]):.3f})")
            print(f"{orient:9s} {shots}-shot dist  " + " ".join(f"{k} {v:.3f}" for k, v in mk("dist").items()))
            for w in weights:
                v = {k: np.mean([r["fused"][w][k] for r in rows]) for k in rows[0]["fused"][w]}
                print(f"{orient:9s} {shots}-shot +{w:<5} " + " ".join(f"{k} {x:.3f}" for k, x in v.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"kinds": kinds, "groups": groups, "runs": results}, fh)


if __name__ == "__main__":
    main()
