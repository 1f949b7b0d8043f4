"""DecodeLinear / compact_for_decoding: compact weights for one-row steps, float32 elsewhere."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from anomalygpt.models.decode_weights import DecodeLinear, compact_decode_weights, find_cache, half_kernel_is_safe
from test_lvlm import FACTS, inputs, make_random

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


def _linear(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(64, 48, bias=bias)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_row_uses_compact_weight_many_rows_float32(dtype):
    lin = _linear()
    dec = DecodeLinear(lin, dtype)
    assert dec.compact.dtype == dtype and dec.weight is lin.weight and dec.bias is lin.bias
    with torch.no_grad():
        row, rows = torch.randn(1, 1, 64), torch.randn(2, 5, 64)
        # many rows: the float32 weight, exactly
        assert torch.equal(dec(rows), lin(rows))
        # one row: the half-precision kernel, close to float32 but not bit-equal
        out = dec(row)
        assert out.dtype == torch.float32 and out.shape == (1, 1, 48)
        tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
        assert torch.allclose(out, lin(row), atol=tol)


def test_one_row_overflow_reaches_output_as_inf_for_the_guard():
    lin = _linear(bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)  # each output = 64 x 3e3, beyond float16
        dec = DecodeLinear(lin, torch.float16)
        big = torch.full((1, 64), 3e3)
        assert not torch.isfinite(dec(big)).all()          # one row: float16, overflows
        assert torch.equal(dec(big.repeat(2, 1))[:1], lin(big))  # two rows: float32


@pytest.mark.parametrize("where", ["model.layers.0.mlp.down_proj", "lm_head"])
def test_overflowing_step_is_recomputed_in_float32(where):
    """inf in a compact weight (as float16 overflow would give) anywhere in the network:
    every decoding step is rolled back and redone in float32, so the greedy answer is the
    float32 model's, token for token."""
    torch.manual_seed(0)
    m = make_random().eval()
    g, a = inputs(1)
    m.merge_lora()
    ask = lambda: m.generate(g, a, ["Is there an anomaly?"], facts=[FACTS], max_new_tokens=10)  # noqa: E731
    reference = ask()
    m.compact_for_decoding("float16")
    layer = next(mod for n, mod in m.llm.named_modules() if n.endswith(where))
    assert isinstance(layer, DecodeLinear)
    with torch.no_grad():
        layer.compact[0, 0] = float("inf")
    guard = m.llm.decode_overflow_guard
    assert ask() == reference and reference[0]
    assert 0 < guard.recomputed <= 10  # at most every step, incl. the prompt step (its head sees one row)


@pytest.fixture(scope="module")
def float32_answer():
    """The tiny model's float32 greedy answer, and a builder of fresh compact copies."""
    def build():
        torch.manual_seed(0)
        m = make_random().eval()
        m.merge_lora()
        return m
    g, a = inputs(1)
    ask = lambda m: m.generate(g, a, ["Is there an anomaly?"], facts=[FACTS], max_new_tokens=10)  # noqa: E731
    return build, ask, ask(build())


@pytest.mark.parametrize("where, value, channel", [
    ("layers.0.self_attn.q_proj", float("inf"), 0),
    ("layers.0.self_attn.v_proj", float("nan"), 5),     # v: the bad value is written to the KV cache
    ("layers.1.self_attn.k_proj", float("-inf"), -1),   # k: likewise, in the last layer
    ("layers.0.mlp.down_proj", float("-inf"), 17),      # what AVX2's kernel gives for +inf * negative
    ("layers.1.mlp.gate_proj", float("nan"), 3),        # and inf * 0
    ("layers.1.self_attn.o_proj", float("inf"), -1),
    ("lm_head", float("nan"), 7),                        # the head: the prompt step is redone too
])
def test_non_finite_activation_anywhere_gives_the_float32_answer(float32_answer, where, value, channel):
    """A non-finite value arising in the output of any one-row float16 product (not only
    from a planted weight): every such step is undone in the KV cache and redone in
    float32, so the greedy answer is float32's token for token on any CPU."""
    build, ask, reference = float32_answer
    m = build()
    m.compact_for_decoding("float16")
    layer = next(mod for n, mod in m.llm.named_modules()
                 if isinstance(mod, DecodeLinear) and (n.endswith(where) or n.endswith(f"{where}.base_layer")))

    def spoil(mod, args, out):
        if mod.switch.on and args[0].numel() == args[0].shape[-1]:  # only the compact path
            out = out.clone()
            out[..., channel] = value
            return out
        return None

    layer.register_forward_hook(spoil)
    guard = m.llm.decode_overflow_guard
    assert ask(m) == reference and reference[0]
    assert 0 < guard.recomputed <= 10


