"""PromptLearner + AnomalyLVLM on CPU, offline.

Most tests use the tiny random-init Llama (hub name "random", SmolLM2 tokenizer), built fresh
per test because training mutates it (~0.5 s). The embedded SmolLM2 is loaded once per module
for the checks that need real weights.
"""
from __future__ import annotations

import math

import pytest
import torch

from anomalygpt import hub
from anomalygpt.config import LLMConfig, PromptConfig
from anomalygpt.checkpoint import build_lvlm, load_lvlm_state, save_lvlm_state
from anomalygpt.models.lvlm import IGNORE_INDEX, AnomalyLVLM
from anomalygpt.models.prompt_learner import PromptLearner

IMAGE_DIM = 32
EMBEDDED_IMAGE_DIM = 320  # global_dim of the embedded EfficientNet-Lite0 encoder (last stage)
END_OF_TURN = "<|im_end|>"  # SmolLM2's (ChatML) end-of-turn token; the random model shares its tokenizer
FACTS = ("Measured facts: anomaly score 0.91, threshold 0.50, verdict anomalous; "
         "1 region: top left, 2.1% of the image.")
QUESTIONS = ["Is there an anomaly in the image?", "Where is it?"]
ANSWERS = ["Yes. The part is anomalous: one small defect at the top left.", "Top left."]

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


def make_random(seed: int = 0, **llm_kw) -> AnomalyLVLM:
    """Fresh tiny model; the same seed gives the same frozen base weights."""
    torch.manual_seed(seed)
    llm_cfg = LLMConfig(name="random", lora_dropout=0.0, **llm_kw)
    return build_lvlm(llm_cfg, PromptConfig(), image_dim=IMAGE_DIM)


def inputs(b: int = 2, size: int = 56, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, IMAGE_DIM, generator=g), torch.rand(b, 1, size, size, generator=g)


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False).input_ids)


# ----------------------------------------------------------------------------- PromptLearner
@pytest.mark.parametrize("hw", [(7, 7), (56, 56), (64, 64), (224, 224), (300, 200)])
def test_prompt_learner_shapes(hw):
    torch.manual_seed(0)
    pl = PromptLearner(576, n_map_tokens=4, n_base_tokens=4)
    for b in (1, 3):
        out = pl(torch.rand(b, 1, *hw))
        assert out.shape == (b, 8, 576) and torch.isfinite(out).all()
    pl2 = PromptLearner(64, n_map_tokens=9, n_base_tokens=0, in_channels=2)
    assert pl2(torch.rand(2, 2, *hw)).shape == (2, 9, 64)


def test_prompt_learner_size_init_and_errors():
    torch.manual_seed(0)
    pl = PromptLearner(576)
    n = sum(p.numel() for p in pl.parameters())
    assert 100_000 < n < 500_000, n
    out = pl(torch.rand(2, 1, 64, 64))
    assert out.abs().max() < 0.2  # small at init: an untrained learner barely moves the LLM
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        pl(torch.rand(2, 3, 64, 64))


def test_prompt_learner_gradients_and_amplitude():
    torch.manual_seed(0)
    pl = PromptLearner(64)
    x = torch.rand(2, 1, 40, 40, requires_grad=True)
    pl(x).pow(2).sum().backward()
    for name, p in pl.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0
    # GroupNorm alone would make uniform 0.1 and 0.9 maps look alike; the amplitude path must not
    with torch.no_grad():
        lo, hi = pl(torch.full((1, 1, 32, 32), 0.1)), pl(torch.full((1, 1, 32, 32), 0.9))
    assert not torch.allclose(lo[:, pl.n_base_tokens:], hi[:, pl.n_base_tokens:])


# ----------------------------------------------------------------------------- tiny Llama
def test_prompt_uses_chat_template_and_image_block():
    m = make_random()
    text = m.render_prompt("Where is it?", FACTS, history=[("Is it OK?", "No, it is anomalous.")])
    assert text.count("<img></img>") == 1 and text.startswith("<|im_start|>system\n")
    first_user = text.split("<|im_start|>user\n")[1]
    assert first_user.startswith(FACTS) and "<img></img>" in first_user and "Is it OK?" in first_user
    assert text.endswith("<|im_start|>user\nWhere is it?<|im_end|>\n<|im_start|>assistant\n")
    # <img> is plain text: the vocabulary is unchanged
    assert len(m.tokenizer) == m.llm.get_input_embeddings().num_embeddings


