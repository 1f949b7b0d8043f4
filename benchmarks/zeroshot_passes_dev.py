"""Batch zero-shot: how many references the second pass trusts, a third pass, and turned
reference copies; chosen WITHOUT test labels (issue 18).

The second pass scores every image against the images the first pass found most normal
(`zero_shot.ref_fraction` of the batch, at most `max_refs`). More references cover more of
a normal part's variation; fewer are less likely to hold a defect that hides its look-alikes.
A third pass re-picks the references from the second pass's better ranking. Turned copies
(90/180/270 degrees) of the references let parts photographed turned find twins, as the
few-shot bank does (`memory.orientations`).

Dev sets only (benchmarks/zeroshot_dev.load_dev): ELPV TRAIN normals with data_sim anomalies
(mono / poly, and their `-faint` variants whose anomalies keep 25-50% of their contrast, so the
dev AUROC is not saturated) and the textures dev set (each texture its own batch).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_passes_dev.py mono-faint
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_passes_dev.py textures --variants p2,p3
"""
from __future__ import annotations

import argparse
import time

import torch

from anomalygpt.zeroshot.features import average_maps, encoder_patches
from anomalygpt.zeroshot.modes import image_scores, reference_scores
from anomalygpt.zeroshot.thresholds import most_normal
from benchmarks.zeroshot_dev import add_aurocs, dev_batches, dev_encoder, dev_first_pass, print_aurocs

# name -> (reference fraction, at most, passes after the first, turned reference copies)
VARIANTS = {
    "p2": (0.2, 64, 1, False),          # the default
    "p2-f0.1": (0.1, 64, 1, False),
    "p2-f0.3x128": (0.3, 128, 1, False),
    "p2-f0.5x256": (0.5, 256, 1, False),
    "p3": (0.2, 64, 2, False),
    "p2-rot": (0.2, 64, 1, True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=["mono", "poly", "mono-faint", "poly-faint", "textures"])
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    enc = dev_encoder()
    t0 = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {}
    for grp, k, x in dev_batches(args.set, args.max):
        feats, (h, w), _, s1 = dev_first_pass(enc, x)
        add_aurocs(rows, "first pass", s1, k)
        turned: list[torch.Tensor] = []
        for name in args.variants.split(","):
            frac, most, passes, rot = VARIANTS[name]
            if rot and not turned:
                turned = [encoder_patches(enc, torch.rot90(x, q, (2, 3)), 224)[0] for q in (1, 2, 3)]
            s, bad = s1, []
            for _ in range(passes):
                refs = most_normal(s, frac, maximum=most)
                bad.append(int((k[refs] != "good").sum()))
                m = reference_scores(feats, refs, copies=turned if rot else ())
                s = image_scores(average_maps([m.view(-1, 1, h, w)], (224, 224)), 4.0).numpy()
            add_aurocs(rows, name, s, k)
            print(f"{grp} {name}: {len(refs)} references, anomalous among them per pass {bad} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    print_aurocs(rows)


if __name__ == "__main__":
    main()
