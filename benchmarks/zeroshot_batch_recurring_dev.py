"""Batch zero-shot when the batch's defects recur (most cells cracked alike), chosen WITHOUT
test labels (issue 18).

Mutual scoring assumes a defect is rare across the batch. On a line where most parts carry
the same kind of defect, a crack patch meets look-alike cracks in other cells: the mean of
its lowest `fraction` of per-image distances is low, and the second pass's "most normal"
references carry cracks too, whose nearest patch hides every similar crack. The dev sets
`mono-crack` / `poly-crack` (benchmarks/zeroshot_dev.load_dev: 150 clean ELPV TRAIN cells
and the rest cracked by data_sim's crack generator alone) make that case; the mixed-kind
dev sets and textures check that a remedy costs nothing where defects do not recur.

Variants, all on the same features (224 px, pool 3, 100 partners):
  first fF          the first pass with fraction F (the default F = 0.3)
  p2 nn             the default second pass: nearest patch over the 64 most normal images
  p2 twinsK         the mean similarity of the K nearest patches over those references'
                    patches (as `self` mode's twins): a crack shared by a few references
                    still meets normal patches among its K nearest
  p2 refF           per reference, the nearest-patch distance; the mean of the lowest F
  self              `self` mode as shipped (window 6, rot90 copies, 2% nearest twins)
  p2 nn + self      the two maps, each divided by its median image score over the batch, added
  p2 nn, joint refs the second pass against the images most normal by the sum of their
                    first-pass and self ranks (self picks the references, the score stays batch)

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_batch_recurring_dev.py mono-crack
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.stats import rankdata

from anomalygpt.models.memory_bank import nn_similarity
from anomalygpt.zeroshot.batch_mutual import pair_list
from anomalygpt.zeroshot.features import average_maps, encoder_patches, oriented_patch_sets
from anomalygpt.zeroshot.modes import image_scores, reference_scores, twin_count
from anomalygpt.zeroshot.self_similarity import self_similarity_scores
from anomalygpt.zeroshot.thresholds import most_normal
from benchmarks.zeroshot_dev import add_aurocs, dev_batches, dev_encoder, print_aurocs
from benchmarks.zeroshot_refpass_dev import ref_fraction_scores

SIZE = (224, 224)


def mutual_distance_stacks(feats: torch.Tensor, n_compare: int = 100) -> list[torch.Tensor]:
    """Per image, its M x P nearest-patch distances to its partners (batch_mutual's pairs),
    kept so several fractions are read off one pass."""
    per_image: list[list[torch.Tensor]] = [[] for _ in range(len(feats))]
    for i, j in pair_list(len(feats), n_compare):
        sim = feats[i] @ feats[j].t()
        per_image[i].append(1.0 - sim.amax(1))
        per_image[j].append(1.0 - sim.amax(0))
    return [torch.stack(d) for d in per_image]


def lowest_mean(stacks: list[torch.Tensor], fraction: float) -> torch.Tensor:
    return torch.stack([d.topk(max(1, math.ceil(fraction * len(d))), 0, largest=False).values.mean(0)
                        for d in stacks])


def twin_reference_scores(feats: torch.Tensor, refs: np.ndarray, k: int) -> torch.Tensor:
    """N x P: 1 - mean similarity of the k nearest patches among the references' patches
    (a reference leaves itself out)."""
    n, p, c = feats.shape
    ref_list = [int(r) for r in refs]
    bank = feats[ref_list].reshape(-1, c)
    owners = torch.tensor(ref_list).repeat_interleave(p)
    out = torch.empty(n, p)
    for i in range(n):
        b = bank if i not in ref_list else bank[owners != i]
        out[i] = 1.0 - (feats[i] @ b.t()).topk(k, 1).values.mean(1)
    return out


def self_maps(enc, x: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(0, len(x), 16):
        f, c, (h, w), _ = oriented_patch_sets(enc, x[i:i + 16], 224, [3], "rot90")
        out.append(self_similarity_scores(f[0], h, w, 6, [cc[0] for cc in c], twin_count(0.02, h * w, len(c))))
    return average_maps([torch.cat(out)], SIZE)


def by_median(amap: torch.Tensor) -> torch.Tensor:
    return amap / float(np.median(image_scores(amap, 4.0).numpy()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set")
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--fractions", default="0.3,0.5,1.0")
    ap.add_argument("--twins", default="8,32")
    ap.add_argument("--ref-fractions", default="0.3")
    ap.add_argument("--no-self", action="store_true")
    ap.add_argument("--save", default="", help="npz of every variant's image scores, kinds and groups "
                                               "(for label-free fusion rules read off the saved scores)")
    args = ap.parse_args()
    enc = dev_encoder()
    t0 = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {}
    saved: dict[str, list[np.ndarray]] = {}
    for grp, kinds, x in dev_batches(args.set, args.max):
        feats, (h, w), _ = encoder_patches(enc, x, 224)
        stacks = mutual_distance_stacks(feats)
        as_map = lambda m: average_maps([m.view(-1, 1, h, w)], SIZE)  # noqa: E731
        maps: dict[str, torch.Tensor] = {}
        for f in [float(v) for v in args.fractions.split(",")]:
            maps[f"first f{f}"] = as_map(lowest_mean(stacks, f))
        s1 = image_scores(maps["first f0.3"], 4.0).numpy()
        refs = most_normal(s1, 0.2, maximum=64)
        maps["p2 nn"] = as_map(reference_scores(feats, refs))
        for k in [int(v) for v in args.twins.split(",") if v]:
            maps[f"p2 twins{k}"] = as_map(twin_reference_scores(feats, refs, k))
        for f in [float(v) for v in args.ref_fractions.split(",") if v]:
            maps[f"p2 ref{f}"] = as_map(ref_fraction_scores(feats, refs, f))
        if not args.no_self:
            maps["self"] = self_maps(enc, x)
            maps["p2 nn + self"] = by_median(maps["p2 nn"]) + by_median(maps["self"])
            maps["first f0.3 + self"] = by_median(maps["first f0.3"]) + by_median(maps["self"])
            # references picked by both signals (the sum of the two ranks): a cell whose own
            # twins show a crack is not trusted as normal, though the batch let it through
            s_self = image_scores(maps["self"], 4.0).numpy()
            joint = most_normal(rankdata(s1) + rankdata(s_self), 0.2, maximum=64)
            maps["p2 nn, joint refs"] = as_map(reference_scores(feats, joint))
            print(f"{grp}: joint references {len(joint)}, {int((kinds[joint] != 'good').sum())} anomalous", flush=True)
        for name, amap in maps.items():
            add_aurocs(rows, name, image_scores(amap, 4.0).numpy(), kinds)
            saved.setdefault(name, []).append(image_scores(amap, 4.0).numpy())
        saved.setdefault("kinds", []).append(kinds)
        saved.setdefault("groups", []).append(np.array([grp] * len(kinds)))
        print(f"{grp}: {len(x)} images, {len(refs)} references, {int((kinds[refs] != 'good').sum())} anomalous "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    print_aurocs(rows)
    if args.save:
        np.savez(args.save, **{k: np.concatenate(v) for k, v in saved.items()})


if __name__ == "__main__":
    main()
