"""Built-in phantom images: small synthetic images so that the compendium runs with no data on disk.

These are **synthetic phantoms, not patients**. They are drawn from simple geometric and noise models
that only imitate the look of each modality; no real image or patient went into them, and results on
them say nothing about clinical performance. Labels are 0 = Normal and 1 = Pathology:

- ``chest_xray``: a frontal chest radiograph. The finding is one to three focal opacities (blurred
  brighter patches) inside the lung fields, from obvious to very faint. Normal images may show vessel
  markings, calcified granulomas and nipple shadows, which are small bright spots too.
- ``ct``: an axial chest CT slice in a lung window. The finding is one or more nodules (solid or
  ground-glass blobs, on average larger than the vessels seen end-on, but with overlapping sizes) or
  cavities (a bright ring with a dark centre).
- ``histology``: an H&E stained tissue patch. The finding is atypia: crowded, enlarged, pleomorphic and
  darker nuclei. Normal and pathological tissue are drawn from overlapping grades.

Each image depends only on ``(modality, seed, size, index)``, so a shorter set is a prefix of a longer
one. Geometry is drawn in normalised coordinates (-1 to 1 across the image), so a phantom looks the same
at every size. Images come in patients of one to three images that share anatomy, label and severity,
like repeat studies.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import ndimage

__all__ = ["MODALITIES", "PATHOLOGY_SHARE", "PhantomSet", "make_phantoms"]

MODALITIES: tuple[str, ...] = ("chest_xray", "ct", "histology")
PATHOLOGY_SHARE = 0.45
MIN_SIZE, MAX_SIZE = 16, 512
_PATIENT_STREAM, _IMAGE_STREAM = 0, 1
_MAX_IMAGES_PER_PATIENT = 3

Params = dict[str, float]
Array = np.ndarray


@dataclass(frozen=True)
class PhantomSet:
    """A set of phantom images with labels and patient ids.

    Attributes:
        images: uint8, ``(n, size, size)`` for chest_xray and ct, ``(n, size, size, 3)`` for histology.
        labels: int64 ``(n,)``, 0 = Normal, 1 = Pathology.
        patient_ids: One id per image, e.g. ``"phantom-ct-00017"``; a patient's images share the label.
        modality: One of :data:`MODALITIES`.
    """

    images: np.ndarray
    labels: np.ndarray
    patient_ids: list[str]
    modality: str


def make_phantoms(modality: str, n: int, size: int = 64, seed: int = 0) -> PhantomSet:
    """Make ``n`` phantom images of one modality.

    Args:
        modality: ``"chest_xray"``, ``"ct"`` or ``"histology"``.
        n: Number of images, at least 1.
        size: Side length in pixels, 16 to 512.
        seed: Seed; image ``i`` depends only on ``(modality, seed, size, i)``.

    Returns:
        The images, labels, patient ids and modality.

    Raises:
        ValueError: For an unknown modality, a size out of range or ``n < 1``.
    """
    _check_arguments(modality, n, size)
    index = MODALITIES.index(modality)
    draw_patient, render = _MODELS[modality]
    images, labels, patient_ids = [], [], []
    for patient, rng_patient, count in _patients(seed, index, n):
        label = int(rng_patient.random() < PATHOLOGY_SHARE)
        params = draw_patient(rng_patient)
        for _ in range(count):
            rng_shape, rng_noise = _image_rngs(seed, index, len(images))
            images.append(_to_uint8(render(rng_shape, rng_noise, params, label, size)))
            labels.append(label)
            patient_ids.append(f"phantom-{modality}-{patient:05d}")
    return PhantomSet(np.stack(images), np.asarray(labels, dtype=np.int64), patient_ids, modality)


def _check_arguments(modality: str, n: int, size: int) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown phantom modality {modality!r}; valid: {', '.join(MODALITIES)}")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")


def _patients(seed: int, index: int, n: int):
    """Yield ``(patient, rng, images to make)`` until ``n`` images are covered."""
    covered, patient = 0, 0
    while covered < n:
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, _PATIENT_STREAM, patient]))
        count = int(rng.integers(1, _MAX_IMAGES_PER_PATIENT + 1))
        yield patient, rng, min(count, n - covered)
        covered += count
        patient += 1


def _image_rngs(seed: int, index: int, i: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two generators for image ``i``: one for its geometry (size-free), one for its pixel noise."""
    shape, noise = np.random.SeedSequence([seed, index, _IMAGE_STREAM, i]).spawn(2)
    return np.random.default_rng(shape), np.random.default_rng(noise)


