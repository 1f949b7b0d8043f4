"""Which base weights llama.cpp should decode: the shipped Q4_1 GGUF or a copy re-quantized by
llama.cpp's own quantizer (Q8_0, Q4_0, F16), each with the checkpoint's LoRA adapter, timed
against torch in alternating rounds (anomalygpt.evaluation.bench.measure_llm_runtimes:
inspect + first answer text, whole answers of exactly 18 and 48 tokens). Chose Q8_0 for
anomalygpt.llama_runtime.decoding_base (docs/speed.md).

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/llm_base_quant_ab.py q4_1 q8_0 q4_0 f16 [--rounds 3]
"""
from __future__ import annotations

import argparse
import ctypes
import tempfile
from pathlib import Path

import torch

FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "f16": "LLAMA_FTYPE_MOSTLY_F16"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bases", nargs="+", choices=["q4_1", *FTYPES])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import llama_cpp as ll

    from anomalygpt import hub, llama_runtime
    from anomalygpt.evaluation.bench import measure_llm_runtimes
    from anomalygpt.inspector import AnomalyGPT
    from anomalygpt.llama_adapter import export_adapter

    assistant = AnomalyGPT.from_pretrained("embedded", llm_runtime="torch")
    source = hub._gguf_path()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "lora.gguf"
        export_adapter(assistant.components.source, adapter, lvlm=assistant.lvlm)
        print(f"{'base':<6}{'MB':>6}{'first token s':>15}{'18 tokens s':>13}{'48 tokens s':>13}   (torch: same order)")
        for name in args.bases:
            path = source
            if name != "q4_1":
                path = Path(tmp) / f"base_{name}.gguf"
                params = ll.llama_model_quantize_default_params()
                params.ftype = getattr(ll, FTYPES[name])
                params.allow_requantize = True
                if ll.llama_model_quantize(str(source).encode(), str(path).encode(), ctypes.byref(params)) != 0:
                    raise SystemExit(f"llama.cpp could not re-quantize to {name}")
            dec = llama_runtime.LlamaDecoder(path, adapter)
            original = llama_runtime.decoder_for
            llama_runtime.decoder_for = lambda a, t, dec=dec: (dec, name)  # the bench's llama.cpp side = this base
            try:
                r = measure_llm_runtimes(assistant, rounds=args.rounds, lengths=(18, 48))
            finally:
                llama_runtime.decoder_for = original
                dec.close()
            print(f"{name:<6}{path.stat().st_size / 2**20:>6.0f}{r['llamacpp_first_token_s']:>15.3f}"
                  f"{r['llamacpp_answer_s_18']:>13.3f}{r['llamacpp_answer_s_48']:>13.3f}   "
                  f"({r['torch_first_token_s']:.3f} / {r['torch_answer_s_18']:.3f} / {r['torch_answer_s_48']:.3f})",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
