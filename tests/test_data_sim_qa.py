"""data_sim.regions and data_sim.qa: answers follow the ground truth and the 3x3 grid words."""
from __future__ import annotations

import numpy as np
import pytest

from data_sim.grid import ALL_CELLS, parse_cells
from data_sim.qa import MAIN_QUESTIONS, NO_ANOMALY, conversation, main_answer, margin_word, to_regions
from data_sim.regions import regions_from_mask, regions_from_parts

H, W = 90, 120


def _blob(cy: int, cx: int, r: int = 4) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[cy - r : cy + r + 1, cx - r : cx + r + 1] = True
    return m


def _centre_of(cell: str) -> tuple[int, int]:
    i = ALL_CELLS.index(cell)
    return int((i // 3 + 0.5) * H / 3), int((i % 3 + 0.5) * W / 3)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_single_anomaly_named_by_its_cell(cell: str) -> None:
    cy, cx = _centre_of(cell)
    conv = conversation(_blob(cy, cx), np.random.default_rng(0))
    q, a = conv[0]
    assert q in MAIN_QUESTIONS
    assert a == f"Yes, there is an anomaly in the image, at the {cell} of the image."
    assert parse_cells(a) == [cell]


def test_two_anomalies_each_named_by_its_own_cell() -> None:
    m = _blob(*_centre_of("top left")) | _blob(*_centre_of("bottom right"))
    a = conversation(m, np.random.default_rng(0))[0][1]
    assert a == "Yes, there are 2 anomalies in the image, at the top left and the bottom right of the image."
    assert "center" not in parse_cells(a), "must not use the centre of the union box"
    parts = [_blob(*_centre_of("top right")), _blob(*_centre_of("center left"))]
    a2 = conversation(parts, np.random.default_rng(0))[0][1]
    assert parse_cells(a2) == ["top right", "center left"]


def test_no_anomaly_answers() -> None:
    conv = conversation(np.zeros((H, W), bool), np.random.default_rng(0), n_followups=9)
    assert len(conv) == 10  # no score given: every intent but "confidence"
    assert conv[0][1] == NO_ANOMALY
    assert all("anomaly at the" not in a and "aside" not in a for _, a in conv[1:])
    assert "Nothing: the part looks normal, so it can go on." in dict(conv[1:]).values()
    assert main_answer([]) == NO_ANOMALY


@pytest.mark.parametrize("score,threshold,margin,answer", [
    (2.6, 2.531, "narrow", "Not very sure: the anomaly score 2.60 is just above the threshold 2.53, so a second look is worth it."),
    (2.4, 2.531, "narrow", "Not very sure: the anomaly score 2.40 is just below the threshold 2.53, so a second look is worth it."),
    (1.4, 2.531, "clear", "Fairly sure: the anomaly score 1.40 is well below the threshold 2.53."),
])
def test_confidence_reads_the_margin(score, threshold, margin, answer) -> None:
    assert margin_word(score, threshold) == margin
    for seed in range(40):  # some seed asks it
        conv = conversation(np.zeros((H, W), bool), np.random.default_rng(seed), score=score, threshold=threshold)
        got = [a for _, a in conv[1:] if "sure" in a]
        if got:
            assert got == [answer]
            return
    pytest.fail("no conversation asked how sure the verdict is")


def test_regions_from_mask_measures_box_area_centroid_cell() -> None:
    m = np.zeros((H, W), bool)
    m[10:20, 90:110] = True  # 200 px at the top right
    m[70:72, 5:7] = True  # 4 px speck, dropped by min_area
    regs = regions_from_mask(m, min_area=5)
    assert len(regs) == 1
    r = regs[0]
    assert r["box"] == (10, 90, 20, 110) and r["area"] == 200
    assert r["area_share"] == pytest.approx(200 / (H * W))
    assert r["centroid"] == pytest.approx((14.5, 99.5))
    assert r["cell"] == "top right"
    assert regions_from_parts([m])[0]["area"] == 204


def test_followups_follow_ground_truth_and_are_seeded() -> None:
    m = _blob(*_centre_of("top left"), r=8) | _blob(*_centre_of("bottom right"), r=3)
    a = conversation(m, np.random.default_rng(5), n_followups=10, score=7.415, threshold=2.531)
    assert a == conversation(m, np.random.default_rng(5), n_followups=10, score=7.415, threshold=2.531)
    assert len(a) == 11  # main + every follow-up intent
    qa = dict(a[1:])
    sure = next(ans for q, ans in qa.items() if q.startswith(("How confident", "How sure", "How certain", "Are you",
                                                               "How reliable")))
    assert sure == "Fairly sure: the anomaly score 7.42 is well above the threshold 2.53."
    cause = next(ans for ans in qa.values() if "cause" in ans)
    assert parse_cells(cause) == ["top left", "bottom right"]
    act = next(ans for ans in qa.values() if ans.startswith("Set the part aside"))
    assert parse_cells(act) == ["top left", "bottom right"]
    count = next(ans for q, ans in qa.items() if q.startswith("How many"))
    assert count == "There are two anomalies in the image."
    clean = next(ans for q, ans in qa.items() if q.startswith("Which") or q.startswith("Where does"))
    named = parse_cells(clean)
    assert len(named) == 7 and "top left" not in named and "bottom right" not in named
    size = next(ans for ans in qa.values() if "cover" in ans)
    assert "%" in size and "largest, at the top left" in size
    where = next(ans for q, ans in qa.items() if q.startswith("Where are") or q.startswith("In which"))
    assert where == "The anomalies are at the top left and the bottom right of the image."
    box = next(ans for ans in qa.values() if "x 0." in ans)
    assert "top left" in box and "bottom right" in box
    phrasings = {conversation(m, np.random.default_rng(s))[0][0] for s in range(30)}
    assert len(phrasings) >= 3, "the main question should come in several phrasings"


def test_to_regions_accepts_mask_or_parts() -> None:
    m = _blob(*_centre_of("center"))
    assert to_regions(m)[0]["cell"] == "center"
    assert to_regions([m])[0]["cell"] == "center"


def test_canonical_questions_are_trained_templates() -> None:
    """The wordings the assistant puts to the LLM are among the training questions."""
    from anomalygpt.evaluation.heldout_phrasings import training_wordings
    from data_sim.qa import CANONICAL_QUESTIONS, SIDES, canonical_question

    trained = training_wordings()
    for kind in CANONICAL_QUESTIONS:
        for plural in (False, True):
            for cell in ALL_CELLS:
                for side in SIDES:
                    q = canonical_question(kind, plural, cell=cell, side=side)
                    assert "{" not in q and q.lower() in trained, q


def test_chat_finetune_mixture_canonical_wording_and_weights() -> None:
    """canonical_prob=1 puts every question in its canonical wording; intent_weights decides
    which follow-ups are drawn (weight 0: never; "main": the first question asked again)."""
    from data_sim.qa import CANONICAL_QUESTIONS, canonical_question

    canon = {canonical_question(k, p, cell=c, side=s) for k in CANONICAL_QUESTIONS for p in (False, True)
             for c in ALL_CELLS for s in ("left", "right", "top", "bottom")}
    m = _blob(*_centre_of("top left"), r=8) | _blob(*_centre_of("bottom right"), r=3)
    weights = {"main": 1.0, "confidence": 1.0, "where": 1.0, "count": 0.0}
    seen = set()
    for seed in range(40):
        conv = conversation(m, np.random.default_rng(seed), n_followups=3, score=3.0, threshold=1.0,
                            canonical_prob=1.0, intent_weights=weights)
        assert len(conv) == 4  # main + the three intents with a weight
        for q, a in conv:
            assert q in canon, q
            seen.add(q)
            assert not q.startswith("How many")
        assert sum(q == MAIN_QUESTIONS[0] for q, _ in conv) == 2
        assert conv[0][1] == main_answer(to_regions(m, 16))
    assert "How confident are you?" in seen and "Where are the anomalies?" in seen
    with pytest.raises(ValueError, match="unknown intents"):
        conversation(m, np.random.default_rng(0), intent_weights={"colour": 1.0})
