"""Odd and broken image files, written on purpose, to check that a batch survives them.

A folder of real inspection images always holds a few files that are not what their name
says: an empty file from a failed copy, a JPEG cut short by a full disk, a text file
renamed .png, a thumbnail, a 16-bit camera frame, a CMYK scan, a palette PNG with a
transparent colour, a phone photo with an EXIF rotation tag, or a decompression bomb
(a tiny file that claims a huge picture). Each kind says whether the loader must read it
(`ok`) or refuse it with one line (`error`); the tests and benchmarks/broken_folder.py
use the same list.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

# kind -> (file suffix, must the loader read it?)
KINDS: dict[str, tuple[str, bool]] = {
    "empty": (".png", False),
    "truncated_png": (".png", False),
    "truncated_jpeg": (".jpg", False),
    "text_as_png": (".png", False),
    "one_pixel": (".png", False),
    "bomb": (".png", False),
    "gray16": (".png", True),
    "cmyk": (".jpg", True),
    "palette_alpha": (".png", True),
    "exif_rotated": (".jpg", True),
}


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _bomb_png(side: int = 30000) -> bytes:
    """A valid PNG header claiming side x side gray pixels (900 M) with almost no data: the
    decoder would allocate the whole picture before noticing the data is short."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 4)  # four rows of the claimed many
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def odd_file_bytes(kind: str, rgb: np.ndarray) -> bytes:
    """The bytes of one file of `kind`, made from the RGB uint8 image `rgb` where it needs one."""
    img = Image.fromarray(rgb)
    makers: dict[str, Callable[[], bytes]] = {
        "empty": lambda: b"",
        "truncated_png": lambda: _png_bytes(img)[: len(_png_bytes(img)) // 2],
        "truncated_jpeg": lambda: _jpeg_bytes(img)[: len(_jpeg_bytes(img)) // 2],
        "text_as_png": lambda: b"part number, verdict\n4711, ok\n" * 20,
        "one_pixel": lambda: _png_bytes(img.resize((1, 1))),
        "bomb": _bomb_png,
        "gray16": lambda: _png_bytes(Image.fromarray(
            (rgb.mean(axis=2).astype(np.uint16) * 257).astype(np.uint16))),
        "cmyk": lambda: _jpeg_bytes(img.convert("CMYK")),
        "palette_alpha": lambda: _png_bytes(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
                                            transparency=0),
        "exif_rotated": lambda: _exif_rotated(img),
    }
    if kind not in makers:
        raise ValueError(f"unknown odd-file kind {kind!r}; use one of {', '.join(KINDS)}")
    return makers[kind]()


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _jpeg_bytes(img, exif=exif.tobytes())


def write_odd_file(folder: Path, name: str, kind: str, rgb: np.ndarray) -> Path:
    """Write one file of `kind` as folder/name + the kind's suffix; returns its path."""
    path = Path(folder) / f"{name}{KINDS[kind][0]}"
    path.write_bytes(odd_file_bytes(kind, rgb))
    return path