def _to_uint8(image: Array) -> Array:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Geometry helpers. Coordinates are normalised: y down, x right, both from -1 to 1 across the image.
# ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _axis(size: int) -> Array:
    """Normalised coordinates of the pixel centres along one axis."""
    axis = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
    axis.setflags(write=False)
    return axis


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[Array, Array]:
    yy, xx = np.meshgrid(_axis(size), _axis(size), indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _pixel(size: int) -> float:
    """Width of one pixel in normalised units."""
    return 2.0 / size


def _box(size: int, cy: float, cx: float, radius: float) -> tuple[slice, slice]:
    """Rows and columns of the pixels within ``radius`` of a centre (clipped to the image)."""
    scale = size / 2.0
    rows = slice(max(int((cy - radius + 1.0) * scale), 0), min(int((cy + radius + 1.0) * scale) + 1, size))
    cols = slice(max(int((cx - radius + 1.0) * scale), 0), min(int((cx + radius + 1.0) * scale) + 1, size))
    return rows, cols


def _local_grid(size: int, rows: slice, cols: slice) -> tuple[Array, Array]:
    axis = _axis(size)
    return axis[rows, None], axis[None, cols]


def _ellipse_radius(yy: Array, xx: Array, cy: float, cx: float, ry: float, rx: float,
                    angle: float = 0.0) -> Array:
    """Elliptic radius: 1 on the boundary of the ellipse, below 1 inside."""
    dy, dx = yy - cy, xx - cx
    if angle:
        cos, sin = np.cos(angle), np.sin(angle)
        dy, dx = cos * dy - sin * dx, sin * dy + cos * dx
    return np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2)


def _soft_inside(radius: Array, ramp: float) -> Array:
    """Soft indicator of ``radius < 1`` with a linear ramp of width ``ramp`` (in units of radius)."""
    return np.clip((1.0 - radius) / ramp + 0.5, 0.0, 1.0)


def _disc(size: int, yy: Array, xx: Array, cy: float, cx: float, ry: float, rx: float,
          angle: float = 0.0) -> Array:
    """Anti-aliased filled ellipse; ellipses under a pixel wide fade as in partial volume."""
    radius = _ellipse_radius(yy, xx, cy, cx, ry, rx, angle)
    return _soft_inside(radius, _pixel(size) / min(ry, rx))


def _stamp(canvas: Array, size: int, cy: float, cx: float, reach: float,
           shape: Callable[[Array, Array], Array]) -> None:
    """Add ``shape(yy, xx)`` to ``canvas`` inside the bounding box of radius ``reach`` only."""
    rows, cols = _box(size, cy, cx, reach)
    if rows.start < rows.stop and cols.start < cols.stop:
        canvas[rows, cols] += shape(*_local_grid(size, rows, cols))


@lru_cache(maxsize=32)
def _resize_matrix(size: int, res: int) -> Array:
    """Linear interpolation from ``res`` to ``size`` samples, as a ``(size, res)`` matrix."""
    position = np.clip((np.arange(size) + 0.5) * res / size - 0.5, 0.0, res - 1.0)
    low = np.minimum(np.floor(position).astype(int), res - 2)
    weight = position - low
    matrix = np.zeros((size, res))
    matrix[np.arange(size), low] = 1.0 - weight
    matrix[np.arange(size), low + 1] = weight
    matrix.setflags(write=False)
    return matrix


