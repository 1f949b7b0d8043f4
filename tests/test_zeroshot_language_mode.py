"""The language mode behind the zero-shot registry's scorer interface: fields, shapes, crop
boxes as fractions of the image, fusion with a vision scorer's map and threshold."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anomalygpt.zeroshot.clip_language import LanguageZeroShot
from anomalygpt.zeroshot.language_mode import LanguageSettings, score_language, to_uint8
from test_zeroshot_crop import part_on_backdrop
from test_zeroshot_language import PROMPTS, TINY_ZS_CLIP


@pytest.fixture(scope="module")
def ctx(one_thread):
    from anomalygpt import hub
    from anomalygpt.checkpoint import build_image_encoder
    from anomalygpt.config import EncoderConfig

    torch.manual_seed(0)
    clip, tok = hub.load_open_clip("zs-tiny-vit", "none", {"model_cfg": TINY_ZS_CLIP})
    zs = LanguageZeroShot(clip, tok, PROMPTS, classification_size=32, segmentation_sizes=(32, 48), crop="auto")
    encoder = build_image_encoder(EncoderConfig(image_size=64, levels=[2, 3]))
    return SimpleNamespace(encoder=encoder, cfg=None, map_size=64, smooth_sigma=1.0, object_name="bottle",
                           extras={"language": {"scorer": zs, "vision_weight": 1.0}})


def images() -> torch.Tensor:
    part, _ = part_on_backdrop(60, 90)
    flat = np.full((60, 90, 3), 128, np.uint8)
    return torch.from_numpy(np.stack([part, flat])).permute(0, 3, 1, 2).float() / 255


def test_scorer_returns_the_registry_fields(ctx):
    out = score_language(images(), ctx)
    assert set(out) == {"anomaly_map", "scores", "thresholds", "threshold_source", "global_emb", "info"}
    assert out["anomaly_map"].shape == (2, 1, 64, 64) and out["scores"].shape == (2,)
    assert np.array_equal(out["thresholds"], [0.5, 0.5]) and "not fitted" in out["threshold_source"]
    assert out["global_emb"].shape == (2, ctx.encoder.global_dim)
    assert out["info"]["crop_sources"] == ["foreground", "full"]
    x0, y0, x1, y1 = out["info"]["crops"][0]
    assert 0 < x0 < x1 < 1 and 0 < y0 < y1 < 1  # the part, as fractions of the image
    assert out["info"]["crops"][1] == (0.0, 0.0, 1.0, 1.0)
    # outside the scored crop the map is 0, inside it is a probability
    amap = out["anomaly_map"][0, 0].numpy()
    assert amap[:, : int(x0 * 64) - 1].max() == 0 and amap[int(y0 * 64) + 2: int(y1 * 64) - 2,
                                                          int(x0 * 64) + 2: int(x1 * 64) - 2].min() > 0


def test_vision_scorer_is_fused_at_its_threshold(ctx):
    """A vision scorer's map enters as v / (v + its threshold): with weight 1 the fused map is
    exactly that, 0.5 where the vision map equals the threshold."""
    def vision(x, c):
        amap = torch.zeros(len(x), 1, 64, 64)
        amap[:, :, :32] = 2.0
        return SimpleNamespace(anomaly_map=amap, scores=torch.full((len(x),), 2.0), thresholds=np.array([2.0, 4.0]),
                               threshold_source="test rule")

    out = score_language(images(), ctx, vision=vision)
    m = out["anomaly_map"][:, 0].numpy()
    assert np.allclose(m[0, :30], 0.5, atol=1e-5) and np.allclose(m[1, :30], 2 / 6, atol=1e-5)
    assert np.allclose(m[:, 34:], 0.0, atol=1e-6)
    assert torch.allclose(out["scores"], torch.tensor([0.5, 2 / 6]), atol=1e-6)
    assert out["info"]["vision"]["threshold_source"] == "test rule"


def test_settings_are_checked_and_object_needed():
    assert LanguageSettings.from_extras({}).clip_model == "ViT-B-16-plus-240"
    with pytest.raises(ValueError, match="unknown language zero-shot settings"):
        LanguageSettings.from_extras({"language": {"clip": "x"}})
    from anomalygpt.zeroshot.language_mode import language_scorer
    with pytest.raises(ValueError, match="--object"):
        language_scorer(LanguageSettings(), None)


def test_to_uint8_round_trips():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    assert np.array_equal(to_uint8(x)[0], img)


def test_registered_modes_run_the_language_scorer(ctx):
    """'language' and 'language+self' sit in the registry the API and CLI use."""
    from anomalygpt.zeroshot import MODES, ZeroShotResult

    direct = score_language(images(), ctx)
    res = MODES["language"].scorer(images(), ctx)
    assert isinstance(res, ZeroShotResult) and torch.equal(res.anomaly_map, direct["anomaly_map"])
    assert not MODES["language"].needs_batch and MODES["language"].input_size(None, 224) == 512
    assert "language+self" in MODES
