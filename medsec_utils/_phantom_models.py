"""The three phantom models (private to ``phantoms``): per modality, a patient draw and an image renderer.

``MODELS[modality]`` is ``(draw_patient, render)``: ``draw_patient(rng)`` gives the parameters one patient's
images share; ``render(rng_shape, rng_noise, params, label, size)`` draws one image in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._phantom_geometry import (
    Array, blur, bump, disc, ellipses, gaussians, grid, pixel, points_in_ellipse, resize, smooth_field, soft_inside,
)

Params = dict[str, float]
PatientDraw = Callable[[np.random.Generator], Params]
Renderer = Callable[[np.random.Generator, np.random.Generator, Params, int, int], Array]


# ---------------------------------------------------------------------------------------------------
# Chest radiograph: brightness in [0, 1] (bright = attenuating).
# ---------------------------------------------------------------------------------------------------


def _cxr_patient(rng: np.random.Generator) -> Params:
    """Anatomy, exposure, confounders and (used for pathology only) severity of one patient."""
    return {
        "body_rx": rng.uniform(0.86, 0.97), "lung_dx": rng.uniform(0.38, 0.44), "lung_cy": rng.uniform(-0.12, -0.04),
        "lung_ry": rng.uniform(0.56, 0.66), "lung_rx": rng.uniform(0.3, 0.35), "taper": rng.uniform(0.3, 0.45),
        "heart_cx": rng.uniform(0.1, 0.17), "heart_rx": rng.uniform(0.25, 0.31), "heart_ry": rng.uniform(0.18, 0.24),
        "dome_y": rng.uniform(0.36, 0.46), "rib_gap": rng.uniform(0.125, 0.145), "exposure": rng.uniform(-0.05, 0.05),
        "markings": rng.uniform(0.5, 1.5), "granulomas": rng.uniform(0.0, 2.5), "nipples": float(rng.random() < 0.3),
        "contrast": float(np.exp(rng.uniform(np.log(0.025), np.log(0.35)))), "extent": rng.uniform(0.045, 0.13),
        "n_findings": float(rng.integers(1, 4)),
    }


def _cxr_render(rng: np.random.Generator, noise: np.random.Generator, p: Params, label: int, size: int) -> Array:
    """One chest radiograph phantom."""
    shift = rng.normal(0.0, 0.02, 2)
    yy, xx = grid(size)
    yy, xx = yy - shift[0], xx - shift[1]
    heart = disc(size, yy, xx, p["dome_y"] - 0.1, p["heart_cx"], p["heart_ry"], p["heart_rx"])
    mediastinum = np.maximum(_cxr_mediastinum(yy, xx), heart)
    lungs = _cxr_lungs(yy, xx, p, size) * (1.0 - mediastinum)
    image = _cxr_body(yy, xx, p, size) - 0.3 * lungs + _cxr_spine(yy, xx)
    image += (_cxr_ribs(yy, xx, p) + 0.03 * p["markings"] * _cxr_markings(rng, yy, xx, size)) * (0.3 + 0.7 * lungs)
    image += _cxr_clavicles(yy, xx) + _cxr_spots(rng, p, shift, size) * (0.3 + 0.7 * lungs)
    if label:
        image += _cxr_opacities(rng, p, shift, size) * lungs
    image = blur(image, size, 0.008) * (1.0 + 2.0 * p["exposure"]) + p["exposure"]
    return image + noise.normal(0.0, 0.025, image.shape)


def _cxr_body(yy: Array, xx: Array, p: Params, size: int) -> Array:
    """Soft tissue of trunk (with rounded shoulders) and neck over dark air, brighter towards the abdomen."""
    shoulder = np.clip(-0.3 - yy, 0.0, None)
    dy, dx = ((yy - 0.4) / 1.35) ** 2, (xx / (p["body_rx"] * (1.0 - 0.35 * shoulder * shoulder))) ** 2
    trunk = soft_inside(np.sqrt(np.sqrt(dy * dy + dx * dx)), pixel(size) / p["body_rx"])
    neck = disc(size, yy, xx, -1.0, 0.0, 0.45, 0.2)
    gradient = 0.5 + 0.05 * yy - 0.15 * dx * np.abs(xx)
    return 0.05 + np.maximum(trunk, neck) * gradient


def _cxr_lungs(yy: Array, xx: Array, p: Params, size: int) -> Array:
    """Soft mask of both lung fields: rounded apices, cut from below by the diaphragm domes."""
    lungs = np.zeros_like(yy)
    height = np.clip((yy - p["lung_cy"]) / p["lung_ry"], -1.0, 1.0)
    depth = (1.0 - height) / 2.0
    narrowing = 1.0 - p["taper"] * depth * depth * depth
    for side in (-1.0, 1.0):
        centre = side * p["lung_dx"]
        rx = p["lung_rx"] * (1.0 if side < 0 else 0.93) * narrowing
        radius = np.sqrt(((yy - p["lung_cy"]) / p["lung_ry"]) ** 2 + ((xx - centre) / rx) ** 2)
        dome = p["dome_y"] - 0.04 * (side < 0) + 0.7 * (xx - centre + 0.05 * side) ** 2
        above = np.clip((dome - yy) / 0.04, 0.0, 1.0)
        lungs = np.maximum(lungs, soft_inside(radius, pixel(size) / p["lung_rx"]) * above)
    return lungs


def _cxr_mediastinum(yy: Array, xx: Array) -> Array:
    """Soft mask of the mediastinum: a central band, wider at the hila."""
    width = 0.1 + 0.05 * np.clip(yy + 0.5, 0.0, 1.0)
    return np.clip((width - np.abs(xx)) / 0.04, 0.0, 1.0)


def _cxr_spine(yy: Array, xx: Array) -> Array:
    """Faint vertebrae through the mediastinum, and the dark tracheal air column above."""
    trachea = np.clip((0.03 - np.abs(xx)) / 0.015, 0.0, 1.0) * np.clip((-0.35 - yy) / 0.05, 0.0, 1.0)
    spine = np.clip((0.055 - np.abs(xx)) / 0.02, 0.0, 1.0) * (0.02 + 0.015 * np.cos(yy * 50.0))
    return spine - 0.06 * trachea


def _cxr_ribs(yy: Array, xx: Array, p: Params) -> Array:
    """Posterior rib arcs rising from the spine and falling laterally, with fainter oblique anterior ribs."""
    ax = np.abs(xx)
    posterior = _cxr_nearest_rib(yy + 0.9 * ax - 1.1 * ax * ax, p["rib_gap"])
    anterior = _cxr_nearest_rib(yy - 0.15 - 0.5 * np.clip(0.85 - ax, 0.0, None), p["rib_gap"])
    ribs = bump(posterior / 0.03) + 0.5 * bump(anterior / 0.025) * np.clip((ax - 0.2) / 0.1, 0.0, 1.0)
    lateral = np.clip((0.88 - ax) / 0.06, 0.0, 1.0) * np.clip((ax - 0.05) / 0.05, 0.0, 1.0)
    return 0.08 * ribs * lateral


def _cxr_nearest_rib(level: Array, gap: float, first: float = -0.8, count: int = 10) -> Array:
    """Signed distance from ``level`` to the nearest of ``count`` ribs spaced ``gap`` apart."""
    nearest = np.clip(np.rint((level - first) / gap), 0, count - 1)
    return level - first - nearest * gap


def _cxr_clavicles(yy: Array, xx: Array) -> Array:
    """Two clavicles curving out from the top of the mediastinum."""
    ax = np.abs(xx)
    line = -0.72 + 0.12 * ax - 0.3 * (ax - 0.35) ** 2
    inside = np.clip((0.65 - ax) / 0.05, 0.0, 1.0) * np.clip((ax - 0.08) / 0.04, 0.0, 1.0)
    return 0.1 * bump((yy - line) / 0.03) * inside


def _cxr_markings(rng: np.random.Generator, yy: Array, xx: Array, size: int) -> Array:
    """Vessel markings: fine texture that is strongest near the hila and fades to the periphery."""
    texture = np.abs(resize(smooth_field(rng, 1.0, res=48), size))
    hila = np.minimum(np.hypot(yy + 0.05, xx - 0.18), np.hypot(yy + 0.05, xx + 0.18))
    return texture * (0.5 + 2.0 * bump(hila / 0.3))


def _cxr_points(rng: np.random.Generator, k: int, p: Params, shift: Array) -> tuple[Array, Array]:
    """``k`` random points in the lung fields (mostly above the domes)."""
    side = np.where(rng.random(k) < 0.5, -1.0, 1.0)
    cy, cx = points_in_ellipse(rng, k, p["lung_cy"] - 0.05, side * p["lung_dx"], 0.75 * p["lung_ry"],
                                0.75 * p["lung_rx"])
    return cy + shift[0], cx + shift[1]


def _cxr_spots(rng: np.random.Generator, p: Params, shift: Array, size: int) -> Array:
    """Confounders in every class: small calcified granulomas and (some patients) nipple shadows."""
    k = int(rng.poisson(p["granulomas"]))
    cy, cx = _cxr_points(rng, k, p, shift)
    spots = gaussians(size, cy, cx, rng.uniform(0.008, 0.02, k), rng.uniform(0.08, 0.25, k))
    if p["nipples"]:
        ny = 0.32 + shift[0] + rng.normal(0.0, 0.02, 2)
        nx = np.array([-1.0, 1.0]) * (p["lung_dx"] + 0.06) + shift[1] + rng.normal(0.0, 0.02, 2)
        spots += gaussians(size, ny, nx, np.full(2, 0.028), rng.uniform(0.04, 0.08, 2))
    return spots


def _cxr_opacities(rng: np.random.Generator, p: Params, shift: Array, size: int) -> Array:
    """The finding: one to three blurred, irregular brighter patches (three lobes each)."""
    k = int(p["n_findings"])
    cy, cx = _cxr_points(rng, k, p, shift)
    sigma = np.repeat(p["extent"] * rng.uniform(0.7, 1.4, k), 3)
    amplitude = np.repeat(p["contrast"] * rng.uniform(0.7, 1.3, k), 3) / 2.0
    lobe_y, lobe_x = rng.normal(0.0, 0.6, (2, 3 * k)) * sigma
    return gaussians(size, np.repeat(cy, 3) + lobe_y, np.repeat(cx, 3) + lobe_x, sigma, amplitude)


# ---------------------------------------------------------------------------------------------------
# Chest CT: Hounsfield units, shown in a lung window (level -600, width 1500).
# ---------------------------------------------------------------------------------------------------

_HU_AIR, _HU_LUNG, _HU_FAT, _HU_SOFT, _HU_BONE = -1000.0, -860.0, -100.0, 40.0, 700.0
_LUNG_WINDOW = (-600.0, 1500.0)


def _ct_patient(rng: np.random.Generator) -> Params:
    """Anatomy, noise level and (used for pathology only) the kind and size of the findings."""
    return {
        "body_rx": rng.uniform(0.8, 0.93), "body_ry": rng.uniform(0.55, 0.66), "body_cy": rng.uniform(-0.02, 0.05),
        "fat": rng.uniform(0.03, 0.1), "lung_dx": rng.uniform(0.33, 0.4), "lung_cy": rng.uniform(-0.06, 0.02),
        "lung_rx": rng.uniform(0.24, 0.29), "lung_ry": rng.uniform(0.33, 0.42), "heart_cx": rng.uniform(0.02, 0.1),
        "heart_r": rng.uniform(0.15, 0.21), "vessels": rng.uniform(15.0, 35.0), "noise_hu": rng.uniform(15.0, 50.0),
        "n_findings": float(rng.integers(1, 5)), "cavity": float(rng.random() < 0.2),
        "ground_glass": float(rng.random() < 0.25), "nodule_r": rng.uniform(0.03, 0.09),
    }


def _ct_render(rng: np.random.Generator, noise: np.random.Generator, p: Params, label: int, size: int) -> Array:
    """One chest CT phantom in a lung window."""
    yy, xx = grid(size)
    scale = rng.uniform(0.93, 1.05)
    lungs = _ct_lungs(yy, xx, p, scale, size)
    hu = _ct_body(yy, xx, p, size) + (_HU_LUNG - _HU_SOFT) * lungs + _ct_bones(p, size)
    inside = _ct_vessels(rng, p, scale, size) + 25.0 * resize(smooth_field(rng, 1.5, res=32), size)
    if label:
        inside += _ct_findings(rng, p, scale, size)
    hu = blur(hu + lungs * inside, size, 0.006) + noise.normal(0.0, p["noise_hu"], hu.shape)
    level, width = _LUNG_WINDOW
    return (hu - level) / width + 0.5


def _ct_body(yy: Array, xx: Array, p: Params, size: int) -> Array:
    """Air outside, a fat layer under the skin, muscle, and soft tissue with fat in the mediastinum."""
    cy, ry, rx, fat = p["body_cy"], p["body_ry"], p["body_rx"], p["fat"]
    body = disc(size, yy, xx, cy, 0.0, ry, rx)
    muscle = disc(size, yy, xx, cy, 0.0, ry - fat, rx - fat)
    mediastinal_fat = disc(size, yy, xx, p["lung_cy"] - 0.2, 0.0, 0.12, 0.1)
    return _HU_AIR + (_HU_FAT - _HU_AIR) * body + (_HU_SOFT - _HU_FAT) * (muscle - 0.6 * mediastinal_fat)


def _ct_lungs(yy: Array, xx: Array, p: Params, scale: float, size: int) -> Array:
    """Two lungs, carved by the heart and the spine."""
    lungs = np.zeros_like(yy)
    for side in (-1.0, 1.0):
        rx = p["lung_rx"] * scale * (1.0 if side < 0 else 0.94)
        lung = disc(size, yy, xx, p["lung_cy"], side * p["lung_dx"], p["lung_ry"] * scale, rx, side * 0.15)
        lungs = np.maximum(lungs, lung)
    heart = disc(size, yy, xx, p["lung_cy"] - 0.03, p["heart_cx"], p["heart_r"], p["heart_r"] * 1.25)
    spine = disc(size, yy, xx, p["body_cy"] + p["body_ry"] - 0.22, 0.0, 0.16, 0.13)
    return lungs * (1.0 - heart) * (1.0 - spine)


def _ct_bones(p: Params, size: int) -> Array:
    """Vertebral body, spinal canal with lamina, sternum and rib cross-sections."""
    base, inner_y = p["body_cy"] + p["body_ry"] - 0.22, p["body_ry"] - p["fat"] - 0.05
    inner_x = p["body_rx"] - p["fat"] - 0.05
    ribs = np.concatenate([np.linspace(0.35, np.pi - 0.35, 5), np.linspace(np.pi + 0.5, 2 * np.pi - 0.5, 4)])
    spine_y = base + np.array([-0.03, 0.1, 0.1, 0.2])
    cy = np.concatenate([spine_y, [p["body_cy"] - inner_y + 0.01], p["body_cy"] + inner_y * np.sin(ribs)])
    cx = np.concatenate([[0.0, 0.0, 0.0, 0.0, 0.0], inner_x * np.cos(ribs)])
    ry = np.concatenate([[0.085, 0.065, 0.035, 0.05, 0.025], np.full(len(ribs), 0.022)])
    rx = np.concatenate([[0.1, 0.09, 0.035, 0.018, 0.06], np.full(len(ribs), 0.045)])
    value = np.concatenate([[0.8, 0.8, -0.8, 0.8, 0.8], np.full(len(ribs), 0.9)])
    angle = np.concatenate([np.zeros(5), np.pi / 2 - ribs])
    bone = np.clip(ellipses(size, cy, cx, ry, rx, angle, value, rim=0.4), 0.0, 1.0)
    return (_HU_BONE - _HU_SOFT) * bone


def _ct_points(rng: np.random.Generator, k: int, p: Params, scale: float) -> tuple[Array, Array]:
    """``k`` random points inside the lungs."""
    side = np.where(rng.random(k) < 0.5, -1.0, 1.0)
    return points_in_ellipse(rng, k, p["lung_cy"], side * p["lung_dx"], 0.9 * p["lung_ry"] * scale,
                              0.9 * p["lung_rx"] * scale)


def _ct_vessels(rng: np.random.Generator, p: Params, scale: float, size: int) -> Array:
    """Vessels seen end-on or obliquely: small bright dots and short ellipses, denser near the hila."""
    k = int(rng.poisson(p["vessels"]))
    cy, cx = _ct_points(rng, k, p, scale)
    cx = cx - 0.25 * (cx - np.sign(cx) * 0.15) * rng.random(k)
    radius = np.clip(np.exp(rng.normal(np.log(0.01), 0.45, k)), 0.004, 0.03)
    stretch, angle = 1.0 + rng.exponential(0.6, k), rng.uniform(0.0, np.pi, k)
    value = rng.uniform(-100.0, 60.0, k) - _HU_LUNG
    return ellipses(size, cy, cx, radius, radius * stretch, angle, value)


def _ct_findings(rng: np.random.Generator, p: Params, scale: float, size: int) -> Array:
    """The finding: solid or ground-glass nodules, or cavities (bright wall, air inside)."""
    k = int(p["n_findings"])
    cy, cx = _ct_points(rng, k, p, scale)
    radius = p["nodule_r"] * rng.uniform(0.75, 1.3, k) * (1.4 if p["cavity"] else 1.0)
    aspect, angle = rng.uniform(0.8, 1.25, k), rng.uniform(0.0, np.pi, k)
    low, high = (-650.0, -350.0) if p["ground_glass"] else (-100.0, 60.0)
    value = rng.uniform(low, high, k) - _HU_LUNG
    findings = ellipses(size, cy, cx, radius, radius * aspect, angle, value)
    if p["cavity"]:
        hole = 0.55 * radius
        findings += ellipses(size, cy, cx, hole, hole * aspect, angle, _HU_AIR - _HU_LUNG - value)
    return findings


# ---------------------------------------------------------------------------------------------------
# H&E histology: stain concentrations mixed with a Beer-Lambert model into RGB.
# ---------------------------------------------------------------------------------------------------

_HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
_EOSIN = np.array([0.10, 0.95, 0.45])


def _histo_patient(rng: np.random.Generator) -> Params:
    """Staining and grade of one tissue sample; the grades of the two classes overlap."""
    return {
        "grade_normal": rng.beta(2.0, 5.0), "grade_pathology": rng.beta(5.0, 2.0),
        "eosin": rng.uniform(0.45, 0.8), "hematoxylin": rng.uniform(1.0, 1.5),
        "h_tint": rng.normal(0.0, 0.05), "e_tint": rng.normal(0.0, 0.05), "lumen": rng.uniform(1.1, 2.0),
    }


def _histo_render(rng: np.random.Generator, noise: np.random.Generator, p: Params, label: int,
                  size: int) -> Array:
    """One H&E phantom as RGB in [0, 1]."""
    grade = p["grade_pathology"] if label else p["grade_normal"]
    spaces, fibre_angle = smooth_field(rng, 3.0, res=32), rng.uniform(0.0, np.pi)
    nuclei = _histo_nuclei(rng, grade, spaces, p["lumen"], size) + _histo_fibroblasts(rng, fibre_angle, size)
    tissue = np.clip(5.0 * (p["lumen"] - resize(spaces, size)), 0.03, 1.0)
    stroma = _histo_stroma(rng, fibre_angle, size)
    eosin = p["eosin"] * stroma * tissue * (1.0 - 0.4 * np.clip(nuclei, 0.0, 1.0))
    hematoxylin = (p["hematoxylin"] * nuclei + 0.05 * tissue) * (1.0 + 0.12 * noise.standard_normal((size, size)))
    return _histo_rgb(hematoxylin, eosin, p) + noise.normal(0.0, 0.012, (size, size, 3))


def _histo_stroma(rng: np.random.Generator, angle: float, size: int) -> Array:
    """Wavy eosin fibres along ``angle`` (bands across it) with fine grain, around 1."""
    yy, xx = grid(size)
    frequency = rng.uniform(20.0, 34.0)
    warp = 2.5 * resize(smooth_field(rng, 4.0, res=32), size)
    fibres = np.cos(frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + warp)
    return 0.85 + 0.15 * fibres + 0.12 * resize(smooth_field(rng, 0.7, res=64), size)


def _histo_nuclei(rng: np.random.Generator, grade: float, spaces: Array, lumen: float, size: int) -> Array:
    """Hematoxylin in the nuclei; crowding, size, pleomorphism and darkness all grow with the grade."""
    k = int(rng.poisson(22.0 + 55.0 * grade))
    cy, cx = rng.uniform(-1.0, 1.0, (2, k))
    radius = (0.04 + 0.03 * grade) * np.exp(rng.normal(0.0, 0.08 + 0.3 * grade, k))
    aspect = 1.0 + np.abs(rng.normal(0.0, 0.15 + 0.4 * grade, k))
    darkness = (0.8 + 0.5 * grade) * np.exp(rng.normal(0.0, 0.1 + 0.15 * grade, k))
    angle = rng.uniform(0.0, np.pi, k)
    res = spaces.shape[0]
    keep = spaces[((cy + 1.0) * res / 2.0001).astype(int), ((cx + 1.0) * res / 2.0001).astype(int)] < lumen
    ry, rx = radius / np.sqrt(aspect), radius * np.sqrt(aspect)
    nuclei = ellipses(size, cy[keep], cx[keep], ry[keep], rx[keep], angle[keep], darkness[keep], rim=0.3)
    return np.minimum(nuclei, 2.0)


def _histo_fibroblasts(rng: np.random.Generator, angle: float, size: int) -> Array:
    """Thin spindle-shaped stromal nuclei along the fibres, in every class."""
    k = int(rng.poisson(6.0))
    cy, cx = rng.uniform(-1.0, 1.0, (2, k))
    length = rng.uniform(0.05, 0.09, k)
    angles = angle + np.pi / 2 + rng.normal(0.0, 0.2, k)
    return ellipses(size, cy, cx, np.full(k, 0.012), length, angles, rng.uniform(0.8, 1.2, k))


def _histo_rgb(hematoxylin: Array, eosin: Array, p: Params) -> Array:
    """Beer-Lambert mix of the two stains, with a per-sample tint of each stain vector."""
    h_vector = _HEMATOXYLIN + np.array([p["h_tint"], 0.0, -p["h_tint"]])
    e_vector = _EOSIN + np.array([0.0, p["e_tint"], p["e_tint"]])
    density = hematoxylin[..., None] * h_vector + eosin[..., None] * e_vector
    return np.exp(-np.maximum(density, 0.0))


MODELS: dict[str, tuple[PatientDraw, Renderer]] = {
    "chest_xray": (_cxr_patient, _cxr_render),
    "ct": (_ct_patient, _ct_render),
    "histology": (_histo_patient, _histo_render),
}
