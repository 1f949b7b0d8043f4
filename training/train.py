"""The training loop: decoder + prompt learner + image projector + LoRA on simulated anomalies.

One loop for one CPU, one GPU or many processes, through `accelerate` (no hand-made DDP):

    python -m training.train --config configs/embedded.yaml [--data SPEC ...] [--out DIR] [--resume] [key=value ...]
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m training.train --config ...

`Accelerator(cpu=True)` is used whenever CUDA is absent: that is what makes
`accelerate launch --multi_gpu --num_processes 2` give two connected gloo ranks on a CPU
machine (a plain `Accelerator()` there silently gives two unconnected runs).

Loss = focal_weight * focal + dice_weight * dice (each level and the fused map, see
`training.losses`) + lm_weight * LM (answer tokens only, every `lm_every` steps, the LLM reads
the decoder map *detached*, so language gradients never bend the localization).

Resuming is exact: the data position is a pure function of the step (`training.data`), and the
checkpoint holds the trainable weights (via `anomalygpt.checkpoint.save`), optimizer, scheduler and
the python/numpy/torch RNG states. Only the main process writes, and every write is atomic
(temp folder + rename), so an interrupted run never leaves half a checkpoint.

At the end: validation on held-out images (never trained on) with simulated anomalies (pixel
AUROC, yes/no and 3x3-cell accuracy of generated answers) and the image-score threshold
calibrated on the held-out normal images, saved with the checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from anomalygpt.checkpoint import TRAINING_STATE_FILE
from anomalygpt.config import ConfigError, ModelConfig, load_config, to_dict
from anomalygpt.evaluation.metrics import opening_yes_no

from .data import MAIN_QUESTION, SimulatedAnomalyDataset, StepBatchSampler, collate, split_images
from .losses import segmentation_losses

log = logging.getLogger("training")

CHECKPOINT_DIR = "checkpoint-last"
FINAL_DIR = "final"
STATE_FILE = TRAINING_STATE_FILE  # read back with torch.load(weights_only=True): no code runs
METRICS_FILE = "metrics.csv"
METRIC_FIELDS = ["step", "loss", "focal", "dice", "lm", "lr", "lora_lr", "grad_norm", "sec_per_step"]
REFERENCE_SHOTS = 4   # normal references for the fused-map threshold the inspector uses with references
VAL_STREAM = 1        # seed stream of the validation anomalies (training items use none)
# train settings that decide which data a step sees: a resume with other values is not the same run
_RESUME_MUST_MATCH = ("seed", "batch_size", "grad_accum", "n_samples", "data", "sim", "canonical_prob", "intent_weights",
                      "followups")


# ---------------------------------------------------------------------------- model wrapper
class TrainModule(nn.Module):
    """Detector + LVLM behind one forward that returns the losses.

    One module so accelerate/DDP wrap (and all-reduce) every trainable part together and the
    losses are computed inside forward, where DDP expects the graph to be built.
    """

    def __init__(self, detector: nn.Module, lvlm: nn.Module | None, focal_weight: float, dice_weight: float,
                 lm_weight: float) -> None:
        super().__init__()
        self.detector = detector
        self.lvlm = lvlm
        self.focal_weight, self.dice_weight, self.lm_weight = focal_weight, dice_weight, lm_weight

    def forward(self, images: Tensor, masks: Tensor, questions: list[str] | None = None,
                answers: list[str] | None = None, facts: list[str] | None = None,
                histories: list[list[tuple[str, str]]] | None = None, with_lm: bool = False) -> dict[str, Tensor]:
        det = self.detector(images)
        seg = segmentation_losses(det.level_logits, det.decoder_map, masks)
        loss = self.focal_weight * seg["focal"] + self.dice_weight * seg["dice"]
        out = {"focal": seg["focal"], "dice": seg["dice"]}
        if with_lm and self.lvlm is not None and questions is not None and answers is not None:
            lm = self.lvlm(det.global_emb, det.decoder_map.detach(), questions, answers, facts, histories)
            loss = loss + self.lm_weight * lm
            out["lm"] = lm
        out["loss"] = loss
        return out


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps (the first step already moves), then
    cosine decay to 0 at `total`. Warm-up matters for LoRA + AdamW: the first moments are noisy."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------- small file helpers
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def _swap_dir(staging: Path, target: Path) -> None:
    """Replace `target` by the complete folder `staging` (old one moved aside, then deleted)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def trainable_state(comps: Any) -> dict[str, Tensor]:
    sd = {f"detector.{k}": v for k, v in comps.detector.trainable_state_dict().items()}
    if comps.lvlm is not None:
        sd |= {f"lvlm.{k}": v for k, v in comps.lvlm.trainable_state_dict().items()}
    return sd


