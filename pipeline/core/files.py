"""File boundaries: PNG reading/writing (millimetres only here) and atomic writes.

Depth is metres everywhere in the code; the challenge's uint16 PNGs hold millimetres,
so the conversion happens in exactly two functions: `read_depth_m` and `write_depth_png`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.errors import DataError

MM_PER_M = 1000.0
UINT16_MAX = 65535


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None):
    """Yield a temporary path beside `path`; rename it onto `path` only on success.

    Readers never see a half-written file: an interrupted writer leaves the old file
    (or nothing) in place plus, at worst, a stray `*.tmp` that the next run overwrites.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or (path.suffix + ".tmp")
    )
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside `path`; swap it in place of `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def _open_png(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # force decoding now so truncation is reported here, with the name
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an image file") from None
    except UnidentifiedImageError:
        # PIL's own text repeats the path; say what it means instead.
        raise DataError(f"{path}: not a readable image (corrupt, empty or not a PNG)") from None
    except Exception as err:  # PIL raises many types for corrupt data
        detail = " ".join(str(err).split()) or type(err).__name__  # one line, never empty
        raise DataError(f"{path}: cannot decode image, the file is damaged ({detail})") from None
    if img.format != "PNG":
        raise DataError(f"{path}: expected a PNG file, found {img.format or 'unknown format'}")
    return img


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """8-bit RGB as HxWx3 uint8. Grayscale and RGBA inputs are converted (alpha dropped)."""
    path = Path(path)
    img = _open_png(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise DataError(f"{path}: RGB image is {img.mode} (16/32-bit); expected 8-bit RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_depth_mm(path: str | os.PathLike) -> np.ndarray:
    """Raw depth PNG as HxW uint16 millimetres (0 = invalid)."""
    path = Path(path)
    img = _open_png(path)
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        kind = "8-bit grayscale" if img.mode in ("L", "LA", "P", "1") else "colour"
        raise DataError(
            f"{path}: depth PNG is {kind} (mode {img.mode}); expected single-channel uint16 in mm"
        )
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise DataError(f"{path}: depth PNG has shape {arr.shape}; expected a single channel")
    if arr.dtype != np.uint16:
        if arr.min() < 0 or arr.max() > UINT16_MAX:
            raise DataError(f"{path}: depth values outside the uint16 range")
        arr = arr.astype(np.uint16)
    return arr


def read_depth_m(path: str | os.PathLike) -> np.ndarray:
    """Depth in metres as HxW float32; 0 marks invalid pixels."""
    return read_depth_mm(path).astype(np.float32) / MM_PER_M


def depth_m_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> uint16 mm, rounded and clipped; NaN and negatives become 0 (invalid)."""
    mm = np.nan_to_num(np.asarray(depth_m, dtype=np.float64) * MM_PER_M, nan=0.0)
    return np.clip(np.rint(mm), 0, UINT16_MAX).astype(np.uint16)


def write_depth_png(path: str | os.PathLike, depth_m: np.ndarray) -> None:
    """Write metres as a lossless single-channel uint16 PNG in millimetres, atomically."""
    mm = depth_m_to_mm(np.squeeze(depth_m))
    if mm.ndim != 2:
        raise ValueError(f"{path}: depth to write must be HxW, got shape {mm.shape}")
    with atomic_path(path, suffix=".png.tmp") as tmp:
        Image.fromarray(mm).save(tmp, format="PNG")


def write_rgb_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    with atomic_path(path, suffix=".png.tmp") as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
