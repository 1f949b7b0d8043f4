"""The bench's table and its in-process measurements run on the tiny checkpoint; no timing
is asserted (speed targets live in the bench output, never in a pass/fail test)."""
from __future__ import annotations

import sys

import pytest
import torch

from anomalygpt.evaluation import bench


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_assistant(tiny_checkpoint):
    from anomalygpt.inspector import AnomalyGPT

    return AnomalyGPT.from_pretrained(tiny_checkpoint, with_llm=True)


def test_format_table_renders_results() -> None:
    results = {
        "checkpoint": "embedded", "profile": "embedded", "image_size": 224, "quick": True, "torch_threads": 2,
        "cpu_count": 2, "load_average": [3.2, 2.0, 1.0], "elapsed_s": 61.0,
        "summary": [
            bench._entry("detector_ips_batch16", 45.0, "img/s"),
            bench._entry("inspect_answer_full_s", 3.0, "s", "40 answer tokens (max 48)"),
            bench._entry("inspect_peak_rss_gb", 1.2, "GB"),
            bench._entry("llm_load_cold_s", None, "s", "quick mode"),
            bench._entry("train_sec_per_step", 2.5, "s"),
        ],
    }
    table = bench.format_table(results)
    lines = table.splitlines()
    assert "QUICK" in lines[0] and "224 px" in lines[0]
    row = {ln.split()[0]: ln for ln in lines if ln.split() and ln.split()[0] in {e["name"] for e in results["summary"]}}
    assert "45 img/s" in row["detector_ips_batch16"] and "1.50" in row["detector_ips_batch16"]
    assert "ok" in row["detector_ips_batch16"]
    assert "MISS" in row["inspect_answer_full_s"] and "3.00" in row["inspect_answer_full_s"]
    assert "ok" in row["inspect_peak_rss_gb"] and "0.48" in row["inspect_peak_rss_gb"]
    assert "n/a" in row["llm_load_cold_s"] and "quick mode" in row["llm_load_cold_s"]
    assert "2.5 s" in row["train_sec_per_step"]
    assert bench._entry("x_s", 1.0, "s")["ok"] is None  # no target: reported, not judged


def test_detector_throughput_and_answer_latency_on_tiny(tiny_assistant) -> None:
    d = bench.measure_detector_throughput(tiny_assistant, batch_size=2, repeats=1, references=2)
    assert d["images_per_s"] > 0 and d["image_size"] == 64 and d["batch_size"] == 2
    for mode in ("2x", "tiles"):  # the fine reference level's rows; the config is left as it was
        h = bench.measure_detector_throughput(tiny_assistant, batch_size=2, repeats=1, references=2, hires=mode,
                                              source_size=100)
        assert h["images_per_s"] > 0 and h["hires"] == mode and tiny_assistant.cfg.memory.hires == "off"
    a = bench.measure_inspect_answer(tiny_assistant, repeats=1)
    assert 0 < a["inspect_s_median"] <= a["first_token_s_median"] <= a["full_answer_s_median"]
    assert a["max_new_tokens"] == 8 and isinstance(a["answer"], str)
    # the worst-case row: the end-of-answer token is held back for the whole budget
    assert tiny_assistant.lvlm._generation_config(None, False, 0.7, 0.9, 8).min_new_tokens == 8
    forced = bench.measure_inspect_answer(tiny_assistant, repeats=1, min_new_tokens=8)
    assert forced["answer"].strip() and forced["full_answer_s_median"] > 0


