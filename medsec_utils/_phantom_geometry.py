"""Drawing helpers of the phantoms (private to ``phantoms``): ellipses, Gaussian blobs, smooth noise, blur.

Coordinates are normalised: y down, x right, both from -1 to 1 across the image, so a shape drawn with
these helpers looks the same at every image size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

Array = np.ndarray


@lru_cache(maxsize=16)
def _axis(size: int) -> Array:
    """Normalised coordinates of the pixel centres along one axis."""
    axis = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
    axis.setflags(write=False)
    return axis


@lru_cache(maxsize=16)
def grid(size: int) -> tuple[Array, Array]:
    """Normalised ``(y, x)`` coordinates of every pixel centre (read-only, cached)."""
    yy, xx = np.meshgrid(_axis(size), _axis(size), indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def pixel(size: int) -> float:
    """Width of one pixel in normalised units."""
    return 2.0 / size


def _ellipse_radius(yy: Array, xx: Array, cy: float, cx: float, ry: float, rx: float,
                    angle: float = 0.0) -> Array:
    """Elliptic radius: 1 on the boundary of the ellipse, below 1 inside."""
    dy, dx = yy - cy, xx - cx
    if angle:
        cos, sin = np.cos(angle), np.sin(angle)
        dy, dx = cos * dy - sin * dx, sin * dy + cos * dx
    return np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2)


def soft_inside(radius: Array, ramp: float) -> Array:
    """Soft indicator of ``radius < 1`` with a linear ramp of width ``ramp`` (in units of radius)."""
    return np.clip((1.0 - radius) / ramp + 0.5, 0.0, 1.0)


def disc(size: int, yy: Array, xx: Array, cy: float, cx: float, ry: float, rx: float,
          angle: float = 0.0) -> Array:
    """Anti-aliased filled ellipse; ellipses under a pixel wide fade as in partial volume."""
    radius = _ellipse_radius(yy, xx, cy, cx, ry, rx, angle)
    return soft_inside(radius, pixel(size) / min(ry, rx))


def _patches(size: int, cy: Array, cx: Array, reach: float) -> tuple[Array, Array, Array, Array]:
    """Square pixel patches around many centres: local coordinates, flat indices and validity."""
    half = int(np.ceil(reach * size / 2.0)) + 1
    offsets = np.arange(-half, half + 1)
    rows = np.floor((cy + 1.0) * size / 2.0).astype(int)[:, None] + offsets
    cols = np.floor((cx + 1.0) * size / 2.0).astype(int)[:, None] + offsets
    yy = ((rows + 0.5) * (2.0 / size) - 1.0)[:, :, None]
    xx = ((cols + 0.5) * (2.0 / size) - 1.0)[:, None, :]
    valid = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    index = rows[:, :, None] * size + cols[:, None, :]
    return yy, xx, index, valid


def _column(values: Array | float) -> Array:
    """Values as a ``(k, 1, 1)`` column for broadcasting over patches."""
    return np.asarray(values, dtype=float).reshape(-1, 1, 1)


def _scatter(size: int, index: Array, valid: Array, values: Array) -> Array:
    """Sum patch values into a ``(size, size)`` image."""
    flat = np.bincount(index[valid], values[valid], minlength=size * size)
    return flat.reshape(size, size)


def ellipses(size: int, cy: Array, cx: Array, ry: Array, rx: Array, angle: Array, value: Array,
              rim: float | Array = 0.0) -> Array:
    """Sum of many anti-aliased filled ellipses, rendered only in small patches.

    ``rim`` in [0, 1] lowers the centre relative to the border (a nuclear membrane, a bone cortex);
    ellipses under a pixel wide fade as in partial volume.
    """
    if len(cy) == 0:
        return np.zeros((size, size))
    yy, xx, index, valid = _patches(size, cy, cx, float(np.max(np.maximum(ry, rx))) + pixel(size))
    dy, dx = yy - _column(cy), xx - _column(cx)
    cos, sin = np.cos(_column(angle)), np.sin(_column(angle))
    radius = np.sqrt(((cos * dy - sin * dx) / _column(ry)) ** 2 + ((sin * dy + cos * dx) / _column(rx)) ** 2)
    inside = np.clip((1.0 - radius) * _column(np.minimum(ry, rx)) / pixel(size) + 0.5, 0.0, 1.0)
    profile = 1.0 - _column(rim) + _column(rim) * np.minimum(radius, 1.0) ** 2
    return _scatter(size, index, valid, _column(value) * inside * profile)


def gaussians(size: int, cy: Array, cx: Array, sigma: Array, amplitude: Array) -> Array:
    """Sum of many isotropic Gaussian blobs, rendered within three sigma."""
    if len(cy) == 0:
        return np.zeros((size, size))
    yy, xx, index, valid = _patches(size, cy, cx, 3.0 * float(np.max(sigma)))
    distance = np.hypot(yy - _column(cy), xx - _column(cx)) / (np.sqrt(2.0) * _column(sigma))
    values = _column(amplitude) * bump(distance)
    return _scatter(size, index, valid, values)


@lru_cache(maxsize=32)
def _interpolation(size: int, res: int) -> tuple[Array, Array]:
    """Lower sample index and weight for linear interpolation from ``res`` to ``size`` samples."""
    position = np.clip((np.arange(size) + 0.5) * res / size - 0.5, 0.0, res - 1.0)
    low = np.minimum(np.floor(position).astype(int), res - 2)
    weight = position - low
    low.setflags(write=False)
    weight.setflags(write=False)
    return low, weight


def smooth_field(rng: np.random.Generator, sigma: float, res: int = 48) -> Array:
    """Zero-mean, unit-variance smooth noise on a fixed ``res`` grid (so it is the same at every size)."""
    field = ndimage.gaussian_filter(rng.standard_normal((res, res)), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def resize(field: Array, size: int) -> Array:
    """Bilinear resize of a square field to ``size`` (elementwise, so no BLAS threads are involved)."""
    low, weight = _interpolation(size, field.shape[0])
    rows = field[low] * (1.0 - weight)[:, None] + field[low + 1] * weight[:, None]
    return rows[:, low] * (1.0 - weight) + rows[:, low + 1] * weight


def bump(distance: Array) -> Array:
    """``exp(-distance**2)``, cut off far out so that no subnormal numbers slow it down."""
    return np.exp(-np.minimum(distance * distance, 30.0))


def points_in_ellipse(rng: np.random.Generator, k: int, cy: Array | float, cx: Array | float,
                       ry: float, rx: float) -> tuple[Array, Array]:
    """``k`` uniform random points inside axis-aligned ellipses (centres may differ per point)."""
    angle, radius = rng.uniform(0.0, 2.0 * np.pi, k), np.sqrt(rng.random(k))
    return cy + ry * radius * np.sin(angle), cx + rx * radius * np.cos(angle)


def blur(image: Array, size: int, sigma: float) -> Array:
    """Gaussian blur with ``sigma`` in normalised units."""
    return ndimage.gaussian_filter(image, sigma * size / 2.0, mode="nearest")
