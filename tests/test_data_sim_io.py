"""data_sim.imageio: every odd input becomes RGB uint8, bad inputs fail with one clear line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_sim.imageio import list_images, load_image, load_mask, write_png, write_text


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 3 + y * 2) % 256).astype(np.uint8)


def test_grayscale_png_becomes_rgb(tmp_path: Path) -> None:
    g = _gradient()
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert (out[:, :, 0] == g).all() and (out[:, :, 2] == g).all()


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :20, 3] = 255  # left opaque, right transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (40, 40, 3)
    assert (out[:, :20, 0] == 200).all() and (out[:, 20:] == 0).all()


def test_16bit_png_scaled_to_8bit(tmp_path: Path) -> None:
    full = (_gradient().astype(np.uint16) * 257)  # full 16-bit range
    Image.fromarray(full).save(tmp_path / "s16.png")
    out = load_image(tmp_path / "s16.png")
    assert out.dtype == np.uint8
    assert np.abs(out[:, :, 0].astype(int) - _gradient().astype(int)).max() <= 1
    twelve = (_gradient().astype(np.uint16) * 16)  # 12-bit data in a 16-bit container
    out12 = load_image(twelve)
    assert out12.max() >= 250, "12-bit data should keep its contrast"


def test_palette_and_pil_and_float_inputs(tmp_path: Path) -> None:
    rgb = np.stack([_gradient()] * 3, axis=2)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (48, 64, 3)
    assert load_image(Image.fromarray(rgb)).shape == (48, 64, 3)
    f = load_image(_gradient().astype(np.float32) / 255.0)
    assert f.dtype == np.uint8 and f.max() > 200


def test_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError) as err:
        load_image(bad)
    msg = str(err.value)
    assert "broken.png" in msg and "\n" not in msg and "valid" in msg
    with pytest.raises(ValueError, match="no such image file"):
        load_image(tmp_path / "missing.png")


def test_tiny_image_refused_with_fix(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 50), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(ValueError) as err:
        load_image(tmp_path / "tiny.png")
    assert "tiny.png" in str(err.value) and "at least 32x32" in str(err.value)


def test_list_images_sorted_recursive_and_errors(tmp_path: Path) -> None:
    for rel in ["b.png", "a.jpg", "sub/c.PNG", "notes.txt", ".hidden/d.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.jpg", "b.png", "sub/c.PNG"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(empty)
    with pytest.raises(ValueError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    img = np.stack([_gradient()] * 3, axis=2)
    write_png(tmp_path / "out" / "i.png", img)
    mask = np.zeros((48, 64), bool)
    mask[5:9, 5:9] = True
    write_png(tmp_path / "out" / "m.png", mask)
    write_text(tmp_path / "out" / "t.txt", "hello")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["i.png", "m.png", "t.txt"]
    assert (load_image(tmp_path / "out" / "i.png") == img).all()
    assert (load_mask(tmp_path / "out" / "m.png") == mask).all()
