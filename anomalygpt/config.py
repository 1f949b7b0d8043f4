"""Typed configuration, loaded from YAML profiles in `configs/`.

Profiles are data (as in open_clip): a YAML file names the frozen models and the sizes of
the trainable parts. Loading is strict because a silently ignored typo in a training
config costs an hour of CPU time: an unknown key or a bad value is one line naming the key
and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file or override is wrong; the message is one line that says how to fix it."""


@dataclass
class EncoderConfig:
    backend: Literal["timm", "open_clip"] = "timm"
    name: str = "tf_efficientnet_lite0"
    # "embedded": the pip-shipped weights; "none": random init; otherwise an open_clip
    # pretrained tag, a timm hub tag or a local checkpoint path.
    pretrained: str = "embedded"
    image_size: int = 224
    # timm: feature stage indices (features_only out_indices); open_clip: transformer blocks.
    levels: list[int] = field(default_factory=lambda: [2, 3])
    # timm open_clip configs for tiny test models (model_cfg overrides), usually empty.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # inference runtime of a timm encoder: "auto" = ONNX Runtime when an exported copy exists
    # (`anomalygpt export --format onnx`, at onnx_path or in the cache) else torch; "torch";
    # "onnxruntime" = the exported copy or an error. Training always runs torch.
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    onnx_path: str = ""


@dataclass
class TextConfig:
    # "llm": mean-pooled input embeddings of the LLM for prompt sentences (embedded profile,
    # no text tower ships offline); "open_clip": the CLIP text tower.
    backend: Literal["llm", "open_clip"] = "llm"
    object_name: str = "object"


@dataclass
class DecoderConfig:
    temperature: float = 0.07
    # feature pooling before scoring (smooths single-pixel noise, as patch-level methods do)
    pool: int = 3


@dataclass
class MemoryConfig:
    pool: int = 3
    chunk: int = 2048
    # weight of the reference (few-shot) map when fused with the decoder map
    weight: float = 0.5
    # cap on reference patches (random, seeded subsample); 0 = keep all
    max_patches: int = 120000
    # leave-one-out calibration uses at most this many references (each against all others);
    # 16 rather than 8: the threshold's mean and std come from twice the normal scores
    max_loo: int = 16
    # copies of the references added to the bank (anomalygpt/models/orientations.py):
    # "none", "rot180", "rot90" (4 turns) or "dihedral" (4 turns x mirror); for parts that
    # may be photographed turned or mirrored and are still good
    orientations: Literal["none", "rot180", "rot90", "dihedral"] = "none"
    # distribution score (anomalygpt/models/distribution.py): the image score adds
    # dist_weight x max(0, log(dist / dist_floor)) (0 = off); the windows per side its
    # statistics are taken over, and its shrinkage
    dist_weight: float = 0.0
    dist_floor: float = 1.0
    stat_grid: int = 2
    dist_shrink: float = 0.1
    # threshold with 1-3 references: "views" = the cut between normal views of the references
    # and the same views with simulated anomalies (calibrate.reference_views);
    # "checkpoint" = the checkpoint's calibration. "checkpoint" stays the default: on the dev
    # sets (benchmarks/detector_dev.py, rot90 + distribution score) the views cut gave verdict
    # accuracy 1-shot / 2-shot: textures 0.796 / 0.707 vs 0.817 / 0.781, ELPV poly 0.707 /
    # 0.765 vs 0.740 / 0.865 (its normal views are easier than new parts: too many false alarms)
    few_threshold: Literal["views", "checkpoint"] = "checkpoint"
    # high-resolution fine level of the reference map (anomalygpt/models/hires.py), for defects
    # a few pixels wide: "off"; "2x" = the image at twice encoder.image_size; "tiles" = the
    # image at its own resolution (sides clamped to 1-2x image_size) in overlapping tiles.
    # The fine map joins the 224 px reference map by hires_fusion: "mean" = (1 - hires_weight)
    # x coarse + hires_weight x fine, "max" = the larger per pixel.
    # Chosen on dev sets only (benchmarks/hires_dev.py, 4-shot, seeds 0-2; textures dev incl.
    # a small-defect dev kind unlike the benchmark's, ELPV mono / poly dev from train normals),
    # image AUROC over all dev kinds, textures / mono / poly (mean): off 0.801/0.917/0.816
    # (0.845); 2x mean 0.5 0.808/0.932/0.846 (0.862), 0.75 0.820/0.940/0.865 (0.875), 1.0
    # 0.833/0.931/0.869 (0.878), max 0.801/0.921/0.817 (0.846); tiles mean 0.75 0.823/0.930/
    # 0.871 (0.875), 1.0 0.823/0.921/0.878 (0.874). Taken as the settings of the fine level:
    # mean, 0.75 (within 0.003 of the best mean; weight 1 drops the 224 px map and loses
    # 0.01-0.04 on the simulator's defects). "off" stays the default: the gain is on few-pixel
    # defects only (ELPV's profile keeps it off, configs/embedded.yaml says why)
    hires: Literal["off", "2x", "tiles"] = "off"
    hires_fusion: Literal["mean", "max"] = "mean"
    hires_weight: float = 0.75
    # the fine map's patch features: "all" encoder levels (as the 224 px map) or the "finest"
    # alone (stride 8: the coarse level's context no longer outweighs a few-pixel change), and
    # their local pool (1 = no pooling: a small defect is not averaged with 8 neighbours).
    # Textures dev, 4-shot seed 0, small-defect AUROC at hires_weight 1 (benchmarks/hires_dev.py;
    # hires off 0.548): 2x all levels pool 3 0.563, 2x all pool 1 0.617, 2x finest pool 3 0.587,
    # 2x finest pool 1 0.687, finest pool 1 at 1x (tiles of a 224 px image) 0.634. Finest is
    # also ~4x cheaper to match (40 of 152 channels)
    hires_levels: Literal["all", "finest"] = "finest"
    hires_pool: int = 1


