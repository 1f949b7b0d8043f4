"""The generated texture benchmark: a seed fixes it, labels and masks agree, every defect
kind is there, and it runs through ``anomalygpt eval`` (tiny untrained checkpoint: the
numbers mean nothing, the plumbing and the per-kind AUROC are what is tested)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from anomalygpt.evaluation.harness import auroc_by_kind, dataset_groups, format_results, run_eval
from data_sim import textures_bench as tb
from data_sim.datasets import load_sample, resolve_dataset

SMALL = {"n_train": 2, "n_test_normal": 3, "n_per_kind": 1}


def _same(a: list[tb.Item], b: list[tb.Item]) -> bool:
    return len(a) == len(b) and all(
        x.kind == y.kind and np.array_equal(x.image, y.image)
        and (x.mask is None if y.mask is None else np.array_equal(x.mask, y.mask)) for x, y in zip(a, b))


def test_a_seed_fixes_the_set_and_another_seed_changes_it() -> None:
    a, b, c = (tb.generate("gravel", s, **SMALL) for s in (0, 0, 1))
    assert _same(a["train"], b["train"]) and _same(a["test"], b["test"])
    assert not np.array_equal(a["test"][0].image, c["test"][0].image)


def test_kinds_labels_and_masks_agree() -> None:
    sets = tb.generate("brick", 0, n_train=3, n_test_normal=4, n_per_kind=2)
    assert [i.kind for i in sets["train"]] == ["good"] * 3 and all(i.mask is None for i in sets["train"])
    test = sets["test"]
    assert [i.kind for i in test] == ["good"] * 4 + [k for k in tb.KINDS for _ in range(2)]
    for item in test:
        assert item.image.shape == (tb.SIZE, tb.SIZE, 3) and item.image.dtype == np.uint8
        if item.kind == "good":
            assert item.mask is None
        elif item.kind in tb.TEXTURE_WIDE:
            assert item.mask.all()
        else:
            area = int(item.mask.sum())
            assert 0 < area < 0.05 * tb.SIZE ** 2, (item.kind, area)
            if item.kind == "speck":
                assert area <= 40  # a few pixels across
    # train crops come from the left half, test crops from the right: no shared image
    assert not any(np.array_equal(t.image, s.image) for t in sets["train"] for s in test)


def test_unknown_names_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown texture"):
        tb.generate("marble")
    with pytest.raises(ValueError, match="unknown defect kinds"):
        tb.generate("brick", kinds=("crack",))
    with pytest.raises(ValueError, match="unknown texture 'marble'"):
        resolve_dataset("textures:marble", "test")
    with pytest.raises(ValueError, match="seed must be an integer"):
        resolve_dataset("textures:seed=x", "test")


def test_auroc_by_kind_is_each_kind_against_all_normals() -> None:
    rows = [{"label": 0, "defect_type": "good", "score": s} for s in (0.0, 1.0)]
    rows += [{"label": 1, "defect_type": "speck", "score": 2.0}, {"label": 1, "defect_type": "blur", "score": 0.5}]
    assert auroc_by_kind(rows) == {"blur": 0.5, "speck": 1.0}


def test_textures_resolve_and_evaluate_per_kind(tiny_checkpoint, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANOMALYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tb, "generate", functools.partial(tb.generate, **SMALL))
    test = resolve_dataset("textures:grass:seed=2", "test")
    assert {s.category for s in test} == {"grass"}
    assert sorted(s.defect_type for s in test if s.label) == sorted(tb.KINDS)
    assert all((s.mask_path is None) == (s.label == 0) for s in test)
    img, mask = load_sample(next(s for s in test if s.defect_type == "speck"))
    assert img.shape == (tb.SIZE, tb.SIZE, 3) and 0 < mask.sum() <= 40
    assert sorted(g.name for g in dataset_groups("textures:seed=2")) == sorted(tb.TEXTURES)
    assert all(len(g.train_normals) == SMALL["n_train"] for g in dataset_groups("textures:seed=2"))

    res = run_eval("textures:grass:seed=2", str(tiny_checkpoint), shots=1, seeds=(0,), answers=False, progress=False)
    group = res["groups"]["grass"]
    assert group["n_test"] == SMALL["n_test_normal"] + len(tb.KINDS) and group["has_masks"]
    assert set(group["image_auroc_by_kind"]) == set(tb.KINDS)
    assert all(0.0 <= v <= 1.0 for v in group["image_auroc_by_kind"].values())
    table = format_results(res)
    assert "per defect kind" in table and all(k[:9] in table for k in tb.KINDS)
