"""Batch zero-shot scoring (MuSc's idea): unlabeled images of one product score each other.

Each patch of image i is compared with the patches of M OTHER images of the batch: per
other image, the distance to its nearest patch there; the patch's score is the mean of the
lowest `fraction` of those M distances. A normal patch finds twins in most other images; a
defect finds none in normal images. Taking the lowest fraction instead of all M keeps the
score robust to the defects other images carry: a patch resembling a crack in two other
cracked cells still scores high, because the mean is over its closest matches only when
they are many (fraction x M of them).

Cost: all N x (N-1) image pairs are quadratic in N, so each image is compared with M other
images only (M = `n_compare`, 100 by default). The pairs form a circulant graph over a
seeded random permutation of the images: image at position k is paired with the positions
k +- o for M/2 random offsets o. Every image gets exactly M partners, and each unordered
pair's similarity matrix is computed ONCE and serves both images (the row maxima score the
first, the column maxima the second): N x M / 2 patch-matrix products, linear in N.
Pure torch, no I/O.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def partner_offsets(n: int, n_compare: int, seed: int = 0) -> list[int]:
    """Distinct offsets o in 1..n//2 so that positions k +- o give every image about
    `n_compare` partners (all n - 1 when n_compare >= n - 1)."""
    if n < 2:
        raise ValueError(f"batch zero-shot needs at least 2 images, got {n}")
    half = n // 2
    want = max(1, min(half, math.ceil(n_compare / 2)))
    if want >= half:
        return list(range(1, half + 1))
    rng = np.random.default_rng(seed)
    return sorted(int(o) + 1 for o in rng.choice(half, want, replace=False))


def pair_list(n: int, n_compare: int, seed: int = 0) -> list[tuple[int, int]]:
    """Unordered image pairs (i, j), each once: the circulant graph described above, over a
    seeded permutation so partners are not neighbours in file order (a folder's order often
    follows time or position on the line)."""
    perm = np.random.default_rng(seed).permutation(n)
    pairs = set()
    for o in partner_offsets(n, n_compare, seed):
        for k in range(n):
            a, b = int(perm[k]), int(perm[(k + o) % n])
            if a != b:
                pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def mutual_scores(feats: torch.Tensor, n_compare: int = 100, fraction: float = 0.3, seed: int = 0,
                  progress=None, rotated: torch.Tensor | None = None) -> torch.Tensor:
    """Per-patch mutual score of each image (N x P), from L2-normalized patch features
    (N x P x C) of N images of one product: the mean of the lowest ceil(fraction x M) of each
    patch's nearest-patch distances to its M partners (`partner_distances`, which says what
    `progress` and `rotated` do)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return lowest_fraction_mean(partner_distances(feats, n_compare, seed, progress, rotated), fraction)


def partner_distances(feats: torch.Tensor, n_compare: int = 100, seed: int = 0, progress=None,
                      rotated: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per image, an M_i x P tensor: each patch's distance (1 - cosine) to its nearest patch in
    each of the image's M_i partners (`pair_list`; about `n_compare`).

    `progress`: optional callable(n_done_pairs, n_pairs) for long batches.
    `rotated`: the same images' features from a rotated copy (N x P' x C, e.g. turned by 90
    degrees): a patch of i then meets its nearest patch in j AND in j's rotated copy, so a
    part photographed turned (solar cells with busbars across instead of along) still finds
    its twins. Costs three P x P products per pair instead of one.
    """
    n = feats.shape[0]
    if rotated is not None and (rotated.shape[0] != n or rotated.shape[2] != feats.shape[2]):
        raise ValueError(f"rotated features must be N x P' x C like feats {tuple(feats.shape)}, got {tuple(rotated.shape)}")
    pairs = pair_list(n, n_compare, seed)
    # every output row and the similarity matrices are allocated once, up front: allocating a
    # fresh P x P matrix per pair between the small rows that are kept fragmented the heap
    # (200 ELPV cells on one thread peaked at 8.05 GB instead of 2.13 GB; docs/speed.md)
    counts = np.bincount(np.asarray(pairs, dtype=np.int64).reshape(-1), minlength=n)
    per_image = [feats.new_empty(int(c), feats.shape[1]) for c in counts]
    filled = [0] * n
    sim = feats.new_empty(feats.shape[1], feats.shape[1])
    if rotated is not None:
        turned_i = feats.new_empty(feats.shape[1], rotated.shape[1])
        turned_j = feats.new_empty(rotated.shape[1], feats.shape[1])
    for t, (i, j) in enumerate(pairs):
        torch.matmul(feats[i], feats[j].t(), out=sim)   # P x P, computed once for both directions
        best_i, best_j = per_image[i][filled[i]], per_image[j][filled[j]]
        torch.amax(sim, 1, out=best_i)
        torch.amax(sim, 0, out=best_j)
        if rotated is not None:
            torch.maximum(best_i, torch.matmul(feats[i], rotated[j].t(), out=turned_i).amax(1), out=best_i)
            torch.maximum(best_j, torch.matmul(rotated[i], feats[j].t(), out=turned_j).amax(0), out=best_j)
        best_i.neg_().add_(1.0)                   # distance = 1 - cosine
        best_j.neg_().add_(1.0)
        filled[i] += 1
        filled[j] += 1
        if progress is not None and (t + 1) % 256 == 0:
            progress(t + 1, len(pairs))
    return per_image


def lowest_fraction_mean(distances: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """N x P: per image (an M_i x P tensor of distances), the mean of each patch's lowest
    ceil(fraction x M_i) distances."""
    return torch.stack([d.topk(max(1, math.ceil(fraction * d.shape[0])), dim=0, largest=False).values.mean(0)
                        for d in distances])
