"""The encoder through ONNX Runtime (`anomalygpt export --format onnx`): the same features as
torch within 1e-4 at any batch and image size, chosen by encoder.runtime, torch as fallback."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from anomalygpt.onnx_encoder import (TOLERANCE, OnnxImageEncoder, OnnxUnavailable, export_encoder,
                                     max_feature_difference, select_encoder)

SAMPLE = Path(__file__).resolve().parent.parent / "anomalygpt" / "assets" / "elpv_defect.png"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    info = export_encoder(tiny_config.encoder, out)
    return out, info


@pytest.fixture(scope="module")
def torch_encoder(tiny_config):
    from anomalygpt.checkpoint import build_image_encoder

    return build_image_encoder(tiny_config.encoder)


def test_export_writes_a_checked_file(exported, tiny_config):
    out, info = exported
    assert out.is_file() and info["path"] == str(out) and info["bytes"] > 1_000_000
    assert info["levels"] == list(tiny_config.encoder.levels) and info["max_abs_diff_vs_torch"] <= TOLERANCE
    assert not list(out.parent.glob("*.tmp"))  # written by rename, no temp file left


@pytest.mark.parametrize("batch,size", [(1, 64), (3, 64), (2, 96), (1, 224)])
def test_features_equal_torch(exported, torch_encoder, tiny_config, batch, size):
    ort_encoder = OnnxImageEncoder(exported[0], tiny_config.encoder, threads=1)
    assert ort_encoder.dims == torch_encoder.dims and ort_encoder.global_dim == torch_encoder.global_dim
    x = torch.rand(batch, 3, size, size)
    (mt, gt), (mo, go) = torch_encoder(x), ort_encoder(x)
    assert [m.shape for m in mt] == [m.shape for m in mo] and gt.shape == go.shape
    assert max_feature_difference(torch_encoder, ort_encoder, x) <= TOLERANCE
    assert max(float(m.abs().max()) for m in mt) > 0.1  # features are not trivially zero


def test_runtime_choice_and_fallback(exported, torch_encoder, tiny_config, tmp_path, monkeypatch):
    monkeypatch.delenv("ANOMALYGPT_ENCODER_RUNTIME", raising=False)
    enc = tiny_config.encoder
    with_file = dataclasses.replace(enc, runtime="auto", onnx_path=str(exported[0]))
    assert isinstance(select_encoder(with_file, torch_encoder), OnnxImageEncoder)
    missing = dataclasses.replace(enc, runtime="auto", onnx_path=str(tmp_path / "none.onnx"))
    assert select_encoder(missing, torch_encoder) is torch_encoder
    assert select_encoder(dataclasses.replace(with_file, runtime="torch"), torch_encoder) is torch_encoder
    with pytest.raises(OnnxUnavailable, match="anomalygpt export --format onnx"):
        select_encoder(dataclasses.replace(missing, runtime="onnxruntime"), torch_encoder)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    assert select_encoder(dataclasses.replace(enc, runtime="auto", onnx_path=str(broken)), torch_encoder) is torch_encoder
    other_levels = dataclasses.replace(enc, runtime="onnxruntime", onnx_path=str(exported[0]), levels=[1, 3])
    with pytest.raises(OnnxUnavailable, match="export it again"):
        select_encoder(other_levels, torch_encoder)
    monkeypatch.setenv("ANOMALYGPT_ENCODER_RUNTIME", "torch")  # pins "auto" (the suite's default)
    assert select_encoder(with_file, torch_encoder) is torch_encoder


def test_inspector_on_onnxruntime_gives_the_torch_report(exported, tiny_checkpoint, tmp_path):
    import shutil

    import yaml

    from anomalygpt.inspector import AnomalyGPT

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    cfg_file = ckpt / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["encoder"]["onnx_path"] = str(exported[0])
    cfg_file.write_text(yaml.safe_dump(cfg))
    fast = AnomalyGPT.from_pretrained(ckpt, with_llm=False, encoder_runtime="onnxruntime")
    slow = AnomalyGPT.from_pretrained(ckpt, with_llm=False, encoder_runtime="torch")
    assert isinstance(fast.detector.encoder, OnnxImageEncoder)
    assert not isinstance(slow.detector.encoder, OnnxImageEncoder)
    a, b = fast.inspect(SAMPLE, question=None), slow.inspect(SAMPLE, question=None)
    assert a.score == pytest.approx(b.score, abs=1e-3) and a.verdict == b.verdict
    with pytest.raises(ValueError, match="unknown"):
        AnomalyGPT.from_pretrained(ckpt, with_llm=False, encoder_runtime="tensorrt")


def test_cli_export(tiny_checkpoint, tmp_path, capsys):
    from anomalygpt.cli import main

    out = tmp_path / "enc.onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert out.is_file() and "max abs difference to torch" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", "--format", "tflite"])
