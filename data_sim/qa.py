"""Question/answer pairs computed from ground-truth masks, for training the chat model.

Every answer is derived from the mask through ``regions`` and ``data_sim.grid``, so a
training target can never disagree with the pixels, and the 3x3 cell words are the same
ones the report and the UI use. Questions come in several phrasings (picked by the seeded
generator) so the model learns the intent, not one sentence; the main answer keeps one
canonical form because it is also what the evaluation parses (yes/no and cells).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

from data_sim.grid import ALL_CELLS
from data_sim.regions import Region, regions_from_mask, regions_from_parts

QA = tuple[str, str]
MaskInput = Union[np.ndarray, Sequence[np.ndarray]]

MAIN_QUESTIONS: tuple[str, ...] = (
    "Is there any anomaly in the image?",
    "Are there any defects in this image?",
    "Is there anything wrong with this part?",
    "Do you see any anomaly in this image?",
    "Does this image show a defect?",
    "Is this product normal, or does it have an anomaly?",
)
NO_ANOMALY = "No, there are no anomalies in the image."
# The one wording per intent the assistant puts to the LLM (anomalygpt.chat.grounded maps any
# user phrasing to it), so the chat fine-tune can train on exactly these strings. Each is also
# one of the templates below. (single, plural) where the wording depends on the region count.
CANONICAL_QUESTIONS: dict[str, Union[str, tuple[str, str]]] = {
    "main": MAIN_QUESTIONS[0],
    "where": ("Where is the anomaly?", "Where are the anomalies?"),
    "count": "How many anomalies are there?",
    "size": ("How large is the anomaly?", "How large are the anomalies?"),
    "clean": "Which cells are clean?",
    "confidence": "How confident are you?",
    "cause": "What could cause this?",
    "action": "What should I do with this part?",
    "cell_bad": "Is the {cell} cell affected?",
    "cell_ok": "Is the {cell} cell OK?",
    "side": "Is the {side} side OK?",
    "box": "Where exactly is the anomaly?",
}
SIZE_WORDS: tuple[tuple[float, str], ...] = ((0.01, "small"), (0.05, "medium"), (float("inf"), "large"))
NARROW_MARGIN = 0.15  # a score within 15% of the threshold is a close call
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def canonical_question(kind: str, plural: bool = False, cell: Optional[str] = None, side: Optional[str] = None) -> str:
    """The canonical wording of intent `kind` (a key of CANONICAL_QUESTIONS)."""
    q = CANONICAL_QUESTIONS[kind]
    if isinstance(q, tuple):
        q = q[1] if plural else q[0]
    return q.replace("{cell}", cell or "").replace("{side}", side or "")


def join_words(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _unique(seq: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(seq))


def location_phrase(cells: Sequence[str]) -> str:
    """'at the top left and the bottom right of the image': each cell once, in reading
    order (top row first, left to right), so the same set of cells always reads the same."""
    ordered = sorted(_unique(cells), key=ALL_CELLS.index)
    return "at " + join_words([f"the {c}" for c in ordered]) + " of the image"


def size_word(share: float) -> str:
    """small (< 1% of the area), medium (< 5%) or large."""
    for limit, word in SIZE_WORDS:
        if share < limit:
            return word
    return SIZE_WORDS[-1][1]


def percent(share: float) -> str:
    """A share (0..1) as a short percentage: '0.4%', '12%', 'less than 0.1%'."""
    p = 100.0 * share
    if p < 0.1:
        return "less than 0.1%"
    return f"{p:.1f}%" if p < 10 else f"{p:.0f}%"


def margin_word(score: float, threshold: float) -> str:
    """'narrow' when the score is within NARROW_MARGIN of the threshold (relative), else 'clear'.

    The facts carry this word so the chat can say how sure the verdict is without the LLM
    having to divide two numbers, which a small model does unreliably."""
    rel = abs(score - threshold) / max(abs(threshold), 1e-6)
    return "narrow" if rel < NARROW_MARGIN else "clear"


def _count_words(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def to_regions(mask_or_parts: MaskInput, min_area: int = 1) -> list[Region]:
    """Regions from one HxW mask (connected components) or a list of per-anomaly masks."""
    if isinstance(mask_or_parts, np.ndarray) and mask_or_parts.ndim == 2:
        return regions_from_mask(mask_or_parts, min_area)
    return regions_from_parts(list(mask_or_parts), min_area)


def main_answer(regions: Sequence[Region]) -> str:
    """The canonical answer to 'Is there any anomaly in the image?'."""
    if not regions:
        return NO_ANOMALY
    where = location_phrase([r["cell"] for r in regions])
    if len(regions) == 1:
        return f"Yes, there is an anomaly in the image, {where}."
    return f"Yes, there are {len(regions)} anomalies in the image, {where}."


def affected_cells(union: np.ndarray, regions: Sequence[Region], min_pixels: int = 16) -> list[str]:
    """Grid cells holding a region's centre, or at least ``max(min_pixels, 2%)`` of the
    anomalous pixels: a crack that grazes a cell by a few pixels does not make the whole
    cell 'anomalous', but any real share of it does."""
    h, w = union.shape
    ys, xs = np.nonzero(union)
    counts = np.zeros((3, 3), int)
    if len(ys):
        rows = np.minimum(2, (3 * ys) // h)
        cols = np.minimum(2, (3 * xs) // w)
        np.add.at(counts, (rows, cols), 1)
    need = max(min_pixels, 0.02 * len(ys))
    hit = {r["cell"] for r in regions}
    for ri in range(3):
        for ci in range(3):
            if counts[ri, ci] >= need:
                hit.add(_cell(ri, ci))
    return [c for c in ALL_CELLS if c in hit]


def _cell(ri: int, ci: int) -> str:
    return ALL_CELLS[3 * ri + ci]


def _q_count(regions: Sequence[Region], rng: np.random.Generator, canon: bool = False) -> QA:
    q = _pick(rng, ("How many anomalies are there?", "How many defects can you see?", "How many anomalous regions does the image have?"))
    return canonical_question("count") if canon else q, count_answer(len(regions))


def count_answer(n: int) -> str:
    """The trained answer to 'how many anomalies?'."""
    if n == 0:
        return "There are no anomalies in the image."
    if n == 1:
        return "There is one anomaly in the image."
    return f"There are {_count_words(n)} anomalies in the image."


def _q_size(regions: Sequence[Region], rng: np.random.Generator, part_share: Optional[float], canon: bool = False) -> QA:
    plural = len(regions) > 1
    q = _pick(
        rng,
        ("How large are the anomalies?", "How big are the defects?", "How much of the image is anomalous?")
        if plural
        else ("How large is the anomaly?", "How big is the defect?", "How much of the image is anomalous?"),
    )
    return canonical_question("size", plural) if canon else q, size_answer(regions, part_share)


def size_answer(regions: Sequence[Region], part_share: Optional[float] = None) -> str:
    """The trained answer to 'how large?': size word and share of the total, then the largest
    region when there are several (regions largest first, as dicts with 'cell' and 'area_share')."""
    plural = len(regions) > 1
    if not regions:
        return "There is no anomaly, so no part of the image is affected."
    scale, whole = (part_share, "the part") if part_share else (1.0, "the image")
    total = sum(r["area_share"] for r in regions) / scale
    if not plural:
        return f"The anomaly is {size_word(total)}: it covers about {percent(total)} of {whole}."
    big = regions[0]
    big_share = big["area_share"] / scale
    return (
        f"Together the anomalies cover about {percent(total)} of {whole}; the largest, at the "
        f"{big['cell']}, is {size_word(big_share)} ({percent(big_share)})."
    )


def _q_where(regions: Sequence[Region], rng: np.random.Generator, canon: bool = False) -> QA:
    plural = len(regions) > 1
    q = _pick(rng, ("Where are the anomalies?", "Where are the defects?", "In which grid cells are the defects?")
              if plural else ("Where is the anomaly?", "Where is the defect?", "In which grid cell is the defect?"))
    return canonical_question("where", plural) if canon else q, where_answer(regions)


def where_answer(regions: Sequence[Region]) -> str:
    """The trained answer to 'where is the anomaly?'."""
    if not regions:
        return "There is no anomaly in the image."
    where = location_phrase([r["cell"] for r in regions])
    return f"The anomalies are {where}." if len(regions) > 1 else f"The anomaly is {where}."


def _q_clean(hit: Sequence[str], rng: np.random.Generator, canon: bool = False) -> QA:
    q = _pick(rng, ("Which areas of the image are free of anomalies?", "Where does the image look normal?",
                    "Which parts of the image are fine?", "Which cells are clean?", "Which grid cells look normal?"))
    return canonical_question("clean") if canon else q, clean_answer(hit)


def clean_answer(hit: Sequence[str]) -> str:
    """The trained answer to 'which cells are clean?' given the affected cells."""
    clean = [c for c in ALL_CELLS if c not in hit]
    if not hit:
        return "The whole image looks normal."
    if not clean:
        return "No area of the image is entirely free of anomalies."
    verb = "looks" if len(clean) == 1 else "look"
    return f"{join_words([f'the {c}' for c in clean]).capitalize()} of the image {verb} normal."


def cell_answer(cell: str, bad: bool, ok_polarity: bool) -> str:
    """The trained answer to 'is the X cell OK?' (ok_polarity) or 'is the X cell affected?'."""
    if ok_polarity:
        return f"No, there is an anomaly at the {cell} of the image." if bad else f"Yes, the {cell} of the image looks normal."
    return f"Yes, there is an anomaly at the {cell} of the image." if bad else f"No, the {cell} of the image looks normal."


def _q_cell(hit: Sequence[str], rng: np.random.Generator, canon: bool = False) -> QA:
    clean = [c for c in ALL_CELLS if c not in hit]
    pool = list(hit) if hit and (not clean or rng.random() < 0.5) else clean
    cell = pool[int(rng.integers(len(pool)))]
    bad = cell in hit
    # users see the 3x3 grid drawn on the overlay, so they also ask about "the top left cell"
    if rng.random() < 0.5:
        q = _pick(rng, (f"Is the {cell} of the image OK?", f"Does the {cell} of the image look normal?",
                        f"Is the {cell} cell OK?", f"Is the {cell} cell clean?"))
        a = cell_answer(cell, bad, ok_polarity=True)
        q = canonical_question("cell_ok", cell=cell) if canon else q
    else:
        q = _pick(rng, (f"Is there an anomaly at the {cell} of the image?", f"Is anything wrong at the {cell} of the image?",
                        f"Is the {cell} cell affected?", f"Is there a defect in the {cell} cell?"))
        a = cell_answer(cell, bad, ok_polarity=False)
        q = canonical_question("cell_bad", cell=cell) if canon else q
    return q, a


def _q_side(hit: Sequence[str], rng: np.random.Generator, canon: bool = False) -> QA:
    side = _pick(rng, SIDES)
    q = _pick(rng, (f"Is the {side} side OK?", f"Does the {side} side of the image look normal?"))
    return canonical_question("side", side=side) if canon else q, side_answer(side, hit)


SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")


def side_cells(side: str) -> list[str]:
    """The three cells along one side of the grid."""
    idx = ({"left": 0, "right": 2}.get(side), {"top": 0, "bottom": 2}.get(side))
    return [_cell(r, c) for r in range(3) for c in range(3)
            if (idx[0] is None or c == idx[0]) and (idx[1] is None or r == idx[1])]


def side_answer(side: str, hit: Sequence[str]) -> str:
    """The trained answer to 'is the X side OK?' (a "yes" means it looks normal)."""
    bad = [c for c in side_cells(side) if c in hit]
    if bad:
        return f"No, there is an anomaly on the {side} side, {location_phrase(bad)}."
    return f"Yes, the {side} side of the image looks normal."


def _q_box(regions: Sequence[Region], shape: tuple[int, int], rng: np.random.Generator) -> QA:
    q = _pick(rng, ("Where exactly is the anomaly?", "Give the bounding box of the anomaly.", "Can you locate the defect precisely?"))
    if not regions:
        return q, "There is no anomaly, so there is nothing to locate."
    h, w = shape
    parts = []
    for r in regions[:3]:
        y0, x0, y1, x1 = r["box"]
        parts.append(f"at the {r['cell']}, x {x0 / w:.2f}-{x1 / w:.2f} and y {y0 / h:.2f}-{y1 / h:.2f}")
    tail = " (as fractions of the image width and height, from the top left corner)."
    if len(regions) == 1:
        return q, "The anomaly is " + parts[0] + tail
    more = f" There are {len(regions) - 3} more smaller ones." if len(regions) > 3 else ""
    return q, "The anomalies are " + "; ".join(parts) + tail + more


def _q_confidence(score: float, threshold: float, rng: np.random.Generator, canon: bool = False) -> QA:
    """Copies the score and threshold from the facts and reads their margin word."""
    q = _pick(rng, ("How confident are you?", "How sure are you?", "How certain is this verdict?",
                    "Are you sure?", "How reliable is this result?"))
    return canonical_question("confidence") if canon else q, confidence_answer(score, threshold)


def confidence_answer(score: float, threshold: float) -> str:
    """The trained answer to 'how sure are you?': score, threshold and the margin word's hedge."""
    side = "above" if score >= threshold else "below"
    nums = f"the anomaly score {score:.2f} is {{}} {side} the threshold {threshold:.2f}"
    if margin_word(score, threshold) == "narrow":
        return f"Not very sure: {nums.format('just')}, so a second look is worth it."
    return f"Fairly sure: {nums.format('well')}."


