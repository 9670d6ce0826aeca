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
at every size. Images come in patients of one to three images that share anatomy (histology: the stain and
tissue grade of one slide, in other fields of view), label and severity, like repeat studies. The models of the three modalities are in ``_phantom_models``, the drawing helpers
they share in ``_phantom_geometry``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ._phantom_models import MODELS

__all__ = ["MODALITIES", "PATHOLOGY_SHARE", "PhantomSet", "make_phantoms"]

MODALITIES: tuple[str, ...] = ("chest_xray", "ct", "histology")
PATHOLOGY_SHARE = 0.45
MIN_SIZE, MAX_SIZE = 16, 512
_PATIENT_STREAM, _IMAGE_STREAM = 0, 1
_MAX_IMAGES_PER_PATIENT = 3


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
    n, size = _check_arguments(modality, n, size)
    index = MODALITIES.index(modality)
    draw_patient, render = MODELS[modality]
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


def _check_arguments(modality: str, n: int, size: int) -> tuple[int, int]:
    """Validate the arguments of :func:`make_phantoms`; return ``n`` and ``size`` as plain ints."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown phantom modality {modality!r}; valid: {', '.join(MODALITIES)}")
    n, size = operator.index(n), operator.index(size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return n, size


def _patients(seed: int, index: int, n: int) -> Iterator[tuple[int, np.random.Generator, int]]:
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


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Map [0, 1] to uint8, clipping whatever noise pushed outside."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
