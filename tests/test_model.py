"""Vision half of the model: encoders, decoder, memory bank, checkpoint round trip."""
import pytest
import torch

from anomalygpt import checkpoint as model_io
from anomalygpt.config import EncoderConfig, TextConfig
from anomalygpt.models.decoder import PatchDecoder
from anomalygpt.checkpoint import build_image_encoder
from anomalygpt.models.encoders import text_anchors
from anomalygpt.models.memory_bank import MemoryBank

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def test_timm_encoder_shapes_and_frozen():
    enc = build_image_encoder(EncoderConfig(image_size=128, levels=[2, 3]))
    maps, glob = enc(torch.rand(2, 3, 128, 128))
    assert [tuple(m.shape) for m in maps] == [(2, 40, 16, 16), (2, 112, 8, 8)]
    assert glob.shape == (2, enc.global_dim) and enc.strides == [8, 16]
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training


def test_open_clip_encoder_and_text_anchors():
    from anomalygpt import hub

    cfg = EncoderConfig(backend="open_clip", name="tiny-test-vit", pretrained="none", image_size=64, levels=[1, 3],
                        model_kwargs={"model_cfg": TINY_CLIP})
    model, tok = hub.load_open_clip(cfg.name, cfg.pretrained, cfg.model_kwargs)
    enc = build_image_encoder(cfg, model)
    maps, glob = enc(torch.rand(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 4, 4), (2, 64, 4, 4)]
    assert glob.shape == (2, 32)
    anchors = text_anchors(TextConfig(backend="open_clip", object_name="bottle"), clip_model=model, clip_tokenizer=tok)
    assert anchors.shape == (2, 32)
    assert torch.allclose(anchors.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_unknown_open_clip_model_is_clear():
    from anomalygpt import hub

    with pytest.raises(hub.ModelNotAvailable, match="unknown open_clip model"):
        hub.load_open_clip("no-such-model", "none")


def test_memory_bank_zero_for_reference_and_high_for_perturbed_patch():
    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(1, 8, 12, 12, generator=g), torch.randn(1, 16, 6, 6, generator=g)]
    bank = MemoryBank(pool=1, chunk=7)  # tiny chunks exercise the chunked path
    bank.add(ref)
    assert bank.score(ref).abs().max() < 1e-5
    assert bank.score(ref).shape == (1, 1, 12, 12)  # the finest level's grid
    bad = [r.clone() for r in ref]
    bad[0][:, :, 5, 5] = torch.randn(8, generator=g) * 5
    s = bank.score(bad)[0, 0]
    assert s[5, 5] > 0.1 and s[5, 5] == s.max()
    assert s[0, 0] < 1e-5


def test_memory_bank_sees_a_defect_on_the_coarse_level_alone():
    """Levels are concatenated per patch: a change only in the coarse features must still
    light up the matching area of the fine grid, and nothing far from it."""
    g = torch.Generator().manual_seed(3)
    ref = [torch.randn(1, 8, 12, 12, generator=g), torch.randn(1, 16, 6, 6, generator=g)]
    bank = MemoryBank(pool=1)
    bank.add(ref)
    bad = [ref[0].clone(), ref[1].clone()]
    bad[1][:, :, 1, 4] = torch.randn(16, generator=g) * 5
    s = bank.score(bad)[0, 0]
    assert s[2:4, 8:10].min() > 0.05
    assert s[8:, :4].max() < 1e-5


def test_memory_bank_chunking_does_not_change_scores():
    g = torch.Generator().manual_seed(1)
    ref = [torch.randn(3, 8, 10, 10, generator=g)]
    q = [torch.randn(2, 8, 10, 10, generator=g)]
    a, b = MemoryBank(3, chunk=5), MemoryBank(3, chunk=100000)
    a.add(ref)
    b.add(ref)
    assert torch.allclose(a.score(q), b.score(q), atol=1e-6)


