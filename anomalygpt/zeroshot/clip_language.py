"""Language-guided zero-shot inspection on CLIP (WinCLIP / FADE style): no references.

Two text anchors (normal, abnormal) are the mean CLIP text embeddings of an object's prompt
set (prompt_sets.py: state phrases x templates). An image's anomaly score is the softmax
probability of "abnormal" for its global embedding (at `classification_size`, as FADE uses
CLIP's global feature for classification); its map is the same probability per patch, from
GEM tokens (and/or plain patch tokens), at each of `segmentation_sizes`, upsampled to the
image and averaged. Probabilities put the decision boundary at 0.5 by construction, so the
verdict threshold is not fitted to any labels.

Optionally the object is cropped first (crop.py) and a vision-guided map (another mode's
output, same frame) is fused in (`fuse`): FADE's tables show language and vision maps are
complementary.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .clip_vit import DenseFeatures, check_supported, dense_features, patch_size
from .crop import CropChoice, Detector, choose_crop, crop_score_paste
from .prompt_sets import PromptSet

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
FEATURES = ("gem", "patch")


@dataclass
class LanguageResult:
    """One image's zero-shot result. `anomaly_map` is H x W of the ORIGINAL image, values in
    0..1 (probability that the patch looks abnormal; 0 outside a crop); `score` the image's
    probability of abnormal; `threshold` the boundary (0.5); `crop` which box was scored."""
    anomaly_map: np.ndarray
    score: float
    threshold: float
    crop: CropChoice | None
    mode: str = "language"

    @property
    def anomalous(self) -> bool:
        return self.score >= self.threshold


@torch.no_grad()
def text_anchors(model: nn.Module, tokenizer: Any, prompts: PromptSet, batch: int = 64) -> torch.Tensor:
    """2 x D unit vectors: mean of the unit text embeddings of the normal / abnormal
    sentences (FADE's 'average' text model)."""
    out = []
    for sentences in prompts.sentences():
        embs = [F.normalize(model.encode_text(tokenizer(sentences[i:i + batch])).float(), dim=-1)
                for i in range(0, len(sentences), batch)]
        out.append(F.normalize(torch.cat(embs).mean(0), dim=-1))
    return torch.stack(out)


def abnormal_probability(emb: torch.Tensor, anchors: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """P(abnormal) = softmax(logit_scale * cos(emb, [normal, abnormal]))[1], per row of emb
    (... x D -> ...)."""
    logits = F.normalize(emb.float(), dim=-1) @ anchors.T * logit_scale
    return logits.softmax(dim=-1)[..., 1]


def resize_shorter(image: torch.Tensor, size: int, multiple: int) -> torch.Tensor:
    """B x 3 x H x W -> shorter side `size`, aspect kept, both sides rounded to `multiple`
    (the patch size), bicubic with antialias like FADE's torchvision resize."""
    h, w = image.shape[-2:]
    s = size / min(h, w)
    nh, nw = (max(multiple, int(round(d * s / multiple)) * multiple) for d in (h, w))
    return F.interpolate(image, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def fuse(language_map: np.ndarray, vision_map: np.ndarray, weight: float = 0.5,
         vision_scale: float | None = None) -> np.ndarray:
    """(1 - weight) * language + weight * vision', both on 0..1 with 0.5 as their boundary.

    vision' = v / (v + vision_scale): a distance map becomes 0.5 exactly at `vision_scale`
    (pass the vision mode's threshold), like the language probability at its boundary. With
    no scale, the vision map is divided by its own maximum (ranks pixels within the image
    only; then the image-level verdict should come from the language score).
    The vision map is resized to the language map's size when they differ.
    """
    import cv2

    v = np.asarray(vision_map, dtype=np.float32)
    if v.shape != language_map.shape:
        v = cv2.resize(v, (language_map.shape[1], language_map.shape[0]), interpolation=cv2.INTER_LINEAR)
    v = np.maximum(v, 0)
    if vision_scale is not None:
        if vision_scale <= 0:
            raise ValueError(f"vision_scale must be > 0, got {vision_scale}")
        vn = v / (v + vision_scale)
    else:
        vn = v / max(float(v.max()), 1e-12)
    return ((1 - weight) * language_map + weight * vn).astype(np.float32)


class LanguageZeroShot:
    """Language-guided zero-shot scorer around a loaded open_clip model.

    Call it on an H x W x 3 uint8 image: optional crop, multi-scale maps, global score,
    optional fusion with a vision map -> LanguageResult. `detector` (crop.Detector) is used
    when `crop` is 'auto' and an object name is set; `crop='none'` scores the whole frame.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, prompts: PromptSet, *,
                 classification_size: int = 384, segmentation_sizes: Sequence[int] = (384, 512),
                 features: Sequence[str] = ("gem",), gem_depth: int = 7, gem_iterations: int = 1,
                 crop: str = "auto", detector: Detector | None = None, crop_margin: float = 0.1) -> None:
        check_supported(model.visual)
        bad = [f for f in features if f not in FEATURES]
        if bad or not features:
            raise ValueError(f"features {list(features)}: choose from {list(FEATURES)}")
        if crop not in ("auto", "none"):
            raise ValueError(f"crop '{crop}': choose 'auto' (detector, else foreground) or 'none'")
        self.model = model.eval()
        self.visual = model.visual
        self.prompts = prompts
        self.anchors = text_anchors(model, tokenizer, prompts)
        self.logit_scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
        self.classification_size = int(classification_size)
        self.segmentation_sizes = [int(s) for s in segmentation_sizes]
        self.features = list(features)
        self.gem_depth = gem_depth if "gem" in self.features else 0
        self.gem_iterations = gem_iterations
        self.crop, self.detector, self.crop_margin = crop, detector, crop_margin
        mean = getattr(self.visual, "image_mean", None) or OPENAI_MEAN
        std = getattr(self.visual, "image_std", None) or OPENAI_STD
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.patch = patch_size(self.visual)

    @classmethod
    def from_pretrained(cls, object_name: str, clip_model: str = "ViT-B-16-plus-240",
                        pretrained: str = "laion400m_e32", prompt_file: str | Path | None = None,
                        llm_name: str = "embedded", grounding_dino: str | None = "IDEA-Research/grounding-dino-tiny",
                        model_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> "LanguageZeroShot":
        """Load CLIP (hub.load_open_clip), the object's prompt set (user file, cache, or the
        LLM writes it) and, if its weights are on disk, Grounding DINO (else the crop falls
        back to the foreground mask; the reason is logged)."""
        import logging

        from ..hub import ModelNotAvailable, load_open_clip
        from .crop import load_grounding_dino
        from .prompt_sets import load_or_generate

        model, tok = load_open_clip(clip_model, pretrained, model_kwargs)
        prompts, _, _ = load_or_generate(object_name, prompt_file, llm_name=llm_name)
        detector = kwargs.pop("detector", None)
        if detector is None and grounding_dino and kwargs.get("crop", "auto") == "auto":
            try:
                detector = load_grounding_dino(grounding_dino)
            except ModelNotAvailable as e:
                logging.getLogger(__name__).info("%s; cropping with the foreground mask instead", e)
        return cls(model, tok, prompts, detector=detector, **kwargs)

    # ------------------------------------------------------------------ maths
    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float() / 255

    def _features(self, x: torch.Tensor, size: int) -> DenseFeatures:
        x = resize_shorter(x, size, self.patch)
        return dense_features(self.visual, (x - self.mean) / self.std, gem_depth=self.gem_depth,
                              gem_iterations=self.gem_iterations)

    @torch.no_grad()
    def features_per_size(self, image: np.ndarray) -> dict[int, DenseFeatures]:
        """One ViT pass per distinct size (classification and segmentation sizes overlap in
        FADE's setting, 384: that pass is shared)."""
        x = self._pixels(image)
        return {s: self._features(x, s) for s in dict.fromkeys([*self.segmentation_sizes, self.classification_size])}

    def maps_from(self, feats: dict[int, DenseFeatures], shape: tuple[int, int]) -> list[np.ndarray]:
        """One H x W map per (segmentation size, feature): P(abnormal) per patch, upsampled
        bilinearly to `shape`."""
        out = []
        for size in self.segmentation_sizes:
            for f in self.features:
                tokens = feats[size].gem if f == "gem" else feats[size].patches
                p = abnormal_probability(tokens[0], self.anchors, self.logit_scale)  # gh x gw
                up = F.interpolate(p[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
                out.append(up.numpy().astype(np.float32))
        return out

    def maps_per_scale(self, image: np.ndarray) -> list[np.ndarray]:
        return self.maps_from(self.features_per_size(image), image.shape[:2])

    def score_from(self, feats: dict[int, DenseFeatures]) -> float:
        return float(abnormal_probability(feats[self.classification_size].global_emb[0], self.anchors, self.logit_scale))

    @torch.no_grad()
    def image_score(self, image: np.ndarray) -> float:
        return self.score_from({self.classification_size: self._features(self._pixels(image), self.classification_size)})

    def score_array(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(H x W map averaged over scales and features, image score) for the whole array."""
        feats = self.features_per_size(image)
        return np.mean(self.maps_from(feats, image.shape[:2]), axis=0).astype(np.float32), self.score_from(feats)

    # ------------------------------------------------------------------ public call
    def __call__(self, image: np.ndarray, vision_map: np.ndarray | None = None, vision_weight: float = 0.5,
                 vision_scale: float | None = None, vision_score: float | None = None) -> LanguageResult:
        """Score one image (optionally cropped to the object, map pasted back) and fuse a
        vision-guided map given in the same frame (see `fuse`). With `vision_score` and
        `vision_scale`, the image score is fused the same way."""
        choice = None
        if self.crop == "auto":
            choice = choose_crop(image, self.prompts.object_name, self.detector, self.crop_margin)
            amap, score = crop_score_paste(image, self.score_array, choice)
        else:
            amap, score = self.score_array(image)
        if vision_map is not None:
            amap = fuse(amap, vision_map, vision_weight, vision_scale)
            if vision_score is not None and vision_scale is not None:
                score = (1 - vision_weight) * score + vision_weight * vision_score / (vision_score + vision_scale)
        return LanguageResult(amap, float(score), 0.5, choice, "language+vision" if vision_map is not None else "language")
