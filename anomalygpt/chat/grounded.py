"""How a question is put to the LLM, and the grounded wording an answer falls back to.

`canonical_question` is the trained question for an intent (data_sim.qa's templates), so the
LLM, which answers those well, stays the author of what users read; `adapt` turns the
opening yes/no of its answer round when the user asked in the other polarity ("is it
fine?" vs the trained "is there an anomaly?"). `grounded_answer` is the training target's
wording computed from the report (data_sim.qa's answer functions), used when the claim
checker finds that the LLM's answer contradicts the report.
"""
from __future__ import annotations

from data_sim.qa import canonical_question as qa_canonical
from data_sim.qa import (action_answer, cause_answer, cell_answer, clean_answer, confidence_answer,
                         count_answer, main_answer, side_answer, size_answer, where_answer)

from ..report import InspectionReport
from .intents import Intent

OFFTOPIC_ANSWER = ("I can only help with the inspected part: ask me whether it has a defect, where, how many, how "
                   "large, which cells are clean, how sure the verdict is, or what to do with the part.")
IGNORE_PREFIX = "I answer from the measured report only. "
# intents whose user polarity is the opposite of the trained question's
_FLIPPED = {"main_ok", "decision_pass", "side_bad"}
# intents put to the LLM as the main question ("Is there any anomaly in the image?")
MAIN_FORM = ("main", "main_ok", "decision_pass", "decision_reject", "ignore")
# follow-ups the training chats put after the main question (data_sim.qa.conversation, followups=3)
TRAINED_FOLLOWUPS = 3


def _regions(report: InspectionReport) -> list[dict]:
    return [{"cell": r.cell, "area_share": r.area_share} for r in report.regions] if report.is_anomalous else []


def canonical_question(intent: Intent, report: InspectionReport) -> str | None:
    """The trained question the LLM is asked for `intent` (None: the LLM is not asked);
    the wordings are data_sim.qa.CANONICAL_QUESTIONS, which the chat fine-tune trains on."""
    plural = report.is_anomalous and len(report.regions) > 1
    name = intent.name
    if name in MAIN_FORM:
        return qa_canonical("main")
    if name in ("side_ok", "side_bad"):
        return qa_canonical("side", side=intent.side)
    if name in ("where", "count", "size", "clean", "confidence", "cause", "action", "cell_bad", "cell_ok"):
        return qa_canonical(name, plural, cell=intent.cell)
    return None


def trained_history(intent: Intent, history: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The earlier turns (already in their trained form) cut to the shape the LLM was trained on:
    the main question only ever opened a training chat, so it is asked with no history; a
    follow-up saw the main question's turn (the latest one given) and at most
    TRAINED_FOLLOWUPS - 1 follow-ups before it.
    Longer or other histories are contexts the LoRA never saw (the main question asked again
    after several turns was answered against the report in a third of the chats)."""
    if intent.name in MAIN_FORM:
        return []
    main_q = qa_canonical("main")
    mains = [turn for turn in history if turn[0] == main_q]
    followups = [turn for turn in history if turn[0] != main_q][-(TRAINED_FOLLOWUPS - 1):]
    return mains[-1:] + followups


def flips(intent: Intent) -> bool:
    return intent.name in _FLIPPED


def flip_opening(text: str) -> str:
    """'Yes, ...' <-> 'No, ...' (only the first word; the rest is unchanged)."""
    stripped = text.lstrip()
    lead = text[: len(text) - len(stripped)]
    for a, b in (("Yes", "No"), ("No", "Yes"), ("yes", "no"), ("no", "yes")):
        if stripped.startswith(a) and (len(stripped) == len(a) or not stripped[len(a)].isalpha()):
            return lead + b + stripped[len(a):]
    return text


def prefix(intent: Intent) -> str:
    return IGNORE_PREFIX if intent.name == "ignore" else ""


def adapt(intent: Intent, llm_text: str) -> str:
    """The LLM's answer to the canonical question, put in the user's polarity."""
    text = llm_text.strip()
    return prefix(intent) + (flip_opening(text) if flips(intent) else text)


def grounded_answer(intent: Intent, report: InspectionReport) -> str:
    """The answer built from the report alone, in the trained wording and the user's polarity."""
    regions = _regions(report)
    hit = report.affected_cells
    name = intent.name
    if name == "offtopic":
        return OFFTOPIC_ANSWER
    if name in ("main", "main_ok", "decision_pass", "decision_reject", "ignore"):
        text = main_answer(regions)
    elif name == "where":
        text = where_answer(regions)
    elif name == "count":
        text = count_answer(len(regions))
    elif name == "size":
        text = size_answer(regions)
    elif name == "clean":
        text = clean_answer(hit)
    elif name in ("cell_bad", "cell_ok"):
        text = cell_answer(intent.cell, intent.cell in hit, ok_polarity=name == "cell_ok")
    elif name in ("side_bad", "side_ok"):
        text = side_answer(intent.side, hit)
    elif name == "confidence":
        text = confidence_answer(report.score, report.threshold)
    elif name == "cause":
        text = cause_answer(regions)
    elif name == "action":
        text = action_answer(regions)
    else:
        raise ValueError(f"unknown intent {name!r}")
    return adapt(intent, text)
