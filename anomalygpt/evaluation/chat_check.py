"""Do the chat's follow-up answers agree with the report they are grounded on?

    python -m anomalygpt.evaluation.chat_check --dataset elpv --per-label 10 --out out/chat.json

The LLM can only be as right as the measured facts it is given, so the truth for each
follow-up is the report itself (verdict, region cells, affected and clean cells, size),
not the dataset label: this isolates the language model from the detector. Each image gets
one chat in which the history grows as in the chat UI: the main question, then where,
how many, which cells are clean, how large, "is the X cell affected?" for one affected
and one clean cell, how sure it is (score, threshold and margin word copied from the
facts), what could cause it (no invented cause: only the cells) and what to do with the
part. The phrasings are the ones a user of the 3x3 grid types, several of which the
training Q&A did not contain before this check was written. `--object` writes a part
name into the facts, as the demo and the web chat do.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from data_sim.qa import margin_word, size_word

from data_sim.grid import ALL_CELLS, parse_cells
from ..inspector import DEFAULT_QUESTION
from .metrics import opening_yes_no
from ..report import InspectionReport

KINDS = ("main", "where", "count", "clean", "size", "cell_bad", "cell_ok", "confidence", "cause", "action")
_NUMBERS = {"no": 0, "zero": 0, "one": 1, "an": 1, "a": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
# kinds judged on naming exactly the report's cells, or, for a normal part, no cell and one of these words
_NONE_WORDS = {"where": r"\bno\b", "cause": r"\b(no|nothing|normal)\b", "action": r"\b(no|nothing|normal)\b"}


def said_count(text: str) -> int | None:
    """The number in 'there is one ...' / 'there are two ...' (None when there is none)."""
    m = re.search(r"\bthere (?:is|are) (no|zero|one|an|a|two|three|four|five|six|\d+)\b", text.lower())
    if not m:
        return None
    return int(m.group(1)) if m.group(1).isdigit() else _NUMBERS[m.group(1)]


def questions_for(report: InspectionReport, rng: np.random.Generator) -> list[tuple[str, str, Any]]:
    """(kind, question, expected) for one report; `expected` is what a right answer holds."""
    anomalous = report.is_anomalous
    hit, clean = report.affected_cells, report.clean_cells
    cells = sorted({r.cell for r in report.regions}) if anomalous else []
    total = sum(r.area_share for r in report.regions) if anomalous else 0.0
    out: list[tuple[str, str, Any]] = [
        ("where", "Where is the anomaly?", cells),
        ("count", "How many defects are there?", len(report.regions) if anomalous else 0),
        ("clean", "Which cells are clean?", clean),
        ("size", "How large is the anomaly?", size_word(total) if cells else None),
    ]
    if hit:
        out.append(("cell_bad", f"Is the {hit[int(rng.integers(len(hit)))]} cell affected?", 1))
    if clean:
        out.append(("cell_ok", f"Is the {clean[int(rng.integers(len(clean)))]} cell affected?", 0))
    margin = margin_word(report.score, report.threshold)
    out += [("confidence", "How confident are you?", (f"{report.score:.2f}", f"{report.threshold:.2f}",
                                                     "above" if anomalous else "below", margin)),
            ("cause", "What could cause this?", cells),
            ("action", "What should I do with this part?", cells)]
    return out


def judge(kind: str, answer: str, expected: Any) -> bool:
    """Whether `answer` agrees with `expected` (see questions_for)."""
    low = answer.lower()
    named = sorted(set(parse_cells(answer)))
    if kind in _NONE_WORDS:
        return named == expected if expected else (not named and re.search(_NONE_WORDS[kind], low) is not None)
    if kind == "count":
        return said_count(answer) == expected
    if kind == "clean":
        if expected == list(ALL_CELLS):
            return "whole" in low or named == sorted(ALL_CELLS)
        return named == sorted(expected)
    if kind == "size":
        words = [w for w in ("small", "medium", "large") if w in low]
        return words[:1] == [expected] if expected else (not words and re.search(r"\bno\b", low) is not None)
    if kind == "confidence":
        score, threshold, side, margin = expected
        hedged = re.search(r"\b(not very|just|close)\b", low) is not None
        return score in answer and threshold in answer and side in low and hedged == (margin == "narrow")
    return opening_yes_no(answer) == expected  # main, cell_bad, cell_ok


def check_chat(assistant: Any, report: InspectionReport, rng: np.random.Generator) -> dict[str, Any]:
    """One chat about `report`; returns {kind: agrees} and the transcript."""
    anomalous = int(report.is_anomalous)
    history: list[tuple[str, str]] = []
    ok: dict[str, bool] = {}
    for kind, question, expected in [("main", DEFAULT_QUESTION, anomalous), *questions_for(report, rng)]:
        answer = assistant.ask(report, question, history)
        history.append((question, answer))
        ok[kind] = judge(kind, answer, expected)
    return {"ok": ok, "chat": history, "anomalous": bool(anomalous)}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Share of agreeing answers per kind, and over all answers."""
    out: dict[str, dict[str, float | int]] = {}
    for kind in KINDS:
        vals = [r["ok"][kind] for r in rows if kind in r["ok"]]
        if vals:
            out[kind] = {"agree": float(np.mean(vals)), "n": len(vals)}
    every = [v for r in rows for v in r["ok"].values()]
    out["all"] = {"agree": float(np.mean(every)) if every else float("nan"), "n": len(every)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from .harness import dataset_groups
    from ..inspector import AnomalyGPT

    p = argparse.ArgumentParser(prog="python -m anomalygpt.evaluation.chat_check", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="elpv", help="as for anomalygpt eval (elpv, mvtec:PATH, folder:PATH ...)")
    p.add_argument("--checkpoint", default="embedded")
    p.add_argument("--per-label", type=int, default=10, help="normal and anomalous test images per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--object", default=None, help="object name written into the facts (as `inspect --object`)")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the summary and every chat")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    picked = []
    for group in dataset_groups(args.dataset):
        for label in (1, 0):
            pool = [s for s in group.test if s.label == label]
            k = min(args.per_label, len(pool))
            picked += [(group.name, pool[int(i)]) for i in rng.choice(len(pool), k, replace=False)]
    assistant = AnomalyGPT.from_pretrained(args.checkpoint)
    rows = []
    for group, sample in tqdm(picked, desc="chats", unit="image"):
        report = assistant.inspect(sample.image_path, object_name=args.object, question=None)
        rows.append({"group": group, "image": str(sample.image_path), "label": sample.label,
                     **check_chat(assistant, report, rng)})
    result = {"checkpoint": args.checkpoint, "dataset": args.dataset, "per_label": args.per_label, "object": args.object,
              "seed": args.seed, "summary": summarize(rows), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    for kind, v in result["summary"].items():
        print(f"{kind:9s} {v['agree']:.3f}  (n={v['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
