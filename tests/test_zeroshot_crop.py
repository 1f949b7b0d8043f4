"""Object crop before scoring: a tiny random-init Grounding DINO (transformers; its BERT text
tower gets a tiny WordPiece tokenizer built offline from a word list), the foreground
fallback, and the paste back into the original image's coordinates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalygpt.zeroshot.clip_language import LanguageZeroShot
from anomalygpt.zeroshot.crop import (CropChoice, GroundingDinoDetector, choose_crop, crop_score_paste, expand_box,
                                      foreground_box, load_grounding_dino, paste)
from test_zeroshot_language import PROMPTS, TINY_ZS_CLIP

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "bottle", "screw", "solar", "cell"]


@pytest.fixture(scope="module")
def tiny_dino(one_thread):
    """Model + processor of a tiny random Grounding DINO, built without any download."""
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)})
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=4, out_indices=[2, 3, 4])
    bert = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2,
                              encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                              decoder_attention_heads=2, num_queries=10, max_text_len=16)
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(cfg).eval()
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
                                  tokenizer=tok)
    return model, proc


@pytest.fixture(scope="module")
def tiny_zs():
    from anomalygpt import hub

    torch.manual_seed(0)
    model, tok = hub.load_open_clip("zs-tiny-vit", "none", {"model_cfg": TINY_ZS_CLIP})
    return model, tok


def part_on_backdrop(h: int = 60, w: int = 90) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A textured bright part on a dark, slightly noisy backdrop; returns (image, part box)."""
    rng = np.random.default_rng(0)
    img = rng.integers(10, 30, (h, w, 3), dtype=np.uint8)
    box = (30, 12, 70, 44)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = rng.integers(170, 250, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    return img, box


def test_tiny_grounding_dino_box_is_scored_and_pasted_on_its_box(tiny_dino, tiny_zs):
    model, proc = tiny_dino
    detector = GroundingDinoDetector(model, proc, box_threshold=0.0, text_threshold=0.0)
    img, _ = part_on_backdrop()
    found = detector(img, "bottle")
    assert found is not None
    box, score = found
    assert 0 <= box[0] < box[2] <= 90 and 0 <= box[1] < box[3] <= 60 and 0 <= score <= 1
    clip, tok = tiny_zs
    zs = LanguageZeroShot(clip, tok, PROMPTS, classification_size=32, segmentation_sizes=(32,), crop="auto",
                          detector=detector, crop_margin=0.0)
    res = zs(img)
    # the detector's box (grown to the 8-px minimum a crop needs) is the one scored
    assert res.crop.source == "grounding-dino" and "score" in res.crop.detail
    assert res.crop.box == expand_box(box, img.shape, margin=0.0)
    x0, y0, x1, y1 = res.crop.box
    assert res.anomaly_map.shape == img.shape[:2]
    inside = np.zeros(img.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    assert (res.anomaly_map[inside] > 0).all() and (res.anomaly_map[~inside] == 0).all()
    crop_map, crop_score = zs.score_array(np.ascontiguousarray(img[y0:y1, x0:x1]))
    assert np.allclose(res.anomaly_map[y0:y1, x0:x1], crop_map) and np.isclose(res.score, crop_score)


def test_detector_that_finds_nothing_falls_back_to_the_foreground(tiny_dino):
    model, proc = tiny_dino
    detector = GroundingDinoDetector(model, proc, box_threshold=1.01)  # no box can pass
    img, (x0, y0, x1, y1) = part_on_backdrop()
    choice = choose_crop(img, "bottle", detector, margin=0.0)
    assert choice.source == "foreground" and "found no 'bottle'" in choice.detail
    bx0, by0, bx1, by1 = choice.box
    assert abs(bx0 - x0) <= 2 and abs(by0 - y0) <= 2 and abs(bx1 - x1) <= 2 and abs(by1 - y1) <= 2


def test_no_foreground_scores_the_full_frame():
    flat = np.full((40, 50, 3), 128, np.uint8)
    assert foreground_box(flat) is None
    choice = choose_crop(flat, "bottle", detector=None)
    assert choice.source == "full" and choice.box == (0, 0, 50, 40)
    assert "no separable foreground" in choice.describe()


def test_paste_lands_on_the_box_in_original_coordinates():
    ramp = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    out = paste(ramp, (5, 2, 9, 5), (10, 12))
    assert out.shape == (10, 12) and np.array_equal(out[2:5, 5:9], ramp)
    assert out.sum() == ramp.sum()
    resized = paste(np.ones((2, 2), np.float32), (1, 1, 7, 4), (8, 8))
    assert (resized[1:4, 1:7] == 1).all() and resized.sum() == 18
    img = np.zeros((10, 12, 3), np.uint8)
    seen = {}

    def score_fn(crop):
        seen["shape"] = crop.shape
        return np.full(crop.shape[:2], 0.7, np.float32), 0.9

    amap, score = crop_score_paste(img, score_fn, CropChoice((2, 3, 8, 9), "foreground"))
    assert seen["shape"] == (6, 6, 3) and score == 0.9
    assert np.isclose(amap[3:9, 2:8], 0.7).all() and amap.sum() == pytest.approx(0.7 * 36)


def test_expand_box_grows_and_clips():
    assert expand_box((10, 10, 20, 30), (40, 25), margin=0.1) == (9, 8, 21, 32)
    assert expand_box((0, 0, 25, 40), (40, 25), margin=0.5) == (0, 0, 25, 40)
    x0, y0, x1, y1 = expand_box((20, 20, 21, 21), (40, 40), margin=0.0, min_size=8)
    assert x1 - x0 == 8 and y1 - y0 == 8


def test_grounding_dino_loads_from_a_saved_folder_and_missing_weights_are_clear(tiny_dino, tmp_path):
    from anomalygpt.hub import ModelNotAvailable

    model, proc = tiny_dino
    model.save_pretrained(tmp_path / "gd")
    proc.save_pretrained(tmp_path / "gd")
    det = load_grounding_dino(str(tmp_path / "gd"), box_threshold=0.0, text_threshold=0.0)
    img, _ = part_on_backdrop()
    assert det(img, "bottle") == GroundingDinoDetector(model, proc, 0.0, 0.0)(img, "bottle")
    with pytest.raises(ModelNotAvailable, match="hf download"):
        load_grounding_dino(str(tmp_path / "missing"))
