"""Answer speed, torch vs llama.cpp, in one run: inspect + streamed answer on the bundled sample,
time to the first answer text and to whole answers of exactly 18 and 48 tokens; the rounds
alternate the runtimes (anomalygpt.evaluation.bench.measure_llm_runtimes, the function behind
the *_torch / *_llamacpp rows of `anomalygpt bench`).

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/llm_runtime_ab.py --rounds 5 --out out/llm_runtime_ab.json

Needs llama_cpp (`pip install .[fast]`, see anomalygpt.llama_runtime.LLAMA_PIP); the LoRA
adapter is the cache's (`anomalygpt export --format gguf`) or exported into a temp folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="18,48", help="answer lengths in tokens, comma-separated")
    ap.add_argument("--checkpoint", default="embedded")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from anomalygpt.evaluation.bench import measure_llm_runtimes
    from anomalygpt.inspector import AnomalyGPT

    assistant = AnomalyGPT.from_pretrained(args.checkpoint, llm_runtime="torch")
    lengths = tuple(int(x) for x in args.lengths.split(","))
    res = measure_llm_runtimes(assistant, rounds=args.rounds, lengths=lengths)
    res["load_average"] = list(os.getloadavg())
    print(f"threads {res['threads']}, {res['rounds']} rounds after a warm-up, llama.cpp with the {res['decoder']}, "
          f"load avg {res['load_average'][0]:.1f}")
    print(f"{'':<28}{'torch':>10}{'llama.cpp':>12}{'speed-up':>10}")
    rows = [("first token (s)", "first_token_s")] + [(f"{n}-token answer (s)", f"answer_s_{n}") for n in lengths]
    for label, key in rows:
        t, c = res[f"torch_{key}"], res[f"llamacpp_{key}"]
        print(f"{label:<28}{t:>10.3f}{c:>12.3f}{t / c:>9.2f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
