"""`anomalygpt ui` leaves nothing behind when a supervisor stops it (SIGTERM) or a user hits
Ctrl-C (SIGINT): no orphaned Streamlit server holding the port and the model's memory."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "ui exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the UI did not answer on port {port} within {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stops_with_its_server_on_a_signal(sig: signal.Signals, tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "anomalygpt", "ui", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(port, proc)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        listening = {c.pid for c in psutil.net_connections("tcp")
                     if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN}
        assert listening <= {p.pid for p in tree}, "the server is not in the process tree that was started"
        os.kill(proc.pid, sig)  # only the process we started, as a supervisor would
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"left running after {sig.name}: {[(p.pid, p.cmdline()) for p in alive]}"
        deadline = time.time() + 10
        while not _port_free(port) and time.time() < deadline:
            time.sleep(0.2)
        assert _port_free(port), f"port {port} still taken after {sig.name}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