def test_labels_mask_all_but_answer_tokens():
    m = make_random()
    g, a = inputs()
    facts = [FACTS, None]
    batch = m.prepare_inputs(g, a, QUESTIONS, ANSWERS, facts)
    assert batch.inputs_embeds.shape[:2] == batch.labels.shape == batch.attention_mask.shape
    lengths = batch.attention_mask.sum(1)
    assert lengths[0] != lengths[1]  # different lengths -> padding is exercised
    for i, ans in enumerate(ANSWERS):
        sup = batch.labels[i] != IGNORE_INDEX
        assert int(sup.sum()) == n_tokens(m.tokenizer, ans + END_OF_TURN)
        assert m.tokenizer.decode(batch.labels[i][sup]) == ans + END_OF_TURN
        n = int(lengths[i])
        assert batch.attention_mask[i, :n].all() and not batch.attention_mask[i, n:].any()  # right padding
        assert sup[n - 1] and not sup[n:].any()  # answer ends the real sequence; padding unsupervised
    # a history's earlier answers are context, not targets
    batch = m.prepare_inputs(g[:1], a[:1], ["How big is it?"], ["About 2% of the image."], [FACTS],
                             [[("Is it OK?", "No, it is anomalous.")]])
    assert int((batch.labels != IGNORE_INDEX).sum()) == n_tokens(m.tokenizer, "About 2% of the image." + END_OF_TURN)
    loss = m(g, a, QUESTIONS, ANSWERS, facts)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    assert abs(loss.item() - math.log(len(m.tokenizer))) < 2.0  # random model: about uniform


def test_gradients_reach_exactly_the_trainable_parameters():
    m = make_random()
    g, a = inputs()
    m.train()
    trainable = {id(p) for p in m.trainable_parameters()}
    names = [n for n, _ in m._named_trainable()]
    assert sum(n.startswith("lora.") for n in names) == 2 * 4 * 2  # 2 layers x q/k/v/o x (A, B)
    assert {n.split(".")[0] for n in names} == {"lora", "image_proj", "prompt_learner"}
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    for step in range(2):  # step 2: lora_B != 0, so lora_A gets a gradient too
        opt.zero_grad()
        m(g, a, QUESTIONS, ANSWERS, [FACTS, None]).backward()
        for name, p in m.named_parameters():
            if id(p) in trainable:
                assert p.grad is not None, name
                if step == 1 or "lora_A" not in name:
                    assert p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None and not p.requires_grad, f"frozen LLM parameter {name} got a gradient"
        opt.step()
    n_frozen = sum(p.numel() for p in m.parameters() if id(p) not in trainable)
    assert n_frozen == sum(p.numel() for p in m.llm.parameters()) - sum(
        p.numel() for n, p in m._named_trainable() if n.startswith("lora."))


def test_overfits_one_batch():
    # initializer_range 0.2 instead of 0.02: with the default, the frozen random lm_head's rows are
    # so short that no hidden state can give any token more than a few nats of margin, so the
    # loss cannot fall far whatever trains (measured: 10.75 -> 9.96 in 30 steps).
    m = make_random(lora_r=8, random_config={"initializer_range": 0.2})
    g, a = inputs()
    m.train()
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = m(g, a, QUESTIONS, ANSWERS, [FACTS, None])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    assert all(math.isfinite(x) for x in losses)


def test_loss_on_kept_logits_equals_full_logits():
    """The logits_to_keep shortcut (vocab projection only where supervised) changes nothing."""
    m = make_random()
    g, a = inputs()
    assert m._supports_logits_to_keep
    fast = m(g, a, QUESTIONS, ANSWERS, [FACTS, None])
    m._supports_logits_to_keep = False
    full = m(g, a, QUESTIONS, ANSWERS, [FACTS, None])
    torch.testing.assert_close(fast, full)


