"""Decoding of single image files into float arrays in [0, 1] (private plumbing of ``data``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._common import DataError, min_max

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom"}


def read_image(path: Path, *, channels: int, window: tuple[float, float] | None = None) -> np.ndarray:
    """Read one image file as float32 ``(H, W, channels)`` in [0, 1].

    Args:
        path: a PNG/JPEG/TIFF/BMP file or a single-frame DICOM file.
        channels: 1 (grayscale) or 3 (RGB).
        window: CT window ``(center, width)`` in Hounsfield units, used for DICOM CT only.

    Raises:
        DataError: missing, unreadable or truncated file, or NaN pixels.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; fix the path in the manifest or restore the file")
    if path.suffix.lower() in DICOM_SUFFIXES:
        from ._dicom import read_dicom

        array = read_dicom(path, window=window)
    else:
        array = _read_pil(path)
    return to_channels(check_finite(array, path), channels, path)


def _read_pil(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                mode = "RGB" if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV") else "L"
                if img.mode in ("I", "I;16", "I;16B", "F"):
                    array = np.asarray(img, dtype=np.float32)
                    return min_max(array)
                return np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: unreadable or truncated image ({reason}); re-export the file or remove its row") from None


def check_finite(array: np.ndarray, source: Path | str) -> np.ndarray:
    """Raise a DataError naming ``source`` if ``array`` holds NaN or infinite pixels."""
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{source}: {bad} NaN or infinite pixels; repair or drop this image before training")
    return array


def to_channels(array: np.ndarray, channels: int, source: Path | str) -> np.ndarray:
    """Bring a ``(H, W)`` or ``(H, W, C)`` array to ``(H, W, channels)``."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DataError(f"{source}: pixel array of shape {array.shape} is not a 2-D image; export single 2-D images")
    array = array[..., :3]
    if array.shape[2] == channels:
        return array
    if channels == 1:
        return array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    return np.repeat(array, 3, axis=2)


def resize(array: np.ndarray, size: int, source: Path | str) -> np.ndarray:
    """Resize ``(H, W, C)`` float to ``(size, size, C)``; refuse images under a quarter of ``size``."""
    height, width = array.shape[:2]
    if min(height, width) < size / 4:
        raise DataError(
            f"{source}: image is {width}x{height} px, smaller than a quarter of the requested {size} px; "
            f"request a size of at most {4 * min(height, width)} px or use a larger source"
        )
    if (height, width) == (size, size):
        return array
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(array[..., c])).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
        for c in range(array.shape[2])
    ]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0)