def _smooth_field(rng: np.random.Generator, sigma: float | tuple[float, float], res: int = 48) -> Array:
    """Zero-mean, unit-variance smooth noise on a fixed ``res`` grid (so it is the same at every size)."""
    field = ndimage.gaussian_filter(rng.standard_normal((res, res)), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _resize(field: Array, size: int) -> Array:
    matrix = _resize_matrix(size, field.shape[0])
    return matrix @ field @ matrix.T


def _point_in_ellipse(rng: np.random.Generator, cy: float, cx: float, ry: float, rx: float,
                      margin: float = 0.85) -> tuple[float, float]:
    """A uniform random point inside ``margin`` times an axis-aligned ellipse."""
    angle, radius = rng.uniform(0.0, 2.0 * np.pi), margin * np.sqrt(rng.random())
    return cy + ry * radius * np.sin(angle), cx + rx * radius * np.cos(angle)


def _blur(image: Array, size: int, sigma: float) -> Array:
    """Gaussian blur with ``sigma`` in normalised units."""
    return ndimage.gaussian_filter(image, sigma * size / 2.0, mode="nearest")


# ---------------------------------------------------------------------------------------------------
# Chest radiograph: brightness in [0, 1] (bright = attenuating).
# ---------------------------------------------------------------------------------------------------


def _cxr_patient(rng: np.random.Generator) -> Params:
    """Anatomy, exposure and (for pathology) severity of one chest radiograph patient."""
    return {
        "body_rx": rng.uniform(0.8, 0.95), "lung_dx": rng.uniform(0.36, 0.44), "lung_cy": rng.uniform(-0.12, 0.0),
        "lung_ry": rng.uniform(0.5, 0.6), "lung_rx": rng.uniform(0.24, 0.3), "heart_cx": rng.uniform(0.06, 0.16),
        "heart_rx": rng.uniform(0.2, 0.28), "heart_ry": rng.uniform(0.17, 0.23), "dome_y": rng.uniform(0.36, 0.48),
        "rib_gap": rng.uniform(0.115, 0.14), "gamma": rng.uniform(0.8, 1.25), "markings": rng.uniform(0.4, 1.2),
        "granulomas": rng.uniform(0.0, 2.5), "nipples": float(rng.random() < 0.3),
        "contrast": float(np.exp(rng.uniform(np.log(0.015), np.log(0.3)))), "extent": rng.uniform(0.035, 0.11),
        "n_findings": float(rng.integers(1, 4)),
    }


def _cxr_render(rng: np.random.Generator, noise: np.random.Generator, p: Params, label: int, size: int) -> Array:
    """One chest radiograph phantom."""
    shift_y, shift_x = rng.normal(0.0, 0.02, 2)
    yy, xx = _grid(size)
    yy, xx = yy - shift_y, xx - shift_x
    lungs = _cxr_lungs(yy, xx, p, size)
    image = _cxr_body(yy, xx, p, size) - 0.32 * lungs
    image += _cxr_mediastinum(yy, xx, p, size) * (1.0 - 0.5 * lungs)
    image += _cxr_ribs(yy, xx, p) + _cxr_clavicles(yy, xx)
    image += 0.06 * p["markings"] * lungs * _cxr_markings(rng, yy, xx, size)
    image += _cxr_spots(rng, p, lungs, shift_y, shift_x, size)
    if label:
        image += _cxr_opacities(rng, p, lungs, shift_y, shift_x, size)
    image = np.clip(_blur(image, size, 0.008), 0.0, 1.0) ** p["gamma"]
    return image + noise.normal(0.0, 0.025, image.shape)


def _cxr_body(yy: Array, xx: Array, p: Params, size: int) -> Array:
    trunk = _disc(size, yy, xx, 0.3, 0.0, 1.25, p["body_rx"])
    neck = _disc(size, yy, xx, -1.0, 0.0, 0.45, 0.22)
    tissue = np.maximum(trunk, neck)
    gradient = 0.5 + 0.12 * (yy + 1.0) / 2.0 - 0.1 * np.abs(xx) ** 3
    return 0.06 + tissue * gradient


def _cxr_dome(xx: Array, p: Params, side: float) -> Array:
    """Height of the diaphragm dome under one lung (``side`` -1 image left, +1 image right)."""
    centre = side * p["lung_dx"]
    top = p["dome_y"] - 0.04 * (side < 0)
    return top + 0.5 * (xx - centre) ** 2


def _cxr_lungs(yy: Array, xx: Array, p: Params, size: int) -> Array:
    """Soft mask of both lung fields, cut from below by the diaphragm domes."""
    lungs = np.zeros_like(yy)
    for side in (-1.0, 1.0):
        rx = p["lung_rx"] * (1.0 if side < 0 else 0.92)
        lung = _disc(size, yy, xx, p["lung_cy"], side * p["lung_dx"], p["lung_ry"], rx)
        above = np.clip((_cxr_dome(xx, p, side) - yy) / 0.05, 0.0, 1.0)
        lungs = np.maximum(lungs, lung * above)
    return lungs


def _cxr_mediastinum(yy: Array, xx: Array, p: Params, size: int) -> Array:
    width = 0.09 + 0.05 * np.clip(yy + 0.6, 0.0, 1.0)
    band = np.clip((width - np.abs(xx)) / 0.04, 0.0, 1.0) * (yy > -0.85)
    heart = _disc(size, yy, xx, p["dome_y"] - 0.12, p["heart_cx"], p["heart_ry"], p["heart_rx"])
    spine = np.clip((0.05 - np.abs(xx)) / 0.02, 0.0, 1.0) * (0.06 + 0.03 * np.cos(yy * 55.0))
    return 0.22 * np.maximum(band, heart) + spine


def _cxr_ribs(yy: Array, xx: Array, p: Params) -> Array:
    """Posterior rib arcs rising from the spine and curving down laterally."""
    ax = np.abs(xx)
    offsets = -0.72 + p["rib_gap"] * np.arange(10)[:, None, None]
    arc = offsets + 0.35 * ax * ax - 0.1 * ax - 0.05
    distance = (yy[None] - arc) / 0.022
    ribs = np.exp(-distance**2).max(axis=0)
    lateral = np.clip((0.88 - ax) / 0.08, 0.0, 1.0) * np.clip((ax - 0.04) / 0.05, 0.0, 1.0)
    return 0.09 * ribs * lateral


def _cxr_clavicles(yy: Array, xx: Array) -> Array:
    ax = np.abs(xx)
    line = -0.7 + 0.1 * ax - 0.25 * (ax - 0.35) ** 2
    inside = np.clip((0.65 - ax) / 0.05, 0.0, 1.0) * np.clip((ax - 0.08) / 0.04, 0.0, 1.0)
    return 0.1 * np.exp(-(((yy - line) / 0.03) ** 2)) * inside


def _cxr_markings(rng: np.random.Generator, yy: Array, xx: Array, size: int) -> Array:
    """Vessel markings: fine texture that is strongest near the hila."""
    texture = np.abs(_resize(_smooth_field(rng, 1.0, res=48), size))
    hilum = np.exp(-(np.minimum(np.hypot(yy + 0.05, xx - 0.17), np.hypot(yy + 0.05, xx + 0.17)) / 0.35) ** 2)
    return texture * (0.4 + hilum)


def _cxr_spots(rng: np.random.Generator, p: Params, lungs: Array, sy: float, sx: float, size: int) -> Array:
    """Confounders in every class: calcified granulomas and nipple shadows."""
    canvas = np.zeros((size, size))
    for _ in range(int(rng.poisson(p["granulomas"]))):
        cy, cx = _cxr_lung_point(rng, p, sy, sx)
        sigma, amplitude = rng.uniform(0.008, 0.02), rng.uniform(0.08, 0.25)
        _stamp(canvas, size, cy, cx, 3 * sigma, _gaussian(cy, cx, sigma, amplitude))
    if p["nipples"]:
        for side in (-1.0, 1.0):
            cy, cx = 0.3 + sy + rng.normal(0, 0.02), side * (p["lung_dx"] + 0.05) + sx + rng.normal(0, 0.02)
            _stamp(canvas, size, cy, cx, 0.1, _gaussian(cy, cx, 0.03, rng.uniform(0.04, 0.08)))
    return canvas * np.clip(lungs + 0.3, 0.0, 1.0)


def _cxr_opacities(rng: np.random.Generator, p: Params, lungs: Array, sy: float, sx: float, size: int) -> Array:
    """The finding: one to three blurred, irregular brighter patches inside the lungs."""
    canvas = np.zeros((size, size))
    for _ in range(int(p["n_findings"])):
        cy, cx = _cxr_lung_point(rng, p, sy, sx)
        sigma = p["extent"] * rng.uniform(0.7, 1.4)
        amplitude = p["contrast"] * rng.uniform(0.7, 1.3)
        for _ in range(3):
            oy, ox = rng.normal(0.0, 0.6 * sigma, 2)
            _stamp(canvas, size, cy + oy, cx + ox, 3 * sigma, _gaussian(cy + oy, cx + ox, sigma, amplitude / 2))
    return canvas * lungs


def _cxr_lung_point(rng: np.random.Generator, p: Params, sy: float, sx: float) -> tuple[float, float]:
    side = 1.0 if rng.random() < 0.5 else -1.0
    cy, cx = _point_in_ellipse(rng, p["lung_cy"], side * p["lung_dx"], p["lung_ry"], p["lung_rx"], 0.8)
    return cy + sy, cx + sx


def _gaussian(cy: float, cx: float, sigma: float, amplitude: float) -> Callable[[Array, Array], Array]:
    def shape(yy: Array, xx: Array) -> Array:
        return amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))

    return shape