def _q_cause(regions: Sequence[Region], rng: np.random.Generator, canon: bool = False) -> QA:
    """The model measures deviation, not its physical cause: it says so and stays grounded."""
    q = _pick(rng, ("What could cause this?", "What caused the anomaly?", "What kind of defect is this?",
                    "What is the defect?", "Why is it anomalous?"))
    return canonical_question("cause") if canon else q, cause_answer(regions)


def cause_answer(regions: Sequence[Region]) -> str:
    """The trained answer to 'what could cause this?': no invented cause, only where."""
    if not regions:
        return "There is no anomaly in the image, so there is nothing to explain."
    where = location_phrase([r["cell"] for r in regions])
    # short enough for max_new_tokens with all nine cells named (the longer wording was cut off)
    return f"I cannot tell the cause from the image alone; it differs from normal parts {where}."


def _q_action(regions: Sequence[Region], rng: np.random.Generator, canon: bool = False) -> QA:
    q = _pick(rng, ("What should I do?", "What should I do with this part?", "What do you recommend?",
                    "What should I do next?"))
    return canonical_question("action") if canon else q, action_answer(regions)


def action_answer(regions: Sequence[Region]) -> str:
    """The trained answer to 'what should I do with this part?'."""
    if not regions:
        return "Nothing: the part looks normal, so it can go on."
    return f"Set the part aside for a closer look {location_phrase([r['cell'] for r in regions])}."


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


