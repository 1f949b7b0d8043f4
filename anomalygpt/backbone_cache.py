"""TorchScript copies of frozen timm backbones, so that a warm load never imports timm.

Importing timm costs ~2.3 s on 2 CPU cores (it imports torchvision, which imports
torch._dynamo): more than everything else the detector does while loading. The encoder is
frozen, so the first load builds the timm features model as usual, scripts it and saves it,
with the few facts the encoder reads from timm (stage channels and strides, input
normalization), under the cache folder; later loads read that file with `torch.jit.load`
(~0.2 s) and give bit-identical features.

The file name is a hash of everything that changes the weights or the graph: model name,
weights source (with the weights package's version or the file's size and time), stages,
and the torch and timm versions, so an upgrade makes a new copy instead of reusing a stale
one. Random-init encoders (`pretrained: none`) are never cached: a cached copy would freeze
one draw of the initialization.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the stored facts or the saving change
DISABLE_ENV = "ANOMALYGPT_SCRIPT_CACHE"  # "0" turns the cache off (always build with timm)


@dataclass(frozen=True)
class BackboneInfo:
    """What the encoder needs from timm besides the forward pass."""

    n_stages: int              # stages the model has (features_only), whatever was kept
    indices: list[int]         # the stages the backbone returns, in order
    channels: list[int]        # per returned stage
    reductions: list[int]      # stride per returned stage
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def cache_key(name: str, pretrained: str, levels: list[int]) -> str | None:
    """Hex digest naming the cached copy, or None when this encoder must not be cached."""
    from . import hub

    if pretrained in ("none", ""):
        return None
    if pretrained == "embedded":
        source = f"embedded:{_version(hub.EMBEDDED_ENCODER_PACKAGE.replace('_', '-'))}"
    elif (file := Path(pretrained).expanduser()).is_file():
        st = file.stat()
        source = f"file:{file.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    else:
        source = f"hub:{pretrained}"
    parts = [FORMAT, name, source, sorted(set(levels)), torch.__version__, _version("timm")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def build_with_timm(name: str, pretrained: str, levels: list[int]) -> tuple[nn.Module, BackboneInfo]:
    """The timm features model returning `levels` and the last stage (in eval mode), and its facts."""
    import timm

    from . import hub

    with torch.device("meta"):  # only the stage count is read
        n_stages = len(timm.create_model(name, pretrained=False, features_only=True).feature_info)
    bad = [i for i in levels if not 0 <= i < n_stages]
    if bad:
        raise ValueError(f"encoder.levels {list(levels)} out of range for {name}: use stage indices 0..{n_stages - 1}")
    indices = sorted(set(levels) | {n_stages - 1})
    model = hub.load_timm_features(name, pretrained, indices)
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    info = BackboneInfo(n_stages, indices, list(model.feature_info.channels()), list(model.feature_info.reduction()),
                        tuple(pcfg.get("mean", (0.5, 0.5, 0.5))), tuple(pcfg.get("std", (0.5, 0.5, 0.5))))
    return model, info


def _save(path: Path, model: nn.Module, info: BackboneInfo) -> None:
    """Script `model` and write it atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.9+ flags TorchScript as deprecated in favour of torch.export, but loading
        # an exported program imports torch._dynamo (3.5 s here), which defeats the point
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.jit.save(scripted, tmp, _extra_files={"info.json": json.dumps(asdict(info))})
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache must stay readable
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _load(path: Path) -> tuple[nn.Module, BackboneInfo]:
    extra = {"info.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    raw = json.loads(extra["info.json"])
    raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
    return module, BackboneInfo(**raw)


def load_backbone(name: str, pretrained: str, levels: list[int],
                  cache: Path | None) -> tuple[nn.Module, BackboneInfo]:
    """Frozen timm backbone for `levels` (+ the last stage) in eval mode, and its facts.

    With `cache` (a folder) a scripted copy is read from there, or made there on the first
    load. Anything wrong with the cache (unwritable folder, a model TorchScript cannot
    compile, a damaged file) falls back to the timm model with one log line: the cache
    only ever saves time.
    """
    key = cache_key(name, pretrained, levels) if cache is not None and os.environ.get(DISABLE_ENV) != "0" else None
    if key is None:
        return build_with_timm(name, pretrained, levels)
    path = Path(cache) / f"{name}-{key}.pt"
    if path.is_file():
        try:
            module, info = _load(path)
            return module.eval(), info
        except Exception as e:  # noqa: BLE001 - a bad copy is rebuilt below
            log.warning("ignoring the damaged backbone cache %s (%s); rebuilding it", path, e)
    model, info = build_with_timm(name, pretrained, levels)
    refused = path.with_name(path.name + ".noscript")  # marks a model that could not be cached
    if not refused.exists():
        try:
            _save(path, model, info)
        except Exception as e:  # noqa: BLE001 - unscriptable model or unwritable folder
            log.info("backbone %s not cached as TorchScript (%s: %s); loads will import timm", name, type(e).__name__, e)
            try:
                refused.touch()
            except OSError:
                pass
    return model, info
