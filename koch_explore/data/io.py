"""Reading fundus images and masks robustly.

Every reader returns float32 RGB in [0, 1] (images) or bool (masks) and raises a single error
type, :class:`FundusReadError`, whose message names the file and the problem. Callers can catch
that one type for every bad input: truncated file, non-image, empty/black frame, wrong mask.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..core.images import unit_scale

# Decoding a 4k x 3k photo is normal; refuse only absurd sizes (decompression bombs): fundus cameras
# take at most ~24 MP, and 80 MP as float32 RGB is already ~1 GB.
MAX_PIXELS = 80_000_000
MIN_PHOTO_SIDE = 16
"""The smallest photo side :func:`read_image` accepts: below it no lesion or vessel can be seen."""


class FundusReadError(ValueError):
    """A fundus image or mask could not be used. ``path`` names the file, ``problem`` says why."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _decode_with_pillow_fallback(path: Path) -> np.ndarray | None:
    """cv2 cannot read GIF (DRIVE masks); imageio (a scikit-image dependency) can."""
    try:
        import imageio.v3 as iio
    except ImportError:  # pragma: no cover - scikit-image always brings imageio
        return None
    try:
        # Pillow only: letting imageio probe every plugin tries DICOM & co. on a renamed text file.
        arr = iio.imread(path, index=0, plugin="pillow")
    except Exception:
        return None
    return np.asarray(arr)


def read_raw(path: str | os.PathLike) -> np.ndarray:
    """Decode a file to a numpy array (H, W) or (H, W, C), channels in RGB order, any dtype."""
    p = Path(path)
    if not p.exists():
        raise FundusReadError(p, "file does not exist")
    if not p.is_file():
        raise FundusReadError(p, "is not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise FundusReadError(p, "file is empty (0 bytes)")
    _refuse_huge_before_decoding(p)
    data = np.fromfile(p, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if arr is not None:
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    else:
        arr = _decode_with_pillow_fallback(p)
    if arr is None:
        raise FundusReadError(p, f"not a readable image ({size} bytes; truncated or not an image format)")
    if arr.ndim not in (2, 3):
        raise FundusReadError(p, f"unexpected image shape {arr.shape}")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise FundusReadError(p, _too_large(_pixel_size(arr.shape[1], arr.shape[0])))
    if _looks_truncated(p, data):
        raise FundusReadError(p, "file is truncated (JPEG end-of-image marker missing)")
    return arr


def check_photo_size(arr: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse a decoded photo under :data:`MIN_PHOTO_SIDE` px a side, naming ``path``."""
    if min(arr.shape[:2]) < MIN_PHOTO_SIDE:
        raise FundusReadError(path, f"image of {arr.shape[1]}x{arr.shape[0]} px is too small for a fundus photo "
                                    f"(at least {MIN_PHOTO_SIDE} px a side)")


def _pixel_size(w: int, h: int) -> str:
    return f"{w}x{h} px ({w * h / 1e6:.0f} MP)"


def _too_large(size: str) -> str:
    return (f"image of {size} is larger than the {MAX_PIXELS / 1e6:.0f} MP this kit decodes "
            f"(a guard against decompression bombs; fundus cameras take at most ~24 MP): downscale it first")


def _refuse_huge_before_decoding(path: Path) -> None:
    """Read (width, height) from the file's header, without decoding the pixels (Pillow reads it
    lazily), and refuse an image over :data:`MAX_PIXELS`. Files Pillow cannot open pass: cv2 or the
    fallback decides about them."""
    import warnings

    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - scikit-image always brings Pillow
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the check here is ours
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError as exc:  # over Pillow's hard limit (~179 MP), far over ours
        import re

        n = re.search(r"\((\d+) pixels\)", str(exc))
        raise FundusReadError(path, _too_large(f"{int(n.group(1)) / 1e6:.0f} MP" if n else "over 179 MP"))
    except Exception:
        return
    if w * h > MAX_PIXELS:
        raise FundusReadError(path, _too_large(_pixel_size(w, h)))


def _looks_truncated(path: Path, data: np.ndarray) -> bool:
    # libjpeg fills a truncated JPEG with grey and only warns; the missing EOI marker is the tell.
    if data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8:
        tail = data[-64:].tobytes()
        return b"\xff\xd9" not in tail
    return False


def _to_float(arr: np.ndarray, path: Path) -> np.ndarray:
    """A decoded file's pixels as float32 in [0, 1]: integers and bool by their dtype's range (the one rule,
    :func:`~koch_explore.core.images.unit_scale`); a float file (a float TIFF) divided by its maximum when
    that exceeds 1, a convention of files, not of arrays a caller passes (those are refused outside [0, 1])."""
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr.astype(np.float32) / np.float32(unit_scale(arr.dtype)), 0.0, 1.0)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise FundusReadError(path, "image contains NaN or infinite values")
        hi = float(out.max()) if out.size else 0.0
        return np.clip(out / hi if hi > 1.0 else out, 0.0, 1.0)
    raise FundusReadError(path, f"unsupported pixel type {arr.dtype}")


def read_image(path: str | os.PathLike, *, allow_black: bool = False) -> np.ndarray:
    """Read a fundus photo as float32 RGB (H, W, 3) in [0, 1].

    Grayscale is replicated to three channels, alpha is dropped, 16-bit is scaled by 65535.
    An all-black (or constant) frame is an error unless ``allow_black``: it is what a failed
    camera capture or a broken export looks like, and it would silently train on nothing.
    """
    p = Path(path)
    arr = read_raw(p)
    check_photo_size(arr, p)
    img = _to_float(arr, p)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.shape[2] != 3:
        raise FundusReadError(p, f"expected 1, 3 or 4 channels, found {img.shape[2]}")
    if not allow_black:
        if float(img.max()) < 4.0 / 255.0:
            raise FundusReadError(p, "image is all black (max value < 4/255): no fundus in the frame")
        if float(img.max() - img.min()) < 1e-6:
            raise FundusReadError(p, "image is a constant frame: no fundus in the frame")
    return np.ascontiguousarray(img, dtype=np.float32)


def read_mask(path: str | os.PathLike, *, allow_empty: bool = True) -> np.ndarray:
    """Read a binary mask (vessel tree, FOV, lesion) as bool (H, W); non-zero is foreground."""
    p = Path(path)
    arr = read_raw(p)
    if arr.ndim == 3:
        arr = arr[:, :, :3].max(axis=2) if arr.shape[2] >= 3 else arr[:, :, 0]
    mask = arr > (arr.max() / 2 if arr.dtype.kind == "f" else 0)
    if not allow_empty and not mask.any():
        raise FundusReadError(p, "mask is empty (no foreground pixel)")
    return mask


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write float [0,1] RGB / gray or uint8 / bool arrays as an image file, atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if img.dtype == bool:
        arr = img.astype(np.uint8) * 255
    elif img.dtype == np.uint8:
        arr = img
    else:
        arr = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ext = p.suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, arr)
    if not ok:
        raise FundusReadError(p, f"could not encode image as {ext}")
    tmp = p.with_name(p.name + ".tmp")
    buf.tofile(tmp)
    os.replace(tmp, p)
    return p
