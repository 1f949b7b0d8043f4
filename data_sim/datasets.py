"""Data set adapters: MVTec AD, VisA, a plain folder and ELPV, as one list of ``Sample``s.

Evaluation and training only ever see ``Sample(image_path, mask_path, label, category,
defect_type)``, so adding a data set means adding one function here. The ELPV split is
the benchmark's (BENCHMARK.md) and is built in exactly one place, ``elpv_split``, so the
training images can never drift into the test set.

Specs understood by ``resolve_dataset`` (evaluation) and ``normal_training_images``
(training), comma-separated lists allowed for the latter::

    elpv | elpv:mono | elpv:poly          mvtec:PATH[:category]    visa:PATH[:category]
    elpv-dev | elpv-dev:mono | elpv-dev:poly  (a dev set without test images, see elpv_dev_split)
    folder:PATH                           elpv:train[:mono|poly]   skimage | sklearn
    textures[:NAME][:seed=N]  (generated from scikit-image textures, see data_sim.textures_bench)
"""
from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from data_sim.imageio import IMAGE_EXTENSIONS, list_images, load_image, load_mask, write_png

PathLike = Union[str, os.PathLike]
SPLITS = ("train", "test")
ELPV_KINDS = ("mono", "poly")
ELPV_TEST_NORMALS = 150
ELPV_DEV_SEED = 18  # the dev normals' draw from the train normals (issue 18's dev set)
ELPV_PIP = "pip install elpv-dataset"

# scikit-image images that ship inside its wheel (no download): name -> file in skimage/data
SKIMAGE_IMAGES: dict[str, str] = {
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "coins": "coins.png",
    "camera": "camera.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "astronaut": "astronaut.png",
    "moon": "moon.png",
    "rocket": "rocket.jpg",
    "retina": "retina.jpg",
    "immunohistochemistry": "ihc.png",
    "cell": "cell.png",
    "microaneurysms": "microaneurysms.png",
    "page": "page.png",
    "text": "text.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
}


@dataclass(frozen=True)
class Sample:
    """One evaluation/training item. ``mask_path`` is None for normals and for anomalies
    without a pixel mask (ELPV); ``label`` is 1 for anomalous."""

    image_path: Path
    mask_path: Optional[Path]
    label: int
    category: str
    defect_type: str


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, bool mask of the same size; all False when there is no mask)."""
    image = load_image(sample.image_path)
    if sample.mask_path is None:
        return image, np.zeros(image.shape[:2], bool)
    return image, load_mask(sample.mask_path, image.shape[:2])


def cache_dir() -> Path:
    """Same location as ``anomalygpt.hub.cache_dir`` (env ANOMALYGPT_CACHE, else
    $XDG_CACHE_HOME/anomalygpt or ~/.cache/anomalygpt), without importing torch."""
    env = os.environ.get("ANOMALYGPT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anomalygpt"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")


def _images_in(folder: Path) -> list[Path]:
    """Images directly in ``folder`` (empty list if none: a defect type may be empty)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _images_below(folder: Path) -> list[Path]:
    """Images anywhere under ``folder``; empty list instead of an error for an empty one."""
    try:
        return list_images(folder)
    except ValueError:
        return []


def _root(path: PathLike, what: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"{what} root {root} does not exist; pass the folder that holds the data set")
    return root


def _nonempty(samples: list[Sample], where: str, hint: str) -> list[Sample]:
    if not samples:
        raise ValueError(f"no samples found in {where}; {hint}")
    return samples


# ---------------------------------------------------------------- MVTec AD
def mvtec(root: PathLike, category: Optional[str] = None, split: str = "test") -> list[Sample]:
    """MVTec AD layout: ``root/<category>/{train,test}/<type>/*.png`` and
    ``root/<category>/ground_truth/<type>/<name>_mask.png``; ``good`` is normal.
    ``category=None`` reads every category folder."""
    _check_split(split)
    base = _root(root, "MVTec AD")
    if category:
        cats = [category]
        if not (base / category).is_dir():
            known = sorted(d.name for d in base.iterdir() if d.is_dir())
            raise ValueError(f"MVTec AD category {category!r} not found in {base}; known: {', '.join(known) or 'none'}")
    else:
        cats = sorted(d.name for d in base.iterdir() if (d / "train").is_dir() or (d / "test").is_dir())
    out: list[Sample] = []
    for cat in cats:
        split_dir = base / cat / split
        if not split_dir.is_dir():
            continue
        for type_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            kind = type_dir.name
            for img in _images_in(type_dir):
                mask = base / cat / "ground_truth" / kind / f"{img.stem}_mask.png"
                label = 0 if kind == "good" else 1
                out.append(Sample(img, mask if label and mask.is_file() else None, label, cat, kind))
    return _nonempty(out, f"{base} (split {split})", "expected <category>/train/good and <category>/test/<type> folders")