def test_run_measured_reports_exit_code_rss_and_json() -> None:
    ok = bench.run_measured([sys.executable, "-c", "import json; b = bytearray(50 * 2**20); print(json.dumps({'n': len(b)}))"])
    assert ok["returncode"] == 0 and ok["json"] == {"n": 50 * 2**20} and ok["peak_rss_mb"] > 50
    bad = bench.run_measured([sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert bad["returncode"] == 1 and bad["json"] is None and "boom" in bad["stderr_tail"]
    assert ok["parent_rss_mb"] > 0  # this process's size at the spawn, which the child's peak starts from


def test_inspect_rss_refuses_a_parent_larger_than_the_child(monkeypatch) -> None:
    """Linux starts a child's peak RSS at its parent's size: a measurement from a larger
    parent would report the parent, so it is refused with the reason."""
    fake = {"returncode": 0, "peak_rss_mb": 900.0, "parent_rss_mb": 900.0, "wall_s": 1.0, "stderr_tail": ""}
    monkeypatch.setattr(bench, "run_measured", lambda cmd, timeout=900: fake)
    assert "not smaller than the child" in bench.measure_inspect_rss()["error"]
    monkeypatch.setattr(bench, "run_measured", lambda cmd, timeout=900: {**fake, "parent_rss_mb": 300.0})
    assert bench.measure_inspect_rss()["peak_rss_mb"] == 900.0


def test_chat_check_timing_on_tiny(tiny_assistant) -> None:
    c = bench.measure_chat_check(tiny_assistant, repeats=1)
    assert c["answers_timed"] == 2 * 17 and 0 < c["per_answer_ms_median"] <= c["per_answer_ms_max"]
    assert bench._share(2.0, 1.0) == 0.002 and bench._share(None, 1.0) is None


def test_zero_shot_speed_rows_on_tiny(tiny_assistant) -> None:
    s = bench.measure_zero_shot(tiny_assistant, "self", 2)
    b = bench.measure_zero_shot(tiny_assistant, "batch", 4)
    assert s["s_per_image"] > 0 and s["n_images"] == 2 and s["n_compare"] is None
    assert b["s_per_image"] > 0 and b["n_compare"] == 3 and b["scales"] == [1.0]


def test_encoder_runtimes_side_by_side_on_tiny(tiny_assistant) -> None:
    before = tiny_assistant.detector.encoder
    r = bench.measure_encoder_runtimes(tiny_assistant, batch_size=2, rounds=1)
    assert r["torch_images_per_s"] > 0 and r["onnxruntime_images_per_s"] > 0 and r["speedup"] > 0
    assert r["max_abs_feature_diff"] <= 1e-4 and r["rounds"] == 1
    assert tiny_assistant.detector.encoder is before  # the assistant is left as it was


def test_server_answer_over_http_on_tiny(tiny_assistant) -> None:
    r = bench.measure_server_answer(tiny_assistant, repeats=1)
    assert r["repeats"] == 1 and 0 < r["ask_first_piece_s_median"] <= r["ask_s_median"]
    assert r["inspect_answer_s_median"] > 0 and isinstance(r["answer"], str) and r["answer"]


def test_llm_runtime_rows_side_by_side() -> None:
    from anomalygpt.evaluation.bench import _llm_runtime_rows

    r = {"torch_first_token_s": 0.5, "llamacpp_first_token_s": 0.2, "torch_answer_s_18": 1.4,
         "llamacpp_answer_s_18": 0.6, "torch_answer_s_48": 3.3, "llamacpp_answer_s_48": 1.2, "decoder": "cached adapter"}
    rows = {e["name"]: e for e in _llm_runtime_rows(r, 48)}
    assert list(rows) == ["first_token_s_torch", "first_token_s_llamacpp", "answer_18_tokens_s_torch",
                          "answer_18_tokens_s_llamacpp", "answer_48_tokens_s_torch", "answer_48_tokens_s_llamacpp"]
    assert rows["first_token_s_torch"]["ok"] is False and rows["first_token_s_llamacpp"]["ok"] is True
    assert rows["answer_48_tokens_s_llamacpp"]["value"] == 1.2 and rows["answer_48_tokens_s_llamacpp"]["ok"] is True
    missing = _llm_runtime_rows({"error": "LlamaUnavailable: llm.runtime llama.cpp needs the llama_cpp package"}, 48)
    assert all(e["value"] is None and "llama_cpp" in e["note"] for e in missing)
