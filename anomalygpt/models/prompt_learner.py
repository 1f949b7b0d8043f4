"""PromptLearner: turns an anomaly map into LLM prompt embeddings.

The LLM never sees pixels of the map; it sees a handful of embeddings placed between
`<img>` and `</img>` in the first user turn. This module makes them:

- ``n_map_tokens`` tokens computed from the map by a small conv net, so *where* and *how
  strongly* the image is anomalous reaches the LLM as soft prompt vectors;
- ``n_base_tokens`` learned, input-independent tokens (prepended), a per-task soft prompt
  that tells the (LoRA-tuned) LLM "an anomaly map follows" without spending vocabulary.

Design choices and why:

- The map is resized to a fixed 64x64 first, so any H x W (and any encoder stride) gives
  the same token count and the conv weights see the same scale of structure.
- GroupNorm instead of BatchNorm: batches are tiny (often 1 at chat time), and GroupNorm
  behaves identically in train and eval mode and keeps no running buffers to checkpoint.
- GroupNorm makes conv features (almost) invariant to the overall amplitude of the map,
  yet "0.9 everywhere" and "0.1 everywhere" must not look alike; so the map's global
  mean and max are fed to the token projection directly.
- Tokens are read from the 4x4 feature grid by a learned linear mix over positions (one
  mix per token), which keeps spatial layout (top-left vs bottom-right) and costs only
  16 x n_map_tokens weights, instead of flattening 2,048 features into every token.
- Outputs start small (std ~0.02 / sqrt(fan_in) projection, 0.02 base tokens): an
  untrained learner then barely disturbs the frozen LLM (Llama-style RMSNorm damps
  vectors much smaller than sqrt(eps)), and training grows them as needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_GRID = 64  # the map is resized to _GRID x _GRID before the conv stages


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 channels per group, at least one group."""
    return max(1, channels // 8)


class PromptLearner(nn.Module):
    """Anomaly map [B, C, H, W] -> prompt embeddings [B, n_base + n_map, hidden]."""

    def __init__(self, hidden_size: int, n_map_tokens: int = 4, n_base_tokens: int = 4,
                 in_channels: int = 1, channels: tuple[int, ...] = (16, 32, 64, 128),
                 init_std: float = 0.02) -> None:
        super().__init__()
        if hidden_size < 1 or n_map_tokens < 1 or n_base_tokens < 0 or in_channels < 1:
            raise ValueError(
                f"PromptLearner needs hidden_size >= 1, n_map_tokens >= 1, n_base_tokens >= 0, in_channels >= 1; "
                f"got {hidden_size}, {n_map_tokens}, {n_base_tokens}, {in_channels}")
        self.hidden_size = hidden_size
        self.n_map_tokens = n_map_tokens
        self.n_base_tokens = n_base_tokens
        self.in_channels = in_channels

        stages: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:  # each stage halves the resolution: 64 -> 32 -> 16 -> 8 -> 4
            stages += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(_groups(c_out), c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.convs = nn.Sequential(*stages)
        side = _GRID // (2 ** len(channels))
        if side < 1:
            raise ValueError(f"too many conv stages ({len(channels)}) for a {_GRID}x{_GRID} input")
        self.n_positions = side * side
        # one learned mix over the spatial positions per output token
        self.token_mix = nn.Linear(self.n_positions, n_map_tokens)
        # conv features of a token + the map's global mean and max per channel -> hidden
        self.proj = nn.Linear(c_in + 2 * in_channels, hidden_size)
        self.base_tokens = nn.Parameter(torch.zeros(n_base_tokens, hidden_size))

        nn.init.normal_(self.proj.weight, std=init_std / (self.proj.in_features ** 0.5))
        nn.init.zeros_(self.proj.bias)
        nn.init.normal_(self.base_tokens, std=init_std)
        nn.init.constant_(self.token_mix.weight, 1.0 / self.n_positions)  # start as mean pooling ...
        with torch.no_grad():  # ... plus a little noise so the tokens are not all identical
            self.token_mix.weight.add_(torch.randn_like(self.token_mix.weight) / self.n_positions)
        nn.init.zeros_(self.token_mix.bias)

    @property
    def n_tokens(self) -> int:
        """Number of embeddings produced per image (base + map tokens)."""
        return self.n_base_tokens + self.n_map_tokens

    def forward(self, anomaly_map: Tensor) -> Tensor:
        """[B, C, H, W] map (any H, W; values usually in 0..1) -> [B, n_base + n_map, hidden]."""
        if anomaly_map.dim() != 4 or anomaly_map.shape[1] != self.in_channels:
            raise ValueError(f"anomaly_map must be [B, {self.in_channels}, H, W], got {tuple(anomaly_map.shape)}")
        x = anomaly_map.to(self.proj.weight.dtype)
        # amplitude features, from the map as given (before any resizing blurs the peak)
        stats = torch.cat([x.flatten(2).mean(-1), x.flatten(2).amax(-1)], dim=1)  # [B, 2C]
        if x.shape[-2:] != (_GRID, _GRID):
            # area averaging when shrinking keeps small hot spots visible; bilinear when growing
            mode = "area" if x.shape[-2] >= _GRID and x.shape[-1] >= _GRID else "bilinear"
            x = F.interpolate(x, size=(_GRID, _GRID), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
        b = x.shape[0]
        feats = self.convs(x).flatten(2)                      # [B, C', P]
        tokens = self.token_mix(feats).transpose(1, 2)        # [B, n_map, C']
        tokens = torch.cat([tokens, stats[:, None, :].expand(-1, self.n_map_tokens, -1)], dim=-1)
        map_tokens = self.proj(tokens)                        # [B, n_map, hidden]
        base = self.base_tokens.unsqueeze(0).expand(b, -1, -1)
        return torch.cat([base, map_tokens], dim=1)
