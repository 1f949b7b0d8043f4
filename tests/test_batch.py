"""`anomalygpt inspect FOLDER --jsonl`: nothing finished is lost when the run is killed,
bad files become error lines, and 2 accelerate ranks give the file one process gives."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalygpt import batch
from anomalygpt.cli import main
from data_sim.odd_files import KINDS, write_odd_file

REPO = Path(__file__).resolve().parent.parent
N_GOOD = 10


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Ten random parts and one text file named .png (sorted in the middle)."""
    root = tmp_path_factory.mktemp("batch") / "parts"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(root / f"p{i:02d}.png")
    (root / "p04b.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def one_run(folder, tiny_checkpoint, tmp_path_factory, one_thread) -> Path:
    """The uninterrupted run (with the tiny model's answers), in this process."""
    out = tmp_path_factory.mktemp("one") / "all.jsonl"
    assert main(["inspect", str(folder), "--checkpoint", str(tiny_checkpoint), "--jsonl", str(out)]) == 1
    return out


def test_one_run_writes_a_line_per_image(one_run, folder) -> None:
    recs = _records(one_run)
    assert [Path(r["source"]).name for r in recs] == sorted(p.name for p in folder.iterdir())
    bad = [r for r in recs if "error" in r]
    assert len(bad) == 1 and bad[0]["source"].endswith("p04b.png") and "cannot decode" in bad[0]["error"]
    assert all(isinstance(r["score"], float) and r["answer"] for r in recs if "error" not in r)


KILL_AFTER_5_MID_LINE = """
import os, signal, sys
from anomalygpt import batch
real_write = batch.JsonlWriter.write
count = [0]
def write(self, rec):
    if count[0] == 5:  # die half way through the sixth line, as a kill -9 during the write would
        self._fh.write('{"source": "half a li'); self._fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(self, rec); count[0] += 1
batch.JsonlWriter.write = write
from anomalygpt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill9_mid_run_then_resume_equals_one_run(one_run, folder, tiny_checkpoint, tmp_path, one_thread) -> None:
    out = tmp_path / "killed.jsonl"
    args = ["inspect", str(folder), "--checkpoint", str(tiny_checkpoint), "--jsonl", str(out)]
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_5_MID_LINE, *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    raw = out.read_text()
    assert raw.count("\n") == 5 and not raw.endswith("\n")  # five lines kept, the sixth torn
    # without --resume the finished work is not appended to twice
    assert main(args) == 2
    assert main([*args, "--resume"]) == 1  # the broken file (written before the kill) still counts
    assert _records(out) == _records(one_run)


def test_resume_of_a_finished_run_does_nothing(one_run, folder, tiny_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "again.jsonl"
    out.write_bytes(one_run.read_bytes())
    assert main(["inspect", str(folder), "--checkpoint", str(tiny_checkpoint), "--jsonl", str(out), "--resume",
                 "--no-answer"]) == 1
    assert out.read_bytes() == one_run.read_bytes()
    assert "0 in this run, 11 already done" in capsys.readouterr().err


def test_broken_and_odd_files_each_get_a_line(tmp_path, tiny_checkpoint, capsys, one_thread) -> None:
    src = tmp_path / "odd"
    src.mkdir()
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)  # not square: the EXIF rotation shows
    for kind in KINDS:
        write_odd_file(src, kind, kind, rgb)
    Image.fromarray(rgb).save(src / "plain.png")
    out = tmp_path / "odd.jsonl"
    code = main(["inspect", str(src), "--checkpoint", str(tiny_checkpoint), "--jsonl", str(out), "--no-answer"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    recs = {Path(r["source"]).stem: r for r in _records(out)}
    assert set(recs) == {*KINDS, "plain"}
    for kind, (_, readable) in KINDS.items():
        assert ("error" not in recs[kind]) == readable, (kind, recs[kind])
        if not readable:
            assert recs[kind]["error"].startswith(str(src / kind)), recs[kind]  # names the file...
            assert ";" in recs[kind]["error"]  # ...and the fix after the reason
            assert recs[kind]["error"] in err
    assert "decompression bomb" in recs["bomb"]["error"] and "1x1 px" in recs["one_pixel"]["error"]
    assert recs["plain"]["image_size"] == [64, 96] and recs["exif_rotated"]["image_size"] == [96, 64]
    assert "6 failed" in err


def test_a_torn_last_line_is_cut_before_appending(tmp_path) -> None:
    out = tmp_path / "t.jsonl"
    out.write_text('{"source": "a", "score": 1.0}\n{"source": "b", "sco')
    assert [r["source"] for r in batch.read_records(out)] == ["a"]
    todo, skipped = batch.plan(["a", "b", "c"], out, resume=True)
    assert (todo, skipped) == (["b", "c"], 1)
    with batch.JsonlWriter(out) as w:
        w.write({"source": "b", "score": 2.0})
    assert [r["source"] for r in _records(out)] == ["a", "b"]
    with pytest.raises(ValueError, match="--resume"):
        batch.plan(["a"], out, resume=False)


def test_merge_keeps_input_order_and_removes_shards(tmp_path) -> None:
    out = tmp_path / "m.jsonl"
    batch.shard_path(out, 0).write_text('{"source": "a"}\n{"source": "c"}\n')
    batch.shard_path(out, 1).write_text('{"source": "b"}\n{"source": "d", "error": "x"}\n')
    merged = batch.merge_shards(out, ["a", "b", "c", "d"])
    assert [r["source"] for r in merged] == ["a", "b", "c", "d"] == [r["source"] for r in _records(out)]
    assert batch.shard_files(out) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_accelerate_ranks_give_the_one_process_file(one_run, folder, tiny_checkpoint, tmp_path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` with Accelerator(cpu=True) inside: two
    gloo ranks on CPU, each inspects every other remaining image into its shard, rank 0 merges."""
    out = tmp_path / "ddp.jsonl"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "anomalygpt", "inspect", str(folder), "--checkpoint", str(tiny_checkpoint), "--jsonl", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, "the broken file must make the run fail"  # rank 0 exits 1
    # the launcher prints its own ChildFailedError traceback for a rank's exit 1; none of ours
    frames = [line for line in proc.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "/anomalygpt/" in f or "/data_sim/" in f], proc.stderr[-3000:]
    # sorted: p00..p04, p04b (broken, 6th: rank 1), p05..p09; every other image per rank
    assert "rank 0/2: 6 inspected, 0 failed" in proc.stderr and "rank 1/2: 4 inspected, 1 failed" in proc.stderr
    assert "10 inspected, 1 failed" in proc.stderr
    assert _records(out) == _records(one_run)
    assert batch.shard_files(out) == []


def test_each_left_over_shard_is_handed_in_by_exactly_one_rank(tmp_path) -> None:
    """Resuming with fewer processes than before: shards of ranks that no longer exist are
    dealt out, so every earlier line reaches the merge once."""
    out = tmp_path / "r.jsonl"
    for idx in range(5):
        batch.shard_path(out, idx).write_text(f'{{"source": "s{idx}"}}\n')
    dealt = [sorted(p.name for p in batch._shards_of(out, rank, 2)) for rank in range(2)]
    assert dealt == [["r.jsonl.rank0", "r.jsonl.rank2", "r.jsonl.rank4"], ["r.jsonl.rank1", "r.jsonl.rank3"]]
    todo, skipped = batch.plan([f"s{i}" for i in range(7)], out, resume=True, rank=1, world=2,
                               done={"s0", "s1", "s2", "s3", "s4"})
    assert (todo, skipped) == (["s6"], 5)


def test_a_second_writer_of_the_same_file_is_refused(tmp_path) -> None:
    out = tmp_path / "busy.jsonl"
    with batch.JsonlWriter(out):
        with pytest.raises(ValueError, match="another running inspection"):
            batch.JsonlWriter(out)
    batch.JsonlWriter(out).close()  # free again once the first one closed
