"""One chat turn: recognise the question, let the LLM answer the trained form of it, check
every claim against the report, and replace a contradicting answer by the grounded wording.

`ChatAnswer` records both texts and whether the checker corrected the LLM, so the report,
the UI and chat_check can show how often the safety net was needed.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..report import InspectionReport
from .claims import check_answer
from .grounded import OFFTOPIC_ANSWER, adapt, canonical_question, grounded_answer
from .intents import Intent, recognize


@dataclass
class ChatAnswer:
    question: str
    text: str                      # what the user sees
    intent: str
    llm_text: str | None = None    # the LLM's answer (adapted to the user's polarity); None when not asked
    corrected: bool = False        # the checker replaced the LLM's answer by the grounded wording
    problems: list[str] = field(default_factory=list)  # what the checker found wrong in the LLM's answer
    check_s: float = 0.0           # time spent recognising and checking (s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(report: InspectionReport, question: str) -> tuple[Intent, str | None]:
    """(intent, question to put to the LLM or None when the answer needs no LLM)."""
    intent = recognize(question)
    return intent, canonical_question(intent, report)


def finish(report: InspectionReport, question: str, intent: Intent, llm_raw: str | None, check: bool = True,
           spent_s: float = 0.0) -> ChatAnswer:
    """The answer the user sees, from the LLM's raw answer to the canonical question."""
    t0 = time.perf_counter()
    if llm_raw is None:  # off-topic: a fixed polite answer, nothing about the part
        return ChatAnswer(question, OFFTOPIC_ANSWER, intent.name, None, False, [], spent_s)
    text = adapt(intent, llm_raw)
    if not check:
        return ChatAnswer(question, text, intent.name, text, False, [], spent_s)
    result = check_answer(report, intent, text)
    out = ChatAnswer(question, text, intent.name, text, not result.ok, result.problems)
    if not result.ok:
        out.text = grounded_answer(intent, report)
    out.check_s = spent_s + time.perf_counter() - t0
    return out


def record(report: InspectionReport, answer: ChatAnswer) -> None:
    """Keep the turn on the report (its JSON lists every turn and whether it was corrected).
    The check's timing stays off the report, so the same inspection gives the same record."""
    turns = getattr(report, "turns", None)
    if turns is None:
        report.turns = turns = []
    turns.append({k: v for k, v in answer.to_dict().items() if k != "check_s"})