def params_hash(comps: Any) -> str:
    """sha256 over the trainable tensors (sorted names): equal hashes = bit-identical weights."""
    h = hashlib.sha256()
    for k, v in sorted(trainable_state(comps).items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's key array as a tensor: the state then loads with weights_only=True (no pickle code)
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(comps: Any, out_dir: Path, state: dict[str, Any] | None, name: str = CHECKPOINT_DIR) -> Path:
    """Model (anomalygpt.checkpoint.save layout) + training_state.pt, appearing in one rename."""
    from anomalygpt.checkpoint import save

    staging = out_dir / f".{name}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    save(comps, staging)
    if state is not None:
        buf = io.BytesIO()
        torch.save(state, buf)
        _atomic_write_bytes(staging / STATE_FILE, buf.getvalue())
    _swap_dir(staging, out_dir / name)
    return out_dir / name


def load_training_state(ckpt: Path) -> dict[str, Any]:
    # tensors and plain containers only (the numpy RNG keys are stored as a tensor)
    try:
        return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - e.g. a state written by a version that pickled numpy arrays
        raise ValueError(f"{ckpt / STATE_FILE} cannot be read without unpickling code ({type(e).__name__}); "
                         "it was written by an older version: start a new run or fine-tune from it with "
                         "train.init_from") from None


def _differing_model_section(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first config section other than `train` that differs between two configs (as dicts)."""
    return next((sec for sec in now if sec != "train" and saved.get(sec) != now[sec]), None)


def _load_trainable(comps: Any, folder: Path) -> None:
    """The trainable parts of a checkpoint folder into freshly built components."""
    from safetensors.torch import load_file

    from anomalygpt.checkpoint import DETECTOR_FILE, LVLM_FILE

    comps.detector.load_trainable_state_dict(load_file(str(folder / DETECTOR_FILE)))
    if comps.lvlm is not None:
        comps.lvlm.load_trainable_state_dict(load_file(str(folder / LVLM_FILE)))


def _check_resume_config(cfg: ModelConfig, ckpt: Path) -> None:
    """A resume must continue the same run: model and data settings must match the checkpoint."""
    from anomalygpt.checkpoint import read_config

    saved = to_dict(read_config(ckpt))
    now = to_dict(cfg)
    section = _differing_model_section(saved, now)
    if section is not None:
        raise ConfigError(f"--resume: section '{section}' differs from the checkpoint in {ckpt}; "
                          "resume with the same config (or start a new run with another --out)")
    for key in _RESUME_MUST_MATCH:
        if saved["train"].get(key) != now["train"][key]:
            raise ConfigError(f"--resume: train.{key} is {now['train'][key]!r} but the checkpoint used "
                              f"{saved['train'].get(key)!r}; resume with the same value")
    for key in ("steps", "lr", "lora_lr", "warmup_steps"):
        if saved["train"].get(key) != now["train"][key]:
            log.warning("--resume: train.%s changed from %r to %r; the LR schedule follows the new value",
                        key, saved["train"].get(key), now["train"][key])


# ---------------------------------------------------------------------------- metrics
class MetricsLog:
    """metrics.csv (always) and TensorBoard (when importable); main process only."""

    def __init__(self, out_dir: Path, start_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / METRICS_FILE
        self.tb = None
        if not enabled:
            return
        rows: list[dict[str, str]] = []
        if self.path.is_file():  # rows after the resumed checkpoint belong to a lost future
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start_step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerows(rows)
        _atomic_write_bytes(self.path, buf.getvalue().encode())
        self.fh = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=METRIC_FIELDS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1)
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})
        self.fh.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            if self.tb is not None:
                self.tb.close()


def plot_curve(out_dir: Path) -> Path | None:
    """curve.png: total loss (and its parts) vs step, from metrics.csv."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("focal", "--"), ("dice", "--"), ("lm", ":")):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if pts:
            ax.plot(*zip(*pts), style, label=key, linewidth=1.5 if key == "loss" else 1.0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    _atomic_write_bytes(out_dir / "curve.png", buf.getvalue())
    return out_dir / "curve.png"


# ---------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(comps: Any, cfg: ModelConfig, train_images: list[Path], val_images: list[Path],
             device: torch.device, batch_size: int = 8) -> tuple[Any, dict[str, Any]]:
    """(Calibration, metrics) on held-out images; the model is not changed."""
    from sklearn.metrics import roc_auc_score

    from data_sim.grid import parse_cells
    from anomalygpt.images import batch_tensor, load_image
    from anomalygpt.inspector import measure
    from anomalygpt.models.detector import gaussian_blur
    from anomalygpt.calibrate import calibrate
    from anomalygpt.checkpoint import Calibration
    from anomalygpt.report import affected, facts_text

    det = comps.detector.eval()
    lvlm = comps.lvlm
    tc = cfg.train
    size = det.image_size

    def tensors(paths: Sequence[Path]) -> Tensor:
        return batch_tensor([load_image(p) for p in paths], size)

    # 1. calibration on held-out normal images: map scales for fusion and thresholds
    k = min(REFERENCE_SHOTS, len(train_images))
    ref_idx = np.random.default_rng([tc.seed, 4242]).choice(len(train_images), k, replace=False)
    cal = calibrate(det, tensors(val_images).to(device), tensors([train_images[int(i)] for i in ref_idx]).to(device))
    n_norm = len(val_images)
    calibration = Calibration(
        threshold=cal["threshold"], source=f"validation on {n_norm} held-out normal images",
        normal_mean=cal["normal_mean"], normal_std=cal["normal_std"],
        extra={"rule": "mean + 1 std of held-out normal image scores"} | cal)
    thr = calibration.threshold

    # 2. simulated anomalies on the held-out images: pixel AUROC and the answers
    sim = dataclasses.replace(tc.sim, anomalous_fraction=0.5)
    ds = SimulatedAnomalyDataset(val_images, size, tc.val_samples, tc.seed, sim, sources=val_images,
                                 stream=VAL_STREAM, followup_prob=0.0, object_name=None)
    pix_pred, pix_true, img_scores, labels = [], [], [], []
    results = {"measured_facts": [], "ground_truth_facts": []}
    examples = []
    for i in range(0, len(ds), batch_size):
        batch = collate([ds[j] for j in range(i, min(len(ds), i + batch_size))])
        x = batch["images"].to(device)
        d = det(x)
        amap = d.anomaly_map.float().cpu()
        pix_pred.append(amap.flatten().numpy())
        pix_true.append(batch["masks"].flatten().numpy() > 0.5)
        img_scores += d.scores.float().cpu().tolist()
        labels += batch["labels"].tolist()
        if lvlm is None:
            continue
        smooth = gaussian_blur(d.anomaly_map, det.smooth_sigma).float().cpu().numpy()
        measured = []
        for b in range(len(x)):
            score = float(d.scores[b])
            m, regions = measure(smooth[b, 0], score, thr)
            measured.append(facts_text(score, thr, regions, m.shape, affected(m, regions) if regions else None))
        qs = [MAIN_QUESTION] * len(x)
        for kind, facts in (("measured_facts", measured), ("ground_truth_facts", batch["facts"])):
            answers = lvlm.generate(d.global_emb, d.anomaly_map, qs, facts=list(facts))
            for b, a in enumerate(answers):
                said = opening_yes_no(a)
                lab = int(batch["labels"][b])
                cells_ok = None
                if lab:
                    cells_ok = sorted(set(parse_cells(a))) == sorted(batch["cells"][b])
                results[kind].append({"yes_no_ok": said == lab, "cells_ok": cells_ok})
                if kind == "measured_facts" and len(examples) < 6:
                    examples.append({"facts": facts[b], "answer": a, "label": lab, "cells": batch["cells"][b]})

    y = np.concatenate(pix_true)
    p = np.concatenate(pix_pred)
    metrics: dict[str, Any] = {
        "pixel_auroc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "image_auroc": float(roc_auc_score(labels, img_scores)) if 0 < sum(labels) < len(labels) else None,
        "n_val_samples": len(ds), "n_val_anomalous": int(sum(labels)), "n_heldout_normal_images": n_norm,
        "question": MAIN_QUESTION,
        "note": "anomalies are SIMULATED (data_sim) on held-out normal images never used in training",
    }
    for kind, rows in results.items():
        if not rows:
            continue
        anom = [r["cells_ok"] for r in rows if r["cells_ok"] is not None]
        metrics[f"answers_{kind}"] = {
            "yes_no_accuracy": float(np.mean([r["yes_no_ok"] for r in rows])),
            "cell_accuracy": float(np.mean(anom)) if anom else None,
            "n": len(rows),
        }
    metrics["calibration"] = dataclasses.asdict(calibration)
    metrics["examples"] = examples
    return calibration, metrics


# ---------------------------------------------------------------------------- the run
def _accelerator(cfg: ModelConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    tc = cfg.train
    cuda = torch.cuda.is_available()
    mp = tc.mixed_precision
    if mp == "auto":
        mp = "bf16" if cuda else "no"
    # steps without the LM term leave the LoRA / prompt-learner parameters out of the graph;
    # DDP must then look for unused parameters (an extra graph walk, so only when needed)
    lm_always = tc.lm_weight > 0 and tc.lm_every == 1
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not lm_always)
    return Accelerator(cpu=not cuda, gradient_accumulation_steps=tc.grad_accum, mixed_precision=mp,
                       kwargs_handlers=[ddp])


def _init_source(cfg: ModelConfig) -> Path:
    """The checkpoint folder named by `train.init_from`, checked to have been trained with
    the same model sections as `cfg` (before anything expensive is built)."""
    from anomalygpt.inspector import resolve_checkpoint
    from anomalygpt.checkpoint import read_config

    src = resolve_checkpoint(cfg.train.init_from)
    section = _differing_model_section(to_dict(read_config(src)), to_dict(cfg))
    if section is not None:
        raise ConfigError(f"train.init_from: section '{section}' of {src} differs from this config; "
                          "fine-tune with the checkpoint's own config.yaml (plus train.* overrides)")
    return src


def run(cfg: ModelConfig, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or continue) the run in cfg.train.out_dir; returns the validation metrics
    ({} if stopped early by `stop_after`, which simulates an interruption after that step)."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from anomalygpt.checkpoint import build, save
    from data_sim.datasets import normal_training_images

    tc = cfg.train
    accelerator = _accelerator(cfg)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    device = accelerator.device
    out_dir = Path(tc.out_dir)
    ckpt = out_dir / CHECKPOINT_DIR

    if resume and not (ckpt / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt}; start the run without --resume")
    if not resume and ckpt.exists():
        raise FileExistsError(f"{out_dir} already holds a checkpoint; add --resume to continue it, or give another --out")
    if resume:
        _check_resume_config(cfg, ckpt)
    init_src = _init_source(cfg) if tc.init_from and not resume else None
    if tc.freeze_detector and (tc.lm_weight <= 0 or tc.lm_every != 1):
        raise ConfigError("train.freeze_detector leaves only the chat parts to train: set train.lm_every=1 and "
                          "train.lm_weight > 0 (steps without the LM term would have nothing to learn)")

    images = normal_training_images(",".join(tc.data))
    train_images, val_images = split_images(images)
    train_ds = SimulatedAnomalyDataset(train_images, cfg.encoder.image_size, tc.n_samples, tc.seed, tc.sim,
                                       sources=train_images, followup_prob=tc.followup_prob, object_name=None,
                                       canonical_prob=tc.canonical_prob, intent_weights=tc.intent_weights,
                                       followups=tc.followups)

    set_seed(tc.seed)  # same seed on every rank: identical initial trainable parts (and random test LLMs)
    comps = build(cfg, with_llm=True)
    comps.detector.to(device)
    if comps.lvlm is not None and cfg.llm.quantization == "none":
        comps.lvlm.to(device)

    if init_src is not None:  # fine-tuning: start from that checkpoint's trained parts
        _load_trainable(comps, init_src)
        log.info("trainable parts initialised from %s", init_src)
    if tc.freeze_detector:
        comps.detector.decoder.requires_grad_(False)
    head = [p for p in comps.detector.decoder.parameters() if p.requires_grad]
    lora: list[nn.Parameter] = []
    if comps.lvlm is not None:
        own = {id(p) for m in (comps.lvlm.prompt_learner, comps.lvlm.image_proj) if m is not None for p in m.parameters()}
        for p in comps.lvlm.trainable_parameters():
            (head if id(p) in own else lora).append(p)
    params = head + lora
    groups = [{"params": head, "lr": tc.lr, "name": "head"}]
    if lora:
        groups.append({"params": lora, "lr": tc.lora_lr, "name": "lora"})
    optimizer = torch.optim.AdamW(groups, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=max(0, tc.warmup_steps), total=tc.steps))

    start_step, state = 0, None
    if resume:
        state = load_training_state(ckpt)
        _load_trainable(comps, ckpt)
        if state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        else:
            log.warning("checkpoint has no optimizer state (DeepSpeed run); AdamW moments start fresh")
        scheduler.load_state_dict(state["scheduler"])
        start_step = int(state["step"])
        if state.get("world_size") != world:
            log.warning("resuming with %d processes, the checkpoint ran with %s: the global batch changes",
                        world, state.get("world_size"))

    deepspeed = accelerator.state.deepspeed_plugin is not None
    if deepspeed:  # no prepared dataloader, so DeepSpeed cannot infer these itself
        ds_cfg = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_cfg["train_micro_batch_size_per_gpu"] = tc.batch_size
        ds_cfg["gradient_clipping"] = tc.max_grad_norm
    module = TrainModule(comps.detector, comps.lvlm, tc.focal_weight, tc.dice_weight, tc.lm_weight)
    module, optimizer = accelerator.prepare(module, optimizer)
    # the scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step
    # it num_processes times, assuming a sharded dataloader we do not use)

    global_batch = tc.batch_size * tc.grad_accum * world
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(out_dir / "run.json", {
            "world_size": world, "device": str(device), "mixed_precision": accelerator.mixed_precision,
            "global_batch": global_batch, "start_step": start_step, "steps": tc.steps,
            "n_train_images": len(train_images), "n_heldout_images": len(val_images),
            "heldout_images": [str(p) for p in val_images], "config": to_dict(cfg)})
        accelerator.print(f"world_size={world} device={device} mixed_precision={accelerator.mixed_precision} "
                          f"global_batch={global_batch} train_images={len(train_images)} heldout={len(val_images)} "
                          f"start_step={start_step}")
    end_step = tc.steps if stop_after is None else min(tc.steps, stop_after)
    sampler = StepBatchSampler(len(train_ds), tc.batch_size, tc.grad_accum, world, rank, tc.seed, start_step, end_step)
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=tc.num_workers,
                        persistent_workers=False)
    metrics = MetricsLog(out_dir, start_step, main)

    def checkpoint_state(step: int) -> dict[str, Any]:
        return {"step": step, "optimizer": None if deepspeed else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": _rng_state(), "world_size": world,
                "global_batch": global_batch}

    module.train()
    batches = iter(loader)  # draws a base seed from torch's RNG: must happen before the restore
    if state is not None:
        _set_rng_state(state["rng"])  # last, so nothing above consumes the restored streams
    bar = tqdm(total=tc.steps, initial=start_step, desc="training", unit="step", disable=not main, dynamic_ncols=True)
    step = start_step
    try:
        for step in range(start_step, end_step):
            t0 = time.perf_counter()
            with_lm = tc.lm_weight > 0 and comps.lvlm is not None and step % max(1, tc.lm_every) == 0
            sums: dict[str, Tensor] = {}
            grad_norm = None
            for _ in range(tc.grad_accum):
                batch = next(batches)
                with accelerator.accumulate(module):
                    out = module(images=batch["images"].to(device), masks=batch["masks"].to(device),
                                 questions=batch["questions"], answers=batch["answers"], facts=batch["facts"],
                                 histories=batch["histories"], with_lm=with_lm)
                    if not torch.isfinite(out["loss"]):
                        raise FloatingPointError(f"loss is {out['loss'].item()} at step {step + 1}; lower train.lr / "
                                                 "train.lora_lr or check the data")
                    accelerator.backward(out["loss"])
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float() / tc.grad_accum
            scheduler.step()
            keys = [k for k in ("loss", "focal", "dice", "lm") if k in sums]
            vals = accelerator.reduce(torch.stack([sums[k] for k in keys]).to(device), reduction="mean").tolist()
            row: dict[str, Any] = dict(zip(keys, (round(v, 6) for v in vals)))
            lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
            row.update(step=step + 1, lr=lrs.get("head"), lora_lr=lrs.get("lora"),
                       grad_norm=None if grad_norm is None else round(float(grad_norm), 6),
                       sec_per_step=round(time.perf_counter() - t0, 4))
            metrics.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
            bar.update(1)
            done = step + 1
            if done % tc.checkpoint_every == 0 or done == tc.steps:
                if main:
                    save_checkpoint(comps, out_dir, checkpoint_state(done))
                    plot_curve(out_dir)
                accelerator.wait_for_everyone()
    finally:
        bar.close()
        metrics.close()

    if stop_after is not None and end_step < tc.steps:
        accelerator.print(f"stopped after step {end_step} (--stop-after); resume with --resume")
        accelerator.wait_for_everyone()
        return {}

    if world > 1:  # lets tests and users check that the ranks stayed in lockstep
        out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(out_dir / f"rank{rank}.txt", (params_hash(comps) + "\n").encode())
    result: dict[str, Any] = {}
    if main:
        calibration, result = validate(comps, cfg, train_images, val_images, device)
        comps.calibration = calibration
        result |= {"steps": tc.steps, "world_size": world}
        final_state = checkpoint_state(tc.steps)
        save_checkpoint(comps, out_dir, final_state)   # checkpoint-last carries the calibration too
        save(comps, out_dir / FINAL_DIR)
        _atomic_write_json(out_dir / "val.json", result)
        plot_curve(out_dir)
        accelerator.print(f"validation: pixel AUROC {result['pixel_auroc']}, threshold {calibration.threshold:.4f}; "
                          f"final model in {out_dir / FINAL_DIR}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


# ---------------------------------------------------------------------------- CLI
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="anomalygpt train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="embedded", help="profile name in configs/ or a YAML path (default: embedded)")
    p.add_argument("--data", nargs="+", action="extend", metavar="SPEC",
                   help="normal training images: elpv:train[:mono|poly], skimage, sklearn, folder:PATH, "
                        "mvtec:PATH[:category], visa:PATH[:category] (replaces train.data)")
    p.add_argument("--out", help="output folder (replaces train.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last (same optimizer, "
                                                           "scheduler, RNG and data position)")
    p.add_argument("--stop-after", type=int, metavar="STEP",
                   help="stop after this optimizer step as if interrupted (no final checkpoint/validation)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")
    args = p.parse_args(list(argv) if argv is not None else None)
    # `--data a b train.steps=5`: nargs='+' swallows the overrides; give them back
    data = args.data or []
    args.overrides = [d for d in data if _OVERRIDE.match(d)] + list(args.overrides)
    args.data = [d for d in data if not _OVERRIDE.match(d)] or None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m training.train` and `anomalygpt train`; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.data:
        overrides.append("train.data=" + json.dumps(args.data))
    if args.out:
        overrides.append("train.out_dir=" + json.dumps(str(args.out)))
    try:
        cfg = load_config(args.config, overrides)
        if args.stop_after is not None and args.stop_after < 1:
            raise ConfigError(f"--stop-after must be a positive step, got {args.stop_after}")
        run(cfg, resume=args.resume, stop_after=args.stop_after)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if type(e).__name__ != "ModelNotAvailable":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
