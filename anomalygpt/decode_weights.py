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
matched float32 50/50 (bfloat16: 46/50). A row whose input or output overflows float16
is recomputed in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DecodeLinear(nn.Module):
    """A frozen nn.Linear with a compact copy of its weight for one-row inputs (see module
    docstring). The float32 `weight` is the original tensor, shared, not copied."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.register_buffer("compact", linear.weight.detach().to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:  # one row: the memory-bound case the compact weight is for
            y = F.linear(x.to(self.compact.dtype), self.compact).to(x.dtype)
            if self.compact.dtype != torch.float16 or bool(torch.isfinite(y).all()):
                return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, compact={self.compact.dtype}"


def compact_decode_weights(llm: nn.Module, dtype: torch.dtype = torch.float16) -> int:
    """Swap every nn.Linear of a frozen float32 LLM (LoRA already merged) for a
    DecodeLinear; returns how many were swapped. Weights shared with the input embedding
    (a tied output head) stay shared; LoRA's own A/B layers are left alone."""
    targets = [(name, m) for name, m in llm.named_modules()
               if type(m) is nn.Linear and ".lora_" not in f".{name}" and m.weight.dtype == torch.float32]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = llm.get_submodule(parent_name) if parent_name else llm
        setattr(parent, child, DecodeLinear(m, dtype))
    return len(targets)
