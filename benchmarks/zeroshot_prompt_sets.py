"""Write the prompt sets of some objects with the configured LLM (default: the embedded
SmolLM2) and print them; the same call the language zero-shot mode makes on first use.

    PYTHONPATH=. python benchmarks/zeroshot_prompt_sets.py bottle "solar cell" --out /tmp/prompts

Files go to --out (default: the user cache, where the mode would read them) and are NOT
regenerated when present: delete one to write it again.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("objects", nargs="+")
    ap.add_argument("--llm", default="embedded")
    ap.add_argument("--out", default=None, help="folder for <object>.json (default: the user cache)")
    ap.add_argument("--per-start", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from anomalygpt.hub import load_llm
    from anomalygpt.zeroshot import prompt_sets as ps

    loaded = {}

    def loader(name):
        if name not in loaded:
            loaded[name] = load_llm(name)
        return loaded[name]

    for obj in args.objects:
        t = time.perf_counter()
        path = os.path.join(args.out, f"{ps.slug(obj)}.json") if args.out else None
        if path and not os.path.exists(path):
            prompts = ps.generate_prompt_set(*loader(args.llm), obj, llm_name=args.llm,
                                             per_start=args.per_start, max_new_tokens=args.max_new_tokens)
            ps.save(prompts, path)
            created = True
        else:
            prompts, path, created = ps.load_or_generate(obj, path, llm_name=args.llm, llm_loader=loader,
                                                         per_start=args.per_start, max_new_tokens=args.max_new_tokens)
        print(f"# {obj}: {'written' if created else 'read'} {path} in {time.perf_counter() - t:.1f} s "
              f"({len(prompts.normal)} normal, {len(prompts.abnormal)} abnormal phrases)")
        print(json.dumps({"normal": prompts.normal, "abnormal": prompts.abnormal}, indent=1))


if __name__ == "__main__":
    main()
