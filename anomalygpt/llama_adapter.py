"""The checkpoint's LoRA as a llama.cpp adapter GGUF: `anomalygpt export --format gguf`.

WHY an adapter and not re-quantized folded weights: the base weights stay the shipped ones
(llama.cpp runs a Q8_0 copy of the Q4_1 GGUF, `llama_runtime.decoding_base`), and the trained
deltas stay exact (float32 A and B; llama.cpp adds scale * B @ (A @ x) beside each quantized
matmul). Re-quantizing W + scale * B @ A would blur the small trained deltas into the
quantization noise.

Layout (read from llama.cpp's adapter loader): general.type "adapter", general.architecture
of the base, adapter.type "lora", adapter.lora.alpha; tensors `blk.{i}.{attn_q,...}.weight.
lora_a` [r, in] and `.lora_b` [out, r] (torch's row-major shapes, the same as peft's A and
B); llama.cpp scales by alpha / r. The base GGUF stores attn_q / attn_k rows in llama.cpp's
rotary order (each head's two halves interleaved), so B of q and k gets the same row
permutation (`rotary_rows`); A (input side) and v / o stay as they are.

The export checks the written file, read back, against the torch inference weights: for
every adapted matrix, base (de-quantized from the GGUF) + scale * B @ A must equal the
torch-folded weight in rotary order, and the largest difference is recorded in the file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-5      # base + scale * B @ A of the file vs torch's folded weight, max abs
KEY_SOURCE = "anomalygpt.lvlm_sha256"     # which checkpoint state the adapter was made from
KEY_BASE = "anomalygpt.base_gguf"         # the base GGUF file it adapts
KEY_DIFF = "anomalygpt.max_abs_diff_vs_torch"
# peft / transformers module name -> llama.cpp tensor name (llama architecture)
TARGETS = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
           "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


class AdapterUnavailable(ValueError):
    """The adapter file is missing, stale or does not fit this checkpoint."""


def rotary_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a Hugging Face q_proj / k_proj weight (or LoRA B) in llama.cpp's rotary order:
    HF keeps each head's first and second rotary halves apart, the GGUF interleaves them."""
    out = w.shape[0]
    return np.ascontiguousarray(w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def state_key(lvlm_file: str | Path, base_name: str) -> str:
    """Hash of the checkpoint's trainable LLM state and the base GGUF's name: names the
    default adapter file, so a retrained checkpoint never picks up a stale adapter."""
    h = hashlib.sha256(Path(lvlm_file).read_bytes())
    h.update(base_name.encode())
    return h.hexdigest()


def default_adapter_path(lvlm_file: str | Path, base_name: str) -> Path:
    """Where `anomalygpt export --format gguf` puts the adapter by default (the cache)."""
    from . import hub

    return hub.cache_dir() / "llm" / f"lora-{state_key(lvlm_file, base_name)[:16]}.gguf"


def base_layout(base_gguf: str | Path) -> dict[str, Any]:
    """Architecture, head counts and the tensor table of the base GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    arch = _field(reader, "general.architecture")
    return {"arch": arch, "n_head": int(_field(reader, f"{arch}.attention.head_count")),
            "n_head_kv": int(_field(reader, f"{arch}.attention.head_count_kv")),
            "tensors": {t.name: t for t in reader.tensors}, "reader": reader}


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        raise AdapterUnavailable(f"GGUF field {key} is missing")
    return f.contents()


def lora_pairs(state: dict[str, Any], n_layers: int) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """{llama.cpp tensor name: (A [r, in], B [out, r], HF module name)} from a checkpoint's
    trainable state (`lora.model.layers.N.self_attn.q_proj.lora_A.weight`, ...)."""
    pairs: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    for name in state:
        if not (name.startswith("lora.") and name.endswith(".lora_A.weight")):
            continue
        module = name[len("lora."):-len(".lora_A.weight")]
        parts = module.split(".")
        if len(parts) < 4 or parts[0] != "model" or parts[1] != "layers" or parts[-1] not in TARGETS:
            raise AdapterUnavailable(f"LoRA tensor {name} has no llama.cpp counterpart (targets: {', '.join(TARGETS)})")
        layer = int(parts[2])
        if layer >= n_layers:
            raise AdapterUnavailable(f"LoRA tensor {name} names layer {layer}, the base has {n_layers}")
        b = state.get(f"lora.{module}.lora_B.weight")
        if b is None:
            raise AdapterUnavailable(f"LoRA tensor {name} has no lora_B partner")
        pairs[f"blk.{layer}.{TARGETS[parts[-1]]}.weight"] = (_f32(state[name]), _f32(b), module)
    return pairs


def _f32(t: Any) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32))


def write_adapter(pairs: dict[str, tuple[np.ndarray, np.ndarray, str]], layout: dict[str, Any], lora_alpha: float,
                  path: str | Path, meta: dict[str, str | float]) -> None:
    """Write the adapter GGUF at `path` (B of q / k permuted into rotary order). Not atomic:
    `export_adapter` writes to a temp file and renames it."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=layout["arch"])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora_alpha))
    for k, v in meta.items():
        (w.add_float32 if isinstance(v, float) else w.add_string)(k, v)
    for name, (a, b, _) in sorted(pairs.items()):
        if name not in layout["tensors"]:
            raise AdapterUnavailable(f"the base GGUF has no tensor {name}")
        w.add_tensor(f"{name}.lora_a", a)
        w.add_tensor(f"{name}.lora_b", _permute_b(name, b, layout))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _permute_b(name: str, b: np.ndarray, layout: dict[str, Any]) -> np.ndarray:
    if name.endswith(".attn_q.weight"):
        return rotary_rows(b, layout["n_head"])
    if name.endswith(".attn_k.weight"):
        return rotary_rows(b, layout["n_head_kv"])
    return b


def dequantized(layout: dict[str, Any], name: str) -> np.ndarray:
    """A base tensor de-quantized to float32, torch's [out, in] shape."""
    import gguf

    t = layout["tensors"][name]
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(s) for s in reversed(t.shape)))


