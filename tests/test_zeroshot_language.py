"""Language-guided zero-shot on CLIP: GEM maths, the ViT walk, multi-scale maps, anchors and
fusion, with a tiny random-init open_clip ViT (no CLIP weights ship offline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalygpt.zeroshot.clip_language import (LanguageZeroShot, abnormal_probability, fuse, resize_shorter,
                                               text_anchors)
from anomalygpt.zeroshot.clip_vit import check_supported, dense_features, interpolated_pos_embed
from anomalygpt.zeroshot.gem import self_self_attention, self_similarity_attention
from anomalygpt.zeroshot.prompt_sets import PromptSet

TINY_ZS_CLIP = {"embed_dim": 24,
                "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
PROMPTS = PromptSet("bottle", ["a flawless bottle", "a clean bottle"], ["a bottle with a crack", "a broken bottle"],
                    ["a photo of {}.", "a close-up photo of {}."])


@pytest.fixture(scope="module")
def tiny_clip(one_thread):
    from anomalygpt import hub

    torch.manual_seed(0)
    return hub.load_open_clip("zs-tiny-vit", "none", {"model_cfg": TINY_ZS_CLIP})


def image(h: int = 50, w: int = 70, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- GEM maths
def test_gem_attention_rows_sum_to_one_and_output_shape():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g) for _ in range(3))
    out, attns = self_self_attention(q, k, v, inv_temp=2.0, iterations=2)
    assert out.shape == v.shape and len(attns) == 3
    for a in attns:
        assert a.shape == (2, 3, 10, 10) and (a >= 0).all()
        assert torch.allclose(a.sum(-1), torch.ones(2, 3, 10), atol=1e-5)


def test_gem_attention_is_symmetric_self_similarity():
    """Self-self attention scores pairs by cosine of a token with a token of the same kind:
    before the row softmax the logits are symmetric, and each token's largest weight is on
    itself (cosine 1 is the maximum)."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(1, 1, 12, 6, generator=g)
    a = self_similarity_attention(t, inv_temp=5.0)[0, 0]
    assert torch.equal(a.argmax(-1), torch.arange(12))
    logits = torch.log(a)  # row softmax: logits up to a per-row constant
    centred = logits - logits.diagonal()[:, None]  # the diagonal logit is inv_temp for every row
    assert torch.allclose(centred, centred.T, atol=1e-4)


def test_gem_with_sharp_temperature_returns_the_values():
    """Orthogonal tokens and a very sharp temperature: each token attends only to itself, so
    the output equals v (the path keeps each patch's own content instead of global mixing)."""
    eye = torch.eye(6).view(1, 1, 6, 6)
    v = eye.clone()  # orthogonal values too, so v-v attention is the identity as well
    out, attns = self_self_attention(eye, eye, v, inv_temp=100.0)
    assert all(torch.allclose(a[0, 0], torch.eye(6), atol=1e-4) for a in attns)
    assert torch.allclose(out, v, atol=1e-4)
    out_soft, _ = self_self_attention(eye, eye, v, inv_temp=1.0)  # a soft temperature mixes tokens
    assert not torch.allclose(out_soft, v, atol=1e-2)


# ----------------------------------------------------------------------------- the ViT walk
def test_walk_equals_open_clip_forward_at_native_size(tiny_clip):
    """With GEM off the walk must be open_clip's own forward (same global embedding)."""
    model, _ = tiny_clip
    x = torch.rand(2, 3, 32, 32)
    feats = dense_features(model.visual, x, gem_depth=0)
    assert feats.gem is None and feats.patches.shape == (2, 4, 4, 24)
    assert torch.allclose(feats.global_emb, model.encode_image(x), atol=1e-5)


def test_gem_path_changes_only_the_gem_tokens(tiny_clip):
    model, _ = tiny_clip
    x = torch.rand(1, 3, 32, 48)
    plain = dense_features(model.visual, x, gem_depth=0)
    gem = dense_features(model.visual, x, gem_depth=2)
    assert gem.gem.shape == (1, 4, 6, 24)
    assert torch.allclose(gem.global_emb, plain.global_emb, atol=1e-6)
    assert torch.allclose(gem.patches, plain.patches, atol=1e-6)
    assert not torch.allclose(gem.gem, gem.patches, atol=1e-3)


def test_position_embeddings_are_interpolated(tiny_clip):
    model, _ = tiny_clip
    pos = interpolated_pos_embed(model.visual, (4, 4))
    assert torch.equal(pos[0], model.visual.positional_embedding)
    big = interpolated_pos_embed(model.visual, (6, 9))
    assert big.shape == (1, 1 + 54, 32)
    assert torch.equal(big[0, 0], model.visual.positional_embedding[0])  # class token untouched
    with pytest.raises(ValueError, match="multiple of the patch size"):
        dense_features(model.visual, torch.rand(1, 3, 30, 32))


def test_unsupported_tower_is_one_clear_error():
    with pytest.raises(ValueError, match="plain open_clip ViT"):
        check_supported(torch.nn.Linear(2, 2))


def test_resize_keeps_aspect_on_the_patch_grid():
    x = torch.rand(1, 3, 50, 70)
    y = resize_shorter(x, 48, 8)
    assert y.shape[-2:] == (48, 64) and y.min() >= 0 and y.max() <= 1


