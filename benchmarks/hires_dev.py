"""Choose memory.hires / hires_fusion / hires_weight WITHOUT test labels (issue 19, item 1).

Dev sets of benchmarks/detector_dev.py (never a test image, never the textures benchmark's
test split or its speck / scratch generators) plus a small-defect dev kind ("small":
detector_dev.small_defect, a 2-5 px irregular blob or short straight line of random
contrast): textures dev gets 16 per texture, elpv-mono / elpv-poly dev 60 each (on train
normals kept out of the reference pool).

For each reference draw (shots, seeds) and each hires mode, the queries' 224 px reference
map, fine map, decoder map and distribution score are computed once; every fusion
(mean with each weight, max) is then scored from them exactly as the assistant does:
combined reference map -> ref_scale from the leave-one-out maps of the references ->
fused with the decoder map -> smoothed max + distribution term. Prints image AUROC per dev
kind (mean over textures for the textures set) and the leave-one-out verdict accuracy.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/hires_dev.py textures --modes 2x
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/hires_dev.py elpv-mono --modes 2x,tiles
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_dev import auroc_by_kind, elpv_dev, textures_dev  # noqa: E402

from anomalygpt.calibrate import threshold_rule  # noqa: E402
from anomalygpt.images import batch_tensor, fine_tensor  # noqa: E402
from anomalygpt.inspector import AnomalyGPT, MIN_LOO_FOR_SCALE  # noqa: E402
from anomalygpt.models.hires import combine  # noqa: E402


def fusions(spec: str) -> list[tuple[str, float]]:
    """"mean:0.5,max" -> [("mean", 0.5), ("max", 0.0)]."""
    out = []
    for item in spec.split(","):
        name, _, w = item.partition(":")
        out.append((name, float(w or 0)))
    return out


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["elpv-mono", "elpv-poly", "textures"])
    ap.add_argument("--shots", default="4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--modes", default="2x", help="comma list of MODE[/LEVELS[/POOL]], e.g. 2x/finest/1 "
                    "(memory.hires / hires_levels / hires_pool)")
    ap.add_argument("--fusions", default="mean:0.25,mean:0.5,mean:0.75,mean:1,max")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    a = AnomalyGPT.from_pretrained("embedded", with_llm=False)
    det, mem = a.detector, a.cfg.memory
    t0 = time.perf_counter()
    if args.set == "textures":
        imgs, kinds, pools, groups = textures_dev(with_small=True)
    else:
        imgs, kinds, pool = elpv_dev(args.set.split("-")[1], with_small=True)
        pools, groups = {args.set: pool}, [args.set] * len(imgs)
    print(f"dev {args.set}: {len(imgs)} queries, kinds " + ", ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds)))
          + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    size = det.image_size
    x = batch_tensor(imgs, size)
    enc = [det.encode(x[i:i + 32]) for i in range(0, len(x), 32)]
    maps_all = [torch.cat([e[0][level] for e in enc]) for level in range(len(enc[0][0]))]
    out_size = (size, size)
    dec_all = torch.cat([det.decoder([m[i:i + 64] for m in maps_all], out_size)[0] for i in range(0, len(x), 64)])
    g_arr, y = np.array(groups), np.array(kinds) != "good"
    fus = fusions(args.fusions)
    # under MIN_LOO_FOR_SCALE references the inspector takes the checkpoint's fused threshold
    # (calibrated with the 224 px map only) and its ref_scale: the verdicts show whether that
    # still fits once the fine level joins the map
    few_thr = float(a.calibration.extra.get("fused_threshold", a.calibration.threshold))
    results = []
    for variant in args.modes.split(","):
        parts = variant.split("/")
        mode = mem.hires = parts[0]
        mem.hires_levels = parts[1] if len(parts) > 1 else "all"
        mem.hires_pool = int(parts[2]) if len(parts) > 2 else 3
        t1 = time.perf_counter()
        fine_in = [fine_tensor(im, mode, size) for im in imgs]
        feats = [det.encode_fine(fine_in[i:i + 16]) for i in range(0, len(imgs), 16)]
        print(f"{variant}: fine features of {len(imgs)} queries ({time.perf_counter() - t1:.0f}s)", flush=True)
        for shots in [int(s) for s in args.shots.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                t1 = time.perf_counter()
                base = torch.zeros(len(imgs), 1, *out_size); fine = torch.zeros_like(base)
                dist = torch.zeros(len(imgs))
                loo: dict[str, tuple] = {}
                for gname, pool in pools.items():
                    idx = np.flatnonzero(g_arr == gname)
                    pick = np.random.default_rng(seed).choice(len(pool), shots, replace=False)
                    rgb = [pool[i] for i in pick]
                    rx = batch_tensor(rgb, size)
                    rfine = [fine_tensor(im, mode, size) for im in rgb]
                    bank = det.build_bank(rx, fine=rfine)
                    for i in idx:
                        fi = feats[i // 16].subset(i % 16)
                        m = [mm[i:i + 1] for mm in maps_all]
                        base[i] = det.reference_map(m, bank, out_size)[0]
                        fine[i] = det.fine_map(fi, bank.fine, out_size)[0]
                        dist[i] = det.distribution(m, bank)[0] if mem.dist_weight > 0 else 1.0
                    # leave-one-out over the references (the threshold and ref_scale of the inspector)
                    rmaps, _ = det.encode(rx)
                    rfeats = det.encode_fine(rfine)
                    lb, lf, ld = [], [], []
                    for j in range(shots):
                        one, others = [mm[j:j + 1] for mm in rmaps], bank.without(j)
                        lb.append(det.reference_map(one, others, out_size))
                        lf.append(det.fine_map(rfeats.subset(j), others.fine, out_size))
                        ld.append(det.distribution(one, others))
                    loo[gname] = (idx, det.decoder(rmaps, out_size)[0], torch.cat(lb), torch.cat(lf),
                                  None if ld[0] is None else torch.cat(ld))
                row = {"mode": variant, "shots": shots, "seed": seed, "by_fusion": {}}
                for name, w in [("off", 0.0)] + fus:
                    scores = np.zeros(len(imgs)); verdict = np.zeros(len(imgs), bool)
                    for gname, (idx, ldec, lb, lf, ld) in loo.items():
                        comb = lb if name == "off" else combine(lb, lf, name, w)
                        rs = None
                        if shots >= MIN_LOO_FOR_SCALE:
                            rs = max(float(det.image_score(comb).std()), 1e-4)
                        thr = threshold_rule(det.total_score(det.fuse(ldec, comb, rs), ld).numpy().astype(np.float64))[0] \
                            if shots >= MIN_LOO_FOR_SCALE else few_thr
                        ii = torch.as_tensor(idx)
                        q = base[ii] if name == "off" else combine(base[ii], fine[ii], name, w)
                        d = dist[ii] if mem.dist_weight > 0 else None
                        s = det.total_score(det.fuse(dec_all[ii], q, rs), d).numpy()
                        scores[idx] = s
                        verdict[idx] = s >= thr
                    key = name if name in ("off", "max") else f"{name}:{w:g}"
                    row["by_fusion"][key] = {"auroc": auroc_by_kind(kinds, scores, groups),
                                             "verdict_acc": float((verdict == y).mean()), "scores": scores.tolist()}
                # diagnostics: each reference map alone (smoothed max), no decoder, no distribution term
                for key, m in (("ref224_only", base), ("fine_only", fine)):
                    row["by_fusion"][key] = {"auroc": auroc_by_kind(kinds, det.image_score(m).numpy(), groups),
                                             "verdict_acc": float("nan")}
                results.append(row)
                print(f"{variant} {shots}-shot seed {seed} ({time.perf_counter() - t1:.0f}s)", flush=True)
                for key, v in row["by_fusion"].items():
                    print(f"   {key:9s} " + " ".join(f"{k} {x:.3f}" for k, x in v["auroc"].items())
                          + f" | verdict {v['verdict_acc']:.3f}", flush=True)
    print("\nmean over seeds")
    for variant in args.modes.split(","):
        for shots in [int(s) for s in args.shots.split(",")]:
            rows = [r for r in results if r["mode"] == variant and r["shots"] == shots]
            for key in rows[0]["by_fusion"]:
                au = {k: np.mean([r["by_fusion"][key]["auroc"][k] for r in rows]) for k in rows[0]["by_fusion"][key]["auroc"]}
                va = np.mean([r["by_fusion"][key]["verdict_acc"] for r in rows])
                print(f"{variant:14s} {shots}-shot {key:9s} " + " ".join(f"{k} {x:.3f}" for k, x in au.items())
                      + f" | verdict {va:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"set": args.set, "kinds": kinds, "groups": groups, "runs": results}))


if __name__ == "__main__":
    main()
