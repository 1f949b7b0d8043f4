"""End to end in a real browser: `streamlit run chat_ui/app.py` on a loopback port, driven
by Debian's chromium through Playwright. Upload a photo, inspect, ask a question, see the
answer; the page is saved to docs/ui_screenshot.png.

Uses the shipped "embedded" checkpoint when it is there (so the screenshot shows the real
product), else the tiny random one (plumbing only). Needs /usr/bin/chromium: `make browser-deps`.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chat_ui import APP_PATH
from chat_ui.inputs import ASSETS_DIR

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "ui_screenshot.png"
EMBEDDED = ROOT / "anomalygpt" / "checkpoints" / "embedded" / "config.yaml"
START_TIMEOUT = 120  # s until the server answers
RUN_TIMEOUT = 300    # s per step: model load, inspection, an answer on a shared 2-core CPU
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit did not answer on {url} within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(tmp_path, tiny_checkpoint):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser-deps` (apt-get install -y chromium) for the browser test")
    checkpoint = "embedded" if EMBEDDED.is_file() else str(tiny_checkpoint)
    port = free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env.pop("ANOMALYGPT_CHECKPOINT", None)  # the command-line flag must be what selects it
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--", "--checkpoint", checkpoint]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(proc, url, log)
        yield url, checkpoint, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_idle(page, timeout_ms: int) -> None:
    """Until the script run is over (Streamlit shows its status widget while it runs)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=timeout_ms)


def wait_answer_done(page, message, timeout_ms: int, still_ms: int = 1500) -> str:
    """Until the streamed answer in `message` is over: the script run has ended and the text is
    non-empty and has not changed for `still_ms` (the check may replace it after the stream)."""
    deadline = time.monotonic() + timeout_ms / 1000
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        wait_idle(page, timeout_ms)
        text = message.inner_text().strip()
        if text != last:
            last, since = text, time.monotonic()
        elif text and time.monotonic() - since >= still_ms / 1000:
            return text
        page.wait_for_timeout(250)
    pytest.fail(f"the answer did not settle within {timeout_ms} ms: {last!r}")


def test_browser_upload_inspect_ask(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, checkpoint, log = server
    ms = RUN_TIMEOUT * 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1500})
            page.set_default_timeout(ms)
            page.goto(url)
            expect(page.get_by_role("heading", name="AnomalyGPT inspection")).to_be_visible(timeout=ms)
            expect(page.get_by_text(f"Model checkpoint: {checkpoint}")).to_be_visible(timeout=ms)
            wait_idle(page, ms)  # the model is loaded

            sidebar = page.get_by_test_id("stSidebar")
            photo = sidebar.locator('input[type="file"]').first
            inspect = sidebar.get_by_role("button", name="Inspect", exact=True)
            # A file that is not an image: one error line, no traceback, and the page goes on.
            bogus = tmp_path / "notes.png"
            bogus.write_bytes(b"this is not an image")
            photo.set_input_files(str(bogus))
            # The server has the upload once it names it (a click sent while the upload is still
            # in flight would inspect the previous state).
            expect(sidebar.get_by_text("Ready to inspect: notes.png")).to_be_visible()
            wait_idle(page, ms)
            inspect.click()
            expect(page.get_by_test_id("stAlertContentError")).to_contain_text("notes.png: cannot decode")
            expect(page.get_by_test_id("stException")).to_have_count(0)
            wait_idle(page, ms)

            # The name first: every later rerun carries it. Then a good photo: once the server has
            # it, the sidebar names it and the error about the old file is gone.
            sidebar.get_by_label("Object name (optional)").fill("solar cell")
            sidebar.get_by_label("Object name (optional)").press("Enter")
            wait_idle(page, ms)
            photo.set_input_files(str(ASSETS_DIR / "elpv_defect.png"))
            expect(sidebar.get_by_text("Ready to inspect: elpv_defect.png")).to_be_visible()
            expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
            wait_idle(page, ms)
            inspect.click()

            verdict = page.locator(".verdict")
            expect(verdict).to_be_visible(timeout=ms)
            expect(verdict).to_contain_text("elpv_defect.png")
            expect(verdict).to_contain_text("solar cell")
            expect(page.get_by_test_id("stImage")).to_have_count(2)
            expect(page.get_by_test_id("stChatMessage")).to_have_count(2)
            wait_idle(page, ms)

            box = page.get_by_test_id("stChatInputTextArea")
            box.fill("Where is the anomaly?")
            box.press("Enter")
            messages = page.get_by_test_id("stChatMessage")
            expect(messages).to_have_count(4, timeout=ms)
            expect(messages.nth(2)).to_contain_text("Where is the anomaly?")
            answer = wait_answer_done(page, messages.nth(3), ms)
            assert answer, "the assistant's answer is empty"
            if checkpoint == "embedded":  # the bundled defective cell: the answer names where
                from data_sim.grid import parse_cells

                assert parse_cells(answer), answer
            expect(page.get_by_test_id("stException")).to_have_count(0)
            expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)

            # Streamlit scrolled its main pane to the chat: back to the top for the picture.
            page.evaluate("document.querySelectorAll('*').forEach(e => { if (e.scrollTop > 0) e.scrollTop = 0; })")
            page.wait_for_timeout(300)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert "Traceback" not in log.read_text(errors="replace")
