"""Decoding of single image files into float arrays in [0, 1] (private plumbing of ``data``).

Scaling policy, so that one image gives the same grey levels whatever its export's bit depth:

* 8-bit samples (PNG, JPEG, BMP, palette, bilevel) are divided by 255, 16-bit samples (``I;16`` PNG and
  TIFF) by 65535; 32-bit integer and floating-point TIFFs have no fixed range and are scaled from their own
  darkest to brightest pixel. DICOM files follow the rules of ``_dicom``.
* An alpha channel is composited onto black (transparent pixels read as black), as medical images are
  dark where there is no signal.
* Multi-page files and images over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) are
  refused before their pixels are decoded.

:func:`decode_image` also says which of these rules it applied (:data:`SCALINGS`, alpha), so that the data
set's notes can say so.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._common import DataError, min_max

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
NOT_IMAGES = {"dicomdir"}  # DICOM media index files: DICOM, but never an image
SCALINGS = ("8-bit", "16-bit", "min-max", "dicom", "float")  # how decode_image mapped samples to [0, 1]
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_COLOUR_MODES = ("RGB", "P", "CMYK", "YCbCr", "LAB", "HSV")


class Decoded(NamedTuple):
    """One decoded image: float32 ``(H, W, channels)`` pixels in [0, 1], the :data:`SCALINGS` entry applied, and
    whether an alpha channel was composited onto black."""

    pixels: np.ndarray
    scaling: str
    alpha: bool


def is_dicom(path: Path) -> bool:
    """True for ``.dcm``/``.dicom`` files and for files without an image suffix that carry the DICOM ``DICM``
    prefix (PACS exports often name files ``IM0001`` or by their UID); never for a ``DICOMDIR`` index."""
    suffix = path.suffix.lower()
    if path.name.lower() in NOT_IMAGES or suffix in IMAGE_SUFFIXES:
        return False
    if suffix in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_image_file(path: Path) -> bool:
    """True for a file the readers take: an image suffix (any case) or DICOM (see :func:`is_dicom`)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path)


def read_image(path: Path, *, channels: int, window: tuple[float, float] | None = None) -> np.ndarray:
    """Read one image file as float32 ``(H, W, channels)`` in [0, 1]; see :func:`decode_image`."""
    return decode_image(path, channels=channels, window=window).pixels


def decode_image(path: Path, *, channels: int, window: tuple[float, float] | None = None) -> Decoded:
    """Read one image file as float32 ``(H, W, channels)`` in [0, 1], scaled as the module docstring says.

    Args:
        path: a PNG/JPEG/TIFF/BMP file or a single-frame DICOM file.
        channels: 1 (grayscale) or 3 (RGB).
        window: CT window ``(center, width)`` in Hounsfield units, used for DICOM CT only.

    Raises:
        DataError: missing, unreadable, truncated, multi-page or too large file, or NaN pixels.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; fix the path in the manifest or restore the file")
    if is_dicom(path):
        from ._dicom import read_dicom

        array, scaling, alpha = read_dicom(path, window=window), "dicom", False
    else:
        array, scaling, alpha = _read_pil(path)
    return Decoded(to_channels(check_finite(array, path), channels, path), scaling, alpha)


def _read_pil(path: Path) -> tuple[np.ndarray, str, bool]:
    """Pixels in [0, 1], the scaling applied and whether alpha was composited, of a file Pillow reads."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line
            with Image.open(path) as img:
                _check_openable(img, path)
                img.load()
                return _pil_pixels(img)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise _too_large(path, f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: unreadable or truncated image ({reason}); re-export the file or remove its row") from None


def _check_openable(img: Image.Image, path: Path) -> None:
    """Refuse multi-page files and images over Pillow's pixel limit before decoding them."""
    pages = getattr(img, "n_frames", 1)
    if pages > 1:
        raise DataError(f"{path}: multi-page image ({pages} pages) is not supported; export single 2-D images")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise _too_large(path, f"{img.width}x{img.height} px")


def _too_large(path: Path, size: str) -> DataError:
    """The one-line refusal of an image over ``PIL.Image.MAX_IMAGE_PIXELS``."""
    return DataError(
        f"{path}: image is {size}, over the limit of {Image.MAX_IMAGE_PIXELS:,} pixels that guards against "
        "decompression bombs and running out of memory; downscale it (e.g. to 4096 px on the long side) or, "
        "if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS before loading"
    )


def _pil_pixels(img: Image.Image) -> tuple[np.ndarray, str, bool]:
    """Apply the module's scaling policy to a loaded Pillow image."""
    if img.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(img, dtype=np.float32) / 65535.0, "16-bit", False
    if img.mode in ("I", "F"):
        return min_max(np.asarray(img, dtype=np.float32)), "min-max", False
    if img.has_transparency_data:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3] * rgba[..., 3:], "8-bit", True
    mode = "RGB" if img.mode in _COLOUR_MODES else "L"
    return np.asarray(img.convert(mode), dtype=np.float32) / 255.0, "8-bit", False


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
