"""Do the chat's answers agree with the report they are grounded on, for phrasings no part
of the system was trained on?

    python -m anomalygpt.evaluation.chat_check --dataset elpv --per-label 10 --shots 4 --out out/chat.json

The truth for each answer is the report itself (verdict, region cells, affected and clean
cells, count, size, score and threshold), not the dataset label: this isolates the chat
from the detector. Each image gets one chat whose history grows as in the chat UI: the
main question, then `--questions` intents drawn from the held-out phrasings
(heldout_phrasings.py; every intent is asked equally often over the run), each with a
random held-out wording, cell and side. Answers are judged by the same claim checker the
assistant corrects with (anomalygpt.chat.claims), but against the intent the question
truly has, not the one the assistant recognised. Per turn the run keeps the LLM's own
answer too, so it reports the agreement of what users see, of the LLM alone (before the
checker's correction) and how often the checker corrected. `--no-checker` runs the bare
LLM on the user's wording (the assistant before this check existed). Consistency: a chat
is inconsistent when a follow-up implies the opposite verdict to the first answer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from data_sim.grid import ALL_CELLS
from data_sim.qa import SIDES

from ..chat.claims import check_answer, implied_anomalous
from ..chat.intents import Intent
from ..inspector import DEFAULT_QUESTION
from ..report import InspectionReport
from .heldout_phrasings import HELDOUT, INTENTS


def make_question(intent: str, report: InspectionReport, rng: np.random.Generator) -> tuple[str, Intent]:
    """A held-out wording of `intent`, with its cell (an affected or a clean one, at random)
    or side filled in; returns the question and its true Intent."""
    text = HELDOUT[intent][int(rng.integers(len(HELDOUT[intent])))]
    cell = side = None
    if "{cell}" in text:
        hit, clean = report.affected_cells, report.clean_cells
        pool = hit if hit and (not clean or rng.random() < 0.5) else clean
        cell = pool[int(rng.integers(len(pool)))] if pool else ALL_CELLS[0]
        text = text.replace("{cell}", cell)
    if "{side}" in text:
        side = SIDES[int(rng.integers(len(SIDES)))]
        text = text.replace("{side}", side)
    return text, Intent(intent, cell=cell, side=side)


def question_intent(kind: str, question: str) -> Intent:
    """The true Intent of a held-out question of `kind` (its cell or side read back from the text)."""
    import re

    from data_sim.grid import parse_cells

    cell = parse_cells(question)[0] if kind.startswith("cell_") else None
    m = re.search(r"\b(left|right|top|bottom)\b", question.lower()) if kind.startswith("side_") else None
    return Intent(kind, cell=cell, side=m.group(1) if m else None)


def check_chat(assistant: Any, report: InspectionReport, intents: Sequence[str], rng: np.random.Generator,
               first_answer: str | None = None) -> dict[str, Any]:
    """One chat about `report`: the main question, then one held-out question per intent.

    Returns per turn: kind, question, the answer shown, the LLM's own answer, whether the
    checker corrected it, whether the shown / LLM answers agree with the report, and whether
    the turn contradicts the chat's first answer."""
    main = Intent("main")
    first = first_answer if first_answer is not None else assistant.ask(report, DEFAULT_QUESTION, [])
    first_llm = (report.turns[0].get("llm_text") or first) if report.turns and first_answer is not None else first
    turns = [{"kind": "main", "question": DEFAULT_QUESTION, "answer": first, "llm": first_llm,
              "corrected": bool(report.answer_corrected), "ok": check_answer(report, main, first).ok,
              "llm_ok": check_answer(report, main, first_llm or "").ok, "contradicts_first": False}]
    first_says = implied_anomalous(main, first)
    history: list[tuple[str, str]] = [(DEFAULT_QUESTION, first)]
    for kind in intents:
        question, truth = make_question(kind, report, rng)
        done = assistant.answer(report, question, history)
        says = implied_anomalous(truth, done.text)
        llm = done.llm_text if done.llm_text is not None else done.text
        turns.append({"kind": kind, "question": question, "answer": done.text, "llm": llm, "recognised": done.intent,
                      "corrected": done.corrected, "problems": list(done.problems),
                      "ok": check_answer(report, truth, done.text).ok,
                      "llm_ok": check_answer(report, truth, llm).ok,
                      "contradicts_first": says is not None and first_says is not None and says != first_says})
        history.append((question, done.text))
    return {"turns": turns, "anomalous": bool(report.is_anomalous)}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per kind and overall: agreement of the shown answers, of the LLM alone, correction rate;
    plus the share of chats in which a follow-up contradicts the first answer."""
    turns = [t for r in rows for t in r["turns"]]
    out: dict[str, Any] = {}
    for kind in ("main", *INTENTS):
        ts = [t for t in turns if t["kind"] == kind]
        if ts:
            out[kind] = {"agree": float(np.mean([t["ok"] for t in ts])),
                         "llm_agree": float(np.mean([t["llm_ok"] for t in ts])),
                         "corrected": float(np.mean([t["corrected"] for t in ts])), "n": len(ts)}
    out["all"] = {"agree": float(np.mean([t["ok"] for t in turns])) if turns else float("nan"),
                  "llm_agree": float(np.mean([t["llm_ok"] for t in turns])) if turns else float("nan"),
                  "corrected": float(np.mean([t["corrected"] for t in turns])) if turns else float("nan"),
                  "n": len(turns)}
    out["consistency"] = {"chats_with_contradiction": int(sum(any(t["contradicts_first"] for t in r["turns"])
                                                              for r in rows)),
                          "turns_contradicting_first": int(sum(t["contradicts_first"] for t in turns)),
                          "chats": len(rows)}
    # the same for the LLM's own answers (before any correction; their history held the shown answers)
    llm_bad = 0
    for r in rows:
        first = implied_anomalous(Intent("main"), r["turns"][0]["llm"] or "")
        says = [implied_anomalous(question_intent(t["kind"], t["question"]), t["llm"] or "") for t in r["turns"][1:]]
        llm_bad += any(s is not None and first is not None and s != first for s in says)
    out["consistency"]["llm_chats_with_contradiction"] = llm_bad
    return out


def intent_schedule(n_chats: int, per_chat: int, rng: np.random.Generator) -> list[list[str]]:
    """`per_chat` distinct intents per chat, each intent asked (nearly) equally often."""
    pool: list[str] = []
    out = []
    for _ in range(n_chats):
        chat: list[str] = []
        while len(chat) < min(per_chat, len(INTENTS)):
            if not pool:
                pool = list(rng.permutation(INTENTS))
            pick = next((k for k in pool if k not in chat), None)
            if pick is None:
                pool = list(rng.permutation(INTENTS))
                continue
            pool.remove(pick)
            chat.append(str(pick))
        out.append(chat)
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'intent':16s} {'agree':>6s} {'LLM':>6s} {'fixed':>6s}   n"]
    for kind, v in summary.items():
        if kind != "consistency":
            lines.append(f"{kind:16s} {v['agree']:6.3f} {v['llm_agree']:6.3f} {v['corrected']:6.3f}  {v['n']}")
    c = summary["consistency"]
    lines.append(f"chats where a follow-up contradicts the first answer: {c['chats_with_contradiction']} of {c['chats']}"
                 f" ({c['turns_contradicting_first']} turns); LLM alone: {c['llm_chats_with_contradiction']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from ..inspector import AnomalyGPT
    from .harness import dataset_groups, pick_references

    p = argparse.ArgumentParser(prog="python -m anomalygpt.evaluation.chat_check", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="elpv", help="as for anomalygpt eval (elpv, mvtec:PATH, folder:PATH ...)")
    p.add_argument("--checkpoint", default="embedded")
    p.add_argument("--per-label", type=int, default=10, help="normal and anomalous test images per group")
    p.add_argument("--shots", type=int, default=4, help="normal references per group (train normals, seeded draw)")
    p.add_argument("--questions", type=int, default=8, help="held-out follow-ups per chat (intents rotate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--object", default=None, help="object name written into the facts (as `inspect --object`)")
    p.add_argument("--no-checker", action="store_true", help="the bare LLM on the user's wording, nothing checked")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the summary and every chat")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    assistant = AnomalyGPT.from_pretrained(args.checkpoint)
    assistant.check_answers = not args.no_checker
    picked = []
    for group in dataset_groups(args.dataset):
        refs = assistant.build_references([s.image_path for s in pick_references(group.train_normals, args.shots,
                                                                                 args.seed)]) if args.shots else None
        for label in (1, 0):
            pool = [s for s in group.test if s.label == label]
            k = min(args.per_label, len(pool))
            picked += [(group.name, refs, pool[int(i)]) for i in rng.choice(len(pool), k, replace=False)]
    schedule = intent_schedule(len(picked), args.questions, rng)
    rows = []
    for (group, refs, sample), intents in tqdm(list(zip(picked, schedule)), desc="chats", unit="image"):
        report = assistant.inspect(sample.image_path, refs, object_name=args.object)
        rows.append({"group": group, "image": str(sample.image_path), "label": sample.label,
                     **check_chat(assistant, report, intents, rng, first_answer=report.answer)})
    summary = summarize(rows)
    result = {"checkpoint": args.checkpoint, "dataset": args.dataset, "per_label": args.per_label, "shots": args.shots,
              "object": args.object, "checker": not args.no_checker, "seed": args.seed, "summary": summary,
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
