"""Start-up: each command imports only what it needs (benchmarks/import_time.py measures it).
Checked in fresh interpreters, because this test process has torch loaded already."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "anomalygpt" / "assets" / "elpv_defect.png"
PROBE = ("torch", "transformers", "torchvision", "timm", "fastapi", "uvicorn", "onnxruntime", "requests")


def imported_after(argv: list[str]) -> set[str]:
    code = ("import io, json, sys, contextlib\nfrom anomalygpt.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    try:\n        main(%r)\n    except SystemExit:\n        pass\n"
            "print(json.dumps([m for m in %r if m in sys.modules]))" % (argv, PROBE))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_and_serve_help_import_no_heavy_package():
    assert imported_after(["--help"]) == set()
    assert imported_after(["serve", "--help"]) == set()


def test_inspect_without_answers_imports_no_llm_stack():
    got = imported_after(["inspect", str(SAMPLE), "--no-answer"])
    assert "torch" in got and not got & {"transformers", "torchvision", "timm", "fastapi", "uvicorn"}


def test_inspect_through_a_server_imports_no_torch():
    got = imported_after(["inspect", str(SAMPLE), "--server", "http://127.0.0.1:9"])  # nothing listens there
    assert got == {"requests"}