def read_adapter(path: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """({base tensor name: (A, B as stored)}, {key: value}) of an adapter GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arrays = {t.name: np.asarray(t.data, np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
              for t in reader.tensors}
    out = {}
    for name, a in arrays.items():
        if name.endswith(".lora_a"):
            base = name[:-len(".lora_a")]
            out[base] = (a, arrays[base + ".lora_b"])
    return out, meta


def adapter_difference(path: str | Path, layout: dict[str, Any], folded: dict[str, np.ndarray]) -> float:
    """Largest |base + scale * B @ A - rotary(folded)| over every adapted matrix of the file
    at `path`; `folded` = {llama.cpp tensor name: torch's folded weight in HF row order}."""
    pairs, meta = read_adapter(path)
    if set(pairs) != set(folded):
        raise AdapterUnavailable(f"the adapter holds {len(pairs)} matrices, torch folded {len(folded)}")
    worst = 0.0
    for name, (a, b) in pairs.items():
        scale = float(meta["adapter.lora.alpha"]) / a.shape[0]
        merged = dequantized(layout, name) + scale * (b.astype(np.float64) @ a.astype(np.float64))
        want = _permute_b(name, folded[name], layout)
        worst = max(worst, float(np.abs(merged - want).max()))
    return worst


def export_adapter(checkpoint: str | Path, out: str | Path | None = None, lvlm: Any = None) -> dict[str, Any]:
    """Write the LoRA of the checkpoint folder `checkpoint` as a llama.cpp adapter GGUF at
    `out` (default: `default_adapter_path`), after checking it against the torch inference
    weights (LoRA folded in by `AnomalyLVLM`; `lvlm`: this checkpoint's AnomalyLVLM already
    loaded with fold_lora, else it is loaded); written atomically. Returns what was written."""
    import torch
    from safetensors.torch import load_file

    from . import checkpoint as model_io
    from . import hub

    checkpoint = Path(checkpoint)
    cfg = model_io.read_config(checkpoint)
    if cfg.llm.name != "embedded":
        raise AdapterUnavailable(f"only the embedded LLM ships as GGUF; this checkpoint uses llm.name {cfg.llm.name}")
    lvlm_file = checkpoint / model_io.LVLM_FILE
    if not lvlm_file.is_file():
        raise AdapterUnavailable(f"{lvlm_file} is missing: the checkpoint has no trained LLM state to export")
    base = hub._gguf_path()
    layout = base_layout(base)
    n_layers = 1 + max(int(n.split(".")[1]) for n in layout["tensors"] if n.startswith("blk."))
    pairs = lora_pairs(load_file(str(lvlm_file)), n_layers)
    if not pairs:
        raise AdapterUnavailable(f"{lvlm_file} holds no LoRA tensors (lora_r 0?): llama.cpp runs the base as it is")
    if lvlm is None:  # torch's own inference weights
        lvlm = model_io.load(checkpoint, with_llm=True, fold_lora=True).lvlm
    if not getattr(lvlm, "_lora_folded_in", False):
        raise AdapterUnavailable("the given LVLM has no LoRA folded into its weights; load it with fold_lora=True")
    mods = dict(lvlm.llm.named_modules())
    with torch.no_grad():
        folded = {name: mods[module].weight.detach().float().numpy() for name, (_, _, module) in pairs.items()}
    out = Path(out) if out else default_adapter_path(lvlm_file, base.name)
    meta: dict[str, str | float] = {KEY_SOURCE: state_key(lvlm_file, base.name), KEY_BASE: base.name}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    os.close(fd)
    try:
        write_adapter(pairs, layout, cfg.llm.lora_alpha, tmp, meta)
        worst = adapter_difference(tmp, layout, folded)
        if worst > TOLERANCE:
            raise RuntimeError(f"the adapter differs from torch's folded weights by {worst:.2e} (> {TOLERANCE:g}); "
                               "not written")
        write_adapter(pairs, layout, cfg.llm.lora_alpha, tmp, meta | {KEY_DIFF: worst})  # same tensors + the check
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"path": str(out), "bytes": out.stat().st_size, "matrices": len(pairs), "base": base.name,
            "max_abs_diff_vs_torch": worst, "lora_alpha": cfg.llm.lora_alpha, "lora_r": cfg.llm.lora_r}