def test_decoder_probabilities_and_gradients():
    dec = PatchDecoder([8, 16], anchor_dim=12, temperature=0.1, pool=3)
    dec.set_anchors(torch.randn(2, 12))
    maps = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    prob, logits = dec(maps, (32, 32))
    assert prob.shape == (2, 1, 32, 32) and prob.min() >= 0 and prob.max() <= 1
    assert [tuple(l.shape) for l in logits] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    prob.mean().backward()
    assert all(p.grad is not None for p in dec.parameters())
    assert not dec.anchors.requires_grad


def test_checkpoint_round_trip_gives_identical_outputs(tiny_config, tmp_path):
    torch.manual_seed(0)
    comps = model_io.build(tiny_config)
    with torch.no_grad():
        for p in comps.detector.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # make it differ from a fresh init
        for p in comps.lvlm.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    comps.calibration.threshold = 0.42
    model_io.save(comps, tmp_path / "ck")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left behind
    torch.manual_seed(123)  # a different seed for the fresh trainable parts that get overwritten
    loaded = model_io.load(tmp_path / "ck")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = comps.detector(x), loaded.detector(x)
        assert torch.equal(a.anomaly_map, b.anomaly_map)
        ga = comps.lvlm.generate(a.global_emb, a.anomaly_map, ["Is there any anomaly?"] * 2)
        gb = loaded.lvlm.generate(b.global_emb, b.anomaly_map, ["Is there any anomaly?"] * 2)
    assert ga == gb
    assert loaded.calibration.threshold == 0.42


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="anomalygpt train"):
        model_io.load(tmp_path)


def test_memory_bank_leave_one_out_and_subsample():
    g = torch.Generator().manual_seed(2)
    refs = [torch.randn(3, 8, 6, 6, generator=g)]
    bank = MemoryBank(pool=1, max_patches=50)
    bank.add([refs[0][:2]])
    bank.add([refs[0][2:]])
    assert bank.n_images == 3 and len(bank) == 108
    loo = bank.without(1)
    assert len(loo) == 72 and not (loo.owners == 1).any()
    # image 1 scored against the others is not a perfect match; against the full bank it is
    assert bank.score([refs[0][1:2]]).max() < 1e-5 < loo.score([refs[0][1:2]]).max()
    bank.subsample(seed=0)
    again = MemoryBank(pool=1, max_patches=50)
    again.add([refs[0]])
    again.subsample(seed=0)
    assert len(bank) == 50 and torch.equal(bank.bank, again.bank)


def test_clip_profile_config_is_valid():
    from anomalygpt.config import load_config

    cfg = load_config("clip_gpu")
    assert cfg.encoder.backend == "open_clip" and cfg.text.backend == "open_clip" and cfg.llm.quantization == "4bit"


def test_clip_path_builds_end_to_end_with_tiny_models(tmp_path):
    """The CLIP profile's code path (open_clip encoder + text tower anchors + HF causal LM),
    with a tiny random open_clip model and a tiny random Llama instead of hub weights."""
    from anomalygpt.config import from_dict
    from anomalygpt.inspector import AnomalyGPT

    cfg = from_dict({
        "encoder": {"backend": "open_clip", "name": "tiny-test-vit2", "pretrained": "none", "image_size": 64,
                    "levels": [1, 3], "model_kwargs": {"model_cfg": TINY_CLIP}},
        "text": {"backend": "open_clip", "object_name": "bottle"},
        "llm": {"name": "random", "lora_r": 4, "max_new_tokens": 6},
    })
    comps = model_io.build(cfg)
    assert comps.detector.decoder.anchors.shape == (2, 32)
    model_io.save(comps, tmp_path / "clip")
    assistant = AnomalyGPT.from_pretrained(tmp_path / "clip")
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(80, 90, 3, generator=g) * 255).byte().numpy()
    refs = [(torch.rand(64, 64, 3, generator=g) * 255).byte().numpy() for _ in range(2)]
    report = assistant.inspect(img, references=refs)
    assert report.anomaly_map.shape == (80, 90) and report.n_references == 2
    assert isinstance(report.answer, str)
