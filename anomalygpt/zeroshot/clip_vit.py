"""Dense features from an open_clip ViT at any input size, with GEM's parallel path.

open_clip's own forward gives one pooled embedding at the training size. Zero-shot maps
need, at several sizes, (a) the projected global embedding (image-level score), (b) the
projected plain patch tokens and (c) the projected tokens of GEM's self-self attention path
(gem.py) over the last `gem_depth` blocks. The walk below reuses the model's own layers
(conv1, ln_pre, each block's ln_1/qkv/out_proj/ls_1/ln_2/mlp/ls_2, ln_post, proj) and
computes attention from their weights so both paths share one pass. Position embeddings are
resampled (timm's bicubic resample) to the input's patch grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gem import default_inv_temperature, self_self_attention


@dataclass
class DenseFeatures:
    """Projected (text-space) embeddings of one batch; tokens laid out on the patch grid."""
    global_emb: torch.Tensor        # B x D
    patches: torch.Tensor           # B x gh x gw x D  plain last-layer patch tokens
    gem: torch.Tensor | None        # B x gh x gw x D  GEM path tokens (None when gem_depth == 0)


def check_supported(visual: nn.Module) -> None:
    """One clear error for towers this walker cannot read (ConvNeXt, attention pooling, custom
    attention blocks), instead of a shape error deep inside."""
    problems = []
    if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
        problems.append("not an open_clip VisionTransformer")
    elif getattr(visual, "attn_pool", None) is not None:
        problems.append("attentional pooling")
    else:
        for blk in visual.transformer.resblocks:
            if not isinstance(getattr(blk, "attn", None), nn.MultiheadAttention):
                problems.append("custom attention blocks")
                break
    if problems:
        raise ValueError(f"language zero-shot needs a plain open_clip ViT (got {', '.join(problems)}); "
                         "fix: use a ViT model such as ViT-B-16-plus-240 or ViT-B-16")


def patch_size(visual: nn.Module) -> int:
    return int(visual.conv1.kernel_size[0])


def interpolated_pos_embed(visual: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The class + patch position embeddings (1 x (1 + gh*gw) x C) for a gh x gw patch grid."""
    from timm.layers import resample_abs_pos_embed

    pos = visual.positional_embedding.unsqueeze(0)
    return resample_abs_pos_embed(pos, list(grid), old_size=list(visual.grid_size), num_prefix_tokens=1)


def _qkv(block: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head q, k, v (B x H x N x d) from a block's MultiheadAttention weights."""
    attn: nn.MultiheadAttention = block.attn
    b, n, c = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(b, n, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _merge(block: nn.Module, heads_out: torch.Tensor) -> torch.Tensor:
    b, h, n, d = heads_out.shape
    out = heads_out.transpose(1, 2).reshape(b, n, h * d)
    return block.attn.out_proj(out)


def _project(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    tokens = visual.ln_post(tokens)
    return tokens @ visual.proj if visual.proj is not None else tokens


@torch.no_grad()
def dense_features(visual: nn.Module, pixels: torch.Tensor, gem_depth: int = 7,
                   gem_iterations: int = 1, gem_inv_temp: float | None = None) -> DenseFeatures:
    """Run the ViT on normalized pixels (B x 3 x H x W, H and W multiples of the patch size).

    gem_depth: how many of the last blocks also feed GEM's path (GEM uses 7 of 12 for ViT-B;
    0 turns GEM off). gem_inv_temp: None = GEM's adaptive temperature (gem.py).
    """
    check_supported(visual)
    p = patch_size(visual)
    if pixels.shape[-1] % p or pixels.shape[-2] % p:
        raise ValueError(f"input {tuple(pixels.shape[-2:])} is not a multiple of the patch size {p}")
    grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)  # B x N x C
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + interpolated_pos_embed(visual, grid).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = list(visual.transformer.resblocks)
    first_gem = len(blocks) - max(0, min(gem_depth, len(blocks)))
    x_gem = None
    for i, blk in enumerate(blocks):
        h = blk.ln_1(x)
        q, k, v = _qkv(blk, h)
        if i >= first_gem:
            inv_temp = gem_inv_temp if gem_inv_temp is not None else default_inv_temperature(h, q.shape[-1])
            gem_heads, _ = self_self_attention(q, k, v, inv_temp, gem_iterations)
            x_gem = (x if x_gem is None else x_gem) + blk.ls_1(_merge(blk, gem_heads))
        x = x + blk.ls_1(_merge(blk, F.scaled_dot_product_attention(q, k, v)))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    if getattr(visual, "final_ln_after_pool", False):
        pooled = x[:, 0] if visual.pool_type == "tok" else x[:, 1:].mean(1)
        glob = _project(visual, pooled)
    else:
        normed = _project(visual, x)
        glob = normed[:, 0] if visual.pool_type == "tok" else normed[:, 1:].mean(1)
    b = x.shape[0]
    patches = _project(visual, x[:, 1:]).reshape(b, *grid, -1)
    gem = _project(visual, x_gem[:, 1:]).reshape(b, *grid, -1) if x_gem is not None else None
    return DenseFeatures(glob, patches, gem)