def test_generate_batch_deterministic_and_stream():
    m = make_random()
    g, a = inputs(3)
    qs = ["Is it OK?", "Where is the defect?", "How big is the anomalous region in the image?"]
    facts = [FACTS, None, FACTS]
    out1 = m.generate(g, a, qs, facts, max_new_tokens=6)
    out2 = m.generate(g, a, qs, facts, max_new_tokens=6)
    assert isinstance(out1, list) and len(out1) == 3 and all(isinstance(s, str) for s in out1)
    assert out1 == out2
    torch.manual_seed(0)
    sampled = m.generate(g, a, qs, facts, max_new_tokens=6, do_sample=True, temperature=1.0, top_p=0.95)
    assert len(sampled) == 3
    streamed = "".join(m.stream_generate(g[:1], a[:1], qs[0], facts[0], max_new_tokens=6)).strip()
    assert streamed == m.generate(g[:1], a[:1], qs[:1], facts[:1], max_new_tokens=6)[0]


def test_merged_lora_gives_the_same_logits_and_keeps_the_adapter():
    m = make_random(3).eval()
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a LoRA that changes the output
    g, a = inputs(2)
    batch = m.prepare_inputs(g, a, ["Is it OK?", "Where?"], None, [FACTS, None], None, "left")
    with torch.no_grad():
        before = m.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).logits
        state = m.trainable_state_dict()
        m.merge_lora()
        m.merge_lora()  # twice is harmless: no deltas added twice
        after = m.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).logits
    assert torch.allclose(before, after, atol=1e-4)
    assert all(torch.equal(state[k], v) for k, v in m.trainable_state_dict().items())


def test_stream_stops_when_consumer_stops():
    m = make_random()
    g, a = inputs(1)
    m.train()
    pieces = m.stream_generate(g, a, "Is it OK?", max_new_tokens=400)
    first = next(pieces)
    pieces.close()  # must not wait for 400 tokens, and must restore train mode
    assert isinstance(first, str) and m.training


def test_bfloat16_llm_with_float32_inputs():
    m = make_random(dtype="bfloat16")
    assert m.llm_dtype == torch.bfloat16 and m.prompt_learner.proj.weight.dtype == torch.float32
    g, a = inputs()
    loss = m(g, a, QUESTIONS, ANSWERS)
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert m.prompt_learner.proj.weight.grad is not None and m.image_proj.weight.grad is not None
    assert len(m.generate(g, a, QUESTIONS, max_new_tokens=3)) == 2


def test_trainable_state_round_trip(tmp_path):
    g, a = inputs()
    src = make_random(seed=0)
    src.train()
    opt = torch.optim.AdamW(src.trainable_parameters(), lr=1e-2)
    for _ in range(3):  # move LoRA B off zero so the check covers every tensor
        opt.zero_grad()
        src(g, a, QUESTIONS, ANSWERS).backward()
        opt.step()
    sd = src.trainable_state_dict()
    assert all(k.split(".")[0] in ("lora", "image_proj", "prompt_learner") for k in sd)
    assert not any("default" in k or "base_model" in k for k in sd)  # stable, peft-independent names
    assert sum(v.numel() for v in sd.values()) == sum(p.numel() for p in src.trainable_parameters())
    path = tmp_path / "trainable.safetensors"
    save_lvlm_state(src, path)

    dst = make_random(seed=0)  # same seed -> same frozen base weights, fresh trainable parts
    src.eval(), dst.eval()

    def logits(m: AnomalyLVLM) -> torch.Tensor:
        with torch.no_grad():
            b = m.prepare_inputs(g, a, QUESTIONS, ANSWERS, [FACTS, None])
            return m.llm(inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask).logits

    assert not torch.equal(logits(src), logits(dst))
    load_lvlm_state(dst, path)
    assert torch.equal(logits(src), logits(dst))
    assert src.generate(g, a, QUESTIONS, max_new_tokens=6) == dst.generate(g, a, QUESTIONS, max_new_tokens=6)

    with pytest.raises(ValueError, match="missing"):
        dst.load_trainable_state_dict({k: v for k, v in sd.items() if not k.startswith("lora.")})
    other = make_random(seed=0, lora_r=4)
    with pytest.raises(ValueError, match="shape"):
        other.load_trainable_state_dict(sd)


def test_lora_off_and_config_errors():
    m = make_random(lora_r=0)
    assert all(not n.startswith("lora.") for n, _ in m._named_trainable())
    assert not any(p.requires_grad for p in m.llm.parameters())
    with pytest.raises(ValueError, match="lora_targets"):
        make_random(lora_targets=["no_such_proj"])
    with pytest.raises(ValueError, match="batch sizes differ"):
        g, a = inputs()
        m(g, a, QUESTIONS, ANSWERS, facts=[FACTS])


