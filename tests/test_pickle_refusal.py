"""Weights load without pickle where the format allows: a checkpoint folder holding a pickle is
refused unless the user allows it, and the one pip-shipped .pth loads with weights_only=True."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anomalygpt import checkpoint as model_io
from anomalygpt.cli import main


@pytest.fixture()
def ckpt_copy(tiny_checkpoint, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def _image(tmp_path):
    path = tmp_path / "part.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("name", ["extra.pt", "pytorch_model.bin", "adapter.PTH", "state.pkl"])
def test_a_pickle_in_the_checkpoint_folder_is_refused(ckpt_copy, name) -> None:
    torch.save({"w": torch.zeros(2)}, ckpt_copy / name)
    with pytest.raises(model_io.PickleRefused, match=f"{name}.*--allow-pickle"):
        model_io.load(ckpt_copy, with_llm=False)
    assert model_io.load(ckpt_copy, with_llm=False, allow_pickle=True).detector is not None


def test_cli_refuses_in_one_line_and_the_flag_allows(ckpt_copy, tmp_path, capsys) -> None:
    torch.save({"w": torch.zeros(2)}, ckpt_copy / "extra.pt")
    img = _image(tmp_path)
    assert main(["inspect", img, "--checkpoint", str(ckpt_copy), "--no-answer"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "extra.pt" in err and "--allow-pickle" in err and "\n" not in err
    assert main(["inspect", img, "--checkpoint", str(ckpt_copy), "--no-answer", "--allow-pickle"]) == 0


def test_training_state_is_allowed_and_a_local_llm_folder_is_checked(ckpt_copy, tmp_path) -> None:
    torch.save({"step": 1}, ckpt_copy / model_io.TRAINING_STATE_FILE)  # the trainer's, read weights_only
    model_io.load(ckpt_copy, with_llm=False)
    llm_dir = tmp_path / "my-llm"
    llm_dir.mkdir()
    (llm_dir / "pytorch_model.bin").write_bytes(b"pickle")
    cfg = yaml.safe_load((ckpt_copy / model_io.CONFIG_FILE).read_text())
    cfg["llm"]["name"] = str(llm_dir)
    (ckpt_copy / model_io.CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    with pytest.raises(model_io.PickleRefused, match="my-llm"):
        model_io.load(ckpt_copy, with_llm=True)


def test_pip_shipped_encoder_weights_load_weights_only(monkeypatch) -> None:
    import timm

    from anomalygpt import hub

    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw.get("weights_only")) or real(*a, **kw))
    with torch.device("meta"):
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert len(hub.embedded_timm_state_dict(model)) == len(model.state_dict())
    assert seen == [True]
