"""The one claim checker: does an answer say anything the inspection report contradicts?

Shared by the assistant (which corrects an answer that fails it) and by
anomalygpt.evaluation.chat_check (which scores answers with it against the intent the
question truly had). It reads the claims a user would act on: the opening yes/no (turned
into "affected" / "fine" by the question's polarity), the cells named, a count, a size word
and a percentage, the score / threshold numbers and the hedge of a confidence answer, an
invented cause, a verdict word. An answer must also make the claim its intent asks for
(a "where" answer that names no cell has not answered).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from data_sim.grid import ALL_CELLS, parse_cells
from data_sim.qa import margin_word, percent, side_cells, size_word

from ..report import InspectionReport
from .intents import Intent

_NUMBER_WORDS = {"no": 0, "zero": 0, "one": 1, "an": 1, "a": 1, "single": 1, "two": 2, "three": 3, "four": 4,
                 "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
_SAYS_NORMAL = (r"\b(no (anomal\w*|defects?|flaws?|faults?|damage|problems?|issues?)|not? anomalous|looks? normal|"
                r"is normal|nothing (wrong|to explain)|can go on|free of (anomal|defect)\w*)\b")
_SAYS_ANOMALY = (r"\b(there (is|are) (an?|one|two|three|four|five|six|\d+) (\w+ )?(anomal|defect|flaw|fault|region)\w*|"
                 r"an anomaly (at|on|in)|anomal\w* (is|are) at|set the part aside|closer look|reject|scrap)\b")
# words that name a physical cause the detector cannot know
_INVENTED_CAUSE = (r"\b(crack\w*|scratch\w*|dirt\w*|dust|corrosion|solder\w*|burn\w*|hot ?spot|moisture|humidity|"
                   r"impact|manufactur\w*|stress|broken finger|shunt\w*|contamina\w*|caused by|due to|because of)\b")
_HONEST_CAUSE = r"\b(cannot|can't|can not|could not|unable to|not able to|do not know|don't know) (tell|say|know|determine)"


@dataclass
class Truth:
    """What the report says, in the terms the answers use."""
    anomalous: bool
    region_cells: list[str]     # cells of the measured regions (where the answer must point)
    affected: list[str]         # cells with a real share of the anomalous pixels (superset of region_cells)
    clean: list[str]
    n_regions: int
    total_share: float
    score: float
    threshold: float
    largest_share: float = 0.0  # regions come largest first; several regions' answer names the largest's size

    @classmethod
    def of(cls, report: InspectionReport) -> "Truth":
        bad = report.is_anomalous
        regions = report.regions if bad else []
        return cls(anomalous=bad, region_cells=sorted({r.cell for r in regions}), affected=list(report.affected_cells),
                   clean=list(report.clean_cells), n_regions=len(regions),
                   total_share=float(sum(r.area_share for r in regions)), score=float(report.score),
                   threshold=float(report.threshold),
                   largest_share=float(max((r.area_share for r in regions), default=0.0)))

    def target_bad(self, intent: Intent) -> bool:
        """Whether the thing a yes/no question is about is affected."""
        if intent.name in ("cell_bad", "cell_ok"):
            return intent.cell in self.affected
        if intent.name in ("side_bad", "side_ok"):
            return any(c in self.affected for c in side_cells(intent.side or "left"))
        return self.anomalous


@dataclass
class Check:
    ok: bool
    problems: list[str] = field(default_factory=list)


def opening_word(text: str) -> Optional[str]:
    """'yes' / 'no' when the answer (after an optional fixed preamble sentence) opens with it."""
    words = re.findall(r"[a-z']+", text.lower())
    return words[0] if words and words[0] in ("yes", "no") else None


def said_count(text: str) -> Optional[int]:
    """The number in 'there is one ...' / 'there are two anomalies' / '3 defects' (None when none)."""
    low = text.lower()
    m = re.search(r"\bthere (?:is|are) (no|zero|one|an|a|single|two|three|four|five|six|seven|eight|nine|\d+)\b", low)
    if not m:
        m = re.search(r"\b(one|two|three|four|five|six|seven|eight|nine|\d+) (?:separate |distinct |\w+ )?"
                      r"(?:anomal|defect|flaw|fault|region|spot)\w*", low)
    if not m:
        return None
    w = m.group(1)
    return int(w) if w.isdigit() else _NUMBER_WORDS[w]


def says_verdict(text: str) -> Optional[bool]:
    """True / False when the wording states an anomaly / no anomaly (ignoring yes/no), else None."""
    low = text.lower()
    normal, anomaly = re.search(_SAYS_NORMAL, low), re.search(_SAYS_ANOMALY, low)
    if normal and not anomaly:
        return False
    if anomaly and not normal:
        return True
    return None


def _percents(text: str) -> list[str]:
    return re.findall(r"(less than 0\.1%|\d+(?:\.\d+)?%)", text.lower())


def _cells_between(named: list[str], truth: Truth, problems: list[str]) -> None:
    """Named cells must cover the regions and stay inside the affected cells."""
    s = set(named)
    if not set(truth.region_cells) <= s:
        problems.append(f"misses cells {sorted(set(truth.region_cells) - s)}")
    if not s <= set(truth.affected):
        problems.append(f"names unaffected cells {sorted(s - set(truth.affected))}")


def check_answer(report: InspectionReport, intent: Intent, answer: str) -> Check:
    """Every checkable claim of `answer` against `report`, for a question of `intent`."""
    t = Truth.of(report)
    low = answer.lower().strip()
    named = list(dict.fromkeys(parse_cells(answer)))
    problems: list[str] = []
    name = intent.name
    if not low:
        return Check(False, ["empty answer"])

    if name == "ignore":  # must still say what the report says about the part
        verdict = says_verdict(answer)
        if verdict is None:
            problems.append("does not state the report's verdict")
        elif verdict != t.anomalous:
            problems.append("states the opposite of the report's verdict")
    elif name == "offtopic":
        if named or said_count(answer) is not None or says_verdict(answer) is not None:
            problems.append("makes claims about the part to an off-topic question")
        if not re.search(r"\b(i can|i answer|ask me)\b", low):
            problems.append("does not say what the assistant can do")
    elif intent.ok_polarity is not None:  # yes/no questions
        word = opening_word(answer)
        bad = t.target_bad(intent)
        want = ("yes" if bad else "no") if not intent.ok_polarity else ("no" if bad else "yes")
        if word is None:
            problems.append("does not open with yes or no")
        elif word != want:
            problems.append(f"says {word!r}, the report implies {want!r}")
        verdict = says_verdict(answer)
        if name in ("main", "main_ok", "decision_pass", "decision_reject") and verdict is not None \
                and verdict != t.anomalous:
            problems.append("its wording contradicts the verdict")
        if named and not set(named) <= set(t.affected) and name not in ("cell_ok", "side_ok", "cell_bad", "side_bad"):
            problems.append(f"names unaffected cells {sorted(set(named) - set(t.affected))}")
        if name in ("cell_bad", "cell_ok", "side_bad", "side_ok") and verdict is not None and verdict != bad:
            problems.append("its wording contradicts the report for that " + ("cell" if name[:4] == "cell" else "side"))
        if name in ("cell_bad", "cell_ok", "side_bad", "side_ok") and bad and named \
                and not set(named) <= set(t.affected):
            problems.append(f"names unaffected cells {sorted(set(named) - set(t.affected))}")
    elif name == "where":
        if t.anomalous:
            _cells_between(named, t, problems)
            if re.search(r"\d", low):
                problems.append("gives coordinates instead of cells")
        elif named or not re.search(r"\bno\b|\bnowhere\b", low):
            problems.append("points at a place on a normal part")
    elif name == "count":
        n = said_count(answer)
        if n is None:
            problems.append("states no count")
        elif n != t.n_regions:
            problems.append(f"says {n}, the report has {t.n_regions}")
    elif name == "size":
        words = re.findall(r"\b(small|medium|large)\b", low)
        pcts = _percents(answer)
        if t.anomalous:
            if not words and not pcts:
                problems.append("states no size")
            allowed = {size_word(t.total_share)} | ({size_word(t.largest_share)} if t.n_regions > 1 else set())
            if words and words[0] not in allowed:
                problems.append(f"says {words[0]}, the total is {size_word(t.total_share)}")
            if pcts and pcts[0] != percent(t.total_share):
                problems.append(f"says {pcts[0]}, the total is {percent(t.total_share)}")
        elif words or pcts or not re.search(r"\bno\b", low):
            problems.append("gives a size on a normal part")
    elif name == "clean":
        if not t.affected:
            if not ("whole" in low or sorted(named) == sorted(ALL_CELLS) or re.search(r"\b(all|every)\b", low)):
                problems.append("does not say the whole part is clean")
            elif re.search(r"\bno area\b", low):
                problems.append("says no area is clean")
        elif not t.clean:
            if not re.search(r"\b(no area|none|no cell|nowhere)\b", low):
                problems.append("does not say that no cell is clean")
        elif sorted(named) != sorted(t.clean):
            problems.append(f"names {sorted(named)}, the clean cells are {sorted(t.clean)}")
    elif name == "confidence":
        side = "above" if t.anomalous else "below"
        for value, what in ((f"{t.score:.2f}", "score"), (f"{t.threshold:.2f}", "threshold")):
            if value not in answer:
                problems.append(f"does not give the {what} {value}")
        other = {"above": "below", "below": "above"}[side]
        if side not in low or other in low:
            problems.append(f"does not say the score is {side} the threshold")
        hedged = re.search(r"\b(not very|just|close|narrow|borderline|second look)\b", low) is not None
        if hedged != (margin_word(t.score, t.threshold) == "narrow"):
            problems.append("its certainty does not match the margin")
    elif name in ("cause", "action"):
        if t.anomalous:
            _cells_between(named, t, problems)
            if name == "cause":
                if not re.search(_HONEST_CAUSE, low):
                    problems.append("does not say the cause cannot be told from the image")
                if re.search(_INVENTED_CAUSE, low):
                    problems.append("names a cause the image cannot show")
            elif says_verdict(answer) is False:
                problems.append("says the part can go on")
        else:
            if named:
                problems.append("points at a place on a normal part")
            if says_verdict(answer) is not False and not re.search(r"\b(nothing|no)\b", low):
                problems.append("does not say the part is normal")
            if name == "cause" and re.search(_INVENTED_CAUSE, low):
                problems.append("names a cause the image cannot show")
    # garbled wording: a list that names a cell twice, or "there are 1 ..." (both seen from the LLM
    # on true facts; the user would read them as a broken answer even when the set of cells is right)
    raw = parse_cells(answer)
    repeated = sorted({c for c in raw if raw.count(c) > 1})
    if repeated:
        problems.append(f"names {repeated} more than once")
    if re.search(r"\bthere are (1|one)\b", low):
        problems.append("says 'there are' of one")
    # a count stated anywhere must be the report's
    if name not in ("count", "offtopic"):
        n = said_count(answer)
        if n is not None and n != t.n_regions and not (n == 1 and t.n_regions >= 1 and name != "count"):
            problems.append(f"says {n} anomalies, the report has {t.n_regions}")
    return Check(not problems, problems)


def implied_anomalous(intent: Intent, answer: str, truth_cells: Optional[list[str]] = None) -> Optional[bool]:
    """What an answer implies about the whole part (anomalous or not), for the consistency
    measure between the turns of one chat; None when it implies nothing about the whole part."""
    name = intent.name
    if name in ("main", "main_ok", "decision_pass", "decision_reject"):
        word = opening_word(answer)
        if word is None:
            return says_verdict(answer)
        return (word == "yes") != bool(intent.ok_polarity)
    if name in ("cell_bad", "cell_ok", "side_bad", "side_ok"):
        word = opening_word(answer)
        if word is None:
            return None
        says_bad = (word == "yes") != bool(intent.ok_polarity)
        return True if says_bad else None  # one fine cell says nothing about the rest
    if name in ("offtopic", "confidence"):
        return None
    if name == "count":
        n = said_count(answer)
        return None if n is None else n > 0
    if name == "clean":
        named = set(parse_cells(answer))
        if "whole" in answer.lower() or named == set(ALL_CELLS):
            return False
        return True if named or re.search(r"\bno area\b", answer.lower()) else None
    if parse_cells(answer):
        return True
    return says_verdict(answer)
