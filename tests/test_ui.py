"""The web chat, driven headless with Streamlit's AppTest (no browser, no server).

The plumbing runs on the tiny random checkpoint (its answers are noise, so only their
presence is checked); `test_embedded_answer_agrees_with_report` runs the shipped
"embedded" checkpoint and checks that the answer names a 3x3 cell of a measured region (or
says there is no anomaly when the verdict is normal).
"""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from data_sim.grid import parse_cells
from chat_ui import APP_PATH
from chat_ui.inputs import (ASSETS_DIR, MAX_BYTES, InputError, bundled_samples, chat_history, checkpoint_name,
                            decode_upload)

TIMEOUT = 300  # seconds per script run: generous, the machine is shared


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def asset_bytes(name: str) -> bytes:
    return (ASSETS_DIR / name).read_bytes()


def new_app(monkeypatch, checkpoint) -> AppTest:
    monkeypatch.setenv("ANOMALYGPT_CHECKPOINT", str(checkpoint))
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def inspect_sample(at: AppTest, label_word: str) -> AppTest:
    at.sidebar.radio[0].set_value("Bundled sample").run()
    box = at.sidebar.selectbox[0]
    box.set_value(next(o for o in box.options if label_word in o)).run()
    at.sidebar.button[0].click().run()  # Inspect
    return at


def upload(at: AppTest, name: str, data: bytes, refs: list[tuple[str, bytes]] | None = None) -> AppTest:
    at.sidebar.file_uploader[0].set_value((name, data, "image/png"))
    if refs:
        at.sidebar.file_uploader[1].set_value([(n, d, "image/png") for n, d in refs])
    at.run()
    at.sidebar.button[0].click().run()
    return at


def chat(at: AppTest) -> list[tuple[str, str]]:
    return [(m.name, " ".join(md.value for md in m.markdown)) for m in at.chat_message]


def verdict_html(at: AppTest) -> str:
    found = [m.value for m in at.markdown if 'class="verdict' in m.value]
    assert len(found) == 1, "no verdict banner on the page"
    return found[0]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


# ---------------------------------------------------------------- pure helpers
def test_bundled_samples_are_small_elpv_test_images(elpv_mono):
    samples = bundled_samples()
    assert len(samples) >= 2
    test = {s.image_path.name: s.label for s in elpv_mono["test"]}
    train = {s.image_path.read_bytes() for s in elpv_mono["train"]}
    labels = []
    for path in samples.values():
        assert path.stat().st_size < 100_000
        data = path.read_bytes()
        assert data not in train, f"{path.name} is an ELPV training image"
        match = [n for n in test if (elpv_mono["test"][0].image_path.parent / n).read_bytes() == data]
        assert match, f"{path.name} is not an ELPV test-split image"
        labels.append(test[match[0]])
    assert set(labels) == {0, 1}  # a good cell and a defective one


def test_checkpoint_name_precedence(monkeypatch):
    monkeypatch.delenv("ANOMALYGPT_CHECKPOINT", raising=False)
    assert checkpoint_name([]) == "embedded"
    monkeypatch.setenv("ANOMALYGPT_CHECKPOINT", "/some/ckpt")
    assert checkpoint_name(["-q", "-k", "ui"]) == "/some/ckpt"
    assert checkpoint_name(["--checkpoint", "/other"]) == "/other"
    assert checkpoint_name(["--checkpoint=/third"]) == "/third"
    assert checkpoint_name(["--check", "/x"]) == "/some/ckpt"  # no abbreviations


@pytest.mark.parametrize("name,data,words", [
    ("notes.png", b"this is not an image at all", "cannot decode"),
    ("empty.png", b"", "empty"),
    ("tiny.png", png(np.zeros((8, 8), np.uint8)), "minimum side"),
    ("huge.png", b"\0" * (MAX_BYTES + 1), "20.0 MB limit"),
    ("giant.png", png(np.zeros((5000, 8001), np.uint8)), "megapixel limit"),
])
def test_decode_upload_refuses_with_one_clear_line(name, data, words):
    with pytest.raises(InputError) as err:
        decode_upload(name, data)
    msg = str(err.value)
    assert msg.startswith(f"{name}:") and words in msg and "\n" not in msg
    assert "/tmp" not in msg and "upload" != msg.split(":")[0]  # the user's file name, not ours


