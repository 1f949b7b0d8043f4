"""A 1,000-image folder with 5% odd or broken files, inspected end to end, detector only.

Builds the folder from the bundled samples (anomalygpt/assets/*.png) with seeded
augmentations (flips, 90-degree turns, crops, brightness/contrast, noise, resizes; PNG or
JPEG), replaces every 20th file by one of data_sim.odd_files.KINDS in turn (empty,
truncated PNG/JPEG, text named .png, 1x1, decompression bomb, 16-bit, CMYK, palette with
alpha, EXIF rotation), then runs, as a user would:

    python -m anomalygpt inspect FOLDER --jsonl OUT/results.jsonl --no-answer

and checks that every readable file has a report line, every broken one an error line
naming it, the exit code is 1 and no traceback was printed. Prints time and counts.

    python benchmarks/broken_folder.py [--n 1000] [--out out/broken_folder]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_sim.imageio import load_image  # noqa: E402
from data_sim.odd_files import KINDS, write_odd_file  # noqa: E402


def augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One seeded variant of a sample: the kinds of change a camera line gives."""
    out = np.rot90(rgb, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    h, w = out.shape[:2]
    ch, cw = int(h * rng.uniform(0.7, 1.0)), int(w * rng.uniform(0.7, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = out[y:y + ch, x:x + cw].astype(np.float32)
    out = out * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20) + rng.normal(0, rng.uniform(0, 6), out.shape)
    side = int(rng.integers(96, 320))
    return cv2.resize(np.clip(out, 0, 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_AREA)


def build_folder(folder: Path, n: int, broken_every: int, seed: int) -> dict[str, bool]:
    """Write the folder; returns file name -> must it be read (True) or refused (False)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    samples = [load_image(p) for p in sorted((REPO / "anomalygpt" / "assets").glob("*.png"))]
    kinds = list(KINDS)
    expect: dict[str, bool] = {}
    for i in range(n):
        rgb = augment(samples[int(rng.integers(len(samples)))], rng)
        if (i + 1) % broken_every == 0:
            kind = kinds[(i // broken_every) % len(kinds)]
            path = write_odd_file(folder, f"img{i:05d}_{kind}", kind, rgb)
            expect[path.name] = KINDS[kind][1]
        else:
            suffix = ".png" if i % 2 else ".jpg"
            path = folder / f"img{i:05d}{suffix}"
            ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            assert ok, path
            expect[path.name] = True
    return expect


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--broken-every", type=int, default=20, help="every k-th file is odd/broken (20 = 5%%)")
    ap.add_argument("--out", default="out/broken_folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default="embedded")
    args = ap.parse_args(argv)
    out = Path(args.out)
    folder, jsonl = out / "images", out / "results.jsonl"
    t0 = time.perf_counter()
    expect = build_folder(folder, args.n, args.broken_every, args.seed)
    build_s = time.perf_counter() - t0
    jsonl.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "anomalygpt", "inspect", str(folder), "--jsonl", str(jsonl), "--no-answer",
           "--checkpoint", args.checkpoint]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    run_s = time.perf_counter() - t0
    recs = {Path(r["source"]).name: r for r in map(json.loads, jsonl.read_text().splitlines())}
    wrong = [name for name, readable in expect.items()
             if name not in recs or (("error" not in recs[name]) != readable)]
    unnamed = [name for name, r in recs.items() if "error" in r and name not in r["error"]]
    result = {
        "files": len(expect), "odd_or_broken": sum(1 for name in expect if "_" in name),
        "expected_readable": sum(expect.values()), "expected_refused": sum(not v for v in expect.values()),
        "lines": len(recs), "reports": sum("error" not in r for r in recs.values()),
        "errors": sum("error" in r for r in recs.values()),
        "anomalous": sum(r.get("is_anomalous", False) for r in recs.values()),
        "wrongly_handled": wrong[:10], "errors_not_naming_their_file": unnamed[:10],
        "exit_code": proc.returncode, "traceback_printed": "Traceback" in proc.stderr,
        "build_s": round(build_s, 1), "inspect_wall_s": round(run_s, 1),
        "ms_per_image": round(1000 * run_s / max(1, len(expect)), 1),
        "command": " ".join(cmd[1:]), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print(json.dumps(result, indent=2))
    ok = not wrong and not unnamed and proc.returncode == 1 and not result["traceback_printed"]
    if not ok:
        print(proc.stderr[-3000:], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
