"""The language-guided mode behind the zero-shot registry's scorer interface.

The registry (modes.py) calls a scorer with N x 3 x S x S images in 0..1 and a context
(encoder, settings, map size, object name, extras) and wants per-image maps at the map
size, image scores, verdict thresholds with their source, the detector encoder's global
embeddings (the LLM's image tokens) and free-form info. `score_language` returns exactly
those fields as a dict, so registering the mode is one line:

    register(ZeroShotMode("language", lambda x, ctx: ZeroShotResult(**score_language(x, ctx)),
                          needs_batch=False, input_size=lambda cfg, s: max(s, 512)))

Settings come from `ctx.extras["language"]` (a dict; keys of LanguageSettings) so the
registry's config needs no new fields to start with. A `vision` scorer (e.g. the 'self'
mode's) makes it FADE's language + vision combination: its map is fused with the language
map, its per-image threshold serving as the scale where the vision map means 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .clip_language import LanguageZeroShot

THRESHOLD_SOURCE = "0.5: P(abnormal) = P(normal) between the CLIP text anchors (not fitted to labels)"


@dataclass
class LanguageSettings:
    clip_model: str = "ViT-B-16-plus-240"
    pretrained: str = "laion400m_e32"
    prompt_file: str | None = None        # a user's JSON; None = cached or LLM-written per object
    llm_name: str = "embedded"
    grounding_dino: str | None = "IDEA-Research/grounding-dino-tiny"
    crop: str = "auto"                    # 'auto' (detector, else foreground) or 'none'
    classification_size: int = 384
    segmentation_sizes: tuple[int, ...] = (384, 512)
    features: tuple[str, ...] = ("gem",)
    vision_weight: float = 0.5            # share of the vision map when a vision scorer is fused

    @classmethod
    def from_extras(cls, extras: dict[str, Any] | None) -> "LanguageSettings":
        given = dict((extras or {}).get("language", {}))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - names - {"scorer"})
        if unknown:
            raise ValueError(f"unknown language zero-shot settings {unknown}; known: {sorted(names)}")
        return cls(**{k: v for k, v in given.items() if k in names})


_SCORERS: dict[tuple, LanguageZeroShot] = {}


def language_scorer(settings: LanguageSettings, object_name: str | None,
                    extras: dict[str, Any] | None = None) -> LanguageZeroShot:
    """A prebuilt scorer from extras['language']['scorer'] (tests, apps that hold one), else
    one built from the settings, kept per (settings, object) so CLIP loads once per process."""
    given = (extras or {}).get("language", {}).get("scorer")
    if given is not None:
        return given
    if not object_name:
        raise ValueError("zero-shot 'language' needs the object's name (e.g. --object bottle) to write its prompts")
    key = (settings.clip_model, settings.pretrained, settings.prompt_file, settings.llm_name, settings.grounding_dino,
           settings.crop, settings.classification_size, tuple(settings.segmentation_sizes), tuple(settings.features),
           object_name.strip().lower())
    if key not in _SCORERS:
        _SCORERS[key] = LanguageZeroShot.from_pretrained(
            object_name, settings.clip_model, settings.pretrained, settings.prompt_file, settings.llm_name,
            settings.grounding_dino, crop=settings.crop, classification_size=settings.classification_size,
            segmentation_sizes=settings.segmentation_sizes, features=settings.features)
    return _SCORERS[key]


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """N x 3 x H x W floats in 0..1 -> H x W x 3 uint8 arrays."""
    return [(im.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy() for im in images]


def score_language(images: torch.Tensor, ctx: Any, vision: Callable[[torch.Tensor, Any], Any] | None = None
                   ) -> dict[str, Any]:
    """Registry scorer: ZeroShotResult's fields for the language (or language + vision) mode.

    Crop boxes are reported as fractions of the image (x0, y0, x1, y1 in 0..1) in
    info['crops'], so the caller maps them to the ORIGINAL image whatever size it resized
    the input to; info['crop_sources'] says who chose each crop.
    """
    settings = LanguageSettings.from_extras(ctx.extras)
    zs = language_scorer(settings, ctx.object_name, ctx.extras)
    m = int(ctx.map_size)
    vis = vision(images, ctx) if vision is not None else None
    maps, scores, crops, sources = [], [], [], []
    for i, img in enumerate(to_uint8(images)):
        if vis is not None:
            res = zs(img, vision_map=vis.anomaly_map[i, 0].numpy(), vision_weight=settings.vision_weight,
                     vision_scale=float(vis.thresholds[i]), vision_score=float(vis.scores[i]))
        else:
            res = zs(img)
        maps.append(cv2.resize(res.anomaly_map, (m, m), interpolation=cv2.INTER_LINEAR))
        scores.append(res.score)
        h, w = img.shape[:2]
        if res.crop is not None:
            x0, y0, x1, y1 = res.crop.box
            crops.append((x0 / w, y0 / h, x1 / w, y1 / h))
            sources.append(res.crop.source)
        else:
            crops.append((0.0, 0.0, 1.0, 1.0))
            sources.append("none")
    with torch.no_grad():
        _, glob = ctx.encoder(F.interpolate(images, size=(m, m), mode="bilinear", align_corners=False))
    info: dict[str, Any] = {"crops": crops, "crop_sources": sources, "prompts": zs.prompts.to_json(),
                            "clip": f"{settings.clip_model}/{settings.pretrained}",
                            "sizes": {"classification": zs.classification_size, "segmentation": zs.segmentation_sizes},
                            "features": zs.features}
    source = THRESHOLD_SOURCE
    if vis is not None:
        info["vision"] = {"weight": settings.vision_weight, "threshold_source": vis.threshold_source}
        source += f"; vision map fused (weight {settings.vision_weight:g}, 0.5 at its own threshold)"
    return {"anomaly_map": torch.from_numpy(np.stack(maps)).unsqueeze(1), "scores": torch.tensor(scores),
            "thresholds": np.full(len(scores), 0.5), "threshold_source": source, "global_emb": glob, "info": info}
