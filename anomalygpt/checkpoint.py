"""One builder that wires the frozen encoder, the decoder, the text anchors and the LVLM,
and the checkpoint format: only trainable tensors + config + calibration are saved, the
frozen weights are resolved by name (so the embedded checkpoint stays a few MB).

Checkpoint folder:
  config.yaml            the ModelConfig
  detector.safetensors   decoder projections, text anchors, reference-map scale
  lvlm.safetensors       LoRA, image projector, prompt learner (absent for detector-only)
  calibration.json       image-score threshold and where it came from
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from safetensors.torch import load_file, save_file

from . import hub
from .config import EncoderConfig, LLMConfig, ModelConfig, PromptConfig, from_dict, to_dict
from .models.detector import Detector
from .models.encoders import ImageEncoder, OpenClipImageEncoder, TimmImageEncoder, text_anchors

DETECTOR_FILE = "detector.safetensors"
LVLM_FILE = "lvlm.safetensors"
CONFIG_FILE = "config.yaml"
CALIBRATION_FILE = "calibration.json"
# the trainer's optimizer/RNG state beside the model files; it is read only by the trainer's
# resume and only with torch.load(weights_only=True), which refuses anything but tensors and
# plain containers, so it is the one pickle a checkpoint folder may hold without a flag
TRAINING_STATE_FILE = "training_state.pt"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class PickleRefused(ValueError):
    """A checkpoint folder holds pickle files and the user did not allow them."""


def pickle_files(folder: str | Path) -> list[Path]:
    """Pickle-format files in `folder` (not recursive), except the trainer's weights-only state."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES and p.name != TRAINING_STATE_FILE)


def check_no_pickle(folder: str | Path, allow_pickle: bool = False) -> None:
    """Refuse a folder holding pickle files unless `allow_pickle`.

    Unpickling can run any code the file's author wrote; this project writes only
    safetensors, YAML and JSON, so a pickle in a checkpoint or model folder came from
    somewhere else, and loading that folder is the user's explicit decision.
    """
    found = pickle_files(folder)
    if found and not allow_pickle:
        names = ", ".join(p.name for p in found[:3]) + (" ..." if len(found) > 3 else "")
        raise PickleRefused(
            f"{folder} holds pickle files ({names}), which can run code when loaded; convert them to "
            "safetensors, remove them, or pass --allow-pickle (allow_pickle=True) if you trust their source")


@dataclass
class Calibration:
    """Image-score threshold learnt at training time (used when no references are given)."""
    threshold: float = 0.5
    source: str = "default (untrained)"
    normal_mean: float = 0.0
    normal_std: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Components:
    cfg: ModelConfig
    detector: Detector
    lvlm: Any | None  # AnomalyLVLM, imported lazily (transformers is slow to import)
    calibration: Calibration
    source: Path | None = None  # the checkpoint folder it was loaded from (None: built fresh)


def build_image_encoder(cfg: EncoderConfig, clip_model: nn.Module | None = None, cache: bool = True) -> ImageEncoder:
    """The frozen image encoder with its weights resolved: a timm backbone (through the
    TorchScript cache when `cache`, so warm loads skip importing timm; see backbone_cache)
    or an open_clip vision tower (`clip_model`, or loaded through the hub)."""
    if cfg.backend == "timm":
        from .backbone_cache import load_backbone

        backbone, info = load_backbone(cfg.name, cfg.pretrained, list(cfg.levels),
                                       hub.cache_dir() / "backbones" if cache else None)
        return TimmImageEncoder(cfg, backbone, info)
    if clip_model is None:
        clip_model, _ = hub.load_open_clip(cfg.name, cfg.pretrained, cfg.model_kwargs)
    return OpenClipImageEncoder(cfg, clip_model)


def build_lvlm(llm_cfg: LLMConfig, prompt_cfg: PromptConfig, image_dim: int, fold_lora: bool = False) -> Any:
    """The LLM named in `llm_cfg`, loaded through the hub (embedded / random / HF id), wrapped
    as an AnomalyLVLM (imported here: transformers is slow to import)."""
    from .models.lvlm import AnomalyLVLM

    llm, tok = hub.load_llm(llm_cfg.name, dtype=llm_cfg.dtype, quantization=llm_cfg.quantization,
                            random_config=llm_cfg.random_config or None)
    return AnomalyLVLM(llm, tok, image_dim, prompt_cfg, llm_cfg, fold_lora=fold_lora)


