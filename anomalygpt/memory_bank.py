"""MemoryBank: few-shot scoring against the patch features of normal reference images.

score = 1 - max cosine similarity between each query patch and every reference patch of
the same level (nearest-neighbour scoring, as in PatchCore / WinCLIP+ / AnomalyGPT's
in-context mode). The matmul is chunked over the bank so memory stays bounded for many
references, and very large banks are subsampled at random (deterministically): on ELPV a
10% random subset of all train normals' patches scored within noise of richer banks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .decoder import local_pool


def _flatten(fmap: torch.Tensor, pool: int) -> torch.Tensor:
    """B x C x h x w -> B x (h*w) x C, locally pooled and L2-normalized."""
    x = local_pool(fmap.float(), pool)
    return F.normalize(x.flatten(2).transpose(1, 2), dim=-1)


def nn_similarity(query: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Max cosine similarity of each query row (Q x C) to the bank rows (M x C), chunked."""
    best = torch.full((query.shape[0],), -1.0, dtype=query.dtype, device=query.device)
    for i in range(0, bank.shape[0], chunk):
        best = torch.maximum(best, (query @ bank[i:i + chunk].t()).amax(dim=1))
    return best


class MemoryBank:
    """Per-level banks of normalized reference patch features (no trainable state).

    `owners` records which reference image each row came from, so a leave-one-out bank is a
    mask, not a rebuild.
    """

    def __init__(self, pool: int = 3, chunk: int = 2048, max_patches: int = 0) -> None:
        self.pool = pool
        self.chunk = chunk
        self.max_patches = max_patches
        self.banks: list[torch.Tensor] = []
        self.owners: list[torch.Tensor] = []
        self.n_images = 0

    def __len__(self) -> int:
        return 0 if not self.banks else self.banks[0].shape[0]

    def add(self, maps: list[torch.Tensor]) -> None:
        """Add the patches of a batch of reference images (per-level maps B x C x h x w)."""
        b = maps[0].shape[0]
        for level, m in enumerate(maps):
            flat = _flatten(m, self.pool).reshape(-1, m.shape[1])
            own = torch.arange(self.n_images, self.n_images + b).repeat_interleave(m.shape[2] * m.shape[3])
            if level < len(self.banks):
                self.banks[level] = torch.cat([self.banks[level], flat])
                self.owners[level] = torch.cat([self.owners[level], own])
            else:
                self.banks.append(flat)
                self.owners.append(own)
        self.n_images += b

    def subsample(self, seed: int = 0) -> None:
        """Keep at most `max_patches` rows per level, drawn uniformly with a fixed seed."""
        if self.max_patches <= 0:
            return
        g = torch.Generator().manual_seed(seed)
        for level, bank in enumerate(self.banks):
            if len(bank) > self.max_patches:
                keep = torch.randperm(len(bank), generator=g)[: self.max_patches].sort().values
                self.banks[level] = bank[keep]
                self.owners[level] = self.owners[level][keep]

    def without(self, image_index: int) -> "MemoryBank":
        """A view of the bank without the patches of one reference (for leave-one-out)."""
        out = MemoryBank(self.pool, self.chunk, self.max_patches)
        for bank, own in zip(self.banks, self.owners):
            keep = own != image_index
            out.banks.append(bank[keep])
            out.owners.append(own[keep])
        out.n_images = self.n_images - 1
        return out

    def score(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, 1 - max cosine to the bank (B x 1 x h x w), in 0..2."""
        if not self.banks:
            raise RuntimeError("memory bank is empty: add reference images first")
        out = []
        for fmap, bank in zip(maps, self.banks):
            b, _, h, w = fmap.shape
            q = _flatten(fmap, self.pool)
            sims = torch.stack([nn_similarity(q[i], bank, self.chunk) for i in range(b)])
            out.append((1.0 - sims).view(b, 1, h, w))
        return out


def self_similarity_score(maps: list[torch.Tensor], pool: int = 3, chunk: int = 2048, exclude: int = 1) -> list[torch.Tensor]:
    """Zero-reference scoring: each patch against the other patches of the same image,
    ignoring its own neighbourhood (within `exclude` patches). A defect that occurs once is
    unlike the rest of the part, while normal structure repeats."""
    out = []
    for fmap in maps:
        b, _, h, w = fmap.shape
        q = _flatten(fmap, pool)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pos = torch.stack([yy.flatten(), xx.flatten()], 1)
        near = (pos[:, None, :] - pos[None, :, :]).abs().amax(-1) <= exclude
        sims = []
        for i in range(b):
            s = q[i] @ q[i].t()
            s = s.masked_fill(near, -1.0)
            sims.append(s.amax(1))
        out.append((1.0 - torch.stack(sims)).view(b, 1, h, w))
    return out