# ---------------------------------------------------------------- VisA
def visa(root: PathLike, category: Optional[str] = None, split: str = "test") -> list[Sample]:
    """VisA with its ``split_csv/1cls.csv`` (columns object, split, label, image, mask;
    paths relative to ``root``; label 'normal' or 'anomaly')."""
    _check_split(split)
    base = _root(root, "VisA")
    table = base / "split_csv" / "1cls.csv"
    if not table.is_file():
        raise ValueError(f"{table} not found; VisA needs split_csv/1cls.csv from the official release")
    out: list[Sample] = []
    with open(table, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{table}: missing columns {sorted(missing)}; expected object,split,label,image,mask")
        for row in reader:
            if row["split"].strip() != split or (category and row["object"].strip() != category):
                continue
            label = 0 if row["label"].strip().lower() in ("normal", "0", "good") else 1
            mask = (row.get("mask") or "").strip()
            out.append(
                Sample(
                    base / row["image"].strip(),
                    base / mask if label and mask else None,
                    label,
                    row["object"].strip(),
                    "good" if label == 0 else "anomaly",
                )
            )
    where = f"{table} (split {split}{', object ' + category if category else ''})"
    return _nonempty(out, where, "check the category name against the csv's 'object' column")


# ---------------------------------------------------------------- plain folder
def folder(root: PathLike) -> list[Sample]:
    """``root/good/*`` normal, any other subfolder a defect type; optional masks
    ``root/ground_truth/<sub>/<stem>*.png``."""
    base = _root(root, "image folder")
    out: list[Sample] = []
    subs = sorted(d for d in base.iterdir() if d.is_dir() and d.name != "ground_truth" and not d.name.startswith("."))
    for sub in subs:
        label = 0 if sub.name == "good" else 1
        for img in _images_below(sub):
            mask = None
            if label:
                cands = sorted((base / "ground_truth" / sub.name).glob(f"{img.stem}*.png"))
                mask = cands[0] if cands else None
            out.append(Sample(img, mask, label, base.name, sub.name))
    if not any(s.label == 0 for s in out):
        raise ValueError(f"{base} has no good/ subfolder with images; put normal images in {base / 'good'}")
    return out


# ---------------------------------------------------------------- ELPV
def elpv_data_dir() -> Path:
    """The ``data`` folder of the installed ``elpv-dataset`` package (found without importing it)."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.origin:
        raise ValueError(f"the ELPV data set is not installed; fix: {ELPV_PIP}")
    data = Path(spec.origin).parent / "data"
    if not (data / "labels.csv").is_file():
        raise ValueError(f"{data / 'labels.csv'} is missing; reinstall with: {ELPV_PIP} --force-reinstall")
    return data


def _elpv_rows(kind: str) -> list[tuple[str, float]]:
    """(file, defect probability) rows of one module type, sorted by file name."""
    if kind not in ELPV_KINDS:
        raise ValueError(f"unknown ELPV type {kind!r}; use 'mono' or 'poly'")
    rows = []
    with open(elpv_data_dir() / "labels.csv", encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == kind:
                rows.append((parts[0], float(parts[1])))
    return sorted(rows, key=lambda r: r[0])


def elpv_split(kind: str) -> dict[str, list[Sample]]:
    """The benchmark split of one module type: ``train`` = train normals, ``test`` = test
    normals followed by all anomalous cells (probability > 0.5; 1/3 is left out).

    Rows of ``kind`` sorted by file name; ``perm = default_rng(0).permutation(n_normals)``;
    test normals ``perm[:150]``, train normals ``perm[150:]``.
    """
    rows = _elpv_rows(kind)
    data = elpv_data_dir()
    normals = [r for r in rows if r[1] == 0.0]
    anomalous = [r for r in rows if r[1] > 0.5]
    perm = np.random.default_rng(0).permutation(len(normals))
    cat = f"elpv-{kind}"

    def make(r: tuple[str, float], label: int) -> Sample:
        return Sample(data / r[0], None, label, cat, "good" if label == 0 else f"defect-p{r[1]:.2f}")

    test = [make(normals[i], 0) for i in perm[:ELPV_TEST_NORMALS]] + [make(r, 1) for r in anomalous]
    train = [make(normals[i], 0) for i in perm[ELPV_TEST_NORMALS:]]
    return {"train": train, "test": test}


def elpv_dev_split(kind: str, n_normals: Optional[int] = None) -> dict[str, list[Sample]]:
    """A dev set of real defects that shares no image with the benchmark's test split, for
    choosing settings (zero-shot variants, thresholds) without test labels.

    ``test`` = dev normals followed by dev anomalies; ``train`` = the train normals left
    (references for a few-shot run on the dev set). Dev anomalies are the cells whose
    defect probability is 1/3 (mono 117, poly 178), which ``elpv_split`` leaves out of the
    benchmark: real but SUBTLE defects, and some of them may be near-normal, so AUROC here
    sits well below the test split's; it is for ranking settings, not for reporting.
    Dev normals are a fixed draw (``default_rng(ELPV_DEV_SEED).permutation``) of the
    benchmark's TRAIN normals, never a test row. ``n_normals=None`` takes as many as give
    the test split's anomaly share (150 normals per 369 / 452 anomalies: mono 48 normals,
    70.9% anomalous; poly 59, 75.1%), because the batch mode's images score each other and
    a set's verdict threshold reads the set's score distribution: both depend on that share.
    """
    rows = _elpv_rows(kind)
    anomalies = [r for r in rows if 0.0 < r[1] <= 0.5]
    n_test_anom = sum(r[1] > 0.5 for r in rows)
    train = elpv_split(kind)["train"]
    if n_normals is None:
        n_normals = int(round(len(anomalies) * ELPV_TEST_NORMALS / n_test_anom))
    if not 1 <= n_normals <= len(train):
        raise ValueError(f"n_normals must be in 1..{len(train)} (the {kind} train normals), got {n_normals}")
    perm = np.random.default_rng(ELPV_DEV_SEED).permutation(len(train))
    data, cat = elpv_data_dir(), f"elpv-dev-{kind}"
    normals = [Sample(train[i].image_path, None, 0, cat, "good") for i in sorted(perm[:n_normals])]
    anomalous = [Sample(data / r[0], None, 1, cat, f"defect-p{r[1]:.2f}") for r in anomalies]
    return {"test": normals + anomalous, "train": [train[i] for i in sorted(perm[n_normals:])]}


# ---------------------------------------------------------------- generated textures
def textures_root(seed: int = 0, cache: Optional[Path] = None) -> Path:
    """Folder of the generated texture benchmark for ``seed`` (MVTec AD layout), written
    once under the cache; a ``.complete`` marker is written last, so an interrupted
    generation is redone instead of being read half-made."""
    from data_sim import textures_bench as tb

    root = (cache or cache_dir()) / "textures" / f"v{tb.VERSION}-seed{seed}"
    for name in tb.TEXTURES:
        base = root / name
        if (base / ".complete").is_file():
            continue
        try:
            sets = tb.generate(name, seed)
        except ImportError as err:
            raise ValueError("scikit-image is not installed; fix: pip install scikit-image") from err
        for split, items in sets.items():
            counts: dict[str, int] = {}
            for item in items:
                i = counts[item.kind] = counts.get(item.kind, -1) + 1
                write_png(base / split / item.kind / f"{i:03d}.png", item.image)
                if item.mask is not None:
                    write_png(base / "ground_truth" / item.kind / f"{i:03d}_mask.png", item.mask)
        (base / ".complete").write_text(f"textures_bench v{tb.VERSION} seed {seed}\n")
    return root


def _textures_spec(rest: str) -> tuple[Optional[str], int]:
    """'' | NAME | seed=N | NAME:seed=N -> (texture or None, seed)."""
    from data_sim.textures_bench import TEXTURES

    name, seed = None, 0
    for part in (p.strip() for p in rest.split(":") if p.strip()):
        if part.lower().startswith("seed="):
            try:
                seed = int(part[5:])
            except ValueError:
                raise ValueError(f"textures spec: seed must be an integer, got {part!r}; e.g. textures:seed=1") from None
        elif part.lower() in TEXTURES:
            name = part.lower()
        else:
            raise ValueError(f"unknown texture {part!r}; use textures[:NAME][:seed=N] with NAME one of {', '.join(TEXTURES)}")
    return name, seed


# ---------------------------------------------------------------- specs
def _path_and_category(rest: str) -> tuple[str, Optional[str]]:
    """'PATH' or 'PATH:category' (a PATH that itself contains ':' still works if it exists)."""
    if Path(rest).expanduser().exists() or ":" not in rest:
        return rest, None
    path, cat = rest.rsplit(":", 1)
    return path, cat or None


def resolve_dataset(spec: str, split: str) -> list[Sample]:
    """Samples of an evaluation/training spec (see the module docstring).

    ``folder:PATH`` has no split: ``test`` gives everything, ``train`` only the normals.
    """
    _check_split(split)
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "elpv":
        kinds = ELPV_KINDS if not rest else (rest,)
        return [s for k in kinds for s in elpv_split(k)[split]]
    if kind == "elpv-dev":
        kinds = ELPV_KINDS if not rest else (rest,)
        return [s for k in kinds for s in elpv_dev_split(k)[split]]
    if kind in ("mvtec", "visa"):
        if not rest:
            raise ValueError(f"dataset spec {spec!r} needs a path: {kind}:PATH[:category]")
        path, cat = _path_and_category(rest)
        return (mvtec if kind == "mvtec" else visa)(path, cat, split)
    if kind == "folder":
        if not rest:
            raise ValueError(f"dataset spec {spec!r} needs a path: folder:PATH")
        samples = folder(rest)
        return [s for s in samples if s.label == 0] if split == "train" else samples
    if kind == "textures":
        name, seed = _textures_spec(rest)
        return mvtec(textures_root(seed), name, split)
    raise ValueError(
        f"unknown dataset spec {spec!r}; use elpv, elpv:mono, elpv:poly, elpv-dev[:mono|poly], mvtec:PATH[:category], "
        "visa:PATH[:category], folder:PATH or textures[:NAME][:seed=N]"
    )


def skimage_images(cache: Optional[Path] = None) -> list[Path]:
    """scikit-image's bundled images written once as PNGs under ``<cache>/skimage``.

    Only names whose file ships in the wheel are used, so nothing is ever downloaded.
    Each PNG is written atomically, so a crash cannot leave a truncated one behind.
    """
    try:
        import skimage.data as skd
    except ImportError as err:
        raise ValueError("scikit-image is not installed; fix: pip install scikit-image") from err
    shipped = Path(skd.__file__).parent
    out_dir = (cache or cache_dir()) / "skimage"
    paths: list[Path] = []
    for name, fname in SKIMAGE_IMAGES.items():
        if not (shipped / fname).is_file():
            continue
        target = out_dir / f"{name}.png"
        if not target.is_file():
            write_png(target, load_image(getattr(skd, name)()))
        paths.append(target)
    if not paths:
        raise ValueError(f"no bundled scikit-image images found in {shipped}; reinstall: pip install --force-reinstall scikit-image")
    return paths


def sklearn_images(cache: Optional[Path] = None) -> list[Path]:
    """scikit-learn's two sample photos (china, flower) written once as PNGs."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as err:
        raise ValueError("scikit-learn is not installed; fix: pip install scikit-learn") from err
    out_dir = (cache or cache_dir()) / "sklearn"
    bunch = load_sample_images()
    paths = []
    for fname, img in zip(bunch.filenames, bunch.images):
        target = out_dir / (Path(fname).stem + ".png")
        if not target.is_file():
            write_png(target, img)
        paths.append(target)
    return paths


