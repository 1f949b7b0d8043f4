"""The TorchScript backbone cache: same features as timm, no timm import once warm, and
a damaged or impossible cache only costs time."""
import json
import logging
import subprocess
import sys

import pytest
import torch

from anomalygpt import backbone_cache as bc

NAME, LEVELS = "tf_efficientnet_lite0", [2, 3]


@pytest.fixture(scope="module")
def timm_built():
    return bc.build_with_timm(NAME, "embedded", LEVELS)


def _features(module, x):
    with torch.no_grad():
        return module(x)


def test_cached_copy_is_bit_identical_and_read_without_timm(tmp_path, timm_built, monkeypatch):
    model, info = timm_built
    first, info1 = bc.load_backbone(NAME, "embedded", LEVELS, tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    # the second load must come from the file: building with timm now fails the test
    monkeypatch.setattr(bc, "build_with_timm", lambda *a: pytest.fail("rebuilt with timm despite the cache"))
    second, info2 = bc.load_backbone(NAME, "embedded", LEVELS, tmp_path)
    assert isinstance(second, torch.jit.ScriptModule)
    assert info2 == info1 == info
    assert info.indices == [2, 3, info.n_stages - 1] and info.channels[:2] == [40, 112]
    x = torch.rand(2, 3, 64, 80)
    for a, b in zip(_features(model, x), _features(second, x)):
        assert torch.equal(a, b)


def test_warm_process_never_imports_timm(tmp_path):
    bc.load_backbone(NAME, "embedded", LEVELS, tmp_path)
    code = ("import sys, json, torch; from anomalygpt.backbone_cache import load_backbone; "
            f"m, info = load_backbone({NAME!r}, 'embedded', {LEVELS!r}, __import__('pathlib').Path({str(tmp_path)!r})); "
            "m(torch.rand(1, 3, 64, 64)); print(json.dumps(['timm' in sys.modules, type(m).__name__]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, "RecursiveScriptModule"]


def test_damaged_copy_is_rebuilt(tmp_path, timm_built, caplog):
    bc.load_backbone(NAME, "embedded", LEVELS, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"not a torchscript archive")
    with caplog.at_level(logging.WARNING):
        module, _ = bc.load_backbone(NAME, "embedded", LEVELS, tmp_path)
    assert "damaged" in caplog.text
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(_features(module, x)[-1], _features(timm_built[0], x)[-1])
    assert path.stat().st_size > 1_000_000  # the rebuilt copy replaced the damaged file


def test_random_init_and_disabled_cache_write_nothing(tmp_path, monkeypatch):
    assert bc.cache_key(NAME, "none", LEVELS) is None
    bc.load_backbone(NAME, "none", LEVELS, tmp_path)
    monkeypatch.setenv(bc.DISABLE_ENV, "0")
    bc.load_backbone(NAME, "embedded", LEVELS, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_key_follows_levels_and_weights_file(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    k1 = bc.cache_key(NAME, str(weights), LEVELS)
    weights.write_bytes(b"xy")
    assert bc.cache_key(NAME, str(weights), LEVELS) != k1
    assert bc.cache_key(NAME, "embedded", [2, 3]) != bc.cache_key(NAME, "embedded", [1, 3])
    assert bc.cache_key(NAME, "embedded", [3, 2]) == bc.cache_key(NAME, "embedded", [2, 3])


def test_unscriptable_model_falls_back_once(tmp_path, monkeypatch, caplog):
    def refuse(*a, **k):
        raise RuntimeError("cannot script this")

    monkeypatch.setattr(torch.jit, "script", refuse)
    with caplog.at_level(logging.INFO):
        module, _ = bc.load_backbone(NAME, "embedded", LEVELS, tmp_path)
    assert not isinstance(module, torch.jit.ScriptModule) and "not cached" in caplog.text
    assert [p.suffix for p in tmp_path.iterdir()] == [".noscript"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        bc.load_backbone(NAME, "embedded", LEVELS, tmp_path)
    assert "not cached" not in caplog.text  # the marker stops a retry on every load
