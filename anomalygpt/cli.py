"""The `anomalygpt` command. Each subcommand parses its flags here and calls the library;
heavy imports happen inside the handlers so `--help` stays instant."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from . import __version__

ASSETS = Path(__file__).resolve().parent / "assets"
ALLOW_PICKLE_HELP = "load a checkpoint folder that holds pickle files (*.pt, *.bin, ...): only if you trust it"


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit code 2."""


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("timm").setLevel(logging.ERROR)


def _expand_images(items: Sequence[str]) -> list[str]:
    """Files as given; folders expanded to their images (sorted)."""
    from data_sim.imageio import list_images

    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(str(x) for x in list_images(p))
        else:
            out.append(item)
    return out


def _write_outputs(report, rgb, out_dir: Path, stem: str) -> None:
    from data_sim.imageio import write_png, write_text

    from .images import report_overlay

    write_png(out_dir / f"{stem}_overlay.png", report_overlay(rgb, report))
    write_text(out_dir / f"{stem}.json", json.dumps(report.to_dict(), indent=2))


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.server:
        return _inspect_via_server(args)
    from tqdm import tqdm

    from .images import load_image
    from .inspector import AnomalyGPT

    images = _expand_images(args.images)
    if not images:
        raise CLIError("no images given; pass image files or folders")
    distributed = args.distributed or _batch_world() > 1
    if (args.resume or distributed) and not args.jsonl:
        raise CLIError("--resume and distributed runs need --jsonl OUT.jsonl (the file that records finished images)")
    assistant = AnomalyGPT.from_pretrained(args.checkpoint, with_llm=not args.no_answer, allow_pickle=args.allow_pickle)
    mode = assistant.zero_shot_mode(args.zero_shot, args.ref or None)
    refs = assistant.build_references(_expand_images(args.ref)) if args.ref else None
    out_dir = Path(args.out) if args.out else None
    if args.jsonl:
        if mode is not None and mode.needs_batch:
            raise CLIError(f"--zero-shot {mode.name} scores the images as one set, so it cannot resume image by "
                           "image; use --json or --out instead of --jsonl")
        args.zero_shot = mode.name if mode is not None else ""
        return _inspect_to_jsonl(args, assistant, images, refs, out_dir, distributed)
    failures: list[tuple[str, str]] = []
    results = []
    question = None if args.no_answer else args.question

    def emit(report, rgb, path: str) -> None:
        report.source = path
        results.append(report.to_dict())
        if not args.json:
            tqdm.write(report.summary())
        if out_dir is not None:
            _write_outputs(report, rgb, out_dir, Path(path).stem)

    if mode is not None and mode.needs_batch:  # the images are scored as one set: read them all, score once
        loaded = []
        for path in images:
            try:
                loaded.append((path, load_image(path)))
            except (ValueError, OSError) as e:
                failures.append((path, str(e)))
        if len(loaded) < mode.min_images:
            raise CLIError(f"--zero-shot {mode.name} needs at least {mode.min_images} readable images of one product "
                           f"(got {len(loaded)}); give a folder, or use --zero-shot self")
        if len(loaded) > 1:
            print(f"scoring {len(loaded)} images as one set (zero-shot {mode.name})", file=sys.stderr)
        reports = assistant.inspect_many([rgb for _, rgb in loaded], object_name=args.object, question=question,
                                         zero_shot=mode.name)
        for (path, rgb), report in zip(loaded, reports):
            emit(report, rgb, path)
        images_iter: list[str] = []
    else:
        images_iter = images
    bar = tqdm(images_iter, desc="inspect", unit="img", disable=len(images_iter) < 2 or args.json, file=sys.stderr)
    for path in bar:
        try:
            rgb = load_image(path)
            report = assistant.inspect(rgb, refs, object_name=args.object, question=question,
                                       zero_shot=mode.name if mode is not None else "")
        except (ValueError, OSError) as e:
            failures.append((path, str(e)))
            continue
        emit(report, rgb, path)
    if args.json:
        print(json.dumps(results if len(results) != 1 else results[0], indent=2))
    if out_dir is not None and results:
        print(f"wrote overlays and JSON to {out_dir}", file=sys.stderr)
    for path, err in failures:
        print(f"error: {err}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(images)} images failed", file=sys.stderr)
        return 1
    return 0