# ---------------------------------------------------------------------------------------------------
# Chest CT: Hounsfield units, shown in a lung window (level -600, width 1500).
# ---------------------------------------------------------------------------------------------------

_HU_AIR, _HU_LUNG, _HU_FAT, _HU_SOFT, _HU_BONE = -1000.0, -860.0, -100.0, 40.0, 700.0
_LUNG_WINDOW = (-600.0, 1500.0)


def _ct_patient(rng: np.random.Generator) -> Params:
    """Anatomy, noise level and (for pathology) the kind and size of findings of one CT patient."""
    return {
        "body_rx": rng.uniform(0.8, 0.93), "body_ry": rng.uniform(0.55, 0.66), "body_cy": rng.uniform(-0.02, 0.05),
        "fat": rng.uniform(0.03, 0.1), "lung_dx": rng.uniform(0.33, 0.4), "lung_cy": rng.uniform(-0.06, 0.02),
        "lung_rx": rng.uniform(0.24, 0.29), "lung_ry": rng.uniform(0.33, 0.42), "heart_cx": rng.uniform(0.02, 0.1),
        "heart_r": rng.uniform(0.15, 0.21), "vessels": rng.uniform(15.0, 45.0), "noise_hu": rng.uniform(15.0, 50.0),
        "n_findings": float(rng.integers(1, 4)), "cavity": float(rng.random() < 0.25),
        "ground_glass": float(rng.random() < 0.35), "nodule_r": rng.uniform(0.018, 0.06),
    }