def normal_training_images(spec: str) -> list[Path]:
    """Normal images to simulate anomalies on, for training. Comma-separated specs:
    ``elpv:train[:mono|poly]`` (train normals only, never a test image), ``skimage``,
    ``sklearn``, ``folder:PATH`` (every image under it), ``mvtec:PATH[:category]`` and
    ``visa:PATH[:category]`` (their train normals). Order is kept, duplicates dropped."""
    out: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, _, rest = part.partition(":")
        kind = kind.lower()
        if kind == "elpv":
            bits = [b for b in rest.split(":") if b]
            if "train" not in bits:
                raise ValueError(f"training spec {part!r}: ELPV trains only on elpv:train[:mono|poly] (test images are never used)")
            kinds = [b for b in bits if b != "train"] or list(ELPV_KINDS)
            for k in kinds:
                split = elpv_split(k)
                test = {s.image_path for s in split["test"]}
                train = [s.image_path for s in split["train"]]
                assert not test.intersection(train), "ELPV train/test overlap"
                out.extend(train)
        elif kind == "skimage":
            out.extend(skimage_images())
        elif kind == "sklearn":
            out.extend(sklearn_images())
        elif kind == "folder":
            if not rest:
                raise ValueError("training spec 'folder' needs a path: folder:PATH")
            out.extend(list_images(rest))
        elif kind in ("mvtec", "visa"):
            out.extend(s.image_path for s in resolve_dataset(part, "train") if s.label == 0)
        else:
            raise ValueError(
                f"unknown training image spec {part!r}; use elpv:train[:mono|poly], skimage, sklearn, "
                "folder:PATH, mvtec:PATH[:category] or visa:PATH[:category]"
            )
    if not out:
        raise ValueError(f"training spec {spec!r} gave no images")
    return list(dict.fromkeys(out))
