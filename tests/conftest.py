"""Shared fixtures: heavy models load once per session; tiny random-init models stand in for
the big-model paths. Everything is seeded."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# an encoder exported into the shared cache (`anomalygpt export`) must not change the suite's
# numbers: encoder.runtime "auto" runs torch here; tests of ONNX Runtime ask for it explicitly
os.environ.setdefault("ANOMALYGPT_ENCODER_RUNTIME", "torch")
# likewise answers: llm.runtime "auto" would pick llama.cpp once an adapter is exported into
# the cache and llama_cpp is installed; tests of llama.cpp ask for it explicitly
os.environ.setdefault("ANOMALYGPT_LLM_RUNTIME", "torch")

TINY_CONFIG = {
    "name": "tiny",
    "encoder": {"backend": "timm", "name": "tf_efficientnet_lite0", "pretrained": "embedded",
                "image_size": 64, "levels": [2, 3]},
    "text": {"backend": "llm", "object_name": "object"},
    "prompt": {"n_map_tokens": 2, "n_base_tokens": 2, "n_image_tokens": 1},
    "llm": {"name": "random", "lora_r": 4, "lora_alpha": 8, "max_new_tokens": 8},
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Modules that run models many times use one torch thread: on a shared 2-core machine
    more threads only oversubscribe the cores (OpenMP barriers stall)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_config():
    from anomalygpt.config import from_dict

    return from_dict(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """An untrained tiny checkpoint (64 px, 2-layer random Llama): tests the plumbing."""
    from anomalygpt import checkpoint as model_io

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model_io.save(model_io.build(tiny_config), path)
    return path


@pytest.fixture(scope="session")
def embedded_assistant():
    """The shipped embedded checkpoint with its LLM, loaded once."""
    from anomalygpt.inspector import AnomalyGPT

    return AnomalyGPT.from_pretrained("embedded")


@pytest.fixture(scope="session")
def elpv_mono():
    from data_sim.datasets import elpv_split

    return elpv_split("mono")