def test_decode_upload_reads_gray_png():
    rgb = decode_upload("cell.png", asset_bytes("elpv_normal.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (300, 300, 3)


def test_chat_history_pairs():
    msgs = [{"role": r, "content": c} for r, c in
            [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"), ("user", "q3"), ("assistant", "a3")]]
    assert chat_history(msgs) == [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    assert chat_history(msgs[:-1]) == [("q1", "a1"), ("q2", "a2")]  # the open question is no turn yet


# ---------------------------------------------------------------- the page (tiny checkpoint)
def test_first_page_has_inputs_and_no_result(monkeypatch, tiny_checkpoint):
    at = new_app(monkeypatch, tiny_checkpoint)
    assert at.sidebar.file_uploader[0].label.startswith("Photo of the part")
    assert at.sidebar.file_uploader[1].accept_multiple_files
    assert at.chat_input[0].disabled  # nothing to ask about yet
    assert at.session_state["report"] is None


def test_sample_inspection_then_follow_ups_then_start_over(monkeypatch, tiny_checkpoint):
    at = inspect_sample(new_app(monkeypatch, tiny_checkpoint), "defective")
    assert_clean(at)
    report = at.session_state["report"]
    assert report is not None and report.source == "elpv_defect.png"
    assert ("ANOMALOUS" if report.is_anomalous else "NORMAL") in verdict_html(at)
    assert len(at.get("image")) == 2  # image and overlay, side by side
    assert len(at.get("download_button")) == 2
    assert at.metric[0].value == f"{report.score:.3f}"
    assert [r for r, _ in chat(at)] == ["user", "assistant"]

    at.chat_input[0].set_value("Where is the anomaly?").run()
    assert_clean(at)
    turns = chat(at)
    assert [r for r, _ in turns] == ["user", "assistant"] * 2
    assert turns[2][1] == "Where is the anomaly?" and turns[3][1].strip()
    assert at.session_state["messages"][-1]["content"] == turns[3][1]

    at.button(key="suggest_How big is it?").click().run()  # a suggested question
    assert_clean(at)
    turns = chat(at)
    assert len(turns) == 6 and turns[4][1] == "How big is it?" and turns[5][1].strip()

    at.sidebar.button[1].click().run()  # Start over
    assert_clean(at)
    assert at.session_state["report"] is None and at.session_state["messages"] == []
    assert not at.chat_message


def test_upload_with_references_and_object_name(monkeypatch, tiny_checkpoint):
    at = new_app(monkeypatch, tiny_checkpoint)
    at.sidebar.text_input[0].set_value("solar cell")
    refs = [("good_a.png", asset_bytes("elpv_normal.png")),
            ("good_b.png", png(np.asarray(Image.open(ASSETS_DIR / "elpv_normal.png"))[:, ::-1].copy()))]
    upload(at, "part 7.png", asset_bytes("elpv_defect_2.png"), refs)
    assert_clean(at)
    report = at.session_state["report"]
    assert report.source == "part 7.png" and report.n_references == 2 and report.object_name == "solar cell"
    assert "too few for leave-one-out" in report.threshold_source  # 2 references: the checkpoint's threshold
    assert "solar cell" in verdict_html(at)


@pytest.mark.parametrize("name,data,words", [
    ("notes.png", b"this is not an image at all", "cannot decode"),
    ("report.pdf", b"%PDF-1.4 not an image", "cannot decode"),
    ("huge.tif", b"\0" * (MAX_BYTES + 1), "20.0 MB limit"),
    ("giant.png", png(np.zeros((5000, 8001), np.uint8)), "megapixel limit"),
])
def test_bad_upload_shows_error_and_session_goes_on(monkeypatch, tiny_checkpoint, name, data, words):
    at = upload(new_app(monkeypatch, tiny_checkpoint), name, data)
    assert not at.exception, at.exception
    assert len(at.error) == 1 and name in at.error[0].value and words in at.error[0].value
    assert at.session_state["report"] is None
    at = inspect_sample(at, "good")  # the session goes on
    assert_clean(at)
    assert at.session_state["report"] is not None


def test_error_stays_until_the_images_change(monkeypatch, tiny_checkpoint):
    """A decode error belongs to the file that caused it: other reruns keep it, a new upload clears it."""
    at = upload(new_app(monkeypatch, tiny_checkpoint), "notes.png", b"not an image")
    assert "notes.png" in at.error[0].value
    at.sidebar.text_input[0].set_value("solar cell").run()  # not an image input: the error stays
    assert len(at.error) == 1 and "notes.png" in at.error[0].value
    at.sidebar.file_uploader[0].set_value(("part.png", asset_bytes("elpv_normal.png"), "image/png"))
    at.run()
    assert_clean(at)
    assert any(c.value == "Ready to inspect: part.png" for c in at.sidebar.caption)
    assert at.session_state["report"] is None  # nothing inspected until Inspect is pressed
    at.sidebar.button[0].click().run()
    assert_clean(at)
    assert at.session_state["report"].object_name == "solar cell"


def test_bad_reference_and_too_many_references(monkeypatch, tiny_checkpoint):
    at = new_app(monkeypatch, tiny_checkpoint)
    good = asset_bytes("elpv_normal.png")
    upload(at, "part.png", good, [("ok.png", good), ("broken.png", b"garbage")])
    assert not at.exception and "broken.png" in at.error[0].value
    upload(at, "part.png", good, [(f"g{i}.png", good) for i in range(9)])
    assert not at.exception and "at most 8" in at.error[0].value
    assert at.session_state["report"] is None


def test_failed_inference_shows_error_not_traceback(monkeypatch, tiny_checkpoint):
    from anomalygpt.inspector import AnomalyGPT

    def boom(*args, **kwargs):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(AnomalyGPT, "inspect", boom)
    at = inspect_sample(new_app(monkeypatch, tiny_checkpoint), "good")
    assert not at.exception, at.exception
    assert "failed" in at.error[0].value and "simulated out of memory" in at.error[0].value
    monkeypatch.undo()
    monkeypatch.setenv("ANOMALYGPT_CHECKPOINT", str(tiny_checkpoint))
    at.sidebar.button[0].click().run()
    assert_clean(at)
    assert at.session_state["report"] is not None


def test_missing_checkpoint_is_one_error_line(monkeypatch, tmp_path):
    monkeypatch.setenv("ANOMALYGPT_CHECKPOINT", str(tmp_path / "nowhere"))
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert "Could not load the model" in at.error[0].value and "no checkpoint" in at.error[0].value


# ---------------------------------------------------------------- the trained embedded checkpoint
@pytest.mark.parametrize("sample", ["defective (right)", "good"])
def test_embedded_answer_agrees_with_report(monkeypatch, sample):
    """With the shipped checkpoint, 'where?' names a cell of a measured region, or says 'no anomaly'."""
    at = inspect_sample(new_app(monkeypatch, "embedded"), sample)
    assert_clean(at)
    at.chat_input[0].set_value("Where is the anomaly?").run()
    assert_clean(at)
    report = at.session_state["report"]
    answer = chat(at)[-1][1]
    cells = parse_cells(answer)
    if report.is_anomalous and report.regions:
        region_cells = {r.cell for r in report.regions}
        assert cells and cells[0] in region_cells, f"answer {answer!r} vs regions {sorted(region_cells)}"
    elif not report.is_anomalous:
        assert re.search(r"\bno (anomal|defect)|\bnormal\b|\bnothing\b", answer.lower()), answer
        assert not cells, f"answer {answer!r} names a position for a normal part"


def test_zero_shot_mode_choice(monkeypatch, tiny_checkpoint):
    """The sidebar's mode choice reaches the inspector; good parts with the zero-shot mode are one clear line."""
    at = new_app(monkeypatch, tiny_checkpoint)
    assert at.sidebar.selectbox(key="mode_0").options == ["Trained detector", "Zero-shot (no training, no good parts)"]
    at.sidebar.selectbox(key="mode_0").set_value("Zero-shot (no training, no good parts)").run()
    inspect_sample(at, "defect")
    assert_clean(at)
    assert at.session_state.report.mode == "zero-shot:self" and at.session_state.report.n_references == 0
    assert any("Mode: zero-shot:self" in c.value for c in at.caption)
    at.sidebar.radio[0].set_value("Upload a photo").run()
    upload(at, "part.png", asset_bytes("elpv_defect.png"), refs=[("good.png", asset_bytes("elpv_normal_ref1.png"))])
    assert any("zero-shot mode uses no good parts" in e.value for e in at.error)
