"""Half-size weights for token-by-token decoding on the CPU, full precision elsewhere.

Decoding one token multiplies a single row by every weight of the LLM, so on a CPU it is
bound by memory traffic: SmolLM2-135M in float32 streams ~540 MB per token. Stored as
float16 the weights stream half the bytes; torch's half-precision matrix-vector kernel
ran the LLM's linear layers 2.6x faster on a 2-core AVX2 machine, and a whole decoding
step ~2x faster. Its half-precision matrix-matrix kernel, though, is ~5x *slower* than
float32 without AVX512 half support, and upcasting at every call costs as much as it
saves, so the float32 weight stays for several rows at once (a prompt, a batch of
answers): ~270 MB more memory for SmolLM2-135M. Activations stay float32.
float16 rather than bfloat16: 3 more mantissa bits; on random text the next-token argmax
matched float32 50/50 (bfloat16: 46/50).

Overflow: a value beyond float16's range (65504) becomes inf, and inf reaches the step's
logits as inf or nan whichever layer it starts in (the next norm turns it into nan). So the
check is made once per step, on the logits (`OverflowGuard`): a step whose logits are
not finite is undone in the KV cache and recomputed in float32. Checking every layer's
output instead cost ~15% of a decoding step (211 checks of a few microseconds each).
The KV cache is found by what it is (an object with `get_seq_length` and `crop`), not by
the keyword it travels under: transformers 5.24 renamed `past_key_values` to `cache` in
the model's forward, and a guard that looked for the old name recomputed every
overflowing step on top of a cache still holding that step's nan keys, so each redo was
nan again. The step's own output carries the cache it wrote to; that is the one cropped.

Kernels differ by CPU (oneDNN's float16 GEMM on AVX512-FP16, ATen's own AVX2 or AVX512
kernels elsewhere): `half_kernel_is_safe` probes the float16 one-row product once at load
(accuracy against float32, and that an overflow reaches the output as non-finite rather
than being clamped to a finite value the guard cannot see) and the caller keeps float32
where the probe fails.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _Switch:
    """State shared by the DecodeLinear layers of one model and its OverflowGuard."""

    def __init__(self) -> None:
        self.on = True      # compact weights allowed (off while a step is recomputed)
        self.used = False   # a compact weight was used since the guard last reset this


class DecodeLinear(nn.Module):
    """A frozen nn.Linear with a compact copy of its weight for one-row inputs (see module
    docstring). The float32 `weight` is the original tensor, shared, not copied."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, switch: _Switch | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.register_buffer("compact", linear.weight.detach().to(dtype), persistent=False)
        self.switch = switch or _Switch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.switch.on and x.numel() == x.shape[-1]:  # one row: the memory-bound case
            self.switch.used = True
            y = F.linear(x.to(self.compact.dtype), self.compact).to(x.dtype)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, compact={self.compact.dtype}"


def _is_cache(value: Any) -> bool:
    return callable(getattr(value, "get_seq_length", None)) and callable(getattr(value, "crop", None))


def find_cache(args: tuple, kwargs: dict[str, Any]) -> Any | None:
    """The KV cache among a forward call's arguments, whatever its keyword is called."""
    for value in (*kwargs.values(), *args):
        if _is_cache(value):
            return value
    return None


def half_kernel_is_safe(dtype: torch.dtype = torch.float16, width: int = 576, seed: int = 0) -> tuple[bool, str]:
    """Probe this CPU's one-row `dtype` product (the decoding fast path) once: it must be
    close to float32 on random data, and overflow must come out non-finite (inf or nan),
    since the guard only sees non-finite logits. Returns (safe, reason)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(256, width, generator=g) / width ** 0.5
    x = torch.randn(1, width, generator=g)
    with torch.no_grad():
        exact = F.linear(x, w)
        half = F.linear(x.to(dtype), w.to(dtype)).float()
        err = float((half - exact).abs().max() / exact.abs().max())
        limit = 2e-2 if dtype == torch.bfloat16 else 4e-3
        if not err <= limit:
            return False, f"one-row {dtype} product is off by {err:.2g} of its range (limit {limit})"
        big = torch.full((1, width), float(torch.finfo(dtype).max) / 8, dtype=dtype)  # the sum overflows
        over = F.linear(big, torch.ones(4, width, dtype=dtype))
        if bool(torch.isfinite(over).all()):
            return False, f"one-row {dtype} overflow stays finite, so the overflow guard could not see it"
    return True, "ok"


class OverflowGuard:
    """Forward hooks on the causal LM: a step that used compact weights and produced
    non-finite logits is rolled back in the KV cache and run again in float32."""

    def __init__(self, switch: _Switch) -> None:
        self.switch = switch
        self._cache: Any | None = None  # the cache passed in, and its length before the step
        self._cached = 0
        self.recomputed = 0  # steps redone in float32 (for tests and curiosity)

    def before(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.switch.used = False
        self._cache = find_cache(args, kwargs)
        self._cached = self._cache.get_seq_length() if self._cache is not None else 0

    def after(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if not self.switch.used:
            return None
        logits = getattr(output, "logits", None)
        logits = output[0] if logits is None else logits
        if bool(torch.isfinite(logits).all()):
            return None
        # The cache this step wrote to: the one passed in, or (first step) one the forward
        # made itself, which the redo replaces with a fresh one, so it needs no crop.
        written = getattr(output, "past_key_values", None)
        if written is None and self._cache is not None:
            written = self._cache
        if written is not None and written is self._cache:
            added = written.get_seq_length() - self._cached
            if added:
                written.crop(-added)  # negative: remove that many tokens (every transformers version)
            if written.get_seq_length() != self._cached:
                raise RuntimeError("overflow guard: could not roll the KV cache back; "
                                   "set llm.decode_weights: float32")
        self.switch.on = False
        try:
            self.recomputed += 1
            return module.forward(*args, **kwargs)  # the bare forward: these hooks do not run again
        finally:
            self.switch.on = True


def compact_decode_weights(llm: nn.Module, dtype: torch.dtype = torch.float16) -> int:
    """Swap every nn.Linear of a frozen float32 LLM (LoRA already merged) for a
    DecodeLinear and hook the overflow guard onto the model that computes the logits;
    returns how many layers were swapped. Weights shared with the input embedding (a tied
    output head) stay shared; LoRA's own A/B layers are left alone."""
    targets = [(name, m) for name, m in llm.named_modules()
               if type(m) is nn.Linear and ".lora_" not in f".{name}" and m.weight.dtype == torch.float32]
    if not targets:
        return 0
    switch = _Switch()
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = llm.get_submodule(parent_name) if parent_name else llm
        setattr(parent, child, DecodeLinear(m, dtype, switch))
    # the transformers model itself: generate() calls it, and so does a peft wrapper's forward
    guard = OverflowGuard(switch)
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    base.register_forward_pre_hook(guard.before, with_kwargs=True)
    base.register_forward_hook(guard.after, with_kwargs=True)
    llm.decode_overflow_guard = guard
    return len(targets)