def _ct_render(rng: np.random.Generator, noise: np.random.Generator, p: Params, label: int, size: int) -> Array:
    """One chest CT phantom in a lung window."""
    yy, xx = _grid(size)
    scale = rng.uniform(0.93, 1.05)
    lungs = _ct_lungs(yy, xx, p, scale, size)
    hu = _ct_body(yy, xx, p, size) + (_HU_LUNG - _HU_SOFT) * lungs
    hu += 25.0 * lungs * _resize(_smooth_field(rng, 1.5, res=32), size)
    hu += _ct_bones(yy, xx, p, size)
    hu += lungs * _ct_vessels(rng, p, scale, size)
    if label:
        hu += lungs * _ct_findings(rng, p, scale, size)
    hu = _blur(hu, size, 0.006) + noise.normal(0.0, p["noise_hu"], hu.shape)
    level, width = _LUNG_WINDOW
    return (hu - level) / width + 0.5


def _ct_body(yy: Array, xx: Array, p: Params, size: int) -> Array:
    """Air outside, a fat layer under the skin and soft tissue (muscle, mediastinum) inside."""
    cy, ry, rx = p["body_cy"], p["body_ry"], p["body_rx"]
    body = _disc(size, yy, xx, cy, 0.0, ry, rx)
    muscle = _disc(size, yy, xx, cy, 0.0, ry - p["fat"], rx - p["fat"])
    inner_fat = _disc(size, yy, xx, cy - 0.02, 0.0, ry - p["fat"] - 0.06, rx - p["fat"] - 0.06)
    hu = _HU_AIR + (_HU_FAT - _HU_AIR) * body + (_HU_SOFT - _HU_FAT) * muscle
    return hu + 0.6 * (_HU_FAT - _HU_SOFT) * inner_fat * (1.0 - muscle + inner_fat) / 2.0


def _ct_lungs(yy: Array, xx: Array, p: Params, scale: float, size: int) -> Array:
    """Two lungs carved by the heart and the spine."""
    lungs = np.zeros_like(yy)
    for side in (-1.0, 1.0):
        rx = p["lung_rx"] * scale * (1.0 if side < 0 else 0.94)
        lung = _disc(size, yy, xx, p["lung_cy"], side * p["lung_dx"], p["lung_ry"] * scale, rx, side * 0.15)
        lungs = np.maximum(lungs, lung)
    heart = _disc(size, yy, xx, p["lung_cy"] - 0.05, p["heart_cx"], p["heart_r"], p["heart_r"] * 1.25)
    spine = _disc(size, yy, xx, p["body_cy"] + p["body_ry"] - 0.22, 0.0, 0.16, 0.13)
    return lungs * (1.0 - heart) * (1.0 - spine)


