"""Import cost of `anomalygpt` commands, from `python -X importtime` in fresh processes.

    PYTHONPATH=. python benchmarks/import_time.py                   # --help, inspect, inspect --no-answer, serve
    PYTHONPATH=. python benchmarks/import_time.py --repeats 5 --json

Each case runs the real command line in a new interpreter with -X importtime, sums the
"self" microseconds of every import (the whole import cost of that process, model loading
excluded) and says which heavy packages got imported. WHY these packages: transformers
pulls in torchvision and torch._dynamo when asked for its model classes, timm imports
torchvision, and each costs seconds on 2 busy cores; a command should import only what it
uses. Medians over --repeats processes; the machine is shared, so compare cases of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "anomalygpt" / "assets" / "elpv_defect.png"
HEAVY = ("torch", "torchvision", "torch._dynamo", "transformers", "timm", "open_clip", "fastapi", "uvicorn",
         "onnxruntime", "sklearn", "cv2", "streamlit", "peft", "accelerate")
CASES = {
    "help": ["-m", "anomalygpt", "--help"],
    "inspect": ["-m", "anomalygpt", "inspect", str(SAMPLE)],
    "inspect_no_answer": ["-m", "anomalygpt", "inspect", str(SAMPLE), "--no-answer"],
    "serve_help": ["-m", "anomalygpt", "serve", "--help"],
}


def parse_importtime(stderr: str) -> tuple[float, set[str]]:
    """(total seconds of imports, names of the modules imported) from -X importtime output."""
    total_us, names = 0, set()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line[len("import time:"):].split("|", 2)
        total_us += int(self_us)
        names.add(name.strip())
    return total_us / 1e6, names


def measure(args: list[str], repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.setdefault("OMP_NUM_THREADS", "1")
    totals, walls, names, rc = [], [], set(), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=900)
        walls.append(time.perf_counter() - t0)
        total, names = parse_importtime(p.stderr)
        totals.append(total)
        rc = rc or p.returncode
    return {"import_s": statistics.median(totals), "process_wall_s": statistics.median(walls), "returncode": rc,
            "modules": len(names), "heavy": sorted(h for h in HEAVY if h in names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = {c: measure(CASES[c], a.repeats) for c in a.cases.split(",")}
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{'case':<20}{'imports s':>10}{'wall s':>9}{'modules':>9}  heavy packages imported")
    for c, r in res.items():
        print(f"{c:<20}{r['import_s']:>10.2f}{r['process_wall_s']:>9.2f}{r['modules']:>9}  {', '.join(r['heavy'])}"
              + (f"  (exit {r['returncode']})" if r["returncode"] else ""))


if __name__ == "__main__":
    main()