@dataclass
class PromptConfig:
    n_map_tokens: int = 4
    n_base_tokens: int = 4
    n_image_tokens: int = 1


@dataclass
class LLMConfig:
    # "embedded" = SmolLM2-135M-Instruct from the GGUF shipped on PyPI, else any HF id or path
    name: str = "embedded"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    quantization: Literal["none", "4bit", "8bit"] = "none"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # weights used when decoding one token at a time at inference (see decode_weights.py):
    # "auto" = float16 for an unquantized float32 LLM on the CPU (~2x faster decoding),
    # else unchanged; "float32" keeps full precision
    decode_weights: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_new_tokens: int = 48
    # inference runtime of greedy answers: "auto" = llama.cpp (llama-cpp-python on the shipped
    # GGUF + the LoRA as an adapter) when the package imports and `anomalygpt export --format
    # gguf` wrote the adapter (at adapter_path or in the cache), else torch; "torch";
    # "llama.cpp" = llama.cpp or an error. Training and sampled answers always run torch.
    runtime: Literal["auto", "torch", "llama.cpp"] = "auto"
    adapter_path: str = ""
    # tiny random-init model for tests: a transformers config dict; used when name == "random"
    random_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class SimConfig:
    mode: Literal["mix", "nsa", "cutpaste", "crack", "blotch"] = "mix"
    n_max: int = 3
    texture: bool = False
    anomalous_fraction: float = 0.5


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=lambda: ["elpv:train", "skimage", "sklearn"])
    out_dir: str = "runs/embedded"
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    lora_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    lm_weight: float = 1.0
    lm_every: int = 1
    checkpoint_every: int = 200
    val_samples: int = 64
    n_samples: int = 2000
    seed: int = 0
    num_workers: int = 0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    followup_prob: float = 0.5   # share of LM samples that ask a follow-up (with the chat so far)
    # chat fine-tune: share of questions in data_sim.qa.CANONICAL_QUESTIONS' wording (the only
    # wording anomalygpt.chat puts to the LLM), the follow-up intent mixture (intent -> weight;
    # {} = uniform over data_sim.qa.FOLLOWUP_INTENTS) and the follow-ups per simulated chat
    canonical_prob: float = 0.0
    intent_weights: dict[str, float] = field(default_factory=dict)
    followups: int = 3
    # fine-tuning: start the trainable parts from a checkpoint ("embedded" or a folder) of the
    # same model config; freeze_detector trains only the chat parts (prompt learner, LoRA)
    init_from: str = ""
    freeze_detector: bool = False
    sim: SimConfig = field(default_factory=SimConfig)


