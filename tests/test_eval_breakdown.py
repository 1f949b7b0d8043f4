"""benchmarks/eval_breakdown.py: the false-alarm / miss rates and per-defect-type AUROC the docs cite."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import eval_breakdown  # noqa: E402


def _row(label, kind, score, called):
    return {"path": "x.png", "label": label, "defect_type": kind, "score": score, "anomalous": called, "answer": None}


def _write_run(folder: Path, name: str, group: str, rows):
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / f"{name}.json").write_text(json.dumps({"rows": rows, "fingerprint": {"group": group}}))


def test_rates_and_auroc_per_defect_type(tmp_path):
    rows = [_row(0, "good", 0.1, False), _row(0, "good", 0.9, True),      # 1 of 2 normals called anomalous
            _row(1, "p1", 0.95, True), _row(1, "p1", 0.8, True),           # p1 scores above every normal but one
            _row(1, "p067", 0.2, False), _row(1, "p067", 0.05, False)]    # both p067 missed
    _write_run(tmp_path, "mono_seed0", "mono", rows)
    res = eval_breakdown.breakdown(tmp_path)["mono"]
    assert res["false_alarms"] == pytest.approx(0.5)
    assert res["misses"] == pytest.approx(0.5)
    assert res["auroc[p1]"] == pytest.approx(0.75)     # pairs (p1, normal): 4, of which 3 ranked right
    assert res["auroc[p067]"] == pytest.approx(0.25)
    assert res["runs"] == 1
    # the best cut (score >= 0.2, or calling everything anomalous) gets 4 of 6 right
    assert res["oracle_threshold_accuracy"] == pytest.approx(4 / 6)


def test_means_over_seeds_per_group(tmp_path):
    _write_run(tmp_path, "poly_seed0", "poly", [_row(0, "good", 0.1, True), _row(1, "d", 0.9, True)])
    _write_run(tmp_path, "poly_seed1", "poly", [_row(0, "good", 0.1, False), _row(1, "d", 0.9, False)])
    res = eval_breakdown.breakdown(tmp_path)["poly"]
    assert res["false_alarms"] == pytest.approx(0.5) and res["misses"] == pytest.approx(0.5) and res["runs"] == 2


def test_answer_agreement_with_verdict(tmp_path):
    rows = [_row(0, "good", 0.1, False) | {"answer": "No, there are no anomalies in the image."},
            _row(1, "d", 0.9, True) | {"answer": "Yes, there is an anomaly in the image, at the center."},
            _row(1, "d", 0.8, True) | {"answer": "No, there are no anomalies in the image."}]
    _write_run(tmp_path, "mono_seed0", "mono", rows)
    assert eval_breakdown.breakdown(tmp_path)["mono"]["answer_agrees_with_verdict"] == pytest.approx(2 / 3)
    _write_run(tmp_path, "mono_seed0", "mono", [_row(0, "good", 0.1, False), _row(1, "d", 0.9, True)])
    assert "answer_agrees_with_verdict" not in eval_breakdown.breakdown(tmp_path)["mono"]   # --no-answers runs


def test_missing_folder_is_one_error_line(tmp_path, capsys):
    assert eval_breakdown.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "anomalygpt eval" in err[0]
