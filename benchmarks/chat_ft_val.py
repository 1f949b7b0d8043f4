"""Training-side validation of the chat: how often the LLM alone answers the canonical
questions (the only wording anomalygpt.chat puts to it) in agreement with the report.

    PYTHONPATH=. python benchmarks/chat_ft_val.py --checkpoint runs/chat_ft/checkpoint-last --n 16 --out out/val.json

No test image is used: simulated anomalies (data_sim, the validation seed stream) on the
held-out share of the ELPV train normals (training.data.split_images, never trained on),
half of the items left normal; 4 other held-out normals are the references. Each item is
inspected by the real assistant (measured regions, not the simulation's mask), then one
chat: the main question, then every follow-up intent once in a seeded order, each as its
canonical question, with the shown answers as history (the assistant cuts it as in the web chat).
The LLM's own answer of each turn is judged by the claim checker against the report; a
part name is written into the facts for every other item. Used to pick the fine-tune's
settings and to compare checkpoints without ELPV test labels.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

INTENTS = ("where", "count", "size", "clean", "cell_bad", "cell_ok", "side_ok", "confidence", "cause", "action",
           "main")

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="embedded")
    p.add_argument("--n", type=int, default=16, help="simulated items (half anomalous)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--history", choices=("trained", "full"), default="trained",
                   help="earlier turns given to the LLM: cut to the training chats' shape, or all")
    args = p.parse_args(argv)

    import dataclasses

    import torch

    from anomalygpt.chat.claims import check_answer
    from anomalygpt.chat.grounded import canonical_question
    from anomalygpt.chat.intents import Intent
    from anomalygpt.config import load_config
    from anomalygpt.inspector import DEFAULT_QUESTION, AnomalyGPT
    from data_sim.datasets import normal_training_images
    from data_sim.grid import ALL_CELLS
    from data_sim.qa import SIDES
    from training.data import SimulatedAnomalyDataset, split_images
    from training.train import VAL_STREAM

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    assistant = AnomalyGPT.from_pretrained(args.checkpoint)
    assistant.llm_history = args.history
    cfg = load_config("configs/embedded.yaml", [])
    _, val_images = split_images(normal_training_images(",".join(cfg.train.data)))
    elpv_val = [q for q in val_images if "elpv" in str(q).lower()] or val_images
    rng = np.random.default_rng(args.seed)
    refs_idx = rng.choice(len(elpv_val), size=4, replace=False)
    refs = assistant.build_references([str(elpv_val[int(i)]) for i in refs_idx])
    pool = [q for i, q in enumerate(elpv_val) if i not in set(int(j) for j in refs_idx)]
    sim = dataclasses.replace(cfg.train.sim, anomalous_fraction=0.5)
    ds = SimulatedAnomalyDataset(pool, cfg.encoder.image_size, args.n, 1000 + args.seed, sim, sources=pool,
                                 stream=VAL_STREAM, followup_prob=0.0)
    rows = []
    for k in range(args.n):
        item = ds[k]
        img = (item.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        report = assistant.inspect(img, refs, object_name="solar cell" if k % 2 else None, question=DEFAULT_QUESTION)
        turns = [{"kind": "main", "llm_ok": check_answer(report, Intent("main"), report.turns[0]["llm_text"]).ok,
                  "llm": report.turns[0]["llm_text"], "corrected": report.turns[0]["corrected"]}]
        history = [(DEFAULT_QUESTION, report.answer)]
        for kind in rng.permutation(INTENTS):
            kind = str(kind)
            cell = side = None
            if kind.startswith("cell_"):
                hit, clean = report.affected_cells, report.clean_cells
                cells = hit if hit and (not clean or rng.random() < 0.5) else clean
                cell = cells[int(rng.integers(len(cells)))] if cells else ALL_CELLS[0]
            if kind.startswith("side_"):
                side = SIDES[int(rng.integers(len(SIDES)))]
            intent = Intent(kind, cell=cell, side=side)
            q = canonical_question(intent, report)
            done = assistant.answer(report, q, history)
            llm = done.llm_text or ""
            turns.append({"kind": kind, "question": q, "llm": llm, "corrected": done.corrected,
                          "llm_ok": check_answer(report, intent, llm).ok, "problems": done.problems})
            history.append((q, done.text))
        rows.append({"item": k, "label": item.label, "verdict": report.verdict, "facts": report.facts(),
                     "turns": turns})
        print(f"item {k}: label {item.label} verdict {report.verdict} llm ok "
              f"{sum(t['llm_ok'] for t in turns)}/{len(turns)}", flush=True)
    summary = {}
    all_turns = [t for r in rows for t in r["turns"]]
    for kind in ("main", *INTENTS[:-1]):
        ts = [t for t in all_turns if t["kind"] == kind]
        summary[kind] = round(float(np.mean([t["llm_ok"] for t in ts])), 3)
    summary["all_llm_agree"] = round(float(np.mean([t["llm_ok"] for t in all_turns])), 3)
    summary["corrected"] = round(float(np.mean([t["corrected"] for t in all_turns])), 3)
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"checkpoint": args.checkpoint, "history": args.history, "summary": summary,
                               "rows": rows}, indent=1))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