@dataclass
class ZeroShotConfig:
    """Training-free modes (anomalygpt.zeroshot): no references and no trained decoder.

    `mode`: "" = off (the trained decoder, fused with references when given), or a name of
    `anomalygpt.zeroshot.MODES` ("self", "batch", ...); a call's `zero_shot=` overrides it.
    Defaults chosen on a dev set of ELPV TRAIN normals, 150 clean + 288 with simulated
    anomalies (benchmarks/zeroshot_dev.py; never a test image), image AUROC there:
    self window 1/2/4/6/8 at 224 px 0.749/0.884/0.952/0.964/0.968 (6 taken: within noise of
    8 and the smaller exclusion suits parts less periodic than solar cells); sizes 192-320
    and multi-scale averages (224+288, 160+224, 192+256+320, ...) did not beat one 224 px map
    (0.937-0.964 at windows 4-6). batch at 224 px with 100 partners, fraction
    0.05/0.1/0.3/0.5: 0.972/0.974/0.968/0.960; 192 px, fraction 0.1: 0.975 at half the cost,
    0.980 with the second pass. A poly dev set (150 clean + 300 simulated) disagreed: 192 px,
    0.1, second pass 0.897 (0.896 without it); 224 px, 0.3, no second pass 0.915. Taken: the
    best mean over both dev sets, 224 px / 0.3 / no second pass (0.941 vs 0.939).
    Re-ranked on REAL subtle defects with no test image (`data_sim.datasets.elpv_dev_split`:
    the prob-1/3 cells + train normals; benchmarks/zeroshot_dev13.py, paired bootstrap 95%
    intervals vs these defaults): no variant won on both mono and poly, so none changed.
    That dev set is near chance for every variant (self 0.652 / 0.550 with 438 / 300 normals;
    batch 0.548 / 0.430 at the test split's share, poly below 0.5; the trained detector with 4
    references 0.566 / 0.441): most prob-1/3 cells look normal to every detector here, so it
    does not rank these settings.
    """
    mode: str = ""
    # self: the excluded square around a patch is (2*window+1)^2 grid steps; maps at these
    # input sizes are averaged (multi-scale). Sizes are multiples of encoder.image_size
    # (rounded to 16 px), so one setting fits the 64 px test model and the 224 px encoder
    window: int = 6
    scales: list[float] = field(default_factory=lambda: [1.0])
    # self: aggregation degrees (local pool sizes) of the patch features, one map each,
    # averaged (MuSc's r = 1, 3, 5). Dev AUROC mono / poly (window 6, 224 px; benchmarks/
    # zeroshot_dev_variants.py): pool 1 0.967/0.909, 3 0.964/0.905, 5 0.951/0.857, 1+3+5
    # 0.970/0.898, 3+5 0.964/0.886. Pool 3 stays: the best dev mean (pool 1, 0.938) is 0.003
    # above it, well inside a dev AUROC's standard error (~0.01 on ~500 images), and a default
    # is not changed on noise. (Pool 1 measured on ELPV test once: 0.833 / 0.747 vs 0.834 / 0.787.)
    pools: list[int] = field(default_factory=lambda: [3])
    # self: a patch is also matched with the turned / mirrored copies of the image's other
    # patches (models.orientations names; zeroshot/self_similarity.py says why): the cut
    # corners of a mono cell, the ends of a busbar, grains lying the other way find twins.
    # Dev AUROC none -> rot90 (benchmarks/zeroshot_twins_dev.py, window 6, 224 px): ELPV mono
    # dev 0.964 -> 0.968, poly dev 0.908 -> 0.912, textures dev local (data_sim) anomalies
    # 0.688 -> 0.714; rot180 0.960 / 0.914 / 0.701, dihedral 0.968 / - / 0.698. rot90 was the
    # only setting better on all three; "none" for parts whose orientation is itself checked.
    # Cost: 4 encoder passes and 4 similarity matrices per image instead of 1
    self_orientations: Literal["none", "rot180", "rot90", "dihedral"] = "rot90"
    # self: a patch's score is 1 - the mean similarity of its nearest twins, as many as this
    # share of the patches it is compared with (the image's grid times its copies; 0 = the
    # nearest twin alone, FADE's rule). A normal patch has hundreds of twins in its image, a
    # patch of a long crack only the rest of its crack (self_similarity.py says why). Dev AUROC
    # k = 1 / 16 / 32 / 64 / 128 nearest twins at 224 px with rot90 copies (3,136 compared;
    # benchmarks/zeroshot_selfk_dev.py): ELPV mono dev 0.968 / 0.975 / 0.979 / 0.984 / 0.978,
    # poly dev 0.912 / 0.920 / 0.924 / 0.927 / 0.924, their faint variants (anomalies at 25-50%
    # contrast) mono 0.899 / 0.903 / - / 0.914 / 0.889, poly 0.789 / 0.796 / - / 0.801 / 0.796;
    # textures dev local anomalies 0.714 / 0.719 / - / 0.713 / 0.719 (flat). 64 = 2% of 3,136
    self_twins: float = 0.02
    # batch: each image is compared with n_compare other images; a patch's score is the mean
    # of its lowest `fraction` of per-image nearest-neighbour distances
    n_compare: int = 100
    fraction: float = 0.3
    batch_scales: list[float] = field(default_factory=lambda: [1.0])
    # batch second pass: the ref_fraction of images scored most normal become references
    # (at most max_refs); every image is scored against them (references leave-one-out).
    # Dev AUROC first pass -> second pass, 224 px / 0.3 (benchmarks/zeroshot_refpass_dev.py):
    # ELPV mono dev 0.969 -> 0.956, poly dev 0.914 -> 0.927, textures dev 0.821 -> 0.869
    # (whole-surface changes: finer 0.922 -> 0.988, noise 0.873 -> 0.912, sharpen 0.664 ->
    # 0.723; local 0.823 -> 0.862); mean over the three 0.901 -> 0.917, so on since session 11
    # (the same best-mean rule that chose 224 px / 0.3). Scoring against the references by
    # the mean of the lowest 10/30/50% of per-reference distances instead of the nearest
    # patch over all: 0.958/0.957/0.957 mono, 0.925/0.920/0.919 poly, 0.863/0.849/0.832
    # textures, no better. Its verdicts flag as many images as the first pass's split
    # (zeroshot/thresholds.carry_share; benchmarks/zeroshot_secondpass_threshold_dev.py)
    second_pass: bool = True
    ref_fraction: float = 0.2
    max_refs: int = 64
    # batch options that did NOT help on the dev sets (AUROC at 50 partners, pool 3 = 0.960
    # mono / 0.908 poly): a patch also matched against each partner turned by 90 degrees
    # (mono 0.957, 3x the pair cost; ELPV cells are mostly upright), re-scoring each image with
    # its rescore_k nearest images in global-feature space (MuSc's RsCIN idea; mono k=3/5/10/20:
    # 0.943/0.940/0.934/0.930), pools 1 / 5 / 1+3+5 (mono 0.954/0.949/0.958, poly 0.888/0.891/0.898)
    batch_rot90: bool = False
    rescore_k: int = 0
    # batch: each image's own `self` map (the settings above) added to the batch map, each over
    # its median image score: "auto" when `self` agrees with the batch where the batch is
    # surest (AUROC of the self scores between the batch's lowest and highest 20%;
    # modes.self_agreement) at batch_self_gate or above, "on" always, "off" (the default)
    # never. Dev AUROC batch -> fused, and the agreement (benchmarks/
    # zeroshot_batch_recurring_dev.py --save, then benchmarks/zeroshot_fusion_gate_dev.py):
    # ELPV mono dev 0.956 -> 0.987 (1.00), poly 0.927 -> 0.939 (0.99), mono-faint 0.892 ->
    # 0.927 (0.99), mono-faint-crack 0.958 -> 0.984 (0.99), poly-faint 0.784 -> 0.807 (0.99),
    # poly-faint-crack 0.910 -> 0.919 (0.99); the textures dev set, where `self` hurts (fused:
    # blobs 0.944 -> 0.917, brick 0.900 -> 0.831, grass 0.830 -> 0.691, gravel 0.852 -> 0.728,
    # moon 0.822 -> 0.747; rerun with modes.fuse_by_median, see docs/experiments.md), agreed
    # 0.83 / 0.76 / 0.56 / 0.28 / 0.80, so a gate of 0.9 kept every dev texture at the batch
    # alone. Measured once with "auto": ELPV test 0.866 / 0.816 -> 0.883 / 0.837, but the
    # textures benchmark 0.807 -> 0.779: gravel and moon agreed 0.98 there and lost 0.848 ->
    # 0.798 and 0.880 -> 0.788 (docs/experiments.md, session 13). The gate does not tell where
    # `self` helps, so "off" stays the default: a gain on solar cells only, at 2.2 times the
    # cost (benchmarks/speed_ab.py zero-shot: 0.156 -> 0.339 s per image), is not a default
    # for unknown products
    batch_self: Literal["auto", "on", "off"] = "off"
    batch_self_gate: float = 0.9
    # verdict threshold of a set (>= 8 images, both modes; zeroshot/thresholds.set_threshold):
    # "gmm" = a two-component mixture on log scores, split at the components' posterior
    # crossing (one component by BIC: mean + 1 std); "lower" = the lower component's mean +
    # set_k std (one component: median + set_k robust std); "mode" = the densest mode_fraction
    # of the log scores + set_k x the spread below it. Mean verdict accuracy over defect shares
    # 0/10/30/50/70% (benchmarks/zeroshot_threshold_dev.py), self mono / self poly / batch mono
    # dev scores: gmm 0.887/0.646/0.898 (mean 0.810), lower k=2 0.910/0.648/0.804 (0.787; best
    # on clean sets: 0.967/0.700/0.973 against 0.847/0.325/0.847), lower k=1.5 0.900/0.640/0.884
    set_rule: str = "gmm"
    set_k: float = 2.0
    mode_fraction: float = 0.2