FOLLOWUP_INTENTS: tuple[str, ...] = ("where", "count", "size", "clean", "cell", "side", "box", "cause", "action",
                                     "confidence")


def conversation(
    mask_or_parts: MaskInput,
    rng: np.random.Generator,
    min_area: int = 16,
    n_followups: int = 3,
    part_mask: Optional[np.ndarray] = None,
    score: Optional[float] = None,
    threshold: Optional[float] = None,
    canonical_prob: float = 0.0,
    intent_weights: Optional[Mapping[str, float]] = None,
) -> list[QA]:
    """[(main question, main answer), follow-ups...] for one image's ground truth.

    ``mask_or_parts``: a bool HxW mask (anomalies = connected components) or a list of
    per-anomaly masks (each one anomaly, named by its own cell). ``part_mask``: the
    object's mask, so sizes can be given as a share of the part instead of the image.
    ``n_followups`` distinct intents are chosen by ``rng`` from ``FOLLOWUP_INTENTS``;
    "confidence" only when the ``score`` and ``threshold`` written into the facts are given.

    For the chat fine-tune: ``canonical_prob`` is the share of questions put in their
    CANONICAL_QUESTIONS wording (the only wording the assistant asks the LLM), and
    ``intent_weights`` (intent -> weight, keys from FOLLOWUP_INTENTS plus "main", the first
    question asked again later in the chat) replaces the uniform draw of follow-up intents.
    With neither, the draws are exactly those of the uniform mixture.
    """
    if isinstance(mask_or_parts, np.ndarray) and mask_or_parts.ndim == 2:
        union = mask_or_parts > 0
    else:
        parts = [np.asarray(p) > 0 for p in mask_or_parts]
        if not parts:
            raise ValueError("an empty list of anomaly masks has no image size; pass an all-False HxW mask for a normal image")
        union = np.logical_or.reduce(parts)
    shape = union.shape
    regions = to_regions(mask_or_parts, min_area)
    if not regions:
        union = np.zeros(shape, bool)
    hit = affected_cells(union, regions, min_pixels=min_area)
    part_share = float(part_mask.mean()) if part_mask is not None and part_mask.any() and not part_mask.all() else None
    def canon() -> bool:
        return canonical_prob > 0 and rng.random() < canonical_prob

    def main_q() -> str:
        q = _pick(rng, MAIN_QUESTIONS)
        return MAIN_QUESTIONS[0] if canon() else q

    makers = {
        "main": lambda: (main_q(), main_answer(regions)),
        "where": lambda: _q_where(regions, rng, canon()),
        "count": lambda: _q_count(regions, rng, canon()),
        "size": lambda: _q_size(regions, rng, part_share, canon()),
        "clean": lambda: _q_clean(hit, rng, canon()),
        "cell": lambda: _q_cell(hit, rng, canon()),
        "side": lambda: _q_side(hit, rng, canon()),
        "box": lambda: _q_box(regions, shape, rng),
        "cause": lambda: _q_cause(regions, rng, canon()),
        "action": lambda: _q_action(regions, rng, canon()),
        "confidence": lambda: _q_confidence(score, threshold, rng, canon()),
    }
    has_scores = score is not None and threshold is not None
    if intent_weights:
        unknown = sorted(set(intent_weights) - set(makers))
        if unknown:
            raise ValueError(f"intent_weights: unknown intents {unknown}; use {sorted(makers)}")
        intents = [i for i, w in intent_weights.items() if w > 0 and (i != "confidence" or has_scores)]
        p = np.array([intent_weights[i] for i in intents], float)
        p = p / p.sum()
    else:
        intents = [i for i in FOLLOWUP_INTENTS if i != "confidence" or has_scores]
        p = None
    out: list[QA] = [(main_q(), main_answer(regions))]
    k = max(0, min(n_followups, len(intents), int(np.count_nonzero(p)) if p is not None else len(intents)))
    for i in sorted(rng.choice(len(intents), size=k, replace=False, p=p)):
        out.append(makers[intents[int(i)]]())
    return out


__all__ = [
    "MAIN_QUESTIONS",
    "CANONICAL_QUESTIONS",
    "canonical_question",
    "NO_ANOMALY",
    "FOLLOWUP_INTENTS",
    "conversation",
    "main_answer",
    "location_phrase",
    "affected_cells",
    "size_word",
    "margin_word",
    "percent",
    "to_regions",
    "join_words",
    "count_answer",
    "size_answer",
    "where_answer",
    "clean_answer",
    "cell_answer",
    "side_cells",
    "side_answer",
    "confidence_answer",
    "cause_answer",
    "action_answer",
    "SIDES",
]
