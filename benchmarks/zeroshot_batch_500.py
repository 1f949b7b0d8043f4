"""Batch zero-shot on 500 images, end to end (read files, encode, mutual scoring, second
pass, thresholds, regions; no LLM answers), with the time of each phase. Images: the first
500 ELPV files of both types in name order (labels unused: this measures cost, not accuracy),
and the peak resident memory of the process.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_batch_500.py [--n 500] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from anomalygpt.inspector import AnomalyGPT
from anomalygpt.zeroshot import batch_mutual, modes
from data_sim.datasets import elpv_data_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted((elpv_data_dir() / "images").glob("*.png"))[: args.n]
    assistant = AnomalyGPT.from_pretrained("embedded", with_llm=False)
    phases: dict[str, float] = {"encode": 0.0, "mutual": 0.0, "second_pass": 0.0}
    timed = {"encode": (modes, "encoder_patches"), "mutual": (modes, "mutual_scores"),
             "second_pass": (modes, "reference_scores")}
    for name, (mod, attr) in timed.items():  # wrap the phases to time them, same calls
        fn = getattr(mod, attr)

        def wrap(*a, _fn=fn, _name=name, **kw):
            t = time.perf_counter()
            out = _fn(*a, **kw)
            phases[_name] += time.perf_counter() - t
            return out
        setattr(mod, attr, wrap)
    t0 = time.perf_counter()
    reports = list(assistant.inspect_many([str(p) for p in paths], question=None, zero_shot="batch"))
    total = time.perf_counter() - t0
    cfg = assistant.cfg.zero_shot
    pairs = len(batch_mutual.pair_list(len(paths), cfg.n_compare))
    print(json.dumps({"n_images": len(reports), "total_s": round(total, 1), "s_per_image": round(total / len(reports), 3),
                      "phases_s": {k: round(v, 1) for k, v in phases.items()}, "pairs": pairs,
                      "all_pairs": len(paths) * (len(paths) - 1) // 2, "threads": args.threads,
                      "n_anomalous_verdicts": sum(r.is_anomalous for r in reports),
                      "threshold_source": reports[0].threshold_source,
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}))


if __name__ == "__main__":
    main()
