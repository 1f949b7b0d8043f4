"""GEM's self-self attention (Bousselham et al., "Grounding Everything", used by FADE).

CLIP's patch tokens are poor for localisation because the last layers' query-key attention
mixes every patch with a few global "register" tokens. GEM adds a parallel path over the
last blocks in which each token attends to tokens *like itself*: attention from the cosine
similarity of q with q, k with k and v with v, optionally iterated (a soft clustering), then
applied to the values. The three results are averaged. The path only sums the attention
residuals (no MLP), starting from the ordinary path's input at the first GEM block.

Pure tensor maths, no modules, no I/O: the open_clip walker in clip_vit.py supplies q, k, v.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def self_similarity_attention(t: torch.Tensor, inv_temp: torch.Tensor | float) -> torch.Tensor:
    """Row-stochastic attention of tokens to tokens like themselves.

    t: B x H x N x d. Returns B x H x N x N, every row a softmax (sums to 1) of the scaled
    cosine similarities, so a token mostly attends to itself and its look-alikes.
    """
    u = F.normalize(t, dim=-1)
    return (u @ u.transpose(-2, -1) * inv_temp).softmax(dim=-1)


def default_inv_temperature(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """GEM's adaptive inverse temperature: mean token norm of the block input x (B x N x C)
    times the usual 1/sqrt(head_dim) attention scale, one value per image (B x 1 x 1 x 1).
    Bigger activations give sharper clusters, as the ordinary attention would."""
    return x.norm(dim=-1).mean(dim=-1).view(-1, 1, 1, 1) * head_dim ** -0.5


def self_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        inv_temp: torch.Tensor | float, iterations: int = 1
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """GEM's q-q, k-k and v-v attention, averaged.

    q, k, v: B x H x N x d (per head). Each of the three is first refined `iterations` times
    (x <- A(x) x, a few steps of soft clustering), then its final attention A is applied to
    the values v. Returns (B x H x N x d output, the three final attention matrices).
    """
    outs, attns = [], []
    for t in (q, k, v):
        for _ in range(iterations):
            t = self_similarity_attention(t, inv_temp) @ F.normalize(t, dim=-1)
        a = self_similarity_attention(t, inv_temp)
        attns.append(a)
        outs.append(a @ v)
    return (outs[0] + outs[1] + outs[2]) / 3, attns
