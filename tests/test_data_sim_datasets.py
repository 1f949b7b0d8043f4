"""data_sim.datasets, corpus and simulate on tiny fixtures made in tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_sim.corpus as corpus_mod
from data_sim.corpus import build_corpus
from data_sim.datasets import (
    Sample,
    elpv_data_dir,
    elpv_dev_split,
    elpv_split,
    folder,
    load_sample,
    mvtec,
    normal_training_images,
    resolve_dataset,
    visa,
)
from data_sim.simulate import run_simulate


def _png(path: Path, seed: int = 0, size: int = 48, mask: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask:
        arr = np.zeros((size, size), np.uint8)
        arr[10:20, 10:20] = 255
    else:
        arr = np.random.default_rng(seed).integers(60, 200, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_mvtec_layout(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    _png(root / "bottle/train/good/000.png")
    _png(root / "bottle/train/good/001.png")
    _png(root / "bottle/test/good/000.png")
    _png(root / "bottle/test/broken_large/000.png")
    _png(root / "bottle/test/broken_large/001.png")
    _png(root / "bottle/ground_truth/broken_large/000_mask.png", mask=True)
    _png(root / "bottle/ground_truth/broken_large/001_mask.png", mask=True)
    _png(root / "screw/test/good/000.png")
    train = mvtec(root, "bottle", "train")
    assert [s.label for s in train] == [0, 0] and all(s.mask_path is None for s in train)
    test = mvtec(root, "bottle", "test")
    assert sorted((s.defect_type, s.label) for s in test) == [("broken_large", 1), ("broken_large", 1), ("good", 0)]
    bad = [s for s in test if s.label]
    assert all(s.mask_path is not None and s.mask_path.name.endswith("_mask.png") for s in bad)
    img, m = load_sample(bad[0])
    assert img.shape == (48, 48, 3) and m.sum() == 100
    assert {s.category for s in mvtec(root, None, "test")} == {"bottle", "screw"}
    assert len(resolve_dataset(f"mvtec:{root}:bottle", "test")) == 3
    with pytest.raises(ValueError, match="not found"):
        mvtec(root, "cable", "test")


def test_visa_csv(tmp_path: Path) -> None:
    root = tmp_path / "visa"
    _png(root / "candle/Data/Images/Normal/0000.png")
    _png(root / "candle/Data/Images/Normal/0001.png")
    _png(root / "candle/Data/Images/Anomaly/0002.png")
    _png(root / "candle/Data/Masks/Anomaly/0002.png", mask=True)
    _png(root / "pcb1/Data/Images/Normal/0003.png")
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.png,\n"
        "candle,test,normal,candle/Data/Images/Normal/0001.png,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/0002.png,candle/Data/Masks/Anomaly/0002.png\n"
        "pcb1,train,normal,pcb1/Data/Images/Normal/0003.png,\n"
    )
    test = visa(root, "candle", "test")
    assert [(s.label, s.mask_path is not None) for s in test] == [(0, False), (1, True)]
    assert load_sample(test[1])[1].sum() == 100
    assert len(visa(root, None, "train")) == 2
    assert len(resolve_dataset(f"visa:{root}", "train")) == 2
    assert normal_training_images(f"visa:{root}:candle") == [root / "candle/Data/Images/Normal/0000.png"]


def test_folder_layout(tmp_path: Path) -> None:
    root = tmp_path / "parts"
    _png(root / "good/a.png")
    _png(root / "good/b.png")
    _png(root / "scratch/c.png")
    _png(root / "ground_truth/scratch/c_mask.png", mask=True)
    _png(root / "dent/d.png")
    samples = folder(root)
    by_name = {s.image_path.name: s for s in samples}
    assert by_name["a.png"].label == 0 and by_name["c.png"].label == 1 and by_name["d.png"].label == 1
    assert by_name["c.png"].mask_path is not None and by_name["d.png"].mask_path is None
    assert by_name["c.png"].defect_type == "scratch" and isinstance(by_name["a.png"], Sample)
    assert [s.label for s in resolve_dataset(f"folder:{root}", "train")] == [0, 0]
    assert len(normal_training_images(f"folder:{root}/good")) == 2
    (tmp_path / "nogood/x").mkdir(parents=True)
    with pytest.raises(ValueError, match="good"):
        folder(tmp_path / "nogood")


def test_elpv_benchmark_split() -> None:
    for kind, (n_train, n_test_norm, n_test_anom) in {"mono": (438, 150, 369), "poly": (770, 150, 452)}.items():
        split = elpv_split(kind)
        assert len(split["train"]) == n_train
        assert sum(s.label == 0 for s in split["test"]) == n_test_norm
        assert sum(s.label == 1 for s in split["test"]) == n_test_anom
        assert not {s.image_path for s in split["train"]} & {s.image_path for s in split["test"]}
    assert elpv_split("mono")["test"][0] == elpv_split("mono")["test"][0]  # stable
    train = set(normal_training_images("elpv:train"))
    assert len(train) == 438 + 770
    test_all = {s.image_path for s in resolve_dataset("elpv", "test")}
    assert len(test_all) == 150 + 369 + 150 + 452 and not train & test_all
    assert len(resolve_dataset("elpv:poly", "train")) == 770
    with pytest.raises(ValueError, match="elpv:train"):
        normal_training_images("elpv")


def test_elpv_dev_split_has_no_test_image() -> None:
    """The dev set (issue 18): the prob-1/3 cells + a fixed draw of TRAIN normals at the test
    split's anomaly share; never a test image, the same every call, and its normals are not
    also offered as references."""
    probs = {}
    for line in open(elpv_data_dir() / "labels.csv", encoding="utf-8"):
        parts = line.split()
        probs[parts[0]] = float(parts[1])
    for kind, (n_norm, n_anom) in {"mono": (48, 117), "poly": (59, 178)}.items():
        dev, bench = elpv_dev_split(kind), elpv_split(kind)
        normals = [s for s in dev["test"] if s.label == 0]
        anomalies = [s for s in dev["test"] if s.label == 1]
        assert (len(normals), len(anomalies)) == (n_norm, n_anom)
        assert all(probs[f"images/{s.image_path.name}"] == 0.0 for s in normals)
        assert all(abs(probs[f"images/{s.image_path.name}"] - 1 / 3) < 1e-6 for s in anomalies)
        test_paths = {s.image_path for s in bench["test"]}
        train_paths = {s.image_path for s in bench["train"]}
        dev_paths = {s.image_path for s in dev["test"]}
        assert len(dev_paths) == n_norm + n_anom and not dev_paths & test_paths
        assert {s.image_path for s in normals} <= train_paths
        assert {s.image_path for s in dev["train"]} == train_paths - dev_paths  # references: the rest
        share = n_anom / (n_norm + n_anom)
        test_share = sum(s.label for s in bench["test"]) / len(bench["test"])
        assert abs(share - test_share) < 0.01
        assert elpv_dev_split(kind) == dev  # deterministic
    assert len(elpv_dev_split("mono", n_normals=200)["test"]) == 200 + 117
    assert len(resolve_dataset("elpv-dev", "test")) == 48 + 117 + 59 + 178
    assert len(resolve_dataset("elpv-dev:poly", "train")) == 770 - 59
    with pytest.raises(ValueError, match="n_normals"):
        elpv_dev_split("mono", n_normals=439)
    with pytest.raises(ValueError, match="mono"):
        elpv_dev_split("cigs")


def test_bad_specs_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown dataset spec"):
        resolve_dataset("imagenet", "test")
    with pytest.raises(ValueError, match="split"):
        resolve_dataset("elpv", "val")
    with pytest.raises(ValueError, match="unknown training image spec"):
        normal_training_images("cifar")


def test_skimage_images_are_cached_pngs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALYGPT_CACHE", str(tmp_path))
    paths = normal_training_images("skimage")
    names = {p.stem for p in paths}
    assert {"brick", "grass", "gravel", "coins", "camera"} <= names
    assert all(p.parent == tmp_path / "skimage" and p.suffix == ".png" for p in paths)
    stamp = paths[0].stat().st_mtime_ns
    assert normal_training_images("skimage") == paths and paths[0].stat().st_mtime_ns == stamp


def _normals(tmp_path: Path, k: int = 3) -> list[Path]:
    return [_png(tmp_path / "normals" / f"n{i}.png", seed=i, size=64) for i in range(k)]


def test_corpus_is_cached_and_rebuilt_on_config_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = _normals(tmp_path)
    sim = {"mode": "blotch", "texture": True, "n_max": 1}
    ds = build_corpus(imgs, n=4, seed=0, out_dir=tmp_path / "c", sim_kwargs=sim, progress=False)
    assert len(ds) == 4 and sorted(ds["label"]) == [0, 0, 1, 1]
    row = ds[1]
    assert row["answer"].startswith("Yes") and Path(row["image"]).is_file() and Path(row["pair"]).is_file()
    assert isinstance(json.loads(row["followups"]), list)
    assert ds[0]["answer"].startswith("No")

    calls: list[int] = []
    real = corpus_mod._make_row
    monkeypatch.setattr(corpus_mod, "_make_row", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_corpus(imgs, n=4, seed=0, out_dir=tmp_path / "c", sim_kwargs=sim, progress=False)
    assert calls == [] and again["image"] == ds["image"], "second build must load the cache"
    build_corpus(imgs, n=4, seed=0, out_dir=tmp_path / "c", sim_kwargs={**sim, "mode": "crack"}, progress=False)
    assert len(calls) == 4, "a changed config must rebuild"
    assert len([p for p in (tmp_path / "c").iterdir() if p.name.startswith("corpus-")]) == 2


def test_run_simulate_writes_everything(tmp_path: Path) -> None:
    _normals(tmp_path)
    out = run_simulate(tmp_path / "normals", tmp_path / "sim", n=4, seed=0, texture=True, mode="mix", progress=False)
    assert len(list((out / "images").glob("*.png"))) == 4 and len(list((out / "masks").glob("*.png"))) == 4
    lines = (out / "qa.jsonl").read_text().splitlines()
    assert len(lines) == 4
    rec = json.loads(lines[0])
    assert (out / rec["image"]).is_file() and rec["conversation"][0]["answer"].startswith(("Yes", "No"))
    preview = np.array(Image.open(out / "preview.png"))
    assert preview.ndim == 3 and preview.shape[0] >= 4 * 224
    assert not [p for p in out.rglob("*.tmp")]
    with pytest.raises(ValueError, match="no images"):
        (tmp_path / "empty").mkdir()
        run_simulate(tmp_path / "empty", tmp_path / "sim2", n=2)
