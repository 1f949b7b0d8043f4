"""`anomalygpt serve`: a real uvicorn server on a free port (in a thread), driven by a real
HTTP client (requests). The tiny random checkpoint tests the plumbing; one test compares the
embedded model's report and answer over HTTP with the same calls in process."""
from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path

import pytest
import requests

from anomalygpt.server.client import Client, parse_sse
from anomalygpt.server.worker import Busy, ModelWorker

ASSETS = Path(__file__).resolve().parent.parent / "anomalygpt" / "assets"
DEFECT = ASSETS / "elpv_defect.png"
REFS = sorted(ASSETS.glob("elpv_normal_ref*.png"))


@contextlib.contextmanager
def running_server(assistant, **kw):
    from anomalygpt.server.app import create_app, serve_in_thread

    app = create_app(assistant, **kw)
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def tiny_assistant(tiny_checkpoint):
    from anomalygpt.inspector import AnomalyGPT

    return AnomalyGPT.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def server(tiny_assistant):
    with running_server(tiny_assistant, checkpoint="tiny", max_reports=4) as (url, app):
        yield url, app


def post_inspect(url, path=DEFECT, **form):
    return requests.post(f"{url}/inspect", files={"image": (path.name, path.read_bytes())}, data=form, timeout=60)


def test_health_and_openapi_page(server):
    url, _ = server
    h = requests.get(f"{url}/health", timeout=10).json()
    assert h["status"] == "ok" and h["checkpoint"] == "tiny" and h["llm"] is True
    spec = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/inspect", "/references", "/reports/{report_id}/ask", "/health"} <= set(spec["paths"])
    page = requests.get(f"{url}/docs", timeout=10)
    assert page.status_code == 200 and "swagger" in page.text.lower()


def test_inspect_over_http_equals_in_process(server, tiny_assistant):
    url, _ = server
    r = post_inspect(url, object_name="solar cell", answer="false")
    assert r.status_code == 200, r.text
    got = r.json()
    want = tiny_assistant.inspect(DEFECT, object_name="solar cell", question=None).to_dict()
    assert got["score"] == want["score"] and got["verdict"] == want["verdict"]
    assert got["regions"] == json.loads(json.dumps(want["regions"]))
    assert got["source"] == DEFECT.name and got["answer"] == "" and got["reference_set_id"] is None
    again = requests.get(f"{url}/reports/{got['report_id']}", timeout=10).json()
    assert again["score"] == got["score"]


def test_reference_set_id_equals_inline_references(server, tiny_assistant):
    url, _ = server
    files = [("files", (p.name, p.read_bytes())) for p in REFS]
    made = requests.post(f"{url}/references", files=files, timeout=60)
    assert made.status_code == 200, made.text
    ref = made.json()
    assert ref["n"] == len(REFS) and ref["threshold_source"].startswith("leave-one-out")
    by_id = post_inspect(url, reference_set_id=ref["reference_set_id"], answer="false").json()
    inline = requests.post(f"{url}/inspect", files=[("image", (DEFECT.name, DEFECT.read_bytes()))]
                           + [("references", (p.name, p.read_bytes())) for p in REFS],
                           data={"answer": "false"}, timeout=60).json()
    local = tiny_assistant.inspect(DEFECT, REFS, question=None)
    assert by_id["score"] == inline["score"] == round(local.score, 4)
    assert by_id["threshold"] == inline["threshold"] == round(local.threshold, 4)
    assert by_id["mode"] == "decoder+references" and by_id["n_references"] == len(REFS)
    assert inline["reference_set_id"] and inline["reference_set_id"] != ref["reference_set_id"]


def test_answer_streams_as_events_and_keeps_the_chat(server):
    url, _ = server
    rep = post_inspect(url).json()
    assert rep["answer"]  # the first question is answered in the report
    client = Client(url)
    events = list(client.ask(rep["report_id"], "Where is the anomaly?"))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) <= {"piece"} and len(kinds) >= 2
    turn = events[-1][1]
    streamed = "".join(d["text"] for k, d in events if k == "piece")
    assert turn["question"] == "Where is the anomaly?"
    assert turn["corrected"] or streamed.strip() == turn["text"].strip()
    list(client.ask(rep["report_id"], "How big is it?"))
    stored = requests.get(f"{url}/reports/{rep['report_id']}", timeout=10).json()
    assert [t["question"] for t in stored["turns"]][-2:] == ["Where is the anomaly?", "How big is it?"]


