"""Check the ViT walk (clip_vit.dense_features) on a real open_clip architecture: with GEM
off at the model's own input size its global embedding must equal open_clip's
encode_image. Random weights are enough for this identity (no download needed):

    PYTHONPATH=. python benchmarks/zeroshot_clip_walk_check.py ViT-B-16-plus-240
"""
from __future__ import annotations

import sys

import torch


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "ViT-B-16-plus-240"
    pretrained = sys.argv[2] if len(sys.argv) > 2 else "none"
    from anomalygpt.hub import load_open_clip
    from anomalygpt.zeroshot.clip_vit import dense_features

    torch.manual_seed(0)
    model, _ = load_open_clip(name, pretrained)
    size = model.visual.image_size[0]
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        ref = model.encode_image(x)
    feats = dense_features(model.visual, x, gem_depth=7)
    err = float((feats.global_emb - ref).abs().max() / ref.abs().max())
    print(f"{name}/{pretrained} at {size}px: global embedding rel. max error vs encode_image {err:.2e}; "
          f"patch grid {tuple(feats.patches.shape[1:3])}, GEM tokens {tuple(feats.gem.shape)}")
    assert err < 1e-4, "walk differs from open_clip's forward"


if __name__ == "__main__":
    main()
