"""Frozen image and text encoders behind one small interface.

`ImageEncoder.forward` returns feature *maps* per level (B x C_l x h_l x w_l; flatten to
B x N_l x C_l where a sequence is wanted) plus a global embedding (B x D). Maps keep the
spatial layout the decoder and memory bank pool over. Encoders are frozen: eval mode and
no gradients, always.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig, TextConfig

# Prompt ensembles for the normal / abnormal anchors. Object-aware templates plus state
# words that name the defects seen on real parts (cracks, dark areas, broken lines ...).
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a close-up photo of the {}.", "an image of a {} on an inspection line.",
    "a cropped photo of the {}.", "an industrial photo of a {}.",
)
NORMAL_STATES: tuple[str, ...] = ("flawless {}", "perfect {}", "good {}", "{} without defect", "intact {}", "normal {}")
ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}", "broken {}", "{} with a defect", "{} with a crack", "{} with a dark area",
    "{} with a scratch", "{} with a hole", "contaminated {}", "defective {}", "{} with a broken line",
)


def prompt_sentences(object_name: str) -> tuple[list[str], list[str]]:
    """(normal sentences, abnormal sentences) for an object name."""
    def fill(states: Sequence[str]) -> list[str]:
        return [t.format(s.format(object_name)) for s in states for t in TEMPLATES]
    return fill(NORMAL_STATES), fill(ABNORMAL_STATES)


class ImageEncoder(nn.Module):
    """Interface: `dims` (channels per level), `global_dim`, `mean`/`std` for preprocessing."""

    dims: list[int]
    global_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def train(self, mode: bool = True) -> "ImageEncoder":  # frozen: never leave eval mode
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in 0..1 (B x 3 x H x W) -> the encoder's input normalization."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std


class TimmImageEncoder(ImageEncoder):
    """A timm CNN (the embedded EfficientNet-Lite0 by default), features_only.

    The global embedding is the mean-pooled last stage, which is computed anyway when the
    backbone runs to its end; it feeds the LLM's image tokens.
    """

    def __init__(self, cfg: EncoderConfig, backbone: nn.Module, info: Any) -> None:
        """`backbone`, `info`: the features model and its facts (`backbone_cache.BackboneInfo`:
        indices, channels, reductions, mean, std), loaded by the builder."""
        super().__init__()
        self.backbone = backbone
        self.levels = list(cfg.levels)
        self.indices = list(info.indices)
        self.dims = [info.channels[self.indices.index(i)] for i in self.levels]
        self.global_dim = info.channels[-1]
        self.strides = [info.reductions[self.indices.index(i)] for i in self.levels]
        self.mean, self.std = info.mean, info.std
        for p in self.parameters():
            p.requires_grad_(False)
        # channels-last convolutions: the encoder ran 1.6x faster on 2 CPU cores (oneDNN's
        # fast path for depthwise convolutions), and it is the norm on GPUs as well
        self.backbone.to(memory_format=torch.channels_last)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = self.backbone(self.normalize(images).contiguous(memory_format=torch.channels_last))
        maps = [feats[self.indices.index(i)].contiguous() for i in self.levels]
        return maps, feats[-1].mean(dim=(2, 3))


class OpenClipImageEncoder(ImageEncoder):
    """An open_clip vision tower (ViT or ConvNeXt); levels are intermediate block indices.

    The global embedding is CLIP's projected image embedding, in the text tower's space.
    """

    def __init__(self, cfg: EncoderConfig, model: nn.Module) -> None:
        super().__init__()
        self.visual = model.visual
        self.levels = list(cfg.levels)
        with torch.no_grad():
            size = cfg.image_size
            out = self.visual.forward_intermediates(torch.zeros(1, 3, size, size), indices=self.levels,
                                                    output_fmt="NCHW", intermediates_only=False)
        self.dims = [t.shape[1] for t in out["image_intermediates"]]
        self.strides = [size // t.shape[-1] for t in out["image_intermediates"]]
        self.global_dim = out["image_features"].shape[-1] if out["image_features"].dim() == 2 else model.visual.output_dim
        mean = getattr(self.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(self.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.mean, self.std = tuple(mean), tuple(std)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = self.visual.forward_intermediates(self.normalize(images), indices=self.levels,
                                                output_fmt="NCHW", intermediates_only=False)
        glob = out["image_features"]
        if glob.dim() > 2:  # some towers return unpooled tokens here
            glob = glob.mean(dim=tuple(range(1, glob.dim() - 1)))
        return list(out["image_intermediates"]), glob


@torch.no_grad()
def llm_text_anchors(embedding: nn.Embedding, tokenizer: Any, object_name: str) -> torch.Tensor:
    """Normal/abnormal anchors (2 x D) from an LLM's own input embeddings.

    The embedded profile has no text tower offline. The LLM's token embeddings of the prompt
    sentences, mean pooled per sentence and averaged over the ensemble, give two fixed,
    distinct directions; the trained decoder projections align patch features to them.
    """
    out = []
    for sentences in prompt_sentences(object_name):
        vecs = []
        for s in sentences:
            ids = torch.tensor(tokenizer(s, add_special_tokens=False)["input_ids"], device=embedding.weight.device)
            vecs.append(F.normalize(embedding(ids).float().mean(0), dim=-1))
        out.append(F.normalize(torch.stack(vecs).mean(0), dim=-1))
    return torch.stack(out)


@torch.no_grad()
def clip_text_anchors(model: nn.Module, tokenizer: Any, object_name: str) -> torch.Tensor:
    """Normal/abnormal anchors (2 x D) from a CLIP text tower, as WinCLIP-style ensembles."""
    out = []
    for sentences in prompt_sentences(object_name):
        emb = F.normalize(model.encode_text(tokenizer(sentences)).float(), dim=-1)
        out.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(out)


def text_anchors(cfg: TextConfig, *, llm: nn.Module | None = None, tokenizer: Any = None,
                 clip_model: nn.Module | None = None, clip_tokenizer: Any = None,
                 object_name: str | None = None) -> torch.Tensor:
    """Anchors for the configured text backend."""
    name = object_name or cfg.object_name
    if cfg.backend == "llm":
        if llm is None or tokenizer is None:
            raise ValueError("text.backend 'llm' needs the LLM and its tokenizer")
        return llm_text_anchors(llm.get_input_embeddings(), tokenizer, name)
    if clip_model is None or clip_tokenizer is None:
        raise ValueError("text.backend 'open_clip' needs an open_clip model and tokenizer")
    return clip_text_anchors(clip_model, clip_tokenizer, name)
