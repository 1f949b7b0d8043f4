"""The chat check: its truths come from the report, every intent is scheduled, and a scripted
assistant's right and wrong answers are scored (and their contradictions of the first answer found)."""
import numpy as np
import pytest

from anomalygpt.chat.answer import ChatAnswer
from anomalygpt.evaluation.chat_check import check_chat, intent_schedule, make_question, summarize
from anomalygpt.evaluation.heldout_phrasings import INTENTS
from anomalygpt.report import InspectionReport, Region


def _report(anomalous: bool) -> InspectionReport:
    mask = np.zeros((90, 90), bool)
    regions = []
    if anomalous:
        mask[62:88, 62:88] = True  # bottom right, 26*26/8100 = 8% -> "large"
        regions = [Region(box=(62, 62, 88, 88), area_share=mask.mean(), centroid=(75.0, 75.0), cell="bottom right")]
    return InspectionReport(score=0.9 if anomalous else 0.1, threshold=0.5, threshold_source="test",
                            anomaly_map=mask.astype(np.float32), mask=mask, regions=regions, image_size=(90, 90))


def test_schedule_asks_every_intent_equally_often():
    sched = intent_schedule(34, 5, np.random.default_rng(0))
    assert all(len(set(c)) == 5 for c in sched)
    counts = {k: sum(c.count(k) for c in sched) for k in INTENTS}
    assert set(counts) == set(INTENTS) and max(counts.values()) - min(counts.values()) <= 1


def test_questions_fill_a_cell_or_side():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q, intent = make_question("cell_ok", _report(True), rng)
        assert intent.cell in q and "{" not in q
        q, intent = make_question("side_bad", _report(False), rng)
        assert intent.side in q


class _Scripted:
    """Stands in for AnomalyGPT.answer: answers from a fixed script."""

    def __init__(self, answers):
        self.answers, self.histories = list(answers), []

    def answer(self, report, question, history):
        self.histories.append(list(history))
        text = self.answers.pop(0)
        return ChatAnswer(question, text, "scripted", text)


def test_check_chat_scores_each_turn_and_finds_contradictions_of_the_first_answer():
    bot = _Scripted(["The anomaly is at the top left of the image.",        # where: wrong cell
                     "There is one anomaly in the image.",                   # count: right
                     "No, there are no anomalies in the image."])            # main: contradicts the first answer
    out = check_chat(bot, _report(True), ["where", "count", "main"], np.random.default_rng(0),
                     first_answer="Yes, there is an anomaly in the image, at the bottom right of the image.")
    assert [len(h) for h in bot.histories] == [1, 2, 3]
    assert [t["ok"] for t in out["turns"]] == [True, False, True, False]
    assert [t["contradicts_first"] for t in out["turns"]] == [False, False, False, True]
    s = summarize([out])
    assert s["all"]["agree"] == pytest.approx(2 / 4) and s["consistency"]["chats_with_contradiction"] == 1


def test_question_intent_reads_the_cell_or_side_back():
    rng = np.random.default_rng(1)
    from anomalygpt.evaluation.chat_check import question_intent

    for kind in INTENTS:
        q, truth = make_question(kind, _report(True), rng)
        assert question_intent(kind, q) == truth