# ----------------------------------------------------------------------------- anchors, maps
def test_anchors_are_the_mean_of_the_prompt_sentences(tiny_clip):
    model, tok = tiny_clip
    anchors = text_anchors(model, tok, PROMPTS)
    normal, abnormal = PROMPTS.sentences()
    assert len(normal) == 4 and "a close-up photo of a broken bottle." in abnormal
    manual = F.normalize(F.normalize(model.encode_text(tok(abnormal)), dim=-1).mean(0), dim=-1)
    assert torch.allclose(anchors[1], manual, atol=1e-5)
    other = PromptSet("bottle", PROMPTS.normal, ["a bottle with a chipped neck"], PROMPTS.templates)
    assert torch.allclose(text_anchors(model, tok, other)[0], anchors[0], atol=1e-6)
    assert not torch.allclose(text_anchors(model, tok, other)[1], anchors[1], atol=1e-3)


def test_multiscale_maps_have_the_image_size(tiny_clip):
    model, tok = tiny_clip
    zs = LanguageZeroShot(model, tok, PROMPTS, classification_size=32, segmentation_sizes=(32, 48),
                          features=("gem", "patch"), gem_depth=2, crop="none")
    img = image(50, 70)
    maps = zs.maps_per_scale(img)
    assert len(maps) == 4 and all(m.shape == (50, 70) for m in maps)
    assert all(0 <= m.min() and m.max() <= 1 for m in maps)
    res = zs(img)
    assert res.anomaly_map.shape == (50, 70) and res.crop is None and res.mode == "language"
    assert np.allclose(res.anomaly_map, np.mean(maps, axis=0), atol=1e-6)
    assert 0 < res.score < 1 and res.threshold == 0.5
    assert np.isclose(res.score, zs.image_score(img), atol=1e-6)  # the shared 32-px pass gives the same score


def test_score_follows_the_anchors(tiny_clip):
    """An image whose global embedding IS the abnormal anchor scores > 0.5, and one whose
    embedding is the normal anchor < 0.5: the probability reads the anchors the right way."""
    model, tok = tiny_clip
    zs = LanguageZeroShot(model, tok, PROMPTS, classification_size=32, segmentation_sizes=(32,), crop="none")
    a, b = image(40, 40, seed=1), image(40, 40, seed=2)
    ga = zs._features(zs._pixels(a), 32).global_emb[0]
    gb = zs._features(zs._pixels(b), 32).global_emb[0]
    zs.anchors = F.normalize(torch.stack([gb, ga]), dim=-1)
    assert zs.image_score(a) > 0.5 > zs.image_score(b)
    p = abnormal_probability(torch.stack([ga, gb]), zs.anchors, zs.logit_scale)
    assert p[0] > 0.5 > p[1]


def test_fuse_puts_the_vision_boundary_at_one_half():
    lang = np.full((4, 6), 0.5, np.float32)
    vision = np.array([[0.0, 2.0], [4.0, 8.0]], np.float32)  # another mode's distances, another size
    fused = fuse(lang, vision, weight=1.0, vision_scale=2.0)
    assert fused.shape == (4, 6)
    assert np.isclose(fuse(lang, np.full((2, 2), 2.0), weight=1.0, vision_scale=2.0), 0.5).all()
    assert np.allclose(fuse(lang, vision, weight=0.0, vision_scale=2.0), lang)
    rel = fuse(np.zeros((2, 2), np.float32), vision, weight=0.5)
    assert np.isclose(rel.max(), 0.5) and np.isclose(rel.min(), 0.0)
    with pytest.raises(ValueError, match="vision_scale"):
        fuse(lang, vision, vision_scale=0.0)


def test_call_fuses_a_vision_map(tiny_clip):
    model, tok = tiny_clip
    zs = LanguageZeroShot(model, tok, PROMPTS, classification_size=32, segmentation_sizes=(32,), crop="none")
    img = image(40, 56)
    alone = zs(img)
    vision = np.zeros((40, 56), np.float32)
    vision[:10, :10] = 3.0
    both = zs(img, vision_map=vision, vision_weight=0.5, vision_scale=1.0, vision_score=3.0)
    assert both.mode == "language+vision"
    assert np.allclose(both.anomaly_map[20:, 20:], 0.5 * alone.anomaly_map[20:, 20:], atol=1e-6)
    assert np.allclose(both.anomaly_map[:10, :10], 0.5 * alone.anomaly_map[:10, :10] + 0.5 * 0.75, atol=1e-6)
    assert np.isclose(both.score, 0.5 * alone.score + 0.5 * 0.75)


def test_bad_settings_are_clear(tiny_clip):
    model, tok = tiny_clip
    with pytest.raises(ValueError, match="features"):
        LanguageZeroShot(model, tok, PROMPTS, features=("cls",))
    with pytest.raises(ValueError, match="crop"):
        LanguageZeroShot(model, tok, PROMPTS, crop="sometimes")
    zs = LanguageZeroShot(model, tok, PROMPTS, classification_size=32, segmentation_sizes=(32,), crop="none")
    with pytest.raises(ValueError, match="uint8 RGB"):
        zs(np.zeros((10, 10), np.float32))
