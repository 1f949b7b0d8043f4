"""Detector images/s at batch 16 for the input sizes a high-resolution fine level would need
(issue 19, item 4): 224 px (the default path), 448 px (a 2x input), and 2x2 overlapping
224 px tiles of a 448 px image (5 tiles with a centre one: 5 x the 224 px work), each with a
bank of 4 references built at the same size. Only a cost measurement: the 2x / tiled
scoring paths are not in the detector.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/hires_speed.py [--repeats 3]

Measured 2026-11-29, one thread, load ~2-5, embedded profile (rot90 bank + distribution
score): 224 px 17.8 images/s, 448 px 1.7, 5 tiles of 224 px 2.8 (the 448 px cost is the
nearest-neighbour search: 4x the query patches against a 4x bank).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from anomalygpt.inspector import AnomalyGPT


def rate(det, x: torch.Tensor, bank, repeats: int) -> float:
    det(x, bank)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        det(x, bank)
        times.append(time.perf_counter() - t0)
    return len(x) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    det = AnomalyGPT.from_pretrained("embedded", with_llm=False).detector
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in (224, 448):
            x = torch.rand(16, 3, size, size, generator=g)
            bank = det.build_bank(torch.rand(4, 3, size, size, generator=g))
            print(f"{size} px, batch 16, 4 references ({det.cfg.memory.orientations}): "
                  f"{rate(det, x, bank, args.repeats):.1f} images/s", flush=True)
            if size == 448:
                tiles = torch.rand(16 * 5, 3, 224, 224, generator=g)
                bank = det.build_bank(torch.rand(4, 3, 224, 224, generator=g))
                r = rate(det, tiles, bank, args.repeats) / 5
                print(f"448 px as 5 overlapping 224 px tiles, batch 16, 4 references: {r:.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