class _FakeCache:
    def get_seq_length(self) -> int:
        return 3

    def crop(self, n: int) -> None:
        pass


def test_cache_is_found_whatever_its_keyword():
    cache = _FakeCache()
    for kwargs in ({"past_key_values": cache}, {"cache": cache}, {"kv": cache, "x": 1}):
        assert find_cache((), kwargs) is cache
    assert find_cache((torch.zeros(1), cache), {}) is cache
    assert find_cache((), {"past_key_values": None, "input_ids": torch.zeros(1)}) is None


def test_kernel_probe_passes_here_and_catches_a_clamping_or_wrong_kernel(monkeypatch):
    assert half_kernel_is_safe(torch.float16) == (True, "ok")
    real = torch.nn.functional.linear

    def clamping(x, w, b=None):  # a kernel that saturates instead of overflowing
        y = real(x, w, b)
        return y.clamp(-65504, 65504) if y.dtype == torch.float16 else y

    def sloppy(x, w, b=None):  # a kernel with large errors
        y = real(x, w, b)
        return (y * 1.1) if y.dtype == torch.float16 else y

    monkeypatch.setattr(torch.nn.functional, "linear", clamping)
    safe, why = half_kernel_is_safe(torch.float16)
    assert not safe and "overflow" in why
    m = make_random()
    m.merge_lora()
    with pytest.warns(RuntimeWarning, match="stay float32"):
        assert m.compact_for_decoding("float16") == torch.float32
    assert not any(isinstance(mod, DecodeLinear) for mod in m.llm.modules())
    monkeypatch.setattr(torch.nn.functional, "linear", sloppy)
    safe, why = half_kernel_is_safe(torch.float16)
    assert not safe and "off by" in why


def test_compact_swaps_linears_but_not_lora_or_embeddings():
    m = make_random()
    m.merge_lora()
    emb = m.llm.get_input_embeddings().weight
    assert m.compact_for_decoding("float16") == torch.float16
    assert m.llm.get_input_embeddings().weight.dtype == torch.float32 and m.llm_dtype == torch.float32
    assert m.llm.get_input_embeddings().weight is emb
    outside_lora = [mod for n, mod in m.llm.named_modules() if "lora_" not in n]
    assert any(isinstance(mod, DecodeLinear) for mod in outside_lora)
    assert not any(type(mod) is nn.Linear for mod in outside_lora)
    assert any(type(mod) is nn.Linear for n, mod in m.llm.named_modules() if "lora_" in n)
    assert m.compact_for_decoding("auto") == torch.float16  # already compact: nothing more to do
    assert compact_decode_weights(m.llm) == 0
    head = m.llm.get_output_embeddings()
    assert head.weight is m.llm.get_input_embeddings().weight or not m.llm.config.tie_word_embeddings


def test_auto_keeps_quantized_or_half_llms_and_float32_opt_out():
    m = make_random(dtype="bfloat16")
    assert m.compact_for_decoding("auto") == torch.bfloat16
    assert not any(isinstance(mod, DecodeLinear) for mod in m.llm.modules())
    m32 = make_random()
    assert m32.compact_for_decoding("float32") == torch.float32
    assert not any(isinstance(mod, DecodeLinear) for mod in m32.llm.modules())


def test_greedy_answer_unchanged_on_tiny_model():
    torch.manual_seed(0)
    m = make_random().eval()
    g, a = inputs(1)
    m.merge_lora()
    before = m.generate(g, a, ["Is there an anomaly?"], facts=[FACTS], max_new_tokens=12)
    m.compact_for_decoding("float16")
    after = m.generate(g, a, ["Is there an anomaly?"], facts=[FACTS], max_new_tokens=12)
    assert before == after and before[0]