def test_quantization_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    with pytest.raises(hub.ModelNotAvailable, match="CUDA"):
        build_lvlm(LLMConfig(name="embedded", quantization="4bit"), PromptConfig(), EMBEDDED_IMAGE_DIM)


# ----------------------------------------------------------------------------- embedded SmolLM2
@pytest.fixture(scope="module")
def embedded() -> AnomalyLVLM:
    try:
        torch.manual_seed(0)
        return build_lvlm(LLMConfig(name="embedded"), PromptConfig(), image_dim=EMBEDDED_IMAGE_DIM)
    except hub.ModelNotAvailable as e:
        pytest.skip(str(e))


def test_embedded_trainable_parameter_counts(embedded):
    counts: dict[str, int] = {}
    for name, p in embedded._named_trainable():
        counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + p.numel()
    # r=8 on q/k/v/o of 30 layers (hidden 576, kv 192): 30 * 8 * (2*576+576+576 + 576+192 + 576+192 + 576+576)
    assert counts["lora"] == 921_600
    assert counts["image_proj"] == EMBEDDED_IMAGE_DIM * 576 + 576
    total = sum(counts.values())
    assert total == sum(p.numel() for p in embedded.trainable_parameters()) == sum(
        p.numel() for p in embedded.parameters() if p.requires_grad)
    print(f"embedded trainable parameters: {counts}, total {total:,}")


def test_embedded_generates_text(embedded):
    g = torch.randn(1, EMBEDDED_IMAGE_DIM)
    amap = torch.zeros(1, 1, 224, 224)
    amap[..., 20:60, 20:60] = 0.9
    out = embedded.generate(g, amap, ["Is there a defect, and where is it?"], [FACTS], max_new_tokens=16)
    assert len(out) == 1 and out[0].strip(), out
    print("embedded answer:", out[0])


# ----------------------------------------------------------------------------- LoRA folded at load
def test_folded_lora_matches_peft_merge_and_refuses_training():
    """Inference loads fold LoRA into the weights without peft: same logits as peft's merge."""
    trained = make_random()
    with torch.no_grad():  # LoRA B starts at zero: give the deltas something to fold
        for name, p in trained._named_trainable():
            p.add_(0.05 * torch.randn_like(p))
    state = trained.trainable_state_dict()
    assert any(k.startswith("lora.") for k in state)
    trained.merge_lora()
    torch.manual_seed(0)
    folded = build_lvlm(LLMConfig(name="random", lora_dropout=0.0), PromptConfig(), image_dim=IMAGE_DIM,
                               fold_lora=True)
    assert not any("lora_" in n for n, _ in folded.llm.named_modules())
    folded.load_trainable_state_dict(state)
    g, a = inputs(2)
    trained.eval(), folded.eval()
    with torch.no_grad():
        x = trained.prepare_inputs(g, a, QUESTIONS, facts=[FACTS, None], padding_side="left")
        ref = trained.llm(inputs_embeds=x.inputs_embeds, attention_mask=x.attention_mask).logits
        y = folded.prepare_inputs(g, a, QUESTIONS, facts=[FACTS, None], padding_side="left")
        out = folded.llm(inputs_embeds=y.inputs_embeds, attention_mask=y.attention_mask).logits
    assert torch.equal(x.inputs_embeds, y.inputs_embeds)
    assert torch.allclose(out, ref, atol=1e-5)
    assert folded.generate(g, a, QUESTIONS, max_new_tokens=8) == trained.generate(g, a, QUESTIONS, max_new_tokens=8)
    with pytest.raises(RuntimeError, match="folded"):
        folded.trainable_state_dict()
    with pytest.raises(RuntimeError, match="already folded"):
        folded.load_trainable_state_dict(state)


def test_folded_lora_rejects_a_state_of_other_settings():
    state = make_random().trainable_state_dict()
    torch.manual_seed(0)
    folded = build_lvlm(LLMConfig(name="random", lora_r=4), PromptConfig(), image_dim=IMAGE_DIM, fold_lora=True)
    with pytest.raises(ValueError, match="lora_r"):
        folded.load_trainable_state_dict(state)
