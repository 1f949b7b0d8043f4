"""Memory soak: N inspections in one process, RSS growth after warm-up.

A long-running inspection service (the web chat, a line-side batch job) must not creep up in
memory. This loads the assistant once, builds a reference set once, then inspects N images
(seeded augmentations of the bundled samples, each a new array) with the detector, and with
the LLM's answer unless --no-answers; every --every inspections it records the process's
resident set size (psutil). Growth is measured from the end of the warm-up (allocator pools,
caches and lazily built kernels fill during the first inspections) to the end, and as the
slope of a line through the post-warm-up samples (MB per 1,000 inspections).

    python benchmarks/soak.py --n 2000 --no-answers
    python benchmarks/soak.py --n 300            # with answers (~1 s each on 2 cores)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="inspections after warm-up")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--every", type=int, default=25, help="RSS sample period (inspections)")
    ap.add_argument("--no-answers", action="store_true", help="detector only")
    ap.add_argument("--checkpoint", default="embedded")
    ap.add_argument("--limit-mb", type=float, default=50.0, help="pass/fail bound on the growth")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)

    import torch

    from anomalygpt.inspector import AnomalyGPT
    from benchmarks.broken_folder import augment
    from data_sim.imageio import load_image

    proc = psutil.Process()
    assets = REPO / "anomalygpt" / "assets"
    samples = [load_image(p) for p in sorted(assets.glob("*.png"))]
    refs_paths = sorted(assets.glob("elpv_normal_ref*.png"))
    t0 = time.perf_counter()
    assistant = AnomalyGPT.from_pretrained(args.checkpoint, with_llm=not args.no_answers)
    refs = assistant.build_references(refs_paths)
    load_s = time.perf_counter() - t0
    gc.collect()
    rss_load = proc.memory_info().rss / 2**20
    question = None if args.no_answers else "Is there any anomaly in the image?"
    rng = np.random.default_rng(0)
    rss: list[tuple[int, float]] = []
    n_anom = 0
    t0 = time.perf_counter()
    total = args.warmup + args.n
    for i in range(1, total + 1):
        rgb = augment(samples[i % len(samples)], rng)
        # every other inspection against the references, so both detector paths run
        report = assistant.inspect(rgb, refs if i % 2 else None, object_name="solar cell", question=question)
        n_anom += report.is_anomalous
        del report, rgb
        if i % args.every == 0 or i == args.warmup:
            gc.collect()
            rss.append((i, proc.memory_info().rss / 2**20))
        if i == args.warmup:
            t_warm = time.perf_counter()
    run_s = time.perf_counter() - t0
    after = [(i, m) for i, m in rss if i >= args.warmup]
    base, end = after[0][1], after[-1][1]
    xs, ys = np.array([i for i, _ in after], float), np.array([m for _, m in after])
    slope = float(np.polyfit(xs, ys, 1)[0] * 1000) if len(after) > 2 else 0.0
    result = {
        "inspections_after_warmup": args.n, "warmup": args.warmup, "answers": not args.no_answers,
        "checkpoint": args.checkpoint, "torch_threads": torch.get_num_threads(),
        "rss_after_load_mb": round(rss_load, 1),
        "rss_after_warmup_mb": round(base, 1), "rss_end_mb": round(end, 1),
        "rss_max_after_warmup_mb": round(float(ys.max()), 1),
        "growth_mb": round(end - base, 1), "slope_mb_per_1000": round(slope, 2),
        "limit_mb": args.limit_mb, "load_s": round(load_s, 1),
        "s_per_inspection": round((time.perf_counter() - t_warm) / max(1, args.n), 3),
        "total_s": round(run_s, 1), "anomalous_verdicts": n_anom,
        "rss_samples": [[i, round(m, 1)] for i, m in rss],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if end - base < args.limit_mb else 1


if __name__ == "__main__":
    raise SystemExit(main())
