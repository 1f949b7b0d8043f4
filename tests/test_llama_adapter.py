"""The LoRA as a llama.cpp adapter GGUF (anomalygpt.llama_adapter): no llama.cpp needed. The
file is read back with gguf's own reader and rebuilt by hand here: base (de-quantized from
the shipped GGUF) + alpha / r * B @ A must equal torch's inference weight (LoRA folded in by
AnomalyLVLM) in llama.cpp's row order, for every adapted matrix."""
from __future__ import annotations

import numpy as np
import pytest

from anomalygpt import hub
from anomalygpt.checkpoint import LVLM_FILE
from anomalygpt.inspector import resolve_checkpoint
from anomalygpt.llama_adapter import (KEY_DIFF, KEY_SOURCE, AdapterUnavailable, adapter_difference, base_layout,
                                      default_adapter_path, dequantized, export_adapter, lora_pairs, rotary_rows,
                                      state_key, write_adapter)


@pytest.fixture(scope="module")
def layout():
    return base_layout(hub._gguf_path())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, embedded_assistant):
    out = tmp_path_factory.mktemp("gguf") / "lora.gguf"
    info = export_adapter(resolve_checkpoint("embedded"), out, lvlm=embedded_assistant.lvlm)
    return out, info


def test_rotary_rows_is_the_gguf_order_of_q_and_k(layout):
    """The shipped GGUF's attn_q / attn_k are HF's q_proj / k_proj with rows permuted per head;
    rotary_rows reproduces that exactly (and v is stored unpermuted)."""
    from safetensors.numpy import load_file

    hf = load_file(str(hub.resolve_llm_path("embedded") + "/model.safetensors"))
    for i in (0, 17):
        q, k, v = (hf[f"model.layers.{i}.self_attn.{n}_proj.weight"] for n in "qkv")
        assert np.array_equal(rotary_rows(q, layout["n_head"]), dequantized(layout, f"blk.{i}.attn_q.weight"))
        assert np.array_equal(rotary_rows(k, layout["n_head_kv"]), dequantized(layout, f"blk.{i}.attn_k.weight"))
        assert np.array_equal(v, dequantized(layout, f"blk.{i}.attn_v.weight"))
        assert not np.array_equal(q, dequantized(layout, f"blk.{i}.attn_q.weight"))  # the order does differ


def test_adapter_read_back_equals_torch_folded_weights(exported, layout, embedded_assistant):
    import gguf

    path, info = exported
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.type"] == "adapter" and fields["general.architecture"] == "llama"
    assert fields["adapter.type"] == "lora"
    lvlm = embedded_assistant.lvlm
    assert fields["adapter.lora.alpha"] == pytest.approx(lvlm.llm_cfg.lora_alpha)
    ckpt = resolve_checkpoint("embedded")
    assert fields[KEY_SOURCE] == state_key(ckpt / LVLM_FILE, hub._gguf_path().name)
    assert fields[KEY_DIFF] == pytest.approx(info["max_abs_diff_vs_torch"]) and fields[KEY_DIFF] < 1e-5

    tensors = {t.name: np.asarray(t.data, np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
               for t in reader.tensors}
    r = lvlm.llm_cfg.lora_r
    scale = lvlm.llm_cfg.lora_alpha / r
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    heads = {"q_proj": layout["n_head"], "k_proj": layout["n_head_kv"]}
    mods = dict(lvlm.llm.named_modules())
    n_layers = lvlm.llm.config.num_hidden_layers
    checked, worst = 0, 0.0
    for i in range(n_layers):
        for hf_name, cpp in names.items():
            a, b = tensors[f"blk.{i}.{cpp}.weight.lora_a"], tensors[f"blk.{i}.{cpp}.weight.lora_b"]
            assert a.shape[0] == r and b.shape[1] == r
            rebuilt = dequantized(layout, f"blk.{i}.{cpp}.weight") + scale * (b.astype(np.float64) @ a)
            torch_w = mods[f"model.layers.{i}.self_attn.{hf_name}"].weight.detach().float().numpy()
            want = rotary_rows(torch_w, heads[hf_name]) if hf_name in heads else torch_w
            worst = max(worst, float(np.abs(rebuilt - want).max()))
            checked += 1
    assert checked == info["matrices"] == 4 * n_layers
    assert worst < 1e-5
    assert len(reader.tensors) == 2 * checked


def test_check_catches_an_adapter_without_the_rotary_permutation(exported, layout, embedded_assistant, tmp_path):
    """The export's own check is not vacuous: B of q / k written in HF row order (a head
    count with 2-row heads makes rotary_rows the identity) is found far off."""
    from safetensors.torch import load_file

    ckpt = resolve_checkpoint("embedded")
    n_layers = embedded_assistant.lvlm.llm.config.num_hidden_layers
    pairs = lora_pairs(load_file(str(ckpt / LVLM_FILE)), n_layers)
    mods = dict(embedded_assistant.lvlm.llm.named_modules())
    folded = {n: mods[m].weight.detach().float().numpy() for n, (_, _, m) in pairs.items()}
    identity = dict(layout, n_head=576 // 2, n_head_kv=192 // 2)
    wrong = tmp_path / "wrong.gguf"
    write_adapter(pairs, identity, 16, wrong, {})
    assert adapter_difference(wrong, layout, folded) > 1e-3
    assert adapter_difference(exported[0], layout, folded) < 1e-5


def test_default_path_follows_the_checkpoint_state(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"one state")
    b.write_bytes(b"another state")
    assert default_adapter_path(a, "base.gguf") == default_adapter_path(a, "base.gguf")
    assert default_adapter_path(a, "base.gguf") != default_adapter_path(b, "base.gguf")
    assert default_adapter_path(a, "base.gguf") != default_adapter_path(a, "other.gguf")


def test_lora_names_without_a_llama_cpp_tensor_are_refused():
    import torch

    with pytest.raises(AdapterUnavailable, match="no llama.cpp counterpart"):
        lora_pairs({"lora.model.layers.0.mlp.fc9.lora_A.weight": torch.zeros(2, 4),
                    "lora.model.layers.0.mlp.fc9.lora_B.weight": torch.zeros(4, 2)}, 30)


def test_cli_export_gguf_refuses_a_non_gguf_llm(tiny_checkpoint, capsys):
    from anomalygpt.cli import main

    assert main(["export", "--format", "gguf", "--checkpoint", str(tiny_checkpoint), "--out", "/nonexistent/x.gguf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only the embedded LLM ships as GGUF" in err[0]