def build(cfg: ModelConfig, with_llm: bool = True, anchors: torch.Tensor | None = None,
          fold_lora: bool = False) -> Components:
    """Build every piece from the config with fresh trainable parts.

    The text anchors need a text model: the CLIP text tower, or the LLM's embeddings for the
    embedded profile. They are computed once here and stored in the decoder as a buffer; a
    checkpoint passes its stored anchors so a detector-only load never touches the LLM.
    """
    clip_model = clip_tok = None
    if cfg.encoder.backend == "open_clip":
        clip_model, clip_tok = hub.load_open_clip(cfg.encoder.name, cfg.encoder.pretrained, cfg.encoder.model_kwargs)
    encoder = build_image_encoder(cfg.encoder, clip_model)
    lvlm = None
    if with_llm or (anchors is None and cfg.text.backend == "llm"):
        lvlm = build_lvlm(cfg.llm, cfg.prompt, encoder.global_dim, fold_lora=fold_lora)
    if anchors is None:
        if cfg.text.backend == "llm":
            assert lvlm is not None
            anchors = text_anchors(cfg.text, llm=lvlm.llm, tokenizer=lvlm.tokenizer)
        else:
            anchors = text_anchors(cfg.text, clip_model=clip_model, clip_tokenizer=clip_tok)
    detector = Detector(cfg, encoder, anchors.shape[-1])
    detector.decoder.set_anchors(anchors)
    if not with_llm:
        lvlm = None
    return Components(cfg, detector, lvlm, Calibration())


def _atomic_dir_write(target: Path, write: Any) -> None:
    """Write a folder via a temp sibling + rename, so a crash never leaves half a checkpoint."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a checkpoint is meant to be shared
    try:
        write(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save(components: Components, path: str | Path) -> Path:
    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(components.cfg), sort_keys=False))
        save_file({k: v.detach().cpu().contiguous() for k, v in components.detector.trainable_state_dict().items()},
                  str(tmp / DETECTOR_FILE))
        if components.lvlm is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in components.lvlm.trainable_state_dict().items()},
                      str(tmp / LVLM_FILE))
        (tmp / CALIBRATION_FILE).write_text(json.dumps(components.calibration.__dict__, indent=2))

    _atomic_dir_write(Path(path), write)
    return Path(path)


def read_config(path: str | Path) -> ModelConfig:
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} ({CONFIG_FILE} missing); train one with "
                                "'anomalygpt train --config configs/embedded.yaml' or give a checkpoint folder")
    return from_dict(yaml.safe_load(p.read_text()))


def load(path: str | Path, with_llm: bool = True, fold_lora: bool = False, allow_pickle: bool = False) -> Components:
    """A checkpoint folder as components. `fold_lora` (inference only) adds the LoRA deltas
    into the LLM's weights without peft; such an LVLM cannot be trained or saved. A folder
    holding pickle files is refused unless `allow_pickle` (see check_no_pickle); so is an
    LLM named by a local folder holding them."""
    path = Path(path)
    cfg = read_config(path)
    check_no_pickle(path, allow_pickle)
    if with_llm and Path(cfg.llm.name).expanduser().is_dir():
        check_no_pickle(Path(cfg.llm.name).expanduser(), allow_pickle)
    det_sd = load_file(str(path / DETECTOR_FILE))
    comps = build(cfg, with_llm=with_llm, anchors=det_sd["decoder.anchors"], fold_lora=fold_lora)
    comps.detector.load_trainable_state_dict(det_sd)
    if comps.lvlm is not None and (path / LVLM_FILE).is_file():
        comps.lvlm.load_trainable_state_dict(load_file(str(path / LVLM_FILE)))
    if (path / CALIBRATION_FILE).is_file():
        comps.calibration = Calibration(**json.loads((path / CALIBRATION_FILE).read_text()))
    comps.source = path
    return comps


def save_lvlm_state(lvlm: Any, path: str | Path) -> None:
    """Write an AnomalyLVLM's trainable state alone as safetensors, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous().cpu() for k, v in lvlm.trainable_state_dict().items()}
    meta = {"hidden_size": str(lvlm.hidden_size), "image_dim": str(lvlm.image_dim),
            "n_image_tokens": str(lvlm.n_image_tokens), "n_map_tokens": str(lvlm.prompt_cfg.n_map_tokens),
            "n_base_tokens": str(lvlm.prompt_cfg.n_base_tokens), "lora_r": str(lvlm.llm_cfg.lora_r)}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(sd, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_lvlm_state(lvlm: Any, path: str | Path, strict: bool = True) -> None:
    """Load a file written by `save_lvlm_state` into an AnomalyLVLM of the same settings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trainable-state file not found: {path}")
    lvlm.load_trainable_state_dict(load_file(str(path)), strict=strict)
