"""run_eval end to end on a tiny folder data set (64 px, masks, one corrupt file) with the
untrained tiny checkpoint: the numbers mean nothing, the plumbing is what is tested."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalygpt.evaluation import harness as evaluate
from anomalygpt.evaluation.harness import parse_shots, pick_references, run_eval, stratified_subset
from data_sim.datasets import Sample, load_sample, resolve_dataset

SIZE = 64
N_GOOD, N_CRACK = 6, 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    """good/ textured plates, crack/ the same with a dark line (mask in ground_truth/),
    and a corrupt crack/broken.png that must be skipped, not crash the run."""
    root = tmp_path_factory.mktemp("data") / "parts"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for d in ("good", "crack", "ground_truth/crack"):
        (root / d).mkdir(parents=True)
    for i in range(N_GOOD + N_CRACK):
        base = 120 + 30 * np.sin(xx / (4 + i % 3)) + rng.normal(0, 6, (SIZE, SIZE))
        img = np.clip(np.repeat(base[..., None], 3, axis=2), 0, 255).astype(np.uint8)
        if i < N_GOOD:
            Image.fromarray(img).save(root / "good" / f"{i:03d}.png")
            continue
        mask = np.zeros((SIZE, SIZE), bool)
        r0, c0 = rng.integers(8, 30, 2)
        mask[r0:r0 + 20, c0:c0 + 3] = True
        img[mask] = 15
        name = f"{i:03d}"
        Image.fromarray(img).save(root / "crack" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ground_truth" / "crack" / f"{name}_mask.png")
    (root / "crack" / "broken.png").write_bytes(b"\x89PNG not really an image")
    return root


def _readable(spec: str) -> list[Sample]:
    return [s for s in resolve_dataset(spec, "test") if s.image_path.name != "broken.png"]


def test_folder_eval_writes_results_and_pixel_auroc_matches_sklearn(parts, tiny_checkpoint, tmp_path) -> None:
    from anomalygpt.inspector import AnomalyGPT

    spec = f"folder:{parts}"
    out = tmp_path / "eval"
    res = run_eval(spec, str(tiny_checkpoint), shots=0, out_dir=out, answers=False, progress=False)

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert {"dataset", "checkpoint", "shots", "seeds", "groups", "mean_over_groups", "elapsed_s"} <= set(on_disk)
    g = on_disk["groups"]["parts"]
    assert {"n_test", "n_anomalous", "runs", "mean", "std", "median", "curves", "skipped", "has_masks"} <= set(g)
    assert g["has_masks"] and len(g["runs"]) == 1 and g["runs"][0]["n_references"] == 0
    assert [Path(s["path"]).name for s in g["skipped"]] == ["broken.png"]
    run = g["runs"][0]
    assert run["n_images"] == N_GOOD + N_CRACK
    assert set(evaluate.METRIC_KEYS) <= set(run["metrics"])
    assert run["metrics"]["answer_accuracy"] is None
    for m in ("image_auroc", "pixel_auroc", "pro", "verdict_accuracy", "latency_ms_median"):
        assert run["metrics"][m] is not None, m
    assert all(Path(p).is_file() for p in g["curves"].values()) and set(g["curves"]) == {"roc", "pr"}

    # the same maps and masks gathered by hand give the same pixel AUROC and image AUROC
    samples = _readable(spec)
    assistant = AnomalyGPT.from_pretrained(tiny_checkpoint, with_llm=False)
    reports = list(assistant.inspect_many([s.image_path for s in samples], question=None))
    masks = [load_sample(s)[1] for s in samples]
    y = np.concatenate([m.ravel() for m in masks])
    p = np.concatenate([r.anomaly_map.ravel() for r in reports])
    assert run["metrics"]["pixel_auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    labels = [s.label for s in samples]
    assert run["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(labels, [r.score for r in reports]), abs=1e-6)


def test_few_shot_with_answers_and_resume(parts, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    spec = f"folder:{parts}"
    out = tmp_path / "eval2"
    res = run_eval(spec, str(tiny_checkpoint), shots=2, seeds=(0, 1), out_dir=out, answers=True, progress=False)
    g = res["groups"]["parts"]
    assert [r["seed"] for r in g["runs"]] == [0, 1]
    for r in g["runs"]:
        assert r["n_references"] == 2
        assert r["n_images"] == N_GOOD + N_CRACK - 2     # the references are not test images
        # 2 references: too few for leave-one-out, the checkpoint's threshold decides
        assert r["threshold_source"].startswith("checkpoint calibration")
        assert "too few for leave-one-out" in r["threshold_source"]
        assert 0.0 <= r["metrics"]["answer_accuracy"] <= 1.0
    aurocs = [r["metrics"]["image_auroc"] for r in g["runs"]]
    assert g["mean"]["image_auroc"] == pytest.approx(float(np.mean(aurocs)), abs=1e-6)
    rows = json.loads((out / "runs" / "parts_seed0.json").read_text())["rows"]
    assert all(isinstance(r["answer"], str) for r in rows)

    # a second call with the same settings reuses the finished runs and loads no model
    def no_model(*a, **k):
        raise AssertionError("model loaded although every run was finished")

    monkeypatch.setattr("anomalygpt.inspector.AnomalyGPT.from_pretrained", no_model)
    again = run_eval(spec, str(tiny_checkpoint), shots=2, seeds=(0, 1), out_dir=out, answers=True, progress=False)
    assert again["groups"] == res["groups"]


def test_reference_draw_is_the_benchmark_one() -> None:
    pool = [Sample(Path(f"/x/{i}.png"), None, 0, "c", "good") for i in range(30)]
    for seed in (0, 1, 2):
        expected = np.random.default_rng(seed).choice(np.array(pool, dtype=object), 4, replace=False)
        assert pick_references(pool, 4, seed) == list(expected)
    assert pick_references(pool, 0, 0) == [] and pick_references(pool, "all", None) == pool
    with pytest.raises(ValueError, match="only 30 train normals"):
        pick_references(pool, 31, 0)


def test_elpv_dev_groups_are_mono_and_poly_without_test_images() -> None:
    """`anomalygpt eval --dataset elpv-dev`: the dev split's groups, named like elpv's, whose
    references (train_normals) are neither dev nor test images."""
    dev, bench = evaluate.dataset_groups("elpv-dev"), evaluate.dataset_groups("elpv")
    assert [g.name for g in dev] == ["mono", "poly"] and [g.name for g in evaluate.dataset_groups("elpv-dev:poly")] == ["poly"]
    for d, b in zip(dev, bench):
        test = {s.image_path for s in b.test}
        assert not {s.image_path for s in d.test} & test
        assert not {s.image_path for s in d.train_normals} & ({s.image_path for s in d.test} | test)


def test_shots_parsing_and_stratified_subset() -> None:
    assert parse_shots("4") == 4 and parse_shots("ALL") == "all" and parse_shots(0) == 0
    for bad in ("-1", "four", -2, 1.5):
        with pytest.raises(ValueError):
            parse_shots(bad)
    samples = [Sample(Path(f"/x/{i}.png"), None, int(i >= 90), "c", "t") for i in range(100)]
    sub = stratified_subset(samples, 10)
    assert len(sub) == 10 and sum(s.label for s in sub) == 1
    assert sub == stratified_subset(samples, 10) and sub == sorted(sub, key=lambda s: int(s.image_path.stem))
    assert stratified_subset(samples, None) == samples


def test_bad_inputs_fail_with_one_clear_error(parts, tiny_checkpoint) -> None:
    with pytest.raises(ValueError, match="only 6 train normals"):
        run_eval(f"folder:{parts}", str(tiny_checkpoint), shots=7, seeds=(0,), answers=False, progress=False)
    with pytest.raises(ValueError, match="unknown dataset spec"):
        run_eval("nope", str(tiny_checkpoint), answers=False, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_eval(f"folder:{parts}", str(parts / "missing"), answers=False, progress=False)


def test_image_the_model_rejects_is_skipped_not_fatal(parts, tiny_checkpoint, tmp_path) -> None:
    """A file that decodes but that the model refuses fails its batch; the run retries that
    batch image by image, skips only the culprit and keeps the others."""
    from anomalygpt.evaluation.harness import evaluate_run
    from anomalygpt.inspector import AnomalyGPT

    real = AnomalyGPT.from_pretrained(tiny_checkpoint, with_llm=False)

    class Picky:
        def __getattr__(self, name):
            return getattr(real, name)

        def inspect_many(self, images, *a, **k):
            images = list(images)
            if any(im.max() == 0 for im in images):
                raise ValueError("all-black frame")
            return real.inspect_many(images, *a, **k)

        def inspect(self, image, *a, **k):
            return next(iter(self.inspect_many([image], *a, **k)))

    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(black)
    test = _readable(f"folder:{parts}")[:5]
    test.insert(2, Sample(black, None, 0, "parts", "good"))
    skipped: list = []
    run = evaluate_run(Picky(), test, [], None, batch_size=4, progress=False, skipped=skipped)
    assert run["n_images"] == 5 and [Path(s["path"]).name for s in skipped] == ["black.png"]
    assert "all-black" in skipped[0]["error"]


def test_mvtec_layout_gives_one_group_per_category(parts, tiny_checkpoint, tmp_path) -> None:
    """MVTec AD without a category: every category is its own group, references come from
    that category's train/good, and the test set is untouched by them."""
    import shutil

    root = tmp_path / "mvtec"
    for cat in ("plate", "tile"):
        shutil.copytree(parts / "good", root / cat / "train" / "good")
        shutil.copytree(parts / "good", root / cat / "test" / "good")
        (root / cat / "test" / "crack").mkdir(parents=True)
        (root / cat / "ground_truth" / "crack").mkdir(parents=True)
        for p in sorted((parts / "crack").glob("0*.png"))[:2]:
            shutil.copy(p, root / cat / "test" / "crack" / p.name)
            shutil.copy(parts / "ground_truth" / "crack" / f"{p.stem}_mask.png", root / cat / "ground_truth" / "crack")
    res = run_eval(f"mvtec:{root}", str(tiny_checkpoint), shots=1, seeds=(3,), answers=False, progress=False)
    assert set(res["groups"]) == {"plate", "tile"} and set(res["summary"]) == {"plate", "tile", "mean"}
    for g in res["groups"].values():
        assert g["n_train_normals"] == N_GOOD and g["has_masks"]
        run = g["runs"][0]
        assert run["n_images"] == N_GOOD + 2 and run["n_references"] == 1 and run["metrics"]["pro"] is not None
