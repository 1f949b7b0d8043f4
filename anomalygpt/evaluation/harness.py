"""Evaluation on ELPV, MVTec AD, VisA or a folder: the standard metrics, per category.

    run_eval("elpv", shots=4, seeds=(0, 1, 2), out_dir="runs/eval-elpv-4shot")

One *run* is one category (or ELPV module type) with one set of references: k-shot runs
draw k train normals with ``default_rng(seed).choice(train_normals, k, replace=False)``
(BENCHMARK.md) and build the memory bank once per seed; 0-shot (decoder only) and "all"
(every train normal) are single runs, seeds do not apply. Per run: image AUROC / AUPR /
F1-max, pixel AUROC and PRO when masks exist, the accuracy of the verdict (score >=
threshold) and of the LLM's yes/no, and the median per-image latency.

Each finished run is saved in ``out_dir/runs/`` with a fingerprint of its settings, so an
interrupted evaluation resumes where it stopped. ``results.json`` is written atomically.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from data_sim.datasets import ELPV_KINDS, Sample, elpv_dev_split, elpv_split, load_sample, resolve_dataset

from .metrics import answer_accuracy, clean_number, image_metrics, pixel_auroc, pro_score

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
RUNS_DIR = "runs"
CURVES_DIR = "curves"
PIXEL_SIDE = 256       # maps/masks are compared at most this large (long side): keeps memory bounded on
                       # MVTec's 1024 px images; smaller images are compared at their own size
FORMAT_VERSION = 2     # bump when a run file's content changes meaning, so old ones are not reused
METRIC_KEYS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pro", "verdict_accuracy",
               "answer_accuracy", "answer_unparsed", "latency_ms_median")


@dataclass
class Group:
    """One category / ELPV type: its test samples and the normals references may come from."""
    name: str
    test: list[Sample]
    train_normals: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------- data
def dataset_groups(dataset: str) -> list[Group]:
    """Split a dataset spec into evaluation groups. ``elpv`` and ``elpv-dev`` are mono and poly; MVTec AD /
    VisA specs without a category give every category."""
    kind, _, rest = dataset.partition(":")
    if kind.strip().lower() in ("elpv", "elpv-dev"):  # the benchmark split / its dev set (no test image)
        split = elpv_split if kind.strip().lower() == "elpv" else elpv_dev_split
        kinds = (rest,) if rest else ELPV_KINDS
        return [Group(k, *(split(k)[s] for s in ("test", "train"))) for k in kinds]
    test = resolve_dataset(dataset, "test")
    try:
        train = [s for s in resolve_dataset(dataset, "train") if s.label == 0]
    except ValueError:  # e.g. an MVTec-style copy without train/ folders: 0-shot still works
        train = []
    names = list(dict.fromkeys(s.category for s in test))
    return [Group(n, [s for s in test if s.category == n], [s for s in train if s.category == n]) for n in names]


def stratified_subset(samples: list[Sample], n: int | None) -> list[Sample]:
    """At most n samples keeping the normal/anomalous ratio (at least one of each when
    possible), chosen with a fixed seed and kept in their original order: a quick run
    then still measures AUROC over both classes."""
    if n is None or n >= len(samples):
        return list(samples)
    if n < 1:
        raise ValueError(f"max_images must be positive, got {n}")
    rng = np.random.default_rng(0)
    pos = [i for i, s in enumerate(samples) if s.label]
    neg = [i for i, s in enumerate(samples) if not s.label]
    n_pos = int(round(n * len(pos) / len(samples)))
    if pos and neg and n >= 2:
        n_pos = min(max(n_pos, 1), n - 1)
    n_pos, n_neg = min(n_pos, len(pos)), min(n - n_pos, len(neg))
    keep = set(rng.choice(pos, n_pos, replace=False).tolist() if n_pos else [])
    keep |= set(rng.choice(neg, n_neg, replace=False).tolist() if n_neg else [])
    return [samples[i] for i in sorted(keep)]


def pick_references(train_normals: Sequence[Sample], shots: int | str, seed: int | None) -> list[Sample]:
    """The benchmark's k-shot draw. Choosing k indices is exactly what
    ``default_rng(seed).choice(train_normals, k, replace=False)`` does with the list."""
    if shots == 0:
        return []
    if shots == "all":
        return list(train_normals)
    if shots > len(train_normals):
        raise ValueError(f"shots={shots} but only {len(train_normals)} train normals exist; use at most that many")
    idx = np.random.default_rng(seed).choice(len(train_normals), int(shots), replace=False)
    return [train_normals[int(i)] for i in idx]


def parse_shots(shots: int | str) -> int | str:
    """0, a positive int or "all" (strings from the CLI accepted)."""
    if isinstance(shots, str):
        s = shots.strip().lower()
        if s == "all":
            return "all"
        if not s.isdigit():
            raise ValueError(f"shots must be a non-negative integer or 'all', got {shots!r}")
        shots = int(s)
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 0:
        raise ValueError(f"shots must be a non-negative integer or 'all', got {shots!r}")
    return int(shots)


def _load(sample: Sample, skipped: list[dict[str, str]], progress_write: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, mask), or None after reporting an unreadable file: one bad file must not
    cost the whole evaluation."""
    try:
        return load_sample(sample)
    except Exception as e:  # noqa: BLE001 - any decoder error of any library means "unreadable"
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        skipped.append({"path": str(sample.image_path), "error": msg})
        progress_write(f"skipped {sample.image_path}: {msg}")
        log.warning("skipped %s: %s", sample.image_path, msg)
        return None


