"""Property-based fuzzing (hypothesis) of the two places that take arbitrary user input: the
image loader and `key=value` config overrides. Bounded (few examples, derandomized, no
example database) so the suite stays fast and gives the same result on every run."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from anomalygpt.config import ConfigError, load_config, to_dict
from data_sim.imageio import MIN_SIDE, load_image

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _loads_or_refuses(src) -> None:
    """The loader's contract: RGB uint8 HxWx3 of at least MIN_SIDE, or one ValueError line."""
    try:
        rgb = load_image(src)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= MIN_SIDE


def _encoded(fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _encoded(fmt, i) for i, fmt in enumerate(("PNG", "JPEG", "BMP", "TIFF", "GIF"))}


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp"]))
def test_random_bytes_load_or_give_one_line(tmp_path, data, suffix) -> None:
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    _loads_or_refuses(path)


@FUZZ
@given(fmt=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8))
def test_damaged_real_files_load_or_give_one_line(tmp_path, fmt, cut, flips) -> None:
    data = bytearray(VALID[fmt][: max(1, int(len(VALID[fmt]) * cut))])
    for where, byte in flips:
        data[int(where * len(data))] = byte
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(bytes(data))
    _loads_or_refuses(path)


ARRAY_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_])


@FUZZ
@given(arr=hnp.arrays(ARRAY_DTYPES, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=40),
                      elements=None, fill=None))
def test_arrays_of_any_dtype_and_shape_load_or_give_one_line(arr) -> None:
    _loads_or_refuses(arr)


@FUZZ
@given(mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA", "I", "F", "I;16", "HSV"]),
       w=st.integers(1, 80), h=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_pil_images_of_every_mode(mode, w, h, seed) -> None:
    rng = np.random.default_rng(seed)
    img = Image.frombytes("RGB", (w, h), rng.integers(0, 255, (h, w, 3), dtype=np.uint8).tobytes()).convert(
        "RGB" if mode in ("I;16",) else mode)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 2**16, (h, w), dtype=np.uint16))
    _loads_or_refuses(img)
    if min(w, h) >= MIN_SIDE:
        assert load_image(img).shape == (h, w, 3)


# ---------------------------------------------------------------------------- config overrides
KNOWN_KEYS = sorted(
    f"{sec}.{k}" if not isinstance(v, dict) else f"{sec}.{k}.{kk}"
    for sec, fields in to_dict(load_config("tiny")).items() if isinstance(fields, dict)
    for k, v in fields.items() for kk in (v if isinstance(v, dict) and v else [None]))
KNOWN_KEYS = [k.removesuffix(".None") for k in KNOWN_KEYS]
YAML_VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "no", "null", "~", "[]", "{}", "[1, 2]", "[a, [b]]", "{a: 1}", ".nan", "-.inf",
                     "!!python/object:os.system ls", "2020-01-01", "'x'", "\"unterminated", "[", "a: b: c",
                     "embedded", "float16", "none", "0x10", "1e400", "1" + "0" * 400, "-" + "9" * 30]),
    st.text(max_size=20))
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=20),
                 st.lists(st.sampled_from(["train", "llm", "sim", "encoder", "steps", "x", ""]), min_size=1,
                          max_size=4).map(".".join))


@FUZZ
@given(pairs=st.lists(st.tuples(KEYS, YAML_VALUES), min_size=1, max_size=4))
def test_any_override_gives_a_valid_config_or_one_config_error(pairs) -> None:
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config("tiny", overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    flat = to_dict(cfg)
    for section in flat.values():  # whatever got through is finite where it is a number
        for v in (section.values() if isinstance(section, dict) else []):
            if isinstance(v, float):
                assert math.isfinite(v)


@FUZZ
@given(steps=st.integers(-5, 10**6), lr=st.floats(allow_nan=True, allow_infinity=True))
def test_numeric_overrides_are_taken_exactly_or_refused(steps, lr) -> None:
    try:
        cfg = load_config("tiny", [f"train.steps={steps}", f"train.lr={lr!r}"])
    except ConfigError:
        assert steps < 1 or not (math.isfinite(lr) and lr > 0)
        return
    assert cfg.train.steps == steps and cfg.train.lr == pytest.approx(lr, rel=0, abs=0)