def _ct_bones(yy: Array, xx: Array, p: Params, size: int) -> Array:
    """Vertebra with spinal canal, sternum and rib cross-sections."""
    base = p["body_cy"] + p["body_ry"] - 0.2
    bone = _disc(size, yy, xx, base - 0.03, 0.0, 0.09, 0.1) - _disc(size, yy, xx, base + 0.1, 0.0, 0.04, 0.04)
    bone += _disc(size, yy, xx, base + 0.1, 0.0, 0.08, 0.08) - _disc(size, yy, xx, base + 0.1, 0.0, 0.045, 0.045)
    bone += _disc(size, yy, xx, p["body_cy"] - p["body_ry"] + p["fat"] + 0.05, 0.0, 0.03, 0.07)
    angles = np.linspace(0.35, np.pi - 0.35, 5)
    for angle in np.concatenate([angles, angles + np.pi]):
        cy = p["body_cy"] + (p["body_ry"] - p["fat"] - 0.05) * np.sin(angle)
        cx = (p["body_rx"] - p["fat"] - 0.05) * np.cos(angle)
        bone += _disc(size, yy, xx, cy, cx, 0.025, 0.045, -angle)
    return (_HU_BONE - _HU_SOFT) * np.clip(bone, 0.0, 1.0)


def _ct_lung_point(rng: np.random.Generator, p: Params, scale: float) -> tuple[float, float]:
    side = 1.0 if rng.random() < 0.5 else -1.0
    return _point_in_ellipse(rng, p["lung_cy"], side * p["lung_dx"], p["lung_ry"] * scale,
                             p["lung_rx"] * scale, 0.9)


def _ct_vessels(rng: np.random.Generator, p: Params, scale: float, size: int) -> Array:
    """Vessels seen end-on or obliquely: small bright dots and short ellipses."""
    canvas = np.zeros((size, size))
    for _ in range(int(rng.poisson(p["vessels"]))):
        cy, cx = _ct_lung_point(rng, p, scale)
        radius = float(np.clip(np.exp(rng.normal(np.log(0.011), 0.45)), 0.004, 0.035))
        stretch, angle = 1.0 + rng.exponential(0.6), rng.uniform(0.0, np.pi)
        hu = rng.uniform(-100.0, 60.0) - _HU_LUNG
        _stamp(canvas, size, cy, cx, radius * stretch + 0.05,
               lambda y, x: hu * _disc(size, y, x, cy, cx, radius, radius * stretch, angle))
    return canvas


def _ct_findings(rng: np.random.Generator, p: Params, scale: float, size: int) -> Array:
    """The finding: nodules (solid or ground-glass) or cavities."""
    canvas = np.zeros((size, size))
    for _ in range(int(p["n_findings"])):
        cy, cx = _ct_lung_point(rng, p, scale)
        radius = p["nodule_r"] * rng.uniform(0.75, 1.3)
        solid = rng.uniform(-700.0, -400.0) if p["ground_glass"] else rng.uniform(-100.0, 60.0)
        hu = solid - _HU_LUNG
        shape = _ct_cavity(size, cy, cx, radius * 1.4, hu) if p["cavity"] else _ct_nodule(size, cy, cx, radius, hu)
        _stamp(canvas, size, cy, cx, 1.5 * radius + 0.05, shape)
    return canvas


def _ct_nodule(size: int, cy: float, cx: float, radius: float, hu: float) -> Callable[[Array, Array], Array]:
    def shape(yy: Array, xx: Array) -> Array:
        return hu * _disc(size, yy, xx, cy, cx, radius, radius)

    return shape


def _ct_cavity(size: int, cy: float, cx: float, radius: float, hu: float) -> Callable[[Array, Array], Array]:
    def shape(yy: Array, xx: Array) -> Array:
        wall = _disc(size, yy, xx, cy, cx, radius, radius)
        hole = _disc(size, yy, xx, cy, cx, 0.55 * radius, 0.55 * radius)
        return hu * (wall - hole) + (_HU_AIR - _HU_LUNG) * hole

    return shape


# ---------------------------------------------------------------------------------------------------
# H&E histology: stain concentrations mixed with a Beer-Lambert model into RGB.
# ---------------------------------------------------------------------------------------------------

_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.07, 0.99, 0.11])


