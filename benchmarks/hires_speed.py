"""Detector images/s at batch 16 with 4 references, the 224 px path beside the fine reference
level (memory.hires, anomalygpt/models/hires.py): "2x" (448 px) and "tiles" (a 300 px image,
ELPV's size, in 4 overlapping 224 px tiles). The same measurement as `anomalygpt bench`'s
rows detector_ips_batch16_refs4[_hires_2x|_hires_tiles] (evaluation/bench.py), alone.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/hires_speed.py [--repeats 3]

Before the fine level existed (2026-11-29, one thread, load ~2-5, rot90 bank + distribution
score), the cost of a whole second pass at the larger size was measured with all levels:
224 px 17.8 images/s, 448 px 1.7, 5 tiles of 224 px 2.8. The fine level matches only the
finest level's 40 channels (memory.hires_levels "finest"), about 4x less matching work.
"""
from __future__ import annotations

import argparse
import os

import torch

from anomalygpt.evaluation.bench import measure_detector_throughput
from anomalygpt.inspector import AnomalyGPT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = AnomalyGPT.from_pretrained("embedded", with_llm=False)
    m = a.cfg.memory
    print(f"orientations {m.orientations}, dist_weight {m.dist_weight}, hires_levels {m.hires_levels}, "
          f"hires_pool {m.hires_pool}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    for mode in ("off", "2x", "tiles"):
        r = measure_detector_throughput(a, 16, args.repeats, 4, hires=mode)
        print(f"hires {mode:5s}: {r['images_per_s']:.1f} images/s (batch 16, 4 references)", flush=True)


if __name__ == "__main__":
    main()
