"""The follow-up consistency check: its truths come from the report, and its judge accepts
right answers and rejects wrong ones (phrased as the model phrases them)."""
import numpy as np
import pytest

from anomalygpt.evaluation.chat_check import check_chat, judge, questions_for, said_count, summarize
from data_sim.grid import ALL_CELLS
from anomalygpt.report import InspectionReport, Region


def _report(anomalous: bool) -> InspectionReport:
    mask = np.zeros((90, 90), bool)
    regions = []
    if anomalous:
        mask[62:88, 62:88] = True  # bottom right, 26*26/8100 = 8% -> "large"
        regions = [Region(box=(62, 62, 88, 88), area_share=mask.mean(), centroid=(75.0, 75.0), cell="bottom right")]
    return InspectionReport(score=0.9 if anomalous else 0.1, threshold=0.5, threshold_source="test",
                            anomaly_map=mask.astype(np.float32), mask=mask, regions=regions, image_size=(90, 90))


def test_expectations_come_from_the_report():
    qs = {k: e for k, _, e in questions_for(_report(True), np.random.default_rng(0))}
    assert qs["where"] == ["bottom right"] and qs["count"] == 1 and qs["size"] == "large"
    assert qs["clean"] == [c for c in ALL_CELLS if c != "bottom right"] and qs["cell_bad"] == 1 and qs["cell_ok"] == 0
    normal = {k: e for k, _, e in questions_for(_report(False), np.random.default_rng(0))}
    assert normal["where"] == [] and normal["count"] == 0 and "cell_bad" not in normal
    assert normal["clean"] == list(ALL_CELLS)
    assert normal["confidence"] == ("0.10", "0.50", "below", "clear") and normal["cause"] == normal["action"] == []


@pytest.mark.parametrize("kind,answer,expected,ok", [
    ("where", "The anomaly is at the bottom right of the image.", ["bottom right"], True),
    ("where", "The anomaly is at the top left of the image.", ["bottom right"], False),
    ("where", "There is no anomaly in the image.", [], True),
    ("count", "There is one anomaly in the image.", 1, True),
    ("count", "There are two anomalies in the image.", 1, False),
    ("count", "There are no anomalies in the image.", 0, True),
    ("clean", "The whole image looks normal.", list(ALL_CELLS), True),
    ("clean", "The top left and the center of the image look normal.", ["center", "top left"], True),
    ("clean", "The top left of the image looks normal.", ["center", "top left"], False),
    ("size", "The anomaly is large: it covers about 8.3% of the image.", "large", True),
    ("size", "The anomaly is small (0.4%).", "large", False),
    ("size", "There is no anomaly, so no part of the image is affected.", None, True),
    ("cell_ok", "No, the top left of the image looks normal.", 0, True),
    ("cell_ok", "Yes, the top left cell is anomalous.", 0, False),
    ("confidence", "Fairly sure: the anomaly score 0.90 is well above the threshold 0.50.",
     ("0.90", "0.50", "above", "clear"), True),
    ("confidence", "Not very sure: the anomaly score 0.90 is just above the threshold 0.50, so a second look is "
     "worth it.", ("0.90", "0.50", "above", "clear"), False),
    ("confidence", "Fairly sure: the anomaly score 0.91 is well above the threshold 0.50.",
     ("0.90", "0.50", "above", "clear"), False),
    ("confidence", "Not very sure: the anomaly score 0.48 is just below the threshold 0.50, so a second look is "
     "worth it.", ("0.48", "0.50", "below", "narrow"), True),
    ("cause", "I cannot tell the cause from the image alone: I measure where it differs from normal parts, and it "
     "does so at the bottom right of the image.", ["bottom right"], True),
    ("cause", "It looks like a crack at the top left.", ["bottom right"], False),
    ("cause", "There is no anomaly in the image, so there is nothing to explain.", [], True),
    ("cause", "A microcrack in the cell.", [], False),
    ("action", "Set the part aside for a closer look at the bottom right of the image.", ["bottom right"], True),
    ("action", "Nothing: the part looks normal, so it can go on.", [], True),
    ("action", "Set the part aside for a closer look at the center of the image.", [], False),
])
def test_judge(kind, answer, expected, ok):
    assert judge(kind, answer, expected) is ok


def test_said_count_needs_a_number():
    assert said_count("The defect is big.") is None


class _Scripted:
    """Stands in for AnomalyGPT.ask: answers from a fixed script, records the histories."""

    def __init__(self, answers):
        self.answers, self.histories = list(answers), []

    def ask(self, report, question, history):
        self.histories.append(list(history))
        return self.answers.pop(0)


def test_check_chat_grows_the_history_and_scores_each_turn():
    bot = _Scripted(["Yes, there is an anomaly.", "The anomaly is at the top left of the image.",
                     "There is one anomaly in the image.", "The whole image looks normal.",
                     "The anomaly is large.", "Yes.", "Yes.", "Fairly sure: the anomaly score 0.90 is well above "
                     "the threshold 0.50.", "Probably a crack.", "Set the part aside for a closer look at the bottom "
                     "right of the image."])
    out = check_chat(bot, _report(True), np.random.default_rng(0))
    assert [len(h) for h in bot.histories] == list(range(10))
    assert out["ok"] == {"main": True, "where": False, "count": True, "clean": False, "size": True,
                         "cell_bad": True, "cell_ok": False, "confidence": True, "cause": False, "action": True}
    s = summarize([out])
    assert s["all"] == {"agree": pytest.approx(6 / 10), "n": 10}
