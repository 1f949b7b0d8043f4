"""Distribution score: does the query's surface, as a whole, look like the references'?

Why: the reference map asks each query patch for its nearest reference patch. A change of
the whole surface (out of focus, a coarser grain) leaves every patch with a fairly near
neighbour somewhere, so the map's max barely moves; and cosine matching of L2-normalized
features ignores how strongly the fine channels respond, which is what blur takes away.
Here each image is cut into a grid of windows; each window is described by the mean and
the log standard deviation of every raw (not normalized) encoder channel, per level. The
references' windows give a diagonal Gaussian; a query scores the mean over its windows of
the mean squared z-distance per dimension (about 1 for a window like the references').
Windows rather than whole images give several samples per reference, so one reference
already yields a spread; a shrinkage floor keeps rare, near-constant dimensions from
dominating.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-4


def window_stats(maps: list[torch.Tensor], grid: int = 2) -> torch.Tensor:
    """Per-level maps (B x C_l x h_l x w_l) -> B x grid^2 x D window statistics,
    D = 2 * sum(C_l): channel means and log standard deviations in each window."""
    out = []
    for m in maps:
        m = m.float()
        mean = F.adaptive_avg_pool2d(m, grid)
        sq = F.adaptive_avg_pool2d(m * m, grid)
        std = (sq - mean * mean).clamp_min(0).sqrt()
        out += [mean.flatten(2), torch.log(std + EPS).flatten(2)]
    return torch.cat(out, 1).transpose(1, 2)


def fit_gaussian(ref_stats: torch.Tensor, shrink: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) per dimension of reference window statistics (S x D); the variance
    gets `shrink` x its mean over dimensions added (one reference has few windows)."""
    mu = ref_stats.mean(0)
    var = ref_stats.var(0, unbiased=False) if len(ref_stats) > 1 else torch.zeros_like(mu)
    return mu, var + shrink * var.mean().clamp_min(EPS) + EPS


def distribution_score(query_stats: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """B x W x D window statistics -> B scores: mean over windows and dimensions of z^2."""
    return ((query_stats - mu) ** 2 / var).mean(dim=(1, 2))
