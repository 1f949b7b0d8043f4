"""The frozen timm encoder through ONNX Runtime: `anomalygpt export --format onnx` writes it,
the inspector runs it when the exported file exists (encoder.runtime "auto") or is required
("onnxruntime"); torch stays the fallback and the training path.

WHY: the encoder is most of the detector's time, and ONNX Runtime's CPU kernels (fused
depthwise convolutions, no Python per layer) ran it ~1.7x faster than eager torch on one
core here. The exported graph returns exactly what `TimmImageEncoder.forward` returns (the
configured feature levels and the pooled last stage, input normalization included), with
the batch and image size left dynamic, so the detector, reference banks and zero-shot
modes use it unchanged. The export checks the copy against torch (max abs difference under
`TOLERANCE`) before it is written, and the file records that difference.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import EncoderConfig
from .models.encoders import ImageEncoder

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # features of the exported copy vs torch, max abs difference
OPSET = 17
META_KEY = "anomalygpt_encoder"
RUNTIME_ENV = "ANOMALYGPT_ENCODER_RUNTIME"


class OnnxUnavailable(ValueError):
    """encoder.runtime is "onnxruntime" but the copy or the package is missing."""


def default_onnx_path(cfg: EncoderConfig) -> Path | None:
    """Where `anomalygpt export --format onnx` puts the encoder by default: beside the
    TorchScript backbone cache, named by the same hash of weights, levels and versions (so a
    new torch/timm/weights version never picks up a stale copy). None: not exportable."""
    from . import hub
    from .backbone_cache import cache_key

    if cfg.backend != "timm":
        return None
    key = cache_key(cfg.name, cfg.pretrained, list(cfg.levels))
    return None if key is None else hub.cache_dir() / "backbones" / f"{cfg.name}-{key}.onnx"


class _Outputs(torch.nn.Module):
    """The encoder with a flat tuple output (ONNX graphs have no nested lists)."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps, glob = self.encoder(images)
        return (*maps, glob)


def export_encoder(cfg: EncoderConfig, out: str | Path | None = None, opset: int = OPSET,
                   check_images: int = 2) -> dict[str, Any]:
    """Export the timm encoder of `cfg` to `out` (default: `default_onnx_path`), after checking
    it against torch on seeded random images at the configured size and at a second size;
    written atomically. Returns what was written and the measured difference."""
    if cfg.backend != "timm":
        raise ValueError(f"encoder backend '{cfg.backend}' cannot be exported; only timm encoders (embedded profile)")
    import onnxruntime  # noqa: F401 - fail before the slow part when it is missing

    from .checkpoint import build_image_encoder

    out = Path(out) if out else default_onnx_path(cfg)
    if out is None:
        raise ValueError("a random-init encoder (pretrained: none) has no stable copy to export; give --out "
                         "to export this draw anyway")
    encoder = build_image_encoder(cfg, cache=False)  # the timm module: TorchScript copies cannot be traced
    size = cfg.image_size
    names = [f"level{lvl}" for lvl in encoder.levels] + ["global"]
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "global": {0: "batch"}}
    axes |= {n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in names[:-1]}
    meta = {"levels": list(encoder.levels), "dims": list(encoder.dims), "global_dim": encoder.global_dim,
            "strides": list(encoder.strides), "mean": list(encoder.mean), "std": list(encoder.std),
            "name": cfg.name, "pretrained": cfg.pretrained, "image_size": size, "torch": torch.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about constant mean/std tensors
            torch.onnx.export(_Outputs(encoder), (torch.zeros(1, 3, size, size),), tmp, dynamo=False,
                              input_names=["images"], output_names=names, dynamic_axes=axes, opset_version=opset)
        import onnx

        model = onnx.load(tmp)
        session_check = OnnxImageEncoder(tmp, cfg, threads=1, _check_meta=False, _meta=meta)
        diffs = {}
        gen = torch.Generator().manual_seed(0)
        for s in (size, size + 32):
            x = torch.rand(check_images, 3, s, s, generator=gen)
            diffs[s] = max_feature_difference(encoder, session_check, x)
        worst = max(diffs.values())
        if worst > TOLERANCE:
            raise RuntimeError(f"the exported encoder differs from torch by {worst:.2e} (> {TOLERANCE:g}); not written")
        meta["max_abs_diff_vs_torch"] = worst
        entry = model.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta)
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"path": str(out), "bytes": out.stat().st_size, "max_abs_diff_vs_torch": worst,
            "checked_sizes": sorted(diffs), **{k: meta[k] for k in ("levels", "dims", "global_dim")}}


