"""Image-level re-scoring with neighbouring images (MuSc's RsCIN idea). Pure torch/numpy.

A patch-level score is noisy per image (lighting, a stray mark, a texture the compared
images happen to lack). Images that look alike as a whole (near in global-feature space)
tend to share their state, so each image's score is blended with the mean score of its k
nearest images: an isolated high score among normal-looking neighbours is pulled down, a
defect kind shared by several images keeps its level.
"""
from __future__ import annotations

import numpy as np
import torch


def knn_rescore(scores: np.ndarray, emb: torch.Tensor, k: int, alpha: float = 0.5) -> np.ndarray:
    """(1 - alpha) x score + alpha x mean score of the image's k nearest OTHER images by
    cosine similarity of `emb` (N x D). k is capped at N - 1; k = 0 returns the scores."""
    s = np.asarray(scores, np.float64).ravel()
    n = len(s)
    if emb.shape[0] != n:
        raise ValueError(f"{n} scores but {emb.shape[0]} embeddings")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    k = min(k, n - 1)
    if k <= 0:
        return s.copy()
    e = torch.nn.functional.normalize(emb.float(), dim=-1)
    sim = e @ e.t()
    sim.fill_diagonal_(-float("inf"))
    idx = sim.topk(k, dim=1).indices.numpy()
    return (1.0 - alpha) * s + alpha * s[idx].mean(1)
