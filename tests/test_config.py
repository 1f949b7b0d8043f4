from pathlib import Path

import pytest

from anomalygpt.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_embedded_profile_loads():
    cfg = load_config("embedded")
    assert cfg.encoder.name == "tf_efficientnet_lite0" and cfg.llm.name == "embedded"
    assert cfg.encoder.levels == [2, 3]


def test_overrides_apply_and_validate():
    cfg = load_config("embedded", ["train.steps=7", "encoder.image_size=256", "llm.lora_r=0"])
    assert (cfg.train.steps, cfg.encoder.image_size, cfg.llm.lora_r) == (7, 256, 0)
    with pytest.raises(ConfigError, match="train.steps"):
        load_config("embedded", ["train.steps=0"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config("embedded", ["train.steps"])


@pytest.mark.parametrize("text, match", [
    ("encoder:\n  imgsize: 224\n", r"unknown config key 'encoder.imgsize'.*image_size"),
    ("bogus: 1\n", r"unknown config key 'bogus'"),
    ("encoder:\n  image_size: 100\n", r"encoder.image_size.*multiple of 16"),
    ("encoder:\n  image_size: big\n", r"encoder.image_size.*integer"),
    ("encoder:\n  backend: tensorflow\n", r"encoder.backend.*'timm', 'open_clip'"),
    ("llm:\n  quantization: 3bit\n", r"llm.quantization.*'none', '4bit', '8bit'"),
    ("train:\n  lr: -1\n", r"train.lr.*positive"),
    ("train:\n  sim:\n    mode: fancy\n", r"train.sim.mode"),
    ("memory:\n  weight: 2\n", r"memory.weight.*0..1"),
    ("encoder: [1, 2]\n", r"section 'encoder' must be a mapping"),
    ("encoder:\n  levels: 3\n", r"encoder.levels.*list"),
    ("a: [\n", r"not valid YAML at line"),
    ("- 1\n- 2\n", r"must hold a mapping"),
])
def test_bad_files_give_one_clear_line(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_profile(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown config profile 'nope'.*embedded"):
        load_config("nope")
