"""Batch inspection that loses nothing: one JSON line per image, written as it goes.

A folder of thousands of images takes a long time on a CPU, and the process can die half
way (a kill, a reboot, a full disk). So every finished image is appended to a JSON-lines
file at once, flushed and fsync'ed, and `resume` skips every image already in the file:
a killed run loses at most the image it was working on. A line cut short by the kill is
dropped on resume (the image is redone). A bad image is a line with "error" naming the
reason, so the batch goes on and the file says what failed and why.

Across processes (accelerate launch: several CPU processes, GPUs or machines), every rank
reads the same finished set, takes every world-th remaining image, writes its own shard
file beside the output, and rank 0 merges the shards into the output in input order.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ERROR_KEY = "error"
SOURCE_KEY = "source"


def shard_path(out: Path, rank: int) -> Path:
    """Where rank `rank` writes its part of `out` (beside it, so the merge is a local rename)."""
    return out.with_name(f"{out.name}.rank{rank}")


def shard_files(out: Path) -> list[Path]:
    """Shard files of `out` left by any earlier run (whatever its number of ranks)."""
    return sorted(p for p in out.parent.glob(f"{out.name}.rank*") if p.name[len(out.name) + 5:].isdigit())


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file. A last line without its newline is what a kill in
    the middle of a write leaves: it is ignored (its image is redone)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    records = []
    for i, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {i} is not JSON; remove that line or write to a new file") from None
        if not isinstance(rec, dict) or SOURCE_KEY not in rec:
            raise ValueError(f"{path}: line {i} has no '{SOURCE_KEY}'; this is not an inspection file, "
                             "choose another --jsonl path")
        records.append(rec)
    return records


class JsonlWriter:
    """Appends one JSON object per line; each line is flushed and fsync'ed before the next
    image starts, so a finished image survives a kill -9 or a power cut."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        try:  # two runs appending to one file would interleave and redo each other's images
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise ValueError(f"{self.path} is being written by another running inspection; wait for it "
                             "to finish (then --resume) or choose another --jsonl file") from None
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        """Drop a last line a kill left without its newline, so the next line starts clean."""
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < size:
            self._fh.truncate(end)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_record(source: str, err: BaseException) -> dict[str, Any]:
    """The line for an image that could not be inspected. Loader errors already read as one
    sentence naming the file and the fix; anything else gets its exception type in front."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not isinstance(err, (ValueError, OSError)):
        msg = f"{type(err).__name__}: {msg}" if msg else type(err).__name__
    return {SOURCE_KEY: source, ERROR_KEY: msg or type(err).__name__}


@dataclass
class BatchResult:
    done: int = 0                # images inspected in this run
    failed: int = 0              # images that gave an error line in this run
    skipped: int = 0             # images already in the output (resume)
    records: list[dict[str, Any]] = field(default_factory=list)  # this run's lines, in order


def inspect_images(inspect_one: Callable[[str], dict[str, Any]], images: Sequence[str], writer: JsonlWriter,
                   progress: Callable[[Iterable[str]], Iterable[str]] = iter,
                   on_record: Callable[[dict[str, Any]], None] | None = None) -> BatchResult:
    """Inspect `images` one by one with `inspect_one(path) -> report dict`, writing a line for
    each as soon as it is done. Any exception for one image becomes its error line: the
    batch goes on (KeyboardInterrupt still stops it; what is written stays)."""
    res = BatchResult()
    for path in progress(images):
        try:
            rec = inspect_one(path)
        except Exception as e:  # noqa: BLE001 - one bad image must not end the batch
            rec = error_record(path, e)
        writer.write(rec)
        res.records.append(rec)
        if ERROR_KEY in rec:
            res.failed += 1
        else:
            res.done += 1
        if on_record is not None:
            on_record(rec)
    return res


def _done_sources(out: Path) -> set[str]:
    done = {r[SOURCE_KEY] for r in read_records(out)}
    for shard in shard_files(out):
        done |= {r[SOURCE_KEY] for r in read_records(shard)}
    return done


def _has_results(out: Path) -> bool:
    return any(p.is_file() and p.stat().st_size > 0 for p in [out, *shard_files(out)])


def _refuse_overwrite(out: Path) -> None:
    raise ValueError(f"{out} (or a shard of it) already holds results; pass --resume to continue that run "
                     "or choose a new --jsonl file")


def plan(images: Sequence[str], out: Path, resume: bool, rank: int = 0, world: int = 1,
         done: set[str] | None = None) -> tuple[list[str], int]:
    """(this rank's images, number skipped as already done). Without `resume` an output that
    already holds lines is refused rather than appended to twice. `done` overrides what is
    read from the local files (a distributed run passes the union over every rank)."""
    out = Path(out)
    if done is None:
        if _has_results(out) and not resume:
            _refuse_overwrite(out)
        done = _done_sources(out) if resume else set()
    todo = [p for p in images if p not in done]
    return todo[rank::world], len(images) - len(todo)


def merge_records(out: Path, images: Sequence[str], records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `out` holds plus `records` -> `out` in input order, written atomically (temp file +
    rename). Lines of images not in this run's input (an earlier run over other files) keep
    their place after these; an image present twice keeps its first line."""
    out = Path(out)
    by_source: dict[str, dict[str, Any]] = {}
    for rec in [*read_records(out), *records]:
        by_source.setdefault(rec[SOURCE_KEY], rec)
    order = list(dict.fromkeys(images))
    merged = [by_source.pop(s) for s in order if s in by_source] + list(by_source.values())
    tmp = out.with_name(f".{out.name}.merge-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in merged:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return merged


def merge_shards(out: Path, images: Sequence[str]) -> list[dict[str, Any]]:
    """One machine: `out` + every shard file beside it -> `out` in input order; shards removed."""
    shards = shard_files(out)
    merged = merge_records(out, images, [r for shard in shards for r in read_records(shard)])
    for shard in shards:
        shard.unlink(missing_ok=True)
    return merged


def _shards_of(out: Path, rank: int, world: int) -> list[Path]:
    """The shard files rank `rank` hands in: its own, and those left by ranks this run does
    not have (an earlier run with more processes), dealt out by index."""
    mine = []
    for p in shard_files(out):
        idx = int(p.name[len(out.name) + 5:])
        if idx == rank or (idx >= world and idx % world == rank):
            mine.append(p)
    return mine


def world_from_env() -> int:
    """Number of processes a launcher (accelerate launch, torchrun) started; 1 when run alone."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def run(inspect_one: Callable[[str], dict[str, Any]], images: Sequence[str], out: Path, resume: bool,
        distributed: bool = False, progress: Callable[[Iterable[str]], Iterable[str]] = iter,
        on_record: Callable[[dict[str, Any]], None] | None = None) -> tuple[BatchResult, list[dict[str, Any]] | None]:
    """Inspect `images` into the JSON-lines file `out`; returns (this process's result, every
    record now in `out` on the main process, else None): a resumed run's exit code then
    counts the errors of the earlier part too.

    `distributed` joins the processes started by `accelerate launch` (gloo on CPUs, NCCL on
    GPUs; Accelerator(cpu=True) when no GPU is visible, so CPU ranks form one group). The
    finished set and the shards' lines travel through the process group, not the file
    system, so machines need not share a folder for the output (each writes its shards
    locally; the merged file is on the main process's machine).
    """
    out = Path(out)
    if not distributed:
        with JsonlWriter(out) as writer:  # locked before reading what is done
            todo, skipped = plan(images, out, resume)
            res = inspect_images(inspect_one, todo, writer, progress, on_record)
        res.skipped = skipped
        return res, read_records(out)
    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    acc = Accelerator(cpu=not torch.cuda.is_available())
    rank, world = acc.process_index, acc.num_processes
    # every rank sees what every rank has on its disk, so all agree on the plan (and refuse together)
    seen = gather_object([(_has_results(out), sorted(_done_sources(out)) if resume else [])])
    if any(has for has, _ in seen) and not resume:
        _refuse_overwrite(out)
    done = set().union(*(set(d) for _, d in seen))
    todo, skipped = plan(images, out, resume, rank, world, done=done)
    with JsonlWriter(shard_path(out, rank)) as writer:
        res = inspect_images(inspect_one, todo, writer, progress, on_record)
    res.skipped = skipped
    handed_in = _shards_of(out, rank, world)
    lines = [r for shard in handed_in for r in read_records(shard)]
    gathered = _gather_to_main(lines, acc)
    merged = merge_records(out, images, gathered) if acc.is_main_process else None
    acc.wait_for_everyone()  # the merged file is on disk before any shard goes
    for shard in handed_in:
        shard.unlink(missing_ok=True)
    print(f"rank {rank}/{world}: {res.done} inspected, {res.failed} failed", file=sys.stderr, flush=True)
    return res, merged


def _gather_to_main(lines: list[dict[str, Any]], acc: Any) -> list[dict[str, Any]]:
    """Every rank's lines on the main process (others get []), in rank order."""
    import torch.distributed as dist

    if acc.num_processes == 1 or not dist.is_initialized():
        return lines
    parts: list[Any] | None = [None] * acc.num_processes if acc.is_main_process else None
    dist.gather_object(lines, parts, dst=0)
    return [r for part in parts for r in part] if parts is not None else []
