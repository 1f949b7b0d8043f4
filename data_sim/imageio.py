"""Reading images into one canonical form, and writing outputs atomically.

Everything downstream (masks, synthesis, the encoder) assumes RGB uint8 HxWx3, so every
odd input (grayscale EL images, RGBA screenshots, 16-bit camera frames, palette PNGs) is
converted here, once, and a bad input fails here with one line that names the file and
the fix instead of deep inside OpenCV.

Writes go to a temporary file in the same folder followed by ``os.replace`` so an
interrupted run never leaves a half-written PNG that a later run would trust.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pnm"}
)
MIN_SIDE = 32  # smaller images have no room for an anomaly plus context at the encoder's stride

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]


def _bit_depth_scale(arr: np.ndarray) -> float:
    """Divisor mapping an integer image to 0..255.

    Uses the smallest common sensor bit depth (8/10/12/14/16 bits) that holds the data,
    so a 12-bit camera frame stored in a 16-bit container keeps its contrast instead of
    coming out almost black, while still being a fixed (not per-image stretched) scale.
    """
    peak = float(arr.max()) if arr.size else 0.0
    for bits in (8, 10, 12, 14, 16):
        if peak <= 2**bits - 1:
            return (2**bits - 1) / 255.0
    return max(peak, 1.0) / 255.0


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Any numeric array to uint8 without wrap-around."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64))
        if a.size and a.max() <= 1.0 and a.min() >= 0.0:  # float images are usually in 0..1
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = np.clip(arr.astype(np.float64), 0, None)
    return np.clip(np.rint(a / _bit_depth_scale(a)), 0, 255).astype(np.uint8)


def _channels_to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    """HxW, HxWx1, HxWx2 (gray+alpha), HxWx3, HxWx4 (RGBA) to HxWx3.

    Alpha is composited on black: transparent background becomes dark, the usual
    backdrop of an inspection image, and opaque pixels are unchanged.
    """
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"{name}: unsupported image shape {arr.shape}; pass HxW, HxWx3 or HxWx4 pixel data"
        )
    c = arr.shape[2]
    if c in (2, 4):
        color = arr[:, :, : c - 1].astype(np.float32)
        alpha = arr[:, :, c - 1 : c].astype(np.float32) / 255.0
        arr = np.clip(np.rint(color * alpha), 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """PIL image in any mode to an array whose channels ``_channels_to_rgb`` understands."""
    img = ImageOps.exif_transpose(img)  # phone photos: honour the orientation tag
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode.startswith("I;16"):
        return np.array(img).astype(np.uint16)
    return np.array(img)


def _read_file(path: Path) -> np.ndarray:
    """Decode a file with PIL, falling back to OpenCV (e.g. 16-bit colour TIFF PIL cannot open)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such image file; check the path")
    pil_error: Exception | None = None
    try:
        with warnings.catch_warnings():
            # PIL only warns between its pixel limit and twice that: refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return _pil_to_array(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # no OpenCV fallback: it would try to allocate the claimed size
        raise ValueError(
            f"{path}: refused as a possible decompression bomb ({err}); "
            f"use an image under {Image.MAX_IMAGE_PIXELS} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        pil_error = err
    data = np.fromfile(str(path), dtype=np.uint8)  # fromfile+imdecode copes with non-ASCII paths
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if arr is None:
        why = f" ({pil_error})" if pil_error else ""
        raise ValueError(
            f"{path}: cannot decode image{why}; replace it with a valid PNG/JPEG/TIFF/BMP file"
        )
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


def load_image(src: ImageLike, min_side: int = MIN_SIDE) -> np.ndarray:
    """Load a path, array or PIL image as RGB uint8 HxWx3.

    Arrays are taken as RGB(A) channel order. Raises ``ValueError`` with one line naming
    the input and the fix when it is unreadable or smaller than ``min_side`` pixels.
    """
    if isinstance(src, np.ndarray):
        name, arr = "array input", src
    elif isinstance(src, Image.Image):
        name, arr = "PIL image input", _pil_to_array(src)
    elif isinstance(src, (str, os.PathLike)):
        name = str(src)
        arr = _read_file(Path(src))
    else:
        raise ValueError(
            f"cannot load an image from {type(src).__name__}; pass a file path, numpy array or PIL image"
        )
    if arr.ndim == 3 and arr.shape[2] in (2, 4) and arr.dtype != np.uint8:
        arr = _to_uint8(arr)  # scale colour and alpha together before compositing
    rgb = _channels_to_rgb(_to_uint8(arr), name)
    h, w = rgb.shape[:2]
    if min(h, w) < min_side:
        raise ValueError(
            f"{name}: image is {w}x{h} px, below the {min_side} px minimum side; "
            f"use an image at least {min_side}x{min_side} px"
        )
    return rgb


def list_images(folder: Union[str, os.PathLike], recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (common extensions, hidden files skipped), sorted.

    Sorting by the relative path makes every seeded choice over the list reproducible
    across machines and file systems.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist; pass a folder that holds images")
    pattern = root.rglob("*") if recursive else root.glob("*")
    found = [
        p
        for p in pattern
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not found:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"no images ({exts}) found in {root}; put some image files there")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _atomic_bytes(path: Path, data: bytes) -> None:
    """Write bytes to a temp file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png(path: Union[str, os.PathLike], image: np.ndarray) -> Path:
    """Save an RGB/gray uint8 (or bool mask) array as PNG atomically."""
    path = Path(path)
    arr = image.astype(np.uint8) * 255 if image.dtype == np.bool_ else _to_uint8(image)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(f"{path}: could not encode PNG for an array of shape {image.shape}")
    _atomic_bytes(path, buf.tobytes())
    return path


def write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Save text (UTF-8) atomically."""
    path = Path(path)
    _atomic_bytes(path, text.encode("utf-8"))
    return path


def load_mask(path: Union[str, os.PathLike], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask PNG as bool HxW (any non-zero pixel is anomalous).

    ``shape`` resizes with nearest neighbour so the mask matches its image when a data
    set ships masks at another resolution.
    """
    arr = _read_file(Path(path))
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    mask = arr > 0
    if shape is not None and mask.shape != tuple(shape):
        mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return mask