@torch.no_grad()
def max_feature_difference(a: ImageEncoder, b: ImageEncoder, images: torch.Tensor) -> float:
    """Largest absolute difference of any feature map or global embedding of two encoders."""
    (ma, ga), (mb, gb) = a(images), b(images)
    return max(float((x - y).abs().max()) for x, y in zip([*ma, ga], [*mb, gb]))


class OnnxImageEncoder(ImageEncoder):
    """`TimmImageEncoder`'s interface on an ONNX Runtime session (no parameters, always frozen)."""

    def __init__(self, path: str | Path, cfg: EncoderConfig, threads: int | None = None, *,
                 _check_meta: bool = True, _meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # the same thread budget as torch in this process (OMP_NUM_THREADS / set_num_threads)
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        meta = _meta or json.loads(self.session.get_modelmeta().custom_metadata_map.get(META_KEY, "null") or "null")
        if meta is None:
            raise OnnxUnavailable(f"{path} was not written by `anomalygpt export --format onnx`; export it again")
        if _check_meta and (meta["levels"] != list(cfg.levels) or meta["name"] != cfg.name):
            raise OnnxUnavailable(f"{path} holds {meta['name']} levels {meta['levels']}, but the checkpoint uses "
                                  f"{cfg.name} levels {list(cfg.levels)}; export it again for this checkpoint")
        self.levels, self.dims, self.global_dim = list(meta["levels"]), list(meta["dims"]), int(meta["global_dim"])
        self.strides = list(meta["strides"])
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])
        self.meta = meta
        self._outputs = [o.name for o in self.session.get_outputs()]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = images.detach().to(torch.float32).contiguous().numpy()
        outs = self.session.run(self._outputs, {"images": x})
        tensors = [torch.from_numpy(np.ascontiguousarray(o)) for o in outs]
        return tensors[:-1], tensors[-1]


def select_encoder(cfg: EncoderConfig, torch_encoder: ImageEncoder) -> ImageEncoder:
    """The encoder inference should run: the ONNX Runtime copy when `cfg.runtime` asks for it
    or ("auto") when an exported file exists and onnxruntime imports; else `torch_encoder`.
    In "auto" any problem with the copy logs one warning and keeps torch, and the environment
    variable ANOMALYGPT_ENCODER_RUNTIME (torch / onnxruntime) can pin the choice (the test
    suite pins torch, so an export in the shared cache never changes its numbers)."""
    runtime = cfg.runtime
    if runtime == "auto" and os.environ.get(RUNTIME_ENV, "auto") != "auto":
        runtime = os.environ[RUNTIME_ENV]
        if runtime not in ("torch", "onnxruntime"):
            raise OnnxUnavailable(f"{RUNTIME_ENV}={runtime} is unknown; use torch, onnxruntime or auto")
    if runtime == "torch" or cfg.backend != "timm":
        if runtime == "onnxruntime":
            raise OnnxUnavailable(f"encoder.runtime onnxruntime needs a timm encoder (this one is {cfg.backend})")
        return torch_encoder
    path = Path(cfg.onnx_path).expanduser() if cfg.onnx_path else default_onnx_path(cfg)
    if path is None or not path.is_file():
        if runtime == "onnxruntime":
            raise OnnxUnavailable(f"no exported encoder at {path}; run `anomalygpt export --format onnx` "
                                  "(or set encoder.runtime: torch)")
        return torch_encoder
    try:
        return OnnxImageEncoder(path, cfg)
    except ImportError:
        if runtime == "onnxruntime":
            raise OnnxUnavailable("encoder.runtime onnxruntime needs the onnxruntime package; "
                                  "fix: pip install onnxruntime") from None
        return torch_encoder
    except Exception as e:  # noqa: BLE001 - auto mode: torch still works
        if runtime == "onnxruntime":
            raise
        log.warning("not using the exported encoder %s (%s); running torch", path, str(e).splitlines()[0][:200])
        return torch_encoder