@dataclass
class ModelConfig:
    name: str = "embedded"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)


# Value checks beyond types: key path -> (predicate, what is allowed)
_CHECKS: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "encoder.image_size": (lambda v: 32 <= v <= 1024 and v % 16 == 0, "a multiple of 16 in 32..1024"),
    "encoder.levels": (lambda v: len(v) >= 1, "a non-empty list of stage/layer indices"),
    "decoder.temperature": (lambda v: v > 0, "a positive number"),
    "decoder.pool": (lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1"),
    "memory.pool": (lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1"),
    "memory.chunk": (lambda v: v >= 1, "a positive integer"),
    "memory.weight": (lambda v: 0.0 <= v <= 1.0, "a number in 0..1"),
    "memory.max_patches": (lambda v: v >= 0, "an integer >= 0 (0 keeps every patch)"),
    "memory.hires_weight": (lambda v: 0.0 <= v <= 1.0, "a number in 0..1 (the fine map's share with hires_fusion mean)"),
    "memory.hires_pool": (lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1"),
    "train.followup_prob": (lambda v: 0.0 <= v <= 1.0, "a number in 0..1"),
    "train.canonical_prob": (lambda v: 0.0 <= v <= 1.0, "a number in 0..1"),
    "train.intent_weights": (lambda v: all(isinstance(w, (int, float)) and w >= 0 for w in v.values())
                             and (not v or sum(v.values()) > 0), "a mapping intent -> weight >= 0, not all 0"),
    "train.followups": (lambda v: 1 <= v <= 10, "an integer in 1..10"),
    "memory.max_loo": (lambda v: v >= 2, "an integer >= 2"),
    "memory.dist_weight": (lambda v: v >= 0.0, "a number >= 0 (0 turns the distribution score off)"),
    "memory.dist_floor": (lambda v: v > 0.0, "a positive number"),
    "memory.stat_grid": (lambda v: 1 <= v <= 8, "an integer in 1..8"),
    "memory.dist_shrink": (lambda v: v > 0.0, "a positive number"),
    "prompt.n_map_tokens": (lambda v: v >= 1, "a positive integer"),
    "prompt.n_base_tokens": (lambda v: v >= 0, "an integer >= 0"),
    "prompt.n_image_tokens": (lambda v: v >= 0, "an integer >= 0"),
    "llm.lora_r": (lambda v: v >= 0, "an integer >= 0 (0 disables LoRA)"),
    "llm.max_new_tokens": (lambda v: 1 <= v <= 4096, "an integer in 1..4096"),
    "zero_shot.window": (lambda v: v >= 0, "an integer >= 0 (0 excludes only the patch itself)"),
    "zero_shot.self_twins": (lambda v: 0.0 <= v < 1.0, "a share in 0..1 (0 = the nearest twin alone)"),
    "zero_shot.scales": (lambda v: len(v) >= 1 and all(0.25 <= x <= 4 for x in v),
                         "a non-empty list of factors of encoder.image_size in 0.25..4"),
    "zero_shot.batch_scales": (lambda v: len(v) >= 1 and all(0.25 <= x <= 4 for x in v),
                               "a non-empty list of factors of encoder.image_size in 0.25..4"),
    "zero_shot.n_compare": (lambda v: v >= 1, "a positive integer"),
    "zero_shot.fraction": (lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    "zero_shot.ref_fraction": (lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    "zero_shot.max_refs": (lambda v: v >= 2, "an integer >= 2"),
    "zero_shot.pools": (lambda v: len(v) >= 1 and all(x >= 1 and x % 2 == 1 for x in v),
                        "a non-empty list of odd pool sizes, e.g. [1] or [1, 3, 5]"),
    "zero_shot.batch_self_gate": (lambda v: 0.0 <= v <= 1.0, "an AUROC in 0..1"),
    "zero_shot.set_rule": (lambda v: v in ("lower", "gmm", "mode"), "one of lower, gmm, mode"),
    "zero_shot.set_k": (lambda v: v > 0, "a positive number of standard deviations"),
    "zero_shot.mode_fraction": (lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    "zero_shot.rescore_k": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "train.steps": (lambda v: v >= 1, "a positive integer"),
    "train.batch_size": (lambda v: v >= 1, "a positive integer"),
    "train.grad_accum": (lambda v: v >= 1, "a positive integer"),
    "train.lr": (lambda v: v > 0, "a positive number"),
    "train.lora_lr": (lambda v: v > 0, "a positive number"),
    "train.checkpoint_every": (lambda v: v >= 1, "a positive integer"),
    "train.n_samples": (lambda v: v >= 2, "an integer >= 2"),
    "train.sim.n_max": (lambda v: v >= 1, "a positive integer"),
    "train.sim.anomalous_fraction": (lambda v: 0.0 <= v <= 1.0, "a number in 0..1"),
}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        # YAML 1.1 reads a bare off / on (no / yes) as a boolean: `hires: off` means "off"
        if isinstance(value, bool) and ("on" if value else "off") in typing.get_args(tp):
            return "on" if value else "off"
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{key}': {value!r} is not allowed; use {_type_name(tp)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1]
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': {value!r} does not fit {tp}")
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}': expected a finite number, got {str(value)[:20]}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'; allowed keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
        if path in _CHECKS and not _CHECKS[path][0](kwargs[key]):
            raise ConfigError(f"config key '{path}': {value!r} is not allowed; use {_CHECKS[path][1]}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (for JSON/YAML and for hashing)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> ModelConfig:
    """Validated `ModelConfig` from a plain mapping."""
    return _build(ModelConfig, data)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or a profile name in `configs/` (e.g. 'embedded')."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}; give a path to a YAML file or a profile name from {CONFIG_DIR}")
        return p
    cand = CONFIG_DIR / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown config profile '{name_or_path}'; use one of {', '.join(known)} or a path to a .yaml file")


def parse_override(text: str) -> tuple[str, Any]:
    """'train.steps=100' -> ('train.steps', 100); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        what = str(getattr(e, "problem", None) or type(e).__name__).strip()
        raise ConfigError(f"override '{text}': the value is not valid YAML ({what}); "
                          "quote it, e.g. key='text'") from None


def load_config(name_or_path: str | Path = "embedded", overrides: list[str] | None = None) -> ModelConfig:
    """Load a profile, apply 'a.b=value' overrides, validate everything."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (encoder:, llm:, ...)")
    for item in overrides or []:
        key, value = parse_override(item)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return from_dict(data)
