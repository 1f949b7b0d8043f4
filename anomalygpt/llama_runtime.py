"""Answers decoded by llama.cpp (llama-cpp-python's C API through ctypes) on the shipped GGUF
plus the checkpoint's LoRA as an adapter (`llama_adapter`); torch stays for training, for
sampled answers and wherever llama.cpp is missing.

WHY: decoding one token reads every weight once, so on a CPU its time is memory traffic.
Eager torch streams the float16 copy (~270 MB per token, plus ~200 Python-level ops);
llama.cpp streams a Q8_0 copy of the GGUF (~140 MB) in fused C kernels. The prompt is still built by
torch (`AnomalyLVLM.prepare_inputs`: tokens, facts, history, the image and map embeddings),
so there is one prompt code path; llama.cpp receives its rows as ONE embedding batch (as its
multimodal models do), then decodes greedily token by token. `AnomalyLVLM`'s generation
methods call `generate_ids` and turn the ids into text with the same Hugging Face tokenizer
and streamer as the torch path.

Weights: llama.cpp has no fast matrix-matrix path for Q4_1, so the ~300-row prompt made the
first token 2x later than torch's. The decoder therefore runs a Q8_0 copy of the shipped
GGUF (`decoding_base`: made once by llama.cpp's own quantizer, <1 s, 138 MB, cached): its
prompt pass is fast and each new token still reads half of float16's bytes. Measured on 2
idle cores (benchmarks/llm_base_quant_ab.py, 3 rounds, inspect + answer): Q4_1 base first
token 0.61 s, 18 tokens 0.80 s, 48 tokens 1.16 s; Q8_0 0.38 / 0.60 / 1.00 s; Q4_0 0.43 /
0.63 / 1.03 s; F16 0.44 / 0.78 / 1.34 s (torch 0.31 / 1.41-1.51 / 3.37-3.63 s). Q8_0 was
taken over Q4_0 because it re-rounds the Q4_1 values far more finely (Q4_0 drops their
offset). With 2 threads on oversubscribed cores llama.cpp's spinning thread barriers stall.

Selection (`select_decoder`): llm.runtime "torch"; "llama.cpp" (an error when it cannot
run); "auto" = llama.cpp when the package imports and the adapter was exported, else torch.
ANOMALYGPT_LLM_RUNTIME pins "auto" to one runtime (the test suite pins torch).
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import LLMConfig

log = logging.getLogger(__name__)

RUNTIME_ENV = "ANOMALYGPT_LLM_RUNTIME"
RUNTIMES = ("auto", "torch", "llama.cpp")
# the build that runs on any AVX2 CPU: a native build picks up AMX where the CPU advertises it,
# and that kernel crashed on the first decode in a VM here
LLAMA_PIP = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
             '-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" '
             'pip install --no-cache-dir llama-cpp-python==0.3.36')
N_CTX = 2048       # prompt + answer tokens per context (prompts here are a few hundred; longer: torch)
N_UBATCH = 512     # rows per compute pass of the prompt (llama.cpp splits the one batch)


def decoding_base(source: Path) -> Path:
    """The Q8_0 copy of the GGUF `source` that llama.cpp decodes with (see the module
    docstring), made once beside the de-quantized LLM cache; temp file, then rename. Named by
    the source's size and modification time, so a reinstalled or replaced GGUF gets a new
    copy instead of a stale one (same-architecture files of one quantization share a size)."""
    from . import hub

    st = source.stat()
    target = hub.cache_dir() / "llm" / f"{source.stem}-{st.st_size}-{st.st_mtime_ns}.q8_0.gguf"
    if target.is_file():
        return target
    import llama_cpp as ll

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    params = ll.llama_model_quantize_default_params()
    params.ftype = ll.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    params.nthread = max(1, torch.get_num_threads())
    try:
        if ll.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise LlamaUnavailable(f"llama.cpp could not re-quantize {source} to Q8_0")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


class LlamaUnavailable(ValueError):
    """llm.runtime is "llama.cpp" but the package, the adapter or the model does not fit."""


class LlamaDecoder:
    """One llama.cpp model + context (+ LoRA adapter), loaded once; `generate_ids` decodes one
    answer at a time (a lock serializes callers; the KV memory is cleared per answer)."""

    def __init__(self, model_path: str | Path, adapter_path: str | Path | None = None, n_ctx: int = N_CTX,
                 n_threads: int | None = None, extra_buffers: bool = False) -> None:
        """`extra_buffers`: let llama.cpp place weights in its extra CPU buffer types (AMX,
        repacked layouts). Off by default: a native build put the weights in AMX buffers on
        this VM's CPU (which advertises AMX) and crashed in the first decode."""
        import llama_cpp as ll

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its C log lines go to stderr
        self._ll = ll
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.use_extra_bufts = extra_buffers
        self.model = ll.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise LlamaUnavailable(f"llama.cpp could not load {model_path}")
        self.ctx = None
        self.adapter = None
        self.batch = None
        try:
            self.n_embd = int(ll.llama_model_n_embd(self.model))
            self.n_vocab = int(ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model)))
            cparams = ll.llama_context_default_params()
            cparams.n_ctx = n_ctx
            cparams.n_batch = n_ctx  # the whole prompt is one llama_decode call
            cparams.n_ubatch = min(N_UBATCH, n_ctx)
            cparams.n_seq_max = 1
            threads = int(n_threads or torch.get_num_threads())
            cparams.n_threads = cparams.n_threads_batch = threads
            cparams.no_perf = True
            self.ctx = ll.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                raise LlamaUnavailable("llama.cpp could not create a context")
            self.n_ctx = int(ll.llama_n_ctx(self.ctx))
            if adapter_path is not None:
                self.adapter = ll.llama_adapter_lora_init(self.model, str(adapter_path).encode())
                if not self.adapter:
                    raise LlamaUnavailable(f"llama.cpp could not load the LoRA adapter {adapter_path}; "
                                           "export it again with `anomalygpt export --format gguf`")
                adapters = (ll.llama_adapter_lora_p_ctypes * 1)(self.adapter)
                scales = (ctypes.c_float * 1)(1.0)  # llama.cpp applies alpha / r itself
                if ll.llama_set_adapters_lora(self.ctx, adapters, 1, scales) != 0:
                    raise LlamaUnavailable(f"llama.cpp could not apply the adapter {adapter_path}")
            self.batch = ll.llama_batch_init(self.n_ctx, self.n_embd, 1)
        except BaseException:
            self.close()
            raise
        self.model_path, self.adapter_path = str(model_path), None if adapter_path is None else str(adapter_path)
        self._token = (ll.llama_token * 1)()
        self._lock = threading.Lock()

    def fits(self, n_prompt: int, max_new_tokens: int) -> bool:
        """Whether a prompt of `n_prompt` rows and its answer fit this context."""
        return n_prompt + max_new_tokens <= self.n_ctx

    def generate_ids(self, embeds: np.ndarray | torch.Tensor, max_new_tokens: int, stop_ids: Sequence[int],
                     min_new_tokens: int = 0) -> Iterator[int]:
        """Greedy token ids after the prompt `embeds` [L, n_embd] (input embeddings, one row
        per position), up to and including a stop id, at most `max_new_tokens`; stop ids are
        held back for the first `min_new_tokens` tokens (as transformers' min_new_tokens)."""
        ll = self._ll
        x = embeds.detach().float().cpu().numpy() if isinstance(embeds, torch.Tensor) else np.asarray(embeds)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_embd:
            raise ValueError(f"prompt embeddings must be [L, {self.n_embd}], got {tuple(x.shape)}")
        n = x.shape[0]
        if not self.fits(n, max_new_tokens):
            raise ValueError(f"a prompt of {n} tokens + {max_new_tokens} new ones exceeds llama.cpp's context "
                             f"of {self.n_ctx}")
        stops = np.asarray(list(stop_ids), dtype=np.int64)
        with self._lock:
            threads = torch.get_num_threads()  # the caller's thread budget, read per answer
            ll.llama_set_n_threads(self.ctx, threads, threads)
            ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
            b = self.batch
            b.n_tokens = n
            ctypes.memmove(b.embd, x.ctypes.data, x.nbytes)
            for i in range(n):
                b.pos[i] = i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 0
            b.logits[n - 1] = 1
            self._decode(b)
            for step in range(max_new_tokens):
                logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
                if step < min_new_tokens and stops.size:
                    logits = logits.copy()
                    logits[stops] = -np.inf
                tok = int(np.argmax(logits))
                yield tok
                if tok in stop_ids or step == max_new_tokens - 1:
                    return
                self._token[0] = tok
                self._decode(ll.llama_batch_get_one(self._token, 1))

    def _decode(self, batch: Any) -> None:
        rc = self._ll.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def close(self) -> None:
        """Free the C objects (also on garbage collection)."""
        ll = getattr(self, "_ll", None)
        if ll is None:
            return
        if self.batch is not None:
            ll.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            ll.llama_model_free(self.model)  # frees its adapters too
            self.model = None
            self.adapter = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def requested_runtime(cfg: LLMConfig) -> str:
    """cfg.runtime, with "auto" pinned by ANOMALYGPT_LLM_RUNTIME when that is set."""
    runtime = cfg.runtime
    env = os.environ.get(RUNTIME_ENV, "auto")
    if env not in RUNTIMES:
        raise LlamaUnavailable(f"{RUNTIME_ENV}={env} is unknown; use torch, llama.cpp or auto")
    if runtime == "auto" and env != "auto":
        runtime = env
    if runtime not in RUNTIMES:
        raise LlamaUnavailable(f"llm.runtime {runtime} is unknown; use torch, llama.cpp or auto")
    return runtime


