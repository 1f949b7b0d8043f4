"""Vision-guided zero-shot scoring from the query alone (FADE's idea): its own patches are
the bank.

A normal part repeats itself (cell texture, fingers, busbars, fabric, a screw thread), so a
normal patch has a close twin elsewhere in the same image; a defect is rare within its
image, so its nearest twin is far. The patch itself and its neighbours must be left out:
with stride-8 features and a 3x3 local pool, adjacent patches share most of their receptive
field and would always match (FADE takes the second nearest neighbour, i.e. a window of 0
around the patch; `window` makes the excluded square a parameter: |dy|, |dx| <= window grid
steps). Pure torch, no I/O.
"""
from __future__ import annotations

from typing import Sequence

import torch


def window_mask(h: int, w: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w) x (h*w) bool: True where two grid positions lie within `window` steps of each
    other in both directions (the pairs a patch may not be matched with; the diagonal always)."""
    if window < 0:
        raise ValueError(f"window must be >= 0 grid steps, got {window}")
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    return ((yy[:, None] - yy[None]).abs() <= window) & ((xx[:, None] - xx[None]).abs() <= window)


def self_similarity_scores(feats: torch.Tensor, h: int, w: int, window: int = 2,
                           copies: Sequence[torch.Tensor] = (), k: int = 1) -> torch.Tensor:
    """Per-patch self-similarity anomaly score of each image.

    feats: B x (h*w) x C, L2-normalized patch features on an h x w grid (row-major).
    copies: the same images' features from turned / mirrored copies, each turned back onto
    the query's grid (`features.oriented_patch_sets`), so position p of a copy holds patch p
    seen in another orientation. A patch is then also matched with the other patches' turned
    copies: the four cut corners of a mono cell are one corner in four orientations, and each
    finds its twins. The same window is excluded in every copy, which leaves out the patch's
    own turned copy (a defect would otherwise match itself).
    k: the score is 1 - the MEAN similarity of the patch's k nearest twins, not of the nearest
    one alone. A normal patch (a finger, a busbar, the grain) has hundreds of twins in its
    image; a patch of a long crack has only the other patches of its own crack, some of them
    outside the window, which a nearest twin alone counts as a match. With k larger than a
    defect's length in patches, the rare is told from the common.
    Returns B x 1 x h x w: 1 - (mean of the k highest) cosine similarity to the patches of the
    SAME image (or of its copies) outside the (2*window+1)^2 square around the patch, in 0..2.
    When the window covers the whole grid no patch is left to compare with, which is an error
    rather than a silent zero map; k is capped at the patches left.
    """
    if feats.dim() != 3 or feats.shape[1] != h * w:
        raise ValueError(f"feats must be B x (h*w) x C with h*w = {h * w}, got {tuple(feats.shape)}")
    if 2 * window + 1 >= max(h, w):
        raise ValueError(f"window {window} excludes the whole {h}x{w} grid; use a window under {(max(h, w) - 1) // 2}")
    for c in copies:
        if c.shape != feats.shape:
            raise ValueError(f"each copy must have the query's shape {tuple(feats.shape)}, got {tuple(c.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1 nearest twins, got {k}")
    near = window_mask(h, w, window, feats.device)
    k = min(k, int((~near).sum(1).min()) * (1 + len(copies)))
    best = None
    for bank in (feats, *copies):  # the k best of each bank, then of their union: memory of one bank
        sims = torch.einsum("bpc,bqc->bpq", feats, bank).masked_fill_(near, -2.0)
        top = sims.amax(-1, keepdim=True) if k == 1 else sims.topk(min(k, sims.shape[-1]), -1).values
        best = top if best is None else torch.cat([best, top], -1).topk(min(k, best.shape[-1] + top.shape[-1]), -1).values
    return (1.0 - best[..., :k].mean(-1)).view(-1, 1, h, w)
