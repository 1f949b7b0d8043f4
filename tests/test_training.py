"""Training: losses, seeded data, a tiny run, exact kill-and-resume, and two gloo ranks on the CPU.

The runs use configs/tiny.yaml (64 px, 2-layer random Llama); they check mechanics, not quality.
Runs in this process reset accelerate's singletons between runs (each run builds its own
Accelerator, as separate `python -m training.train` calls would).
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from anomalygpt.config import SimConfig
from training.data import SimulatedAnomalyDataset, StepBatchSampler, split_images
from training.losses import dice_loss, focal_loss_with_logits, segmentation_losses

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "tiny.yaml")


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _train(argv: list[str]) -> int:
    from training.train import main

    _reset_accelerate()
    try:
        return main(argv)
    finally:
        _reset_accelerate()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return {f"det.{k}": v for k, v in load_file(str(ckpt / "detector.safetensors")).items()} | {
        f"lvlm.{k}": v for k, v in load_file(str(ckpt / "lvlm.safetensors")).items()}


# ------------------------------------------------------------------ units
def test_losses_levels_and_soft_targets() -> None:
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:12, 4:12] = 1
    good = [torch.where(torch.nn.functional.interpolate(mask, size=s, mode="area") > 0.5, 8.0, -8.0) for s in (8, 4)]
    bad = [-g for g in good]
    fused_good = torch.nn.functional.interpolate(torch.sigmoid(good[0]), size=(32, 32), mode="bilinear")
    lg, lb = segmentation_losses(good, fused_good, mask), segmentation_losses(bad, 1 - fused_good, mask)
    assert all(torch.isfinite(v) for v in (*lg.values(), *lb.values()))
    assert lg["focal"] < lb["focal"] and lg["dice"] < lb["dice"]
    # large logits stay finite (log-sigmoid, not log of a rounded probability)
    assert torch.isfinite(focal_loss_with_logits(torch.full((1, 1, 4, 4), 200.0), torch.zeros(1, 1, 4, 4)))
    # dice on a normal image still pushes probabilities down
    assert dice_loss(torch.full((1, 1, 4, 4), 0.9), torch.zeros(1, 1, 4, 4)) > dice_loss(torch.full((1, 1, 4, 4), 0.1), torch.zeros(1, 1, 4, 4))


def test_sampler_positions_shard_like_one_process() -> None:
    """Two ranks together see exactly what one process with the same global batch sees."""
    one = list(StepBatchSampler(10, 4, 1, 1, 0, seed=3, start_step=0, end_step=5))
    r0 = list(StepBatchSampler(10, 2, 1, 2, 0, seed=3, start_step=0, end_step=5))
    r1 = list(StepBatchSampler(10, 2, 1, 2, 1, seed=3, start_step=0, end_step=5))
    assert [a + b for a, b in zip(r0, r1)] == one
    # resuming at step 2 gives the tail of the same stream
    assert list(StepBatchSampler(10, 4, 1, 1, 0, seed=3, start_step=2, end_step=5)) == one[2:]
    # each epoch is a permutation of the data set
    flat = [i for b in one for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_dataset_seeded_paired_and_heldout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        p = tmp_path / f"img{i}.png"
        import cv2

        cv2.imwrite(str(p), (rng.random((80, 80, 3)) * 60 + 100).astype(np.uint8))
        paths.append(p)
    train, val = split_images(paths)
    assert len(val) == 1 and not set(train) & set(val) and len(train) + len(val) == 10
    ds = SimulatedAnomalyDataset(train, 64, 8, seed=5, sim=SimConfig(mode="blotch", anomalous_fraction=0.5))
    a, b = ds[1], ds[1]
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.answer == b.answer
    assert a.image.shape == (3, 64, 64) and a.mask.shape == (1, 64, 64) and 0 <= a.image.min() and a.image.max() <= 1
    anomalous_bases = {ds.plan(i)[0] for i in range(8) if ds.plan(i)[1]}
    normal_bases = {ds.plan(i)[0] for i in range(8) if not ds.plan(i)[1]}
    assert anomalous_bases <= normal_bases  # every anomalous image's source also appears as normal
    labels = [ds[i].label for i in range(8)]
    assert sum(labels[4:]) == 0 and sum(labels[:4]) >= 2
    for i in range(4):
        it = ds[i]
        if it.label:
            assert "verdict anomalous" in it.facts and bool(it.mask.sum() > 0)
        assert it.question and it.answer
    # facts: thresholds of many scales, the verdict on the label's side, sometimes a part name
    import re

    many = SimulatedAnomalyDataset(train, 32, 60, seed=1, sim=SimConfig(mode="blotch", anomalous_fraction=0.5),
                                   followup_prob=1.0)
    items = [many[i] for i in range(60)]
    numbers = [tuple(map(float, re.search(r"score ([\d.]+), threshold ([\d.]+)", it.facts).groups())) for it in items]
    assert max(t for _, t in numbers) > 5 * min(t for _, t in numbers)
    for it, (score, threshold) in zip(items, numbers):
        assert (score >= threshold) == bool(it.label) == ("verdict anomalous" in it.facts)
    assert 10 < sum("Measured facts of the " in it.facts for it in items) < 50
    assert "(narrow margin)" in " ".join(it.facts for it in items)


# ------------------------------------------------------------------ tiny runs
@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    assert _train(["--config", TINY, "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_loadable_checkpoint(full_run: Path) -> None:
    from anomalygpt.checkpoint import load

    rows = _rows(full_run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert (full_run / "curve.png").stat().st_size > 1000
    val = json.loads((full_run / "val.json").read_text())
    assert val["pixel_auroc"] is not None and "answers_measured_facts" in val
    comps = load(full_run / "final", with_llm=True)
    assert comps.calibration.source.startswith("validation on")
    assert comps.calibration.threshold == pytest.approx(val["calibration"]["threshold"])
    state = torch.load(full_run / "checkpoint-last" / "training_state.pt", weights_only=True)
    assert state["step"] == 4
    # a second run into the same folder without --resume refuses to overwrite it
    assert _train(["--config", TINY, "--out", str(full_run)]) == 2


def test_kill_and_resume_is_exact(full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    # interrupted after step 3: the last checkpoint is step 2, step 3 is lost
    assert _train(["--config", TINY, "--out", str(out), "--stop-after", "3"]) == 0
    assert torch.load(out / "checkpoint-last" / "training_state.pt", weights_only=True)["step"] == 2
    assert not (out / "final").exists()
    assert _train(["--config", TINY, "--out", str(out), "--resume"]) == 0
    a, b = _weights(full_run / "final"), _weights(out / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = _rows(full_run / "metrics.csv"), _rows(out / "metrics.csv")
    assert [r["step"] for r in rb] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


def test_fine_tune_chat_parts_from_a_checkpoint(full_run: Path, tmp_path: Path) -> None:
    """train.init_from starts from a checkpoint's trained parts; freeze_detector keeps the
    decoder bit-identical while the chat parts move."""
    out = tmp_path / "ft"
    argv = ["--config", TINY, "--out", str(out), f"train.init_from={full_run / 'final'}", "train.freeze_detector=true",
            "train.lm_every=1", "train.steps=2", "train.followup_prob=1.0"]
    assert _train(argv) == 0
    start, end = _weights(full_run / "final"), _weights(out / "final")
    dec = [k for k in start if k.startswith("det.decoder.")]
    assert dec and all(torch.equal(start[k], end[k]) for k in dec)
    chat = [k for k in start if k.startswith("lvlm.")]
    assert any(not torch.equal(start[k], end[k]) for k in chat)
    # a checkpoint of another model config is refused with one line naming the section
    other = ["--config", TINY, "--out", str(tmp_path / "bad"), f"train.init_from={full_run / 'final'}",
             "decoder.pool=5"]
    assert _train(other) == 2


# ------------------------------------------------------------------ two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_ranks_through_accelerate_launch(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "training.train", "--config", TINY, "--out", str(out),
           "train.steps=3", "train.lm_every=2", "train.checkpoint_every=2"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout + proc.stderr
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    h0, h1 = (out / "rank0.txt").read_text().strip(), (out / "rank1.txt").read_text().strip()
    assert h0 == h1 and len(h0) == 64
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["checkpoint-last", "final"], dirs  # one checkpoint, no leftovers of a second writer
    assert torch.load(out / "checkpoint-last" / "training_state.pt", weights_only=True)["world_size"] == 2
    assert [r["step"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3"]
    print(f"2-rank run took {time.time() - t0:.1f} s")