def llama_cpp_importable() -> bool:
    """Whether llama_cpp is installed (found without importing it: its import takes ~0.3 s);
    a None in sys.modules blocks it, as it blocks the import."""
    import importlib.util
    import sys

    if "llama_cpp" in sys.modules:
        return sys.modules["llama_cpp"] is not None
    return importlib.util.find_spec("llama_cpp") is not None


def select_decoder(cfg: LLMConfig, checkpoint: str | Path | None) -> LlamaDecoder | None:
    """The llama.cpp decoder answers should use, or None for torch (see module docstring).
    `checkpoint` is the checkpoint folder (its LoRA names the adapter file)."""
    from . import hub
    from .checkpoint import LVLM_FILE
    from .llama_adapter import KEY_SOURCE, default_adapter_path, read_adapter, state_key

    runtime = requested_runtime(cfg)
    if runtime == "torch":
        return None
    strict = runtime == "llama.cpp"

    def give_up(msg: str) -> None:
        if strict:
            raise LlamaUnavailable(msg)
        log.info("answers run on torch: %s", msg)

    if not llama_cpp_importable():
        return give_up(f"llm.runtime llama.cpp needs the llama_cpp package; fix: {LLAMA_PIP}")
    if cfg.name != "embedded":
        return give_up(f"llm.runtime llama.cpp runs only the embedded GGUF (this checkpoint uses llm.name {cfg.name})")
    if cfg.quantization != "none":
        return give_up(f"llm.runtime llama.cpp runs the GGUF's own quantization, not llm.quantization {cfg.quantization}")
    base = hub._gguf_path()
    lvlm_file = Path(checkpoint) / LVLM_FILE if checkpoint is not None else None
    adapter: Path | None = None
    if cfg.lora_r > 0 and lvlm_file is not None and lvlm_file.is_file():
        adapter = Path(cfg.adapter_path).expanduser() if cfg.adapter_path else default_adapter_path(lvlm_file, base.name)
        if not adapter.is_file():
            return give_up(f"no llama.cpp adapter at {adapter}; run `anomalygpt export --format gguf` "
                           "(or set llm.runtime: torch)")
        try:
            _, meta = read_adapter(adapter)
        except Exception as e:  # noqa: BLE001 - a broken file is one line
            return give_up(f"{adapter} is not a readable adapter GGUF ({type(e).__name__}); export it again")
        if meta.get(KEY_SOURCE) != state_key(lvlm_file, base.name):
            return give_up(f"{adapter} was exported from another checkpoint state; run `anomalygpt export "
                           "--format gguf` again")
    elif cfg.lora_r > 0 and checkpoint is None:
        return give_up("no checkpoint folder given, so the LoRA adapter cannot be found")
    try:
        return LlamaDecoder(decoding_base(base), adapter)
    except ImportError as e:
        return give_up(f"llama_cpp does not import ({str(e).splitlines()[0][:160]}); fix: {LLAMA_PIP}")
    except Exception as e:  # noqa: BLE001 - auto mode: torch still works
        if strict:
            raise
        log.warning("not using llama.cpp (%s); answers run on torch", str(e).splitlines()[0][:200])
        return None


