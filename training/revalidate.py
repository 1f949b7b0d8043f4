"""Re-run validation and calibration of a finished training run on its own held-out images.

    python -m training.revalidate runs/embedded            # updates runs/embedded/final

Useful after a change of calibration rule or fusion: the held-out normal images are the
ones the run set aside (same split function, same data specs), so nothing it trained on
is used, and the trained weights are not touched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from anomalygpt.checkpoint import load, save
from data_sim.datasets import normal_training_images

from .data import split_images
from .train import FINAL_DIR, _atomic_write_json, validate


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.revalidate", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the --out folder of a finished training run")
    args = p.parse_args(argv)
    final = Path(args.run_dir) / FINAL_DIR
    if not final.is_dir():
        print(f"error: {final} not found; finish the run first (or pass its --out folder)", file=sys.stderr)
        return 2
    comps = load(final)
    cfg = comps.cfg
    train_images, val_images = split_images(normal_training_images(",".join(cfg.train.data)))
    calibration, result = validate(comps, cfg, train_images, val_images, torch.device("cpu"))
    comps.calibration = calibration
    save(comps, final)
    _atomic_write_json(Path(args.run_dir) / "val.json", result)
    print(f"threshold {calibration.threshold:.4f}, fused threshold {calibration.extra['fused_threshold']:.4f}, "
          f"pixel AUROC {result.get('pixel_auroc')}; saved to {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
