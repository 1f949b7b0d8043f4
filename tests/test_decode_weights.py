"""DecodeLinear / compact_for_decoding: compact weights for one-row steps, float32 elsewhere."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from anomalygpt.decode_weights import DecodeLinear, compact_decode_weights
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
