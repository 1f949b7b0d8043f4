"""Interleaved A/B timings of two speed choices the product ships with (docs/speed.md).

    python benchmarks/speed_ab.py decode --rounds 5          # llm.decode_weights auto vs float32
    python benchmarks/speed_ab.py encoder-cache --rounds 3   # warm load with vs without the TorchScript encoder cache
    python benchmarks/speed_ab.py zero-shot --rounds 3       # self with / without turned copies; batch with / without the second pass, with self added

These machines are shared and their speed drifts by tens of percent within minutes, so a
change is never judged by comparing two separate `anomalygpt bench` runs: here the two
variants alternate round by round in the same conditions, and the medians are compared.

decode: two assistants in one process, the shipped checkpoint (float16 copies of the LLM
weights for one-token steps) and a copy whose config says `llm.decode_weights: float32`;
each round times inspect + the streamed answer (`anomalygpt.evaluation.bench.measure_inspect_answer`)
for the sample's natural answer and for one forced to the whole 48-token budget, and
checks that both variants give the same answer text.

encoder-cache: `AnomalyGPT.from_pretrained` in fresh processes, alternating the default
(the frozen timm encoder read from its TorchScript copy) with ANOMALYGPT_SCRIPT_CACHE=0
(built with timm, which is then imported).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml


def _checkpoint_copy(tmp: Path, **llm_overrides: Any) -> Path:
    """A copy of the shipped checkpoint with some `llm` settings changed in its config.yaml."""
    from anomalygpt.inspector import resolve_checkpoint

    dst = tmp / "checkpoint"
    shutil.copytree(resolve_checkpoint("embedded"), dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["llm"].update(llm_overrides)
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def ab_decode(rounds: int, repeats: int) -> dict[str, Any]:
    from anomalygpt.evaluation.bench import measure_inspect_answer
    from anomalygpt.inspector import AnomalyGPT

    with tempfile.TemporaryDirectory(prefix="speed-ab-") as tmp:
        variants = {"auto (float16 one-token steps)": AnomalyGPT.from_pretrained("embedded"),
                    "float32": AnomalyGPT.from_pretrained(_checkpoint_copy(Path(tmp), decode_weights="float32"))}
        n_max = next(iter(variants.values())).cfg.llm.max_new_tokens
        times: dict[str, dict[str, list[float]]] = {v: {"answer_s": [], "answer_48_s": []} for v in variants}
        answers: dict[str, set[str]] = {v: set() for v in variants}
        for r in range(rounds):
            for name, assistant in variants.items():
                a = measure_inspect_answer(assistant, repeats=repeats)
                f = measure_inspect_answer(assistant, repeats=repeats, min_new_tokens=n_max)
                times[name]["answer_s"].append(a["full_answer_s_median"])
                times[name]["answer_48_s"].append(f["full_answer_s_median"])
                answers[name] |= {a["answer"], f["answer"]}
                print(f"round {r + 1}/{rounds} {name}: answer {a['full_answer_s_median']:.2f} s "
                      f"({a['answer_tokens']} tokens), forced {f['full_answer_s_median']:.2f} s "
                      f"({f['answer_tokens']} tokens)", file=sys.stderr, flush=True)
    same = len({frozenset(a) for a in answers.values()}) == 1
    return {"experiment": "decode", "rounds": rounds, "repeats_per_round": repeats, "same_answers": same,
            "median": {v: {k: statistics.median(x) for k, x in t.items()} for v, t in times.items()},
            "per_round": times}


def ab_encoder_cache(rounds: int) -> dict[str, Any]:
    from anomalygpt.evaluation.bench import _ASSISTANT_LOAD, run_measured

    variants = {"TorchScript cache (default)": {}, "timm (ANOMALYGPT_SCRIPT_CACHE=0)": {"ANOMALYGPT_SCRIPT_CACHE": "0"}}
    run_measured([sys.executable, "-c", _ASSISTANT_LOAD, "embedded"])  # builds the caches if missing; not timed
    loads: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for name, env in variants.items():
            res = run_measured([sys.executable, "-c", _ASSISTANT_LOAD, "embedded"], env=env)
            if res["returncode"] != 0 or not res["json"]:
                raise RuntimeError(f"{name}: load failed: {res['stderr_tail']}")
            loads[name].append(res["json"]["load_s"])
            print(f"round {r + 1}/{rounds} {name}: load {res['json']['load_s']:.2f} s", file=sys.stderr, flush=True)
    return {"experiment": "encoder-cache", "rounds": rounds,
            "median_load_s": {v: statistics.median(x) for v, x in loads.items()}, "per_round": loads}


def ab_zero_shot(rounds: int, n_images: int = 101) -> dict[str, Any]:
    """Zero-shot seconds per image (detector side, `bench.measure_zero_shot`, a set of
    `n_images`): `self` with the image's turned copies as twins (`zero_shot.self_orientations:
    rot90`, 4 encoder passes) and without ("none"), and with the nearest twin alone instead
    of the mean of the 2% nearest (`self_twins` 0); `batch` with and without the second pass,
    and with each image's `self` map added (`batch_self` on: the cost of the optional fusion).
    The variants alternate in one assistant, round by round."""
    from anomalygpt.evaluation.bench import measure_zero_shot
    from anomalygpt.inspector import AnomalyGPT

    assistant = AnomalyGPT.from_pretrained("embedded", with_llm=False)
    zs = assistant.cfg.zero_shot
    variants = {"self, rot90 copies": ("self", "self_orientations", "rot90"),
                "self, none": ("self", "self_orientations", "none"),
                "self, rot90, nearest twin only": ("self", "self_twins", 0.0),
                "batch, second pass": ("batch", "second_pass", True),
                "batch, first pass only": ("batch", "second_pass", False),
                "batch, own twins added": ("batch", "batch_self", "on")}
    defaults = {key: getattr(zs, key) for _, key, _ in variants.values()}
    per: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for name, (mode, key, value) in variants.items():
            setattr(zs, key, value)
            per[name].append(measure_zero_shot(assistant, mode, n_images)["s_per_image"])
            setattr(zs, key, defaults[key])
            print(f"round {r + 1}/{rounds} {name}: {per[name][-1]:.3f} s per image", file=sys.stderr, flush=True)
    return {"experiment": "zero-shot", "rounds": rounds, "n_images": n_images,
            "median_s_per_image": {v: statistics.median(x) for v, x in per.items()}, "per_round": per}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=["decode", "encoder-cache", "zero-shot"])
    p.add_argument("--rounds", type=int, default=5, help="alternations of the two variants")
    p.add_argument("--repeats", type=int, default=3, help="decode: timed answers per variant and round (median)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        print("error: --rounds and --repeats must be at least 1", file=sys.stderr)
        return 2
    runs = {"decode": lambda: ab_decode(args.rounds, args.repeats), "encoder-cache": lambda: ab_encoder_cache(args.rounds),
            "zero-shot": lambda: ab_zero_shot(args.rounds)}
    res = runs[args.experiment]()
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
