"""Answers of the llama.cpp runtime vs torch on the same prompts: how many are identical, where
the first differing token is, and whether the claim checker (anomalygpt.chat.claims) agrees
with the report for each runtime's answer.

Images: the bundled samples (anomalygpt/assets, the ones `make demo` uses) and a few ELPV train
normals, each against the 4 bundled normal references, as the demo does; questions: the
demo's main question + its 6 follow-ups, asked as one chat whose history is torch's answers
(so both runtimes see exactly the same prompt at every turn).

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/llm_runtime_equality.py --train-normals 4 --out out/llm_equality.json

Needs llama_cpp and the exported adapter (`anomalygpt export --format gguf`; exported into a
temp folder when the cache has none).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-normals", type=int, default=4, help="ELPV mono train normals to add to the bundled samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from anomalygpt.cli import DEMO_FOLLOWUPS
    from anomalygpt.inspector import DEFAULT_QUESTION, AnomalyGPT, resolve_checkpoint
    from anomalygpt.llama_runtime import decoder_for

    assets = ROOT / "anomalygpt" / "assets"
    refs = sorted(assets.glob("elpv_normal_ref*.png"))
    images = [assets / n for n in ("elpv_defect.png", "elpv_defect_2.png", "elpv_normal.png")]
    if args.train_normals:
        from data_sim.datasets import elpv_split

        images += [s.image_path for s in elpv_split("mono")["train"][:args.train_normals]]
    assistant = AnomalyGPT.from_pretrained("embedded", llm_runtime="torch")
    with tempfile.TemporaryDirectory() as tmp:
        dec, where = decoder_for(assistant, tmp)
        print(f"llama.cpp with the {where}", flush=True)
        tok = assistant.lvlm.tokenizer
        questions = [DEFAULT_QUESTION, *DEMO_FOLLOWUPS]
        rows = []
        for img in images:
            report = assistant.inspect(img, refs, object_name="solar cell", question=None)
            history: list[tuple[str, str]] = []
            for q in questions:
                got = {}
                for name, d in (("torch", None), ("llama.cpp", dec)):
                    assistant.lvlm.token_decoder = d
                    t0 = time.perf_counter()
                    a = assistant.answer(report, q, history)
                    got[name] = (a, time.perf_counter() - t0)
                assistant.lvlm.token_decoder = None
                (ta, tt), (la, lt) = got["torch"], got["llama.cpp"]
                history.append((q, ta.text))
                if ta.llm_text is None:  # answered without the LLM (off-topic): nothing to compare
                    continue
                ti, li = (tok(x or "", add_special_tokens=False).input_ids for x in (ta.llm_text, la.llm_text))
                first = next((i for i, (x, y) in enumerate(zip(ti, li)) if x != y), None)
                if first is None and len(ti) != len(li):
                    first = min(len(ti), len(li))
                rows.append({"image": Path(img).name, "verdict": report.verdict,
                             "question": q, "intent": ta.intent, "identical": ta.llm_text == la.llm_text,
                             "first_diff_token": first, "tokens_torch": len(ti), "tokens_llama": len(li),
                             "checker_ok_torch": not ta.corrected, "checker_ok_llama": not la.corrected,
                             "problems_llama": la.problems, "torch": ta.llm_text, "llama.cpp": la.llm_text,
                             "s_torch": round(tt, 3), "s_llama": round(lt, 3)})
                mark = "=" if rows[-1]["identical"] else f"differs at token {first}"
                print(f"{Path(img).name:<28} {q[:34]:<34} {mark:<20} checker torch/llama: "
                      f"{'ok' if not ta.corrected else 'corrected'}/{'ok' if not la.corrected else 'corrected'}",
                      flush=True)
        dec.close()
    n = len(rows)
    same = sum(r["identical"] for r in rows)
    firsts = [r["first_diff_token"] for r in rows if not r["identical"]]
    summary = {"answers": n, "identical": same, "first_diff_tokens": sorted(firsts),
               "min_first_diff_token": min(firsts) if firsts else None,
               "checker_ok_torch": sum(r["checker_ok_torch"] for r in rows),
               "checker_ok_llama": sum(r["checker_ok_llama"] for r in rows),
               "checker_disagree": sum(r["checker_ok_torch"] != r["checker_ok_llama"] for r in rows),
               "images": [Path(i).name for i in images], "threads": args.threads}
    print(json.dumps(summary, indent=2))
    for r in rows:
        if not r["identical"]:
            print(f"\n{r['image']} | {r['question']}\n  torch: {r['torch']}\n  llama: {r['llama.cpp']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
