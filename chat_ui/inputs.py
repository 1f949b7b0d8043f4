"""Pure helpers of the web chat: upload checks, bundled samples, tables, downloads.

Nothing here imports Streamlit, so every check a user can trip in the browser is unit
testable. Every rejected input raises `InputError` with one line that names the file, says
what is wrong and how to fix it; the page shows that line with `st.error`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomalygpt.images import load_image
from anomalygpt.report import InspectionReport, size_word

MAX_BYTES = 20 * 1024 * 1024      # per uploaded file
MAX_PIXELS = 40_000_000           # 40 megapixels
MAX_REFERENCES = 8
ASSETS_DIR = Path(__file__).resolve().parent.parent / "anomalygpt" / "assets"
IMAGE_HINT = "upload a PNG, JPEG, TIFF or BMP photo"

# Friendly names of the bundled samples (anything else in assets/ is listed by file name).
SAMPLE_LABELS = {
    "elpv_defect.png": "Solar cell, defective (right)",
    "elpv_defect_2.png": "Solar cell, defective (left)",
    "elpv_normal.png": "Solar cell, good",
}


def checkpoint_name(argv: list[str] | None = None) -> str:
    """--checkpoint (given after `--` on the streamlit command line), else $ANOMALYGPT_CHECKPOINT, else 'embedded'."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    # Parse only when the flag is there: under AppTest, sys.argv is pytest's own command line.
    if any(a == "--checkpoint" or a.startswith("--checkpoint=") for a in argv):
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        parser.add_argument("--checkpoint")
        known, _ = parser.parse_known_args(argv)
        if known.checkpoint:
            return known.checkpoint
    return os.environ.get("ANOMALYGPT_CHECKPOINT") or "embedded"


class InputError(ValueError):
    """A user input the app refuses, with a one-line message fit for the page."""


def bundled_samples(folder: Path = ASSETS_DIR) -> dict[str, Path]:
    """Label -> path of the sample images shipped in `anomalygpt/assets/` (sorted, labelled)."""
    if not folder.is_dir():
        return {}
    # the `*_ref*` images are normal references for the CLI demo (train split), not samples
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"} and "_ref" not in p.stem)
    return {SAMPLE_LABELS.get(p.name, p.stem.replace("_", " ")): p for p in paths}


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def decode_upload(name: str, data: bytes) -> np.ndarray:
    """Bytes of an uploaded file -> RGB uint8, or `InputError` (empty, > 20 MB, > 40 MP, unreadable)."""
    name = Path(name or "upload").name
    if not data:
        raise InputError(f"{name}: the file is empty; {IMAGE_HINT}")
    if len(data) > MAX_BYTES:
        raise InputError(f"{name}: the file is {_mb(len(data))}, over the {_mb(MAX_BYTES)} limit; "
                         "upload a smaller or compressed image (JPEG/PNG)")
    # Read only the header first, so an oversized picture is refused before it is decoded.
    size = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
    except Image.DecompressionBombError:
        raise InputError(f"{name}: the image has far more than {MAX_PIXELS // 1_000_000} megapixels; "
                         "downscale it before uploading") from None
    except Exception:  # noqa: BLE001 - not readable by PIL: load_image tries OpenCV and explains
        size = None
    if size is not None:
        _check_pixels(name, size[0], size[1])
    with tempfile.TemporaryDirectory(prefix="anomalygpt_upload_") as tmp:
        path = Path(tmp) / f"upload{Path(name).suffix.lower()[:8]}"
        path.write_bytes(data)
        try:
            rgb = load_image(path)
        except ValueError as err:
            raise InputError(str(err).replace(str(path), name)) from None
        except Exception as err:  # noqa: BLE001 - decoder crashes on corrupt files
            raise InputError(f"{name}: cannot read this file as an image ({type(err).__name__}); {IMAGE_HINT}") from None
    _check_pixels(name, rgb.shape[1], rgb.shape[0])
    return rgb


def _check_pixels(name: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"{name}: the image is {width}x{height} px ({width * height / 1e6:.1f} megapixels), "
                         f"over the {MAX_PIXELS // 1_000_000} megapixel limit; downscale it before uploading")


def decode_references(files: list[tuple[str, bytes]]) -> list[np.ndarray]:
    """Uploaded normal references -> RGB arrays (at most 8; each checked like the main image)."""
    if len(files) > MAX_REFERENCES:
        raise InputError(f"{len(files)} reference images given; use at most {MAX_REFERENCES} "
                         "(remove some in the sidebar)")
    return [decode_upload(name, data) for name, data in files]


def region_rows(report: InspectionReport) -> list[dict[str, Any]]:
    """One table row per region of an anomalous report (strongest first)."""
    if not report.is_anomalous:
        return []
    return [{"#": i, "position": r.cell, "area": f"{100 * r.area_share:.1f}%", "size": size_word(r.area_share),
             "box x0,y0,x1,y1": ", ".join(str(int(v)) for v in r.box), "peak": round(float(r.peak), 3)}
            for i, r in enumerate(report.regions, 1)]


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def report_json(report: InspectionReport, messages: list[dict[str, str]] | None = None) -> str:
    """The report's dict plus the chat transcript, as indented JSON."""
    out = report.to_dict()
    out["chat"] = [{"role": m["role"], "text": m["content"]} for m in messages or []]
    return json.dumps(out, indent=2)


def chat_history(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(question, answer) pairs of the finished turns, all of them: the assistant decides which
    reach the LLM (the main turn must stay, however long the chat grows)."""
    pairs, question = [], None
    for m in messages:
        if m["role"] == "user":
            question = m["content"]
        elif m["role"] == "assistant" and question is not None:
            pairs.append((question, m["content"]))
            question = None
    return pairs