def _histo_patient(rng: np.random.Generator) -> Params:
    """Staining and grade of one tissue sample; the grade of the two classes overlaps."""
    return {
        "grade_normal": rng.beta(2.0, 5.0), "grade_pathology": rng.beta(5.0, 2.0),
        "eosin": rng.uniform(0.45, 0.8), "hematoxylin": rng.uniform(1.0, 1.6),
        "h_tint": rng.normal(0.0, 0.05), "e_tint": rng.normal(0.0, 0.05), "lumen": rng.uniform(0.6, 1.6),
    }


def _histo_render(rng: np.random.Generator, noise: np.random.Generator, p: Params, label: int,
                  size: int) -> Array:
    """One H&E phantom as RGB in [0, 1]."""
    grade = p["grade_pathology"] if label else p["grade_normal"]
    coarse = _smooth_field(rng, 3.0, res=32)
    eosin = p["eosin"] * _histo_stroma(rng, size) * np.clip(1.0 - 0.5 * _resize(coarse - p["lumen"], size), 0.05, 1.0)
    nuclei = _histo_nuclei(rng, grade, coarse, p["lumen"], size)
    hematoxylin = p["hematoxylin"] * nuclei + 0.06
    hematoxylin *= 1.0 + 0.12 * noise.standard_normal((size, size))
    return _histo_rgb(hematoxylin, eosin * (1.0 - 0.5 * np.clip(nuclei, 0, 1)), p) + noise.normal(0, 0.015, (size, size, 3))


def _histo_stroma(rng: np.random.Generator, size: int) -> Array:
    """Wavy eosin fibres around 1."""
    yy, xx = _grid(size)
    angle, frequency = rng.uniform(0.0, np.pi), rng.uniform(18.0, 30.0)
    warp = 2.5 * _resize(_smooth_field(rng, 4.0, res=32), size)
    fibres = np.cos(frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + warp)
    return 0.8 + 0.15 * fibres + 0.1 * _resize(_smooth_field(rng, 1.0, res=48), size)


def _histo_nuclei(rng: np.random.Generator, grade: float, coarse: Array, lumen: float, size: int) -> Array:
    """Hematoxylin concentration of the nuclei; crowding, size, pleomorphism and darkness grow with grade."""
    canvas = np.zeros((size, size))
    count = int(rng.poisson(22.0 + 55.0 * grade))
    mean_radius, spread = 0.04 + 0.03 * grade, 0.08 + 0.3 * grade
    res = coarse.shape[0]
    for _ in range(count):
        cy, cx = rng.uniform(-1.0, 1.0, 2)
        if coarse[int((cy + 1) * res / 2.0001), int((cx + 1) * res / 2.0001)] > lumen:
            continue
        radius = mean_radius * np.exp(rng.normal(0.0, spread))
        aspect = 1.0 + np.abs(rng.normal(0.0, 0.15 + 0.4 * grade))
        darkness = (0.8 + 0.5 * grade) * np.exp(rng.normal(0.0, 0.1 + 0.15 * grade))
        angle = rng.uniform(0.0, np.pi)
        _stamp(canvas, size, cy, cx, radius * aspect + 0.02,
               _nucleus(size, cy, cx, radius, aspect, angle, darkness))
    return canvas


def _nucleus(size: int, cy: float, cx: float, radius: float, aspect: float, angle: float,
             darkness: float) -> Callable[[Array, Array], Array]:
    def shape(yy: Array, xx: Array) -> Array:
        r = _ellipse_radius(yy, xx, cy, cx, radius / np.sqrt(aspect), radius * np.sqrt(aspect), angle)
        inside = _soft_inside(r, _pixel(size) / (radius / np.sqrt(aspect)))
        return darkness * inside * (0.75 + 0.25 * np.clip(r, 0.0, 1.0) ** 2)

    return shape


def _histo_rgb(hematoxylin: Array, eosin: Array, p: Params) -> Array:
    h_vector = _HEMATOXYLIN + np.array([p["h_tint"], 0.0, -p["h_tint"]])
    e_vector = _EOSIN + np.array([0.0, p["e_tint"], p["e_tint"]])
    density = hematoxylin[..., None] * h_vector + eosin[..., None] * e_vector
    return np.exp(-np.maximum(density, 0.0))


_MODELS: dict[str, tuple[Callable[[np.random.Generator], Params],
                         Callable[[np.random.Generator, np.random.Generator, Params, int, int], Array]]] = {
    "chest_xray": (_cxr_patient, _cxr_render),
    "ct": (_ct_patient, _ct_render),
    "histology": (_histo_patient, _histo_render),
}
