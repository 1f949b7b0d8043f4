"""The `anomalygpt` command, run in-process on the tiny checkpoint."""
import json

import numpy as np
import pytest
from PIL import Image

from anomalygpt.cli import main


def _png(path, seed, size=72):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("inspect", "chat", "train", "eval", "simulate", "ui", "demo", "bench"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "anomalygpt 0.1.0" in capsys.readouterr().out


def test_inspect_batch_goes_on_after_a_bad_file(tmp_path, tiny_checkpoint, capsys):
    good = [_png(tmp_path / f"g{i}.png", i) for i in range(2)]
    refs = [_png(tmp_path / f"r{i}.png", 10 + i) for i in range(4)]  # 4: enough for leave-one-out
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    code = main(["inspect", good[0], str(bad), good[1], "--ref", *refs, "--checkpoint", str(tiny_checkpoint),
                 "--out", str(tmp_path / "out"), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    reports = json.loads(captured.out)
    assert [r["source"] for r in reports] == good
    assert all(r["n_references"] == 4 and r["threshold_source"].startswith("leave-one-out over 4")
               for r in reports)
    assert "broken.png" in captured.err and "1 of 3 images failed" in captured.err
    assert (tmp_path / "out" / "g0_overlay.png").is_file() and (tmp_path / "out" / "g1.json").is_file()


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "nockpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no checkpoint" in err and "\n" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder:\n  imgsize: 3\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "encoder.imgsize" in capsys.readouterr().err


def test_simulate_writes_images_masks_qa_and_preview(tmp_path, capsys):
    src = tmp_path / "normals"
    src.mkdir()
    for i in range(3):
        _png(src / f"n{i}.png", i, size=96)
    assert main(["simulate", "--images", str(src), "--out", str(tmp_path / "sim"), "--n", "4", "--texture"]) == 0
    out = tmp_path / "sim"
    assert (out / "preview.png").is_file() and (out / "qa.jsonl").is_file()
    assert len(list((out / "images").glob("*.png"))) == 4


def test_demo_inspects_the_bundled_cell_and_chats(tmp_path, embedded_assistant, monkeypatch, capsys):
    """`anomalygpt demo` (what `make demo` runs) with the shipped checkpoint: a verdict, and every
    line of the chat agrees with the report by the claim checker, judged against the intent each
    question truly has (written here, not recognised); some questions are not training wordings."""
    from anomalygpt.chat.claims import check_answer
    from anomalygpt.chat.intents import Intent
    from anomalygpt.cli import DEMO_FOLLOWUPS
    from anomalygpt.inspector import AnomalyGPT
    from anomalygpt.evaluation.heldout_phrasings import training_wordings

    truth = {"Where is the anomaly?": Intent("where"), "How big is the damaged area in total?": Intent("size"),
             "Which cells are clean?": Intent("clean"), "Is the top left corner fine?": Intent("cell_ok", cell="top left"),
             "Can this cell go to the customer?": Intent("decision_pass"), "How sure are you?": Intent("confidence")}
    assert set(truth) == set(DEMO_FOLLOWUPS)
    assert any(q.lower() not in training_wordings() for q in DEMO_FOLLOWUPS)
    monkeypatch.setattr(AnomalyGPT, "from_pretrained", classmethod(lambda cls, *a, **kw: embedded_assistant))
    reports, asked = [], []
    real_inspect, real_answer = AnomalyGPT.inspect, AnomalyGPT.answer
    monkeypatch.setattr(AnomalyGPT, "inspect", lambda self, *a, **kw: reports.append(real_inspect(self, *a, **kw))
                        or reports[-1])
    monkeypatch.setattr(AnomalyGPT, "answer", lambda self, report, q, history=None: asked.append(list(history or []))
                        or real_answer(self, report, q, history))
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = reports[0]
    answer = next(line for line in out.splitlines() if line.strip().startswith("answer: ")).split("answer: ", 1)[1]
    assert check_answer(report, Intent("main"), answer).ok, answer
    assert [len(h) for h in asked] == [1 + i for i in range(len(DEMO_FOLLOWUPS))]
    for q in DEMO_FOLLOWUPS:
        shown = out.split(f"Q: {q}\nA: ", 1)[1].split("\n", 1)[0]
        assert check_answer(report, truth[q], shown).ok, (q, shown)
    assert (tmp_path / "demo_overlay.png").is_file()
