"""The Q&A training corpus: simulated samples saved as PNGs plus a Hugging Face ``Dataset``.

Simulation costs ~30 ms per image, which is nothing once but adds up over epochs, runs
and ranks; so the corpus is built once and cached on disk under a key hashed from
everything that determines it (image files with size and mtime, n, seed, simulation
settings, code version). Change any of these and a new corpus is built; ask again with
the same ones and it is loaded.

Every sample draws its randomness from ``default_rng([seed, index])``: samples are
independent of each other, so a build interrupted half-way resumes where it stopped
(finished rows are kept as small JSON files), and the result is the same as an
uninterrupted build. The finished corpus appears with one atomic rename.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from data_sim.datasets import cache_dir
from data_sim.imageio import load_image, write_png, write_text
from data_sim.nsa import synthesize
from data_sim.qa import conversation

if TYPE_CHECKING:
    import datasets

CORPUS_VERSION = 1  # bump when the simulation or row format changes meaning


def corpus_key(image_paths: Sequence[os.PathLike | str], n: int, seed: int, sim_kwargs: dict[str, Any]) -> str:
    """Hex digest identifying a corpus: inputs (path, size, mtime), n, seed, settings."""
    files = []
    for p in image_paths:
        st = Path(p).stat()
        files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {"version": CORPUS_VERSION, "files": files, "n": n, "seed": seed, "sim": sim_kwargs},
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _make_row(i: int, paths: list[Path], order: np.ndarray, seed: int, sim_kwargs: dict[str, Any], root: Path, final: Path) -> dict[str, Any]:
    """Simulate, save and describe sample ``i`` (odd = anomalous, even = normal)."""
    rng = np.random.default_rng([seed, i])
    base = paths[int(order[i % len(order)])]
    image = load_image(base)
    name = f"{i:06d}"
    anomalous = i % 2 == 1
    pair = ""
    if anomalous:
        syn = synthesize(image, rng, sources=paths, **sim_kwargs)
        out_img, mask, parts = syn.image, syn.mask, syn.parts
        write_png(root / "images" / f"{name}_pair.png", image)
        pair = str(final / "images" / f"{name}_pair.png")
        kinds, boxes = syn.kinds, syn.boxes
    else:
        out_img, mask, parts, kinds, boxes = image, np.zeros(image.shape[:2], bool), [], [], []
    write_png(root / "images" / f"{name}.png", out_img)
    write_png(root / "masks" / f"{name}.png", mask)
    conv = conversation(parts if parts else mask, rng)
    return {
        "image": str(final / "images" / f"{name}.png"),
        "mask": str(final / "masks" / f"{name}.png"),
        "label": int(mask.any()),
        "question": conv[0][0],
        "answer": conv[0][1],
        "followups": json.dumps(conv[1:]),
        "pair": pair,
        "source": str(base),
        "kinds": json.dumps(kinds),
        "boxes": json.dumps(boxes),
    }


def build_corpus(
    image_paths: Sequence[os.PathLike | str],
    n: int,
    seed: int = 0,
    out_dir: Optional[os.PathLike | str] = None,
    sim_kwargs: Optional[dict[str, Any]] = None,
    progress: bool = True,
) -> "datasets.Dataset":
    """Simulate (or load from the cache) a corpus of ``n`` rows, half normal, half anomalous.

    Rows: ``image``, ``mask`` (PNG paths; all-black mask for normals), ``label``,
    ``question``/``answer`` (main Q&A), ``followups`` (JSON list of [q, a]), ``pair``
    (for anomalous rows: the untouched normal image it was made from, saved beside it,
    so training can show both), ``source`` (original file), ``kinds`` and ``boxes`` (JSON).
    ``sim_kwargs`` go to ``data_sim.nsa.synthesize`` (e.g. mode, texture, n_max).
    Stored in ``out_dir`` (default ``<cache>/corpus``) as ``corpus-<key>``.
    """
    import datasets  # heavy import, only needed here

    if n < 1:
        raise ValueError(f"corpus size n must be >= 1, got {n}")
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ValueError("no normal images given to build a corpus from; pass at least one image path")
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{p}: no such image file; check the list of training images")
    sim_kwargs = dict(sim_kwargs or {})
    key = corpus_key(paths, n, seed, sim_kwargs)[:16]
    out = Path(out_dir) if out_dir is not None else cache_dir() / "corpus"
    final = out / f"corpus-{key}"
    if (final / "dataset").is_dir():
        return datasets.load_from_disk(str(final / "dataset"))

    work = out / f"corpus-{key}.partial"
    (work / "rows").mkdir(parents=True, exist_ok=True)
    write_text(work / "config.json", json.dumps({"n": n, "seed": seed, "sim": sim_kwargs, "images": len(paths)}, default=repr, indent=1))
    order = np.random.default_rng(seed).permutation(len(paths))
    rows = []
    for i in tqdm(range(n), desc="simulating corpus", unit="img", disable=not progress):
        row_file = work / "rows" / f"{i:06d}.json"
        if row_file.is_file():  # resumed build: this sample is already done
            rows.append(json.loads(row_file.read_text(encoding="utf-8")))
            continue
        row = _make_row(i, paths, order, seed, sim_kwargs, work, final)
        write_text(row_file, json.dumps(row))
        rows.append(row)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(work / "dataset"))
    if final.exists():  # a stale, incomplete copy (no dataset folder): replace it
        shutil.rmtree(final)
    os.replace(work, final)
    return datasets.load_from_disk(str(final / "dataset"))
