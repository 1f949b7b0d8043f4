"""Language-guided zero-shot (CLIP + prompt set + GEM, no references) on the ELPV benchmark
split (BENCHMARK.md): image AUROC / AUPR on the test images and the verdict accuracy of
the fixed 0.5 boundary. Nothing is fitted: no ELPV image is used except to be scored.

Real weights (needs network once, or the open_clip checkpoint on disk):
    PYTHONPATH=. python benchmarks/zeroshot_language.py --kind mono --object "solar cell"
    (defaults: --clip ViT-B-16-plus-240 --pretrained laion400m_e32, FADE's sizes 384 / 384+512)

Speed of the real architecture with random weights (scores are meaningless; the time is
what the weights would cost):
    PYTHONPATH=. python benchmarks/zeroshot_language.py --pretrained none --max 10 --speed-only
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="mono", choices=["mono", "poly"])
    ap.add_argument("--object", default="solar cell")
    ap.add_argument("--clip", default="ViT-B-16-plus-240")
    ap.add_argument("--pretrained", default="laion400m_e32")
    ap.add_argument("--prompts", default=None, help="a prompt JSON (default: cached / written by --llm)")
    ap.add_argument("--llm", default="embedded")
    ap.add_argument("--crop", default="none", choices=["auto", "none"],
                    help="ELPV cells fill the frame: no crop by default")
    ap.add_argument("--features", default="gem", help="comma list of gem,patch")
    ap.add_argument("--cls-size", type=int, default=384)
    ap.add_argument("--seg-sizes", default="384,512")
    ap.add_argument("--max", type=int, default=0, help="score only the first N test images (0 = all)")
    ap.add_argument("--speed-only", action="store_true", help="time the scoring, print no metrics")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    from anomalygpt.evaluation.metrics import image_metrics
    from anomalygpt.hub import load_open_clip
    from anomalygpt.zeroshot.clip_language import LanguageZeroShot
    from anomalygpt.zeroshot.prompt_sets import load_or_generate
    from data_sim.datasets import elpv_split
    from data_sim.imageio import load_image

    model, tok = load_open_clip(args.clip, args.pretrained)
    prompts, path, created = load_or_generate(args.object, args.prompts, llm_name=args.llm)
    print(f"prompts: {path} ({'written now' if created else 'read'}; {len(prompts.normal)} normal, "
          f"{len(prompts.abnormal)} abnormal phrases x {len(prompts.templates)} templates)")
    zs = LanguageZeroShot(model, tok, prompts, classification_size=args.cls_size,
                          segmentation_sizes=[int(s) for s in args.seg_sizes.split(",")],
                          features=args.features.split(","), crop=args.crop)
    test = elpv_split(args.kind)["test"]
    if args.max:
        test = test[: args.max // 2] + test[-(args.max - args.max // 2):]  # both classes
    scores, labels, times, cpu = [], [], [], []
    for s in test:
        img = load_image(s.image_path)
        t, c = time.perf_counter(), time.process_time()
        scores.append(zs(img).score)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        labels.append(s.label)
    print(f"{args.clip}/{args.pretrained} ELPV {args.kind}: {len(test)} test images, "
          f"{np.median(times):.2f} s/image median wall, {np.median(cpu):.2f} CPU-s/image, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    if args.speed_only:
        return
    m = image_metrics(labels, scores)
    y, p = np.asarray(labels), np.asarray(scores) >= 0.5
    print(f"image AUROC {m['auroc']:.3f}  AUPR {m['aupr']:.3f}  F1-max {m['f1_max']:.3f}  "
          f"verdict accuracy at 0.5: {float((p == y).mean()):.3f} (normal {float((~p[y == 0]).mean()):.3f}, "
          f"anomalous {float(p[y == 1].mean()):.3f})")


if __name__ == "__main__":
    main()