def decoder_for(assistant: Any, tmp_dir: str | Path) -> tuple[LlamaDecoder, str]:
    """A llama.cpp decoder for a loaded assistant whatever its runtime (benchmarks and A/B
    checks): its own when it runs llama.cpp; else one on the adapter the cache holds for
    its checkpoint, or on one exported now into `tmp_dir`. Returns (decoder, where from)."""
    from . import hub
    from .checkpoint import LVLM_FILE
    from .llama_adapter import default_adapter_path, export_adapter

    own = getattr(assistant.lvlm, "token_decoder", None)
    if isinstance(own, LlamaDecoder):
        return own, "the assistant's own"
    if not llama_cpp_importable():
        raise LlamaUnavailable(f"llama_cpp is not installed; fix: {LLAMA_PIP}")
    source = assistant.components.source
    base = hub._gguf_path()
    adapter = None
    where = "no LoRA"
    if assistant.cfg.llm.lora_r > 0 and source is not None and (Path(source) / LVLM_FILE).is_file():
        adapter = default_adapter_path(Path(source) / LVLM_FILE, base.name)
        where = "cached adapter"
        if not adapter.is_file():
            adapter = Path(tmp_dir) / "lora.gguf"
            export_adapter(source, adapter, lvlm=assistant.lvlm)
            where = "adapter exported now"
    return LlamaDecoder(decoding_base(base), adapter), where