def _pixel_size(h: int, w: int) -> tuple[int, int]:
    scale = min(1.0, PIXEL_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


# ---------------------------------------------------------------------------- one run
def evaluate_run(assistant: Any, test: Sequence[Sample], references: Sequence[Sample], question: str | None,
                 batch_size: int = 8, progress: bool = True, desc: str = "eval",
                 skipped: list[dict[str, str]] | None = None, zero_shot: str | None = None) -> dict[str, Any]:
    """Inspect every test sample with one reference set; returns metrics and per-image rows.

    Reference images that are also test images (a folder has one pool of normals) are left
    out of the test set: scoring an image against itself would be a free pass.
    `zero_shot`: a training-free mode (no references); a mode that compares the images with
    each other ("batch") gets the whole test set as its one unlabeled batch.
    """
    from tqdm.auto import tqdm

    skipped = skipped if skipped is not None else []
    ref_paths = {s.image_path for s in references}
    test = [s for s in test if s.image_path not in ref_paths]
    write = tqdm.write if progress else (lambda _m: None)

    refs, ref_s, n_refs = None, 0.0, 0
    if references:
        loaded = [x for x in (_load(s, skipped, write) for s in references) if x is not None]
        if not loaded:
            raise ValueError("none of the reference images could be read; see the messages above")
        t0 = time.perf_counter()
        refs = assistant.build_references([img for img, _ in loaded])
        ref_s, n_refs = time.perf_counter() - t0, len(loaded)

    with_masks = any(s.mask_path is not None for s in test)
    rows: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    latencies: list[float] = []
    threshold, source = assistant.threshold_for(refs)
    mode = assistant.zero_shot_mode(zero_shot) if zero_shot else None
    run_mode = None
    load_size = max(1, len(test)) if mode is not None and mode.needs_batch else batch_size
    bar = tqdm(total=len(test), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(test), load_size):
            chunk = []
            for s in test[start:start + load_size]:
                x = _load(s, skipped, write)
                if x is not None:
                    chunk.append((s, *x))
            if chunk:
                t0 = time.perf_counter()
                try:
                    reports = list(assistant.inspect_many([img for _, img, _ in chunk], refs, question=question,
                                                          batch_size=min(len(chunk), batch_size), zero_shot=zero_shot))
                    latencies.append((time.perf_counter() - t0) / len(chunk))
                except (ValueError, RuntimeError):  # an image the model cannot take: find it, keep the rest
                    if mode is not None and mode.needs_batch:
                        raise  # the set is scored as a whole: one by one would be another method
                    chunk, reports = _one_by_one(assistant, chunk, refs, question, skipped, write, zero_shot)
                for (s, _, mask), rep in zip(chunk, reports):
                    threshold, source, run_mode = rep.threshold, rep.threshold_source, rep.mode
                    rows.append({"path": str(s.image_path), "label": int(s.label), "defect_type": s.defect_type,
                                 "score": float(rep.score), "anomalous": bool(rep.is_anomalous),
                                 "answer": rep.answer if question else None,
                                 # the LLM's own answer before the claim checker (anomalygpt.chat)
                                 "llm_answer": ((rep.turns[0].get("llm_text") if rep.turns else None) or rep.answer)
                                 if question else None})
                    # pixel metrics over normals and masked anomalies only: an anomaly without a
                    # mask has no pixel truth, an all-False stand-in would count its defect as normal
                    if with_masks and (s.label == 0 or s.mask_path is not None):
                        h, w = mask.shape
                        ph, pw = _pixel_size(h, w)
                        amap = rep.anomaly_map.astype(np.float32)
                        if (ph, pw) != (h, w):
                            amap = cv2.resize(amap, (pw, ph), interpolation=cv2.INTER_AREA)
                            mask = cv2.resize(mask.astype(np.uint8), (pw, ph), interpolation=cv2.INTER_NEAREST) > 0
                        maps.append(amap)
                        masks.append(mask.astype(bool))
            bar.update(len(test[start:start + load_size]))
    finally:
        bar.close()

    labels = np.array([r["label"] for r in rows], dtype=int)
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    im = image_metrics(labels, scores) if rows else {"auroc": None, "aupr": None, "f1_max": None, "f1_threshold": None}
    metrics: dict[str, Any] = {
        "image_auroc": im["auroc"], "image_aupr": im["aupr"], "image_f1_max": im["f1_max"],
        "f1_threshold": im["f1_threshold"],
        "pixel_auroc": pixel_auroc(masks, maps) if masks else None,
        "pro": pro_score(masks, maps) if masks else None,
        "verdict_accuracy": float(np.mean([r["anomalous"] == bool(r["label"]) for r in rows])) if rows else None,
        "answer_accuracy": None, "answer_unparsed": None,
        "latency_ms_median": 1000 * statistics.median(latencies) if latencies else None,
        "image_auroc_by_kind": auroc_by_kind(rows),
    }
    if question and rows:
        acc = answer_accuracy(labels, [r["answer"] for r in rows])
        metrics["answer_accuracy"], metrics["answer_unparsed"] = acc["accuracy"], acc["unparsed"]
        # what users see is checked against the verdict; this is the LLM's own answer's accuracy
        metrics["answer_accuracy_llm"] = answer_accuracy(labels, [r["llm_answer"] for r in rows])["accuracy"]
    metrics = {k: clean_number(v) if isinstance(v, (float, int, np.floating)) else v for k, v in metrics.items()}
    return {
        "metrics": metrics, "n_images": len(rows), "n_anomalous": int(labels.sum()),
        "n_pixel_images": len(masks), "n_references": n_refs,
        "references": [str(s.image_path) for s in references],
        "references_build_s": round(ref_s, 3), "threshold": round(float(threshold), 6), "threshold_source": source,
        "latency_note": (f"inspect_many wall time per image, batches of {batch_size}" if load_size == batch_size
                         else f"inspect_many wall time of the whole set of {len(rows)} / its size") + (
            ", answer included" if question else ", detector only"),
        "mode": run_mode,
        "rows": rows,
    }


def auroc_by_kind(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Image AUROC of each defect kind's anomalies against all normals: one pooled AUROC
    hides which kind of defect is missed (a few-pixel speck vs a change of the whole surface)."""
    normals = [r["score"] for r in rows if not r["label"]]
    kinds = sorted({r["defect_type"] for r in rows if r["label"]})
    out: dict[str, float] = {}
    if not normals:
        return out
    for kind in kinds:
        bad = [r["score"] for r in rows if r["label"] and r["defect_type"] == kind]
        y = np.r_[np.zeros(len(normals), int), np.ones(len(bad), int)]
        auroc = image_metrics(y, np.r_[normals, bad])["auroc"]
        if auroc is not None:
            out[kind] = clean_number(float(auroc))
    return out


def _one_by_one(assistant: Any, chunk: list[tuple[Sample, np.ndarray, np.ndarray]], refs: Any, question: str | None,
                skipped: list[dict[str, str]], write: Any, zero_shot: str | None = None) -> tuple[list[Any], list[Any]]:
    """Inspect a failed batch image by image; the images that still fail are reported and skipped."""
    kept, reports = [], []
    for item in chunk:
        try:
            reports.append(assistant.inspect(item[1], refs, question=question, zero_shot=zero_shot))
            kept.append(item)
        except (ValueError, RuntimeError) as e:
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            skipped.append({"path": str(item[0].image_path), "error": msg})
            write(f"skipped {item[0].image_path}: {msg}")
            log.warning("skipped %s: %s", item[0].image_path, msg)
    return kept, reports


# ---------------------------------------------------------------------------- files
def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder + os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_json(path: Path, obj: Any) -> None:
    _atomic_write(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def _checkpoint_id(checkpoint: str | Path) -> dict[str, Any]:
    """Identity of a checkpoint's weights (path, sizes, mtimes, calibration) for run reuse."""
    from ..inspector import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return {"path": str(path.resolve()), "files": h.hexdigest()[:16]}


def save_curves(rows: list[dict[str, Any]], out_dir: Path, name: str, title: str) -> dict[str, str]:
    """ROC and PR curve PNGs of one run (matplotlib's Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y = np.array([r["label"] for r in rows])
    s = np.array([r["score"] for r in rows])
    if not 0 < y.sum() < len(y):
        return {}
    out: dict[str, str] = {}
    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    for kind, (xs, ys, xl, yl, ref, label) in {
        "roc": (fpr, tpr, "false positive rate", "true positive rate", ([0, 1], [0, 1]),
                f"AUROC {roc_auc_score(y, s):.3f}"),
        "pr": (rec, prec, "recall", "precision", ([0, 1], [y.mean()] * 2), f"AUPR {average_precision_score(y, s):.3f}"),
    }.items():
        fig = Figure(figsize=(4, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(xs, ys, lw=1.5, label=label)
        ax.plot(*ref, ls="--", lw=0.8, color="gray", label="chance")
        ax.legend(loc="lower right" if kind == "roc" else "lower left")
        ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1.02), title=f"{title} ({kind.upper()})")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        path = out_dir / CURVES_DIR / f"{name}_{kind}.png"
        _atomic_write(path, buf.getvalue())
        out[kind] = str(path)
    return out


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean, std and median over seeds of each metric (None where no run has it)."""
    agg: dict[str, dict[str, float | None]] = {"mean": {}, "std": {}, "median": {}}
    for k in METRIC_KEYS:
        vals = [r["metrics"][k] for r in runs if r["metrics"].get(k) is not None]
        agg["mean"][k] = clean_number(float(np.mean(vals))) if vals else None
        agg["std"][k] = clean_number(float(np.std(vals))) if vals else None
        agg["median"][k] = clean_number(float(np.median(vals))) if vals else None
    return agg


def _aggregate_by_kind(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over seeds of each defect kind's image AUROC (runs saved before it existed have none)."""
    per_kind: dict[str, list[float]] = {}
    for r in runs:
        for kind, v in (r["metrics"].get("image_auroc_by_kind") or {}).items():
            per_kind.setdefault(kind, []).append(v)
    return {k: clean_number(float(np.mean(v))) for k, v in sorted(per_kind.items())}


# ---------------------------------------------------------------------------- entry point
def run_eval(dataset: str, checkpoint: str = "embedded", shots: int | str = 0, seeds: Sequence[int] = (0, 1, 2),
             out_dir: str | Path | None = None, answers: bool = True, max_images: int | None = None,
             progress: bool = True, batch_size: int = 8, zero_shot: str | None = None,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset spec; returns the results dict (also written to
    ``out_dir/results.json`` with curves and per-run files when out_dir is given).

    ``shots``: 0 = decoder only, k = k train normals per seed, "all" = every train normal.
    ``answers``: also generate the answer to the main question and score its yes/no (slow:
    the LLM runs once per image). ``max_images``: a stratified subset per group, for quick looks.
    ``zero_shot``: a training-free mode of ``anomalygpt.zeroshot.MODES`` ("self", "batch"); needs
    shots=0 (no references) and uses only the checkpoint's frozen encoder, never its decoder.
    ``overrides``: "memory.KEY=VALUE" settings applied to the loaded checkpoint's config (e.g.
    memory.orientations=none), to measure a switch both ways; part of each run's fingerprint.
    """
    from ..inspector import DEFAULT_QUESTION, AnomalyGPT

    t_start = time.perf_counter()
    shots = parse_shots(shots)
    seed_list: list[int | None] = [int(s) for s in seeds] if isinstance(shots, int) and shots > 0 else [None]
    if not seed_list:
        raise ValueError("seeds is empty; give at least one seed, e.g. 0,1,2")
    memory_overrides, zero_shot_overrides = _overrides(checkpoint, overrides)
    if zero_shot_overrides and not zero_shot:
        raise ValueError("zero_shot.KEY=VALUE settings apply to a zero-shot mode; add --zero-shot MODE")
    zs = _zero_shot_settings(checkpoint, zero_shot, shots, zero_shot_overrides)
    groups = dataset_groups(dataset)
    for g in groups:
        if shots and not g.train_normals:
            raise ValueError(f"{g.name}: no train normal images to draw references from; use shots=0")
        if isinstance(shots, int) and shots > len(g.train_normals):
            raise ValueError(f"{g.name}: shots={shots} but only {len(g.train_normals)} train normals exist; "
                             "use at most that many")
    question = DEFAULT_QUESTION if answers else None
    ckpt_id = _checkpoint_id(checkpoint)
    out = Path(out_dir) if out_dir is not None else None
    assistant = None  # loaded lazily: a fully resumed evaluation needs no model

    results: dict[str, Any] = {
        "dataset": dataset, "checkpoint": str(checkpoint), "checkpoint_path": ckpt_id["path"], "shots": shots,
        "seeds": seed_list if seed_list != [None] else [], "answers": answers, "question": question,
        "max_images": max_images, "pixel_side": PIXEL_SIDE, "zero_shot": zs or None,
        "memory_overrides": memory_overrides or None, "groups": {},
    }
    for g in groups:
        test = stratified_subset(g.test, max_images)
        runs = []
        for i, seed in enumerate(seed_list):
            tag = f"{g.name}_{'seed' + str(seed) if seed is not None else 'single'}" + (
                f"_zs-{zs['mode']}" if zs else "")
            fingerprint = {"version": FORMAT_VERSION, "dataset": dataset, "group": g.name, "checkpoint": ckpt_id,
                           "shots": shots, "seed": seed, "question": question, "max_images": max_images,
                           "batch_size": batch_size} | ({"zero_shot": zs} if zs else {}) | (
                           {"memory": memory_overrides} if memory_overrides else {})
            run_file = out / RUNS_DIR / f"{_safe(tag)}.json" if out else None
            run = None
            if run_file is not None and run_file.is_file():
                try:
                    cached = json.loads(run_file.read_text())
                    run = cached if cached.get("fingerprint") == fingerprint else None
                except (OSError, ValueError):
                    run = None
                if run is not None and progress:
                    print(f"{tag}: reusing finished run {run_file}")
            if run is None:
                if assistant is None:
                    assistant = AnomalyGPT.from_pretrained(checkpoint, with_llm=answers)
                    for key, value in memory_overrides.items():
                        setattr(assistant.cfg.memory, key, value)
                    for key, value in zero_shot_overrides.items():
                        setattr(assistant.cfg.zero_shot, key, value)
                refs = pick_references(g.train_normals, shots, seed)
                skipped: list[dict[str, str]] = []
                run = evaluate_run(assistant, test, refs, question, batch_size, progress,
                                   desc=f"{g.name} {shots}-shot" + (f" seed {seed}" if seed is not None else "")
                                   + (f" zero-shot {zs['mode']}" if zs else ""),
                                   skipped=skipped, zero_shot=zs["mode"] if zs else None)
                run |= {"seed": seed, "skipped": skipped, "fingerprint": fingerprint}
                if run_file is not None:
                    _atomic_json(run_file, run)
            runs.append(run)
        first = runs[0]
        setting = f"zero-shot {zs['mode']}" if zs else f"{shots}-shot"
        curves = save_curves(first["rows"], out, _safe(g.name + (f"_zs-{zs['mode']}" if zs else "")),
                             f"{g.name}, {setting}") if out else {}
        skipped_all = {d["path"]: d for r in runs for d in r.get("skipped", [])}
        results["groups"][g.name] = {
            "n_test": len(test), "n_anomalous": sum(s.label for s in test), "n_train_normals": len(g.train_normals),
            "has_masks": any(s.mask_path is not None for s in test),
            "runs": [{k: v for k, v in r.items() if k not in ("rows", "fingerprint", "references")} for r in runs],
            **_aggregate(runs), "image_auroc_by_kind": _aggregate_by_kind(runs), "curves": curves, "skipped": list(skipped_all.values()),
        }
    per_group = [v["mean"] for v in results["groups"].values()]
    results["mean_over_groups"] = {
        k: clean_number(float(np.mean(vals))) if vals else None
        for k in METRIC_KEYS for vals in [[m[k] for m in per_group if m[k] is not None]]}
    # the headline numbers alone (what a CLI prints): per-group means over seeds, and their mean
    results["summary"] = {name: g["mean"] for name, g in results["groups"].items()} | {"mean": results["mean_over_groups"]}
    results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    if out is not None:
        results["results_file"] = str(out / RESULTS_FILE)
        _atomic_json(out / RESULTS_FILE, results)
    return results


def _zero_shot_settings(checkpoint: str | Path, zero_shot: str | None, shots: int | str,
                        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """{} for the trained modes; else the mode name and its settings, `overrides` applied
    (part of the run's fingerprint, so a run made with other settings is not reused)."""
    if not zero_shot:
        return {}
    from ..checkpoint import read_config
    from ..config import to_dict
    from ..inspector import resolve_checkpoint
    from ..zeroshot import get_mode

    mode = get_mode(zero_shot.strip().lower())
    if shots != 0:
        raise ValueError(f"zero-shot mode '{mode.name}' uses no references; use --shots 0")
    cfg = read_config(resolve_checkpoint(checkpoint))
    return {"mode": mode.name, "settings": to_dict(cfg.zero_shot) | (overrides or {}) | {"mode": mode.name}}


EVAL_SECTIONS = ("memory", "zero_shot")  # settings that change inference, not the trained model


def _overrides(checkpoint: str | Path, overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """({key: value} of "memory.KEY=VALUE", of "zero_shot.KEY=VALUE") overrides, checked by
    the config loader against the checkpoint's config (a typo or a bad value is one clear
    line)."""
    if not overrides:
        return {}, {}
    from ..checkpoint import read_config
    from ..config import ConfigError, from_dict, parse_override, to_dict
    from ..inspector import resolve_checkpoint

    data = to_dict(read_config(resolve_checkpoint(checkpoint)))
    keys: dict[str, list[str]] = {sec: [] for sec in EVAL_SECTIONS}
    for item in overrides:
        key, value = parse_override(item)
        section = key.split(".")[0]
        if section not in EVAL_SECTIONS or key.count(".") != 1:
            raise ConfigError(f"override '{item}': only memory.KEY=VALUE and zero_shot.KEY=VALUE settings apply "
                              "at evaluation (the other sections are the trained model)")
        data[section][key.split(".")[1]] = value
        keys[section].append(key.split(".")[1])
    cfg = from_dict(data)
    mem, zs = ({k: getattr(getattr(cfg, sec), k) for k in keys[sec]} for sec in EVAL_SECTIONS)
    return mem, zs


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def format_results(results: dict[str, Any]) -> str:
    """A short terminal table of the per-group means (for the CLI)."""
    cols = [("image_auroc", "img AUROC"), ("image_aupr", "AUPR"), ("image_f1_max", "F1max"),
            ("pixel_auroc", "px AUROC"), ("pro", "PRO"), ("verdict_accuracy", "verdict"),
            ("answer_accuracy", "answer"), ("latency_ms_median", "ms/img")]
    head = f"{'group':<16}" + "".join(f"{h:>10}" for _, h in cols)
    zs = results.get("zero_shot")
    lines = [f"{results['dataset']}  shots={results['shots']}  seeds={results['seeds'] or '-'}"
             + (f"  zero-shot={zs['mode']}" if zs else ""), head]
    rows = list(results["groups"].items()) + [("MEAN", {"mean": results["mean_over_groups"]})]
    for name, g in rows:
        cells = []
        for k, _ in cols:
            v = g["mean"].get(k)
            cells.append("-" if v is None else f"{v:.1f}" if k == "latency_ms_median" else f"{v:.3f}")
        lines.append(f"{name[:16]:<16}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines + _format_by_kind(results))


def _format_by_kind(results: dict[str, Any]) -> list[str]:
    """Image AUROC per defect kind (rows: groups, then their mean), printed only when some
    group has more than one kind: for a single kind the main table already says it."""
    groups = {n: g.get("image_auroc_by_kind") or {} for n, g in results["groups"].items()}
    if not any(len(k) > 1 for k in groups.values()):
        return []
    kinds = list(dict.fromkeys(k for g in groups.values() for k in g))
    lines = ["", "image AUROC per defect kind (each kind's anomalies vs all normals)",
             f"{'group':<16}" + "".join(f"{k[:9]:>10}" for k in kinds)]
    rows = list(groups.items())
    rows.append(("MEAN", {k: float(np.mean(v)) for k in kinds
                          for v in [[g[k] for g in groups.values() if k in g]] if v}))
    for name, g in rows:
        lines.append(f"{name[:16]:<16}" + "".join(f"{g[k]:>10.3f}" if k in g else f"{'-':>10}" for k in kinds))
    return lines