def test_bad_input_gives_one_clear_error(server):
    url, _ = server
    bad = requests.post(f"{url}/inspect", files={"image": ("notes.png", b"not an image")}, timeout=30)
    assert bad.status_code == 400 and "notes.png" in bad.json()["error"] and "cannot decode" in bad.json()["error"]
    assert "anomalygpt-serve-" not in bad.json()["error"]  # no temp path leaks
    empty = requests.post(f"{url}/inspect", files={"image": ("e.png", b"")}, timeout=30)
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    missing = requests.post(f"{url}/inspect", data={"answer": "false"}, timeout=30)
    assert missing.status_code == 422 and missing.json()["error"].startswith("missing field 'image'")
    unknown = post_inspect(url, reference_set_id="nope")
    assert unknown.status_code == 404 and "unknown reference set id 'nope'" in unknown.json()["error"]
    both = requests.post(f"{url}/inspect", files=[("image", (DEFECT.name, DEFECT.read_bytes())),
                                                  ("references", (REFS[0].name, REFS[0].read_bytes()))],
                         data={"reference_set_id": "x"}, timeout=30)
    assert both.status_code == 400 and "not both" in both.json()["error"]
    ask = requests.post(f"{url}/reports/nope/ask", json={"question": "Where?"}, timeout=30)
    assert ask.status_code == 404 and "unknown report id" in ask.json()["error"]
    rep = post_inspect(url, answer="false").json()
    blank = requests.post(f"{url}/reports/{rep['report_id']}/ask", json={"question": "  "}, timeout=30)
    assert blank.status_code == 422 and "blank" in blank.json()["error"]
    no_body = requests.post(f"{url}/reports/{rep['report_id']}/ask", timeout=30)
    assert no_body.status_code == 422 and "error" in no_body.json()
    assert requests.get(f"{url}/nowhere", timeout=10).json()["error"].startswith("Not Found")
    zs = post_inspect(url, zero_shot="no-such-mode", answer="false")
    assert zs.status_code == 400 and "no-such-mode" in zs.json()["error"]


def test_old_reports_are_dropped_with_a_clear_404(server):
    url, _ = server  # the module's server keeps 4 reports
    first = post_inspect(url, answer="false").json()["report_id"]
    for _ in range(4):
        post_inspect(url, answer="false")
    r = requests.get(f"{url}/reports/{first}", timeout=10)
    assert r.status_code == 404 and "keeps the last 4" in r.json()["error"]


def test_concurrent_clients_are_queued_and_get_the_same_reports(server):
    url, app = server
    out: list = [None] * 6
    errors: list = []

    def one(i):
        try:
            out[i] = post_inspect(url, answer="false").json()["score"]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    before = app.state.worker.done
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(out))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(set(out)) == 1
    assert app.state.worker.done - before == len(out)


def test_a_client_leaving_mid_stream_does_not_block_the_model(server):
    url, _ = server
    rep = post_inspect(url, answer="false").json()
    r = requests.post(f"{url}/reports/{rep['report_id']}/ask", json={"question": "Where is the anomaly?"},
                      stream=True, timeout=30)
    next(r.iter_lines())
    r.close()
    assert post_inspect(url, answer="false").status_code == 200


def test_worker_runs_one_job_at_a_time_and_refuses_a_full_queue():
    worker = ModelWorker(max_queue=3)
    gate, active, peak = threading.Event(), [0], [0]

    def job():
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        gate.wait(10)
        active[0] -= 1

    futs = [worker.submit(job) for _ in range(3)]
    with pytest.raises(Busy, match="busy"):
        worker.submit(job)
    gate.set()
    for f in futs:
        f.result(10)
    assert peak[0] == 1 and worker.pending == 0 and worker.done == 3
    worker.close()


def test_parse_sse_reads_multiline_and_unterminated_events():
    text = 'event: piece\ndata: {"text": "a"}\n\nevent: done\ndata: {"text":\ndata: "ab"}'
    assert list(parse_sse(io.StringIO(text))) == [("piece", {"text": "a"}), ("done", {"text": "ab"})]


def test_cli_inspect_through_the_server(server, tiny_assistant, capsys):
    from anomalygpt.cli import main

    url, _ = server
    assert main(["inspect", str(DEFECT), "--ref", *map(str, REFS), "--server", url, "--json", "--no-answer"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["score"] == round(tiny_assistant.inspect(DEFECT, REFS, question=None).score, 4)
    assert main(["inspect", str(DEFECT), "--server", "http://127.0.0.1:9", "--no-answer"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_embedded_answer_over_http_equals_in_process(embedded_assistant):
    local = embedded_assistant.inspect(DEFECT, REFS, object_name="solar cell")
    follow = embedded_assistant.ask(local, "Where is the anomaly?", [("Is there any anomaly in the image?", local.answer)])
    with running_server(embedded_assistant) as (url, _):
        client = Client(url)
        ref = client.add_references(REFS)["reference_set_id"]
        rep = client.inspect(DEFECT, ref, "solar cell", "Is there any anomaly in the image?")
        events = list(client.ask(rep["report_id"], "Where is the anomaly?"))
    assert rep["score"] == round(local.score, 4) and rep["answer"] == local.answer
    assert events[-1][0] == "done" and events[-1][1]["text"] == follow
