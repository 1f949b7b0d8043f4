"""PatchDecoder: trained linear maps from each feature level into the text-anchor space.

Each patch feature is projected, compared by cosine with the normal/abnormal anchors, and
softmax(cos / T) gives its anomaly probability (AnomalyGPT's decoder, CLIP-style zero-shot
scoring with a learned projection). Level maps are upsampled to the image and averaged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def local_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k average of each patch with its neighbours (same size): gives every patch the
    context of its surroundings, as patch-level methods do, and damps single-pixel noise."""
    return x if k <= 1 else F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


class PatchDecoder(nn.Module):
    def __init__(self, dims: list[int], anchor_dim: int, temperature: float = 0.07, pool: int = 3) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, anchor_dim) for c in dims)
        self.temperature = temperature
        self.pool = pool
        # Fixed text anchors (row 0 normal, row 1 abnormal); a buffer so checkpoints carry them
        # and inference does not need the text encoder.
        self.register_buffer("anchors", torch.zeros(2, anchor_dim))

    def set_anchors(self, anchors: torch.Tensor) -> None:
        self.anchors.copy_(F.normalize(anchors.float(), dim=-1))

    def level_logits(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, the abnormal-vs-normal logit (B x 1 x h x w)."""
        out = []
        for proj, fmap in zip(self.proj, maps):
            x = local_pool(fmap.float(), self.pool).permute(0, 2, 3, 1)  # B h w C
            z = F.normalize(proj(x), dim=-1)
            cos = z @ self.anchors.t()  # B h w 2
            out.append(((cos[..., 1] - cos[..., 0]) / self.temperature).unsqueeze(1))
        return out

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(anomaly probability map B x 1 x H x W, per-level logits at feature resolution).

        softmax over the two anchors equals sigmoid of the logit difference.
        """
        logits = self.level_logits(maps)
        probs = [F.interpolate(torch.sigmoid(l), size=size, mode="bilinear", align_corners=False) for l in logits]
        return torch.stack(probs).mean(0), logits