def _inspect_via_server(args: argparse.Namespace) -> int:
    """`inspect --server URL`: the images go to a running `anomalygpt serve` (warm model, no
    torch import here); references are uploaded once as a reference set."""
    from .server.client import Client, ServerError

    unsupported = [flag for flag, on in (("--out", args.out), ("--jsonl", args.jsonl), ("--resume", args.resume),
                                         ("--distributed", args.distributed)) if on]
    if unsupported:
        raise CLIError(f"{', '.join(unsupported)} cannot be used with --server; drop them or inspect locally")
    images = _expand_images(args.images)
    if not images:
        raise CLIError("no images given; pass image files or folders")
    client = Client(args.server)
    try:
        ref_id = client.add_references(_expand_images(args.ref))["reference_set_id"] if args.ref else None
    except (ServerError, OSError) as e:
        raise CLIError(str(e)) from None
    question = "" if args.no_answer else args.question
    results, failures = [], []
    for path in images:
        try:
            rec = client.inspect(path, ref_id, args.object, question, args.zero_shot)
        except (ServerError, OSError) as e:
            failures.append(f"{path}: {e}")
            if "cannot reach" in str(e):
                break
            continue
        rec["source"] = path
        results.append(rec)
        if not args.json:
            line = f"{path}: {rec['verdict'].upper()} (score {rec['score']:.3f}, threshold {rec['threshold']:.3f})"
            print(line + (f"\n  answer: {rec['answer']}" if rec.get("answer") else ""))
    if args.json:
        print(json.dumps(results if len(results) != 1 else results[0], indent=2))
    for err in failures:
        print(f"error: {err}", file=sys.stderr)
    return 1 if failures else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the assistant once, then serve the HTTP API (anomalygpt.server) until Ctrl-C."""
    import uvicorn

    from .inspector import AnomalyGPT
    from .server.app import create_app

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"loading checkpoint {args.checkpoint} ...", file=sys.stderr, flush=True)
    assistant = AnomalyGPT.from_pretrained(args.checkpoint, with_llm=not args.no_llm, allow_pickle=args.allow_pickle)
    app = create_app(assistant, str(args.checkpoint), max_queue=args.max_queue)
    print(f"serving on http://{args.host}:{args.port}  (API page /docs; Ctrl-C to stop)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


def _batch_world() -> int:
    from .batch import world_from_env

    return world_from_env()


def _inspect_to_jsonl(args: argparse.Namespace, assistant, images: list[str], refs, out_dir: Path | None,
                      distributed: bool) -> int:
    """`inspect --jsonl`: a line per image as it finishes, --resume, and accelerate ranks (batch.py)."""
    from tqdm import tqdm

    from . import batch
    from .images import load_image

    question = None if args.no_answer else args.question

    def inspect_one(path: str) -> dict:
        rgb = load_image(path)
        report = assistant.inspect(rgb, refs, object_name=args.object, question=question,
                                   zero_shot=args.zero_shot)
        report.source = path
        if out_dir is not None:
            _write_outputs(report, rgb, out_dir, Path(path).stem)
        return report.to_dict()

    def show(rec: dict) -> None:
        if batch.ERROR_KEY in rec:
            tqdm.write(f"error: {rec[batch.ERROR_KEY]}", file=sys.stderr)
        elif not distributed:
            tqdm.write(f"{rec['source']}: {rec['verdict'].upper()} (score {rec['score']:.3f})")

    def progress(items):
        return tqdm(items, desc="inspect", unit="img", disable=len(items) < 2, file=sys.stderr)

    res, records = batch.run(inspect_one, images, Path(args.jsonl), args.resume, distributed, progress, show)
    if records is None:  # a rank other than the main one: its own part
        return 1 if res.failed else 0
    wanted = set(images)  # the whole file's state for these images, earlier (resumed) runs included
    failed = sum(batch.ERROR_KEY in r for r in records if r[batch.SOURCE_KEY] in wanted)
    ok = sum(batch.ERROR_KEY not in r for r in records if r[batch.SOURCE_KEY] in wanted)
    print(f"{ok} inspected, {failed} failed ({res.done + res.failed} in this run, {res.skipped} already done); "
          f"lines in {args.jsonl}", file=sys.stderr)
    return 1 if failed else 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .inspector import DEFAULT_QUESTION, AnomalyGPT

    assistant = AnomalyGPT.from_pretrained(args.checkpoint, allow_pickle=args.allow_pickle)
    assistant.zero_shot_mode(args.zero_shot, args.ref or None)  # a bad mode or mode + references: one line, early
    refs = assistant.build_references(_expand_images(args.ref)) if args.ref else None
    report = assistant.inspect(args.image, refs, object_name=args.object, zero_shot=args.zero_shot)
    report.source = args.image
    print(report.summary())
    history: list[tuple[str, str]] = [(DEFAULT_QUESTION, report.answer)]
    print("Ask follow-up questions (empty line or Ctrl-D to quit).")
    while True:
        try:
            q = input("you> ").strip()
        except EOFError:
            break
        if not q:
            break
        print("assistant> ", end="", flush=True)
        answer = ""
        for piece in assistant.stream_ask(report, q, history):
            answer += piece
            print(piece, end="", flush=True)
        print()
        turn = report.turns[-1] if report.turns else None
        if turn and turn["question"] == q and turn["corrected"]:
            answer = turn["text"]
            print(f"assistant> (checked against the report, corrected:) {answer}")
        history.append((q, answer.strip()))
    return 0


# one chat: trained questions and wordings the chat was never trained on (both polarities, a decision)
DEMO_FOLLOWUPS = ("Where is the anomaly?", "How big is the damaged area in total?", "Which cells are clean?",
                  "Is the top left corner fine?", "Can this cell go to the customer?", "How sure are you?")


def cmd_demo(args: argparse.Namespace) -> int:
    """Inspect a bundled defective ELPV cell against bundled normal references."""
    from data_sim.imageio import write_png

    from .images import load_image, report_overlay
    from .inspector import DEFAULT_QUESTION, AnomalyGPT

    sample = ASSETS / "elpv_defect.png"
    refs = sorted(ASSETS.glob("elpv_normal_ref*.png"))
    if not sample.is_file():
        raise CLIError(f"bundled sample {sample} is missing; reinstall the package")
    assistant = AnomalyGPT.from_pretrained(args.checkpoint)
    print(f"inspecting bundled sample {sample.name} against {len(refs)} normal references", flush=True)
    report = assistant.inspect(sample, refs or None, object_name="solar cell")
    report.source = sample.name
    print(report.summary())
    history = [(DEFAULT_QUESTION, report.answer)]
    for question in DEMO_FOLLOWUPS:  # a chat: each answer sees the turns before it
        answer = assistant.answer(report, question, history)
        history.append((question, answer.text))
        note = "\n   (the LLM's answer contradicted the report; replaced by the report's wording)" if answer.corrected else ""
        print(f"\nQ: {question}\nA: {answer.text}{note}")
    out = Path(args.out)
    write_png(out / "demo_overlay.png", report_overlay(load_image(sample), report))
    print(f"\nheat map written to {out / 'demo_overlay.png'}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from data_sim.simulate import run_simulate

    out = run_simulate(args.images, args.out, n=args.n, seed=args.seed, texture=args.texture, mode=args.mode)
    print(f"wrote {args.n} simulated samples, qa.jsonl and preview.png to {out}")
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from training.train import main as train_main

    return int(train_main(rest) or 0)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.harness import format_results, run_eval

    shots = args.shots if args.shots == "all" else int(args.shots)
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else (0, 1, 2)
    res = run_eval(args.dataset, checkpoint=args.checkpoint, shots=shots, seeds=seeds, out_dir=args.out,
                   answers=not args.no_answers, max_images=args.max_images, zero_shot=args.zero_shot,
                   overrides=args.set)
    print(format_results(res))
    if args.out:
        print(f"results.json and ROC/PR plots in {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .evaluation.bench import format_table, run_bench

    res = run_bench(checkpoint=args.checkpoint, quick=args.quick)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the checkpoint's encoder for ONNX Runtime (anomalygpt.onnx_encoder), or with
    --format gguf its LoRA as a llama.cpp adapter (anomalygpt.llama_adapter)."""
    from .checkpoint import read_config
    from .inspector import resolve_checkpoint

    if args.format == "gguf":
        return _export_gguf(args)
    from .onnx_encoder import export_encoder

    cfg = read_config(resolve_checkpoint(args.checkpoint))
    try:
        info = export_encoder(cfg.encoder, args.out)
    except ImportError as e:
        raise CLIError(f"{e.name or 'onnx'} is not installed; fix: pip install onnx onnxruntime") from None
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB; levels {info['levels']} + global; max abs "
          f"difference to torch {info['max_abs_diff_vs_torch']:.1e} at {info['checked_sizes']} px)")
    if args.out:
        print(f"use it with encoder.runtime: onnxruntime and encoder.onnx_path: {info['path']} in the "
              "checkpoint's config.yaml (the default location needs no setting)")
    else:
        print("the inspector now runs the encoder with ONNX Runtime (encoder.runtime: auto); "
              "delete the file or set encoder.runtime: torch to go back")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from .inspector import resolve_checkpoint
    from .llama_adapter import AdapterUnavailable, export_adapter
    from .llama_runtime import LLAMA_PIP, llama_cpp_importable

    try:
        info = export_adapter(resolve_checkpoint(args.checkpoint), args.out)
    except AdapterUnavailable as e:
        raise CLIError(str(e)) from None
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB; LoRA r {info['lora_r']} on {info['matrices']} "
          f"matrices of {info['base']}; max abs difference of base + LoRA to torch's folded weights "
          f"{info['max_abs_diff_vs_torch']:.1e})")
    if args.out:
        print(f"use it with llm.runtime: llama.cpp and llm.adapter_path: {info['path']} in the checkpoint's "
              "config.yaml (the default location needs no setting)")
    elif llama_cpp_importable():
        print("answers now run on llama.cpp (llm.runtime: auto); delete the file or set llm.runtime: torch to go back")
    else:
        print(f"answers run on llama.cpp (llm.runtime: auto) once llama_cpp is installed: {LLAMA_PIP}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Replace this process by Streamlit (exec): nothing runs after it, and a supervisor's
    SIGTERM or a Ctrl-C then reaches the server itself. A child process would be orphaned,
    still holding the port and ~2 GB, when only this parent got the signal."""
    app = Path(__file__).resolve().parent.parent / "chat_ui" / "app.py"
    if not app.is_file():
        raise CLIError(f"chat UI not found at {app}")
    env = dict(os.environ, ANOMALYGPT_CHECKPOINT=str(args.checkpoint))
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.host, "--browser.gatherUsageStats", "false", "--server.headless", "true"]
    print(f"chat UI on http://{args.host}:{args.port}  (Ctrl-C to stop)", flush=True)
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)
    return 0  # not reached: execve does not return


ZERO_SHOT_HELP = ("training-free mode, no references, frozen encoder only: 'self' (each image against its "
                  "own patches) or 'batch' (the given images of one product score each other)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anomalygpt", description="Conversational industrial inspection, offline on a CPU.")
    p.add_argument("--version", action="version", version=f"anomalygpt {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        return sp

    sp = add("inspect", "inspect images (files or folders), print reports, write overlays and JSON")
    sp.add_argument("images", nargs="+")
    sp.add_argument("--ref", nargs="*", default=[], help="1-8 images (or a folder) of normal parts")
    sp.add_argument("--object", default=None, help="what the part is, e.g. 'solar cell'")
    sp.add_argument("--out", default=None, help="folder for overlays (PNG) and reports (JSON)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")
    sp.add_argument("--question", default="Is there any anomaly in the image?")
    sp.add_argument("--no-answer", action="store_true", help="detector only, no LLM answer")
    sp.add_argument("--checkpoint", default="embedded")
    sp.add_argument("--jsonl", default=None, metavar="OUT.jsonl",
                    help="append one JSON line per image as it finishes (errors too, with their reason)")
    sp.add_argument("--resume", action="store_true", help="with --jsonl: skip images already in the file")
    sp.add_argument("--distributed", action="store_true",
                    help="with --jsonl: split the images between the processes of `accelerate launch` "
                         "(on by itself when WORLD_SIZE > 1)")
    sp.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    sp.add_argument("--zero-shot", default=None, metavar="MODE", help=ZERO_SHOT_HELP)
    sp.add_argument("--server", default=None, metavar="URL",
                    help="send the images to a running `anomalygpt serve` (e.g. http://127.0.0.1:8000) "
                         "instead of loading the model here")
    sp.set_defaults(func=cmd_inspect)

    sp = add("chat", "inspect one image, then chat about it in the terminal")
    sp.add_argument("image")
    sp.add_argument("--ref", nargs="*", default=[])
    sp.add_argument("--object", default=None)
    sp.add_argument("--checkpoint", default="embedded")
    sp.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    sp.add_argument("--zero-shot", default=None, metavar="MODE", help="training-free mode for one image: 'self'")
    sp.set_defaults(func=cmd_chat)

    sp = add("train", "train decoder, prompt learner and LoRA on simulated anomalies (see training.train --help)")
    sp.set_defaults(func=None)

    sp = add("eval", "evaluate on ELPV, MVTec AD, VisA or a folder")
    sp.add_argument("--dataset", required=True, help="elpv | elpv:mono | elpv-dev[:mono|poly] (dev set: no test image) | mvtec:PATH[:cat] | visa:PATH[:cat] | folder:PATH | textures[:NAME][:seed=N]")
    sp.add_argument("--shots", default="0", help="references per run: 0, k, or 'all' (all train normals)")
    sp.add_argument("--seeds", default="0,1,2")
    sp.add_argument("--out", default="out/eval")
    sp.add_argument("--checkpoint", default="embedded")
    sp.add_argument("--no-answers", action="store_true", help="skip the LLM answers (faster)")
    sp.add_argument("--max-images", type=int, default=None)
    sp.add_argument("--zero-shot", default=None, metavar="MODE", help=ZERO_SHOT_HELP + " (with --shots 0)")
    sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="memory.* or zero_shot.* setting for this evaluation, e.g. memory.orientations=none or "
                         "zero_shot.second_pass=false (repeatable)")
    sp.set_defaults(func=cmd_eval)

    sp = add("simulate", "write simulated anomalies, masks, qa.jsonl and a preview grid")
    sp.add_argument("--images", required=True, help="folder of normal images")
    sp.add_argument("--out", required=True)
    sp.add_argument("--n", type=int, default=16)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--texture", action="store_true", help="the whole image is the part (textures, cells)")
    sp.add_argument("--mode", default="mix", choices=["mix", "nsa", "cutpaste", "crack", "blotch", "line"])
    sp.set_defaults(func=cmd_simulate)

    sp = add("ui", "start the Streamlit chat")
    sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--checkpoint", default="embedded")
    sp.set_defaults(func=cmd_ui)

    sp = add("serve", "serve the HTTP API (inspect, reference sets, streamed answers; OpenAPI page at /docs)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--checkpoint", default="embedded")
    sp.add_argument("--no-llm", action="store_true", help="detector only: reports without answers")
    sp.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    sp.add_argument("--max-queue", type=int, default=32, help="requests waiting for the model before 503")
    sp.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    sp.set_defaults(func=cmd_serve)

    sp = add("export", "export for faster runtimes: the image encoder (onnx: ONNX Runtime) or the "
                       "LLM's LoRA (gguf: a llama.cpp adapter)")
    sp.add_argument("--format", default="onnx", choices=["onnx", "gguf"])
    sp.add_argument("--checkpoint", default="embedded")
    sp.add_argument("--out", default=None, help="file to write (default: the cache, found automatically)")
    sp.set_defaults(func=cmd_export)

    sp = add("demo", "inspect a bundled sample, print the report and an answer, write a heat map")
    sp.add_argument("--out", default="out")
    sp.add_argument("--checkpoint", default="embedded")
    sp.set_defaults(func=cmd_demo)

    sp = add("bench", "measure speed and memory of the embedded profile")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--quick", action="store_true", help="fewer repeats")
    sp.add_argument("--checkpoint", default="embedded")
    sp.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["train"]:  # the trainer owns its flags (config overrides key=value)
        args, rest = parser.parse_args(["train"]), argv[1:]
    else:
        args, rest = parser.parse_args(argv), []
    if args.command is None:
        parser.print_help()
        return 0
    if not args.verbose:
        _quiet_libraries()
    try:
        if args.command == "train":
            return cmd_train(args, rest)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for users; -v shows the traceback
        from .config import ConfigError
        from .hub import ModelNotAvailable

        if args.verbose or not isinstance(e, (CLIError, ConfigError, ModelNotAvailable, FileNotFoundError, ValueError)):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
