"""Tests for medsec_utils.phantoms: shapes, determinism, patients and labels, and learnability."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medsec_utils.phantoms import MAX_SIZE, MIN_SIZE, MODALITIES, PhantomSet, make_phantoms

CHANNELS = {"chest_xray": 1, "ct": 1, "histology": 3}


@pytest.fixture(scope="module")
def sets() -> dict[str, PhantomSet]:
    """200 images at 32 px per modality, shared by the label and patient tests."""
    return {modality: make_phantoms(modality, 200, size=32, seed=3) for modality in MODALITIES}


def _grouped(patient_ids: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, patient in enumerate(patient_ids):
        groups.setdefault(patient, []).append(i)
    return groups


@pytest.mark.parametrize("modality", MODALITIES)
def test_shapes_dtypes_and_ranges(modality: str) -> None:
    made = make_phantoms(modality, 7, size=48, seed=1)
    expected = (7, 48, 48, 3) if CHANNELS[modality] == 3 else (7, 48, 48)
    assert isinstance(made, PhantomSet)
    assert made.modality == modality
    assert made.images.shape == expected and made.images.dtype == np.uint8
    assert made.labels.shape == (7,) and made.labels.dtype == np.int64
    assert set(made.labels.tolist()) <= {0, 1}
    assert len(made.patient_ids) == 7
    assert all(re.fullmatch(rf"phantom-{modality}-\d{{5}}", pid) for pid in made.patient_ids)
    for image in made.images:
        assert int(image.max()) - int(image.min()) > 100, "an image should use a good part of the range"
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.modality = "other"  # type: ignore[misc]


def test_images_look_like_their_modality() -> None:
    xray = make_phantoms("chest_xray", 20, size=64).images.astype(float)
    air, centre, lungs = xray[:, :4, :4].mean(), xray[:, 28:36, 30:34].mean(), xray[:, 20:30, 12:20].mean()
    assert air < lungs < centre, "dark air, darker lungs than the mediastinum"
    ct = make_phantoms("ct", 20, size=64).images.astype(float)
    assert ct[:, :4, :4].mean() + 60 < ct[:, 32, 2:62].max(axis=1).mean(), "air outside darker than the body"
    rgb = make_phantoms("histology", 20, size=64).images.astype(float).mean(axis=(0, 1, 2))
    assert rgb[0] > rgb[1] and rgb[2] > rgb[1], "H&E is pink to purple: green absorbed most"


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_gives_same_bytes(modality: str) -> None:
    first, second = make_phantoms(modality, 12, size=32, seed=5), make_phantoms(modality, 12, size=32, seed=5)
    assert first.images.tobytes() == second.images.tobytes()
    assert np.array_equal(first.labels, second.labels) and first.patient_ids == second.patient_ids


@pytest.mark.parametrize("modality", MODALITIES)
def test_shorter_set_is_a_prefix(modality: str) -> None:
    long, short = make_phantoms(modality, 25, size=32), make_phantoms(modality, 10, size=32)
    assert np.array_equal(short.images, long.images[:10])
    assert np.array_equal(short.labels, long.labels[:10])
    assert short.patient_ids == long.patient_ids[:10]


@pytest.mark.parametrize("modality", MODALITIES)
def test_other_seed_differs(modality: str) -> None:
    zero, one = make_phantoms(modality, 8, size=32, seed=0), make_phantoms(modality, 8, size=32, seed=1)
    for a, b in zip(zero.images, one.images):
        assert not np.array_equal(a, b)


@pytest.mark.parametrize("modality", MODALITIES)
def test_geometry_does_not_depend_on_size(modality: str) -> None:
    small = make_phantoms(modality, 4, size=64).images.astype(float)
    large = make_phantoms(modality, 4, size=128).images.astype(float)
    pooled = large.reshape(4, 64, 2, 64, 2, *large.shape[3:]).mean(axis=(2, 4))
    for a, b in zip(small, pooled):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97


@pytest.mark.parametrize("modality", MODALITIES)
def test_labels_are_balanced_and_per_patient(sets: dict[str, PhantomSet], modality: str) -> None:
    made = sets[modality]
    assert 0.3 <= made.labels.mean() <= 0.6
    groups = _grouped(made.patient_ids)
    assert len(groups) < len(made.patient_ids), "some patients have repeat images"
    for indices in groups.values():
        assert 1 <= len(indices) <= 3
        assert indices == list(range(indices[0], indices[-1] + 1)), "a patient's images are contiguous"
        assert len(set(made.labels[indices].tolist())) == 1, "one label per patient"


# A patient's repeat images are more alike than two patients' images of the same class, in what a patient keeps
# from study to study: the anatomy (pixel correlation) of an X-ray or CT, the stain (mean colour) of a histology
# slide, whose fields of view differ. Share of (same patient, two patients) comparisons the same patient wins;
# measured at seed 3, 32 px: chest X-ray 0.75, CT 0.99, histology 0.92 (0.5: no patient in the images).
ALIKE = {"chest_xray": ("correlation", 0.7), "ct": ("correlation", 0.9), "histology": ("stain", 0.85)}


@pytest.mark.parametrize("modality", MODALITIES)
def test_repeat_images_differ_but_share_their_patient(sets: dict[str, PhantomSet], modality: str) -> None:
    made = sets[modality]
    repeats = [indices[:2] for indices in _grouped(made.patient_ids).values() if len(indices) > 1]
    assert len(repeats) >= 30 and not any(np.array_equal(made.images[a], made.images[b]) for a, b in repeats)
    pixels = made.images.reshape(len(made.images), -1).astype(float)
    if ALIKE[modality][0] == "correlation":
        z = (pixels - pixels.mean(1, keepdims=True)) / pixels.std(1, keepdims=True)
        alike = lambda a, b: float((z[a] * z[b]).mean())  # noqa: E731
    else:
        colour = made.images.reshape(len(made.images), -1, 3).astype(float).mean(1)
        alike = lambda a, b: -float(np.linalg.norm(colour[a] - colour[b]))  # noqa: E731
    others = [(a, b) for a in range(len(pixels)) for b in range(a + 1, len(pixels))
              if made.patient_ids[a] != made.patient_ids[b] and made.labels[a] == made.labels[b]]
    same = np.array([alike(a, b) for a, b in repeats])
    other = np.array([alike(a, b) for a, b in others])
    assert (same[:, None] > other[None, :]).mean() >= ALIKE[modality][1]


@pytest.mark.parametrize(
    ("modality", "n", "size", "message"),
    [("bone_scan", 4, 32, "unknown phantom modality 'bone_scan'; valid: chest_xray, ct, histology"),
     ("ct", 4, MIN_SIZE - 1, f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {MIN_SIZE - 1}"),
     ("ct", 4, MAX_SIZE + 1, f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {MAX_SIZE + 1}"),
     ("ct", 0, 32, "n must be at least 1, got 0")])
def test_bad_arguments_raise(modality: str, n: int, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_phantoms(modality, n, size=size)


def test_unknown_modality_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        make_phantoms("mri", 4)
    assert all(modality in str(error.value) for modality in MODALITIES)


@pytest.mark.parametrize("size", [MIN_SIZE, MAX_SIZE])
def test_size_limits_are_accepted(size: int) -> None:
    assert make_phantoms("histology", 1, size=size).images.shape == (1, size, size, 3)


def _features(images: np.ndarray) -> np.ndarray:
    """Cheap features: 8x8 block means and a 16-bin intensity histogram per channel."""
    pixels = images.astype(np.float64) / 255.0
    pixels = pixels[..., None] if pixels.ndim == 3 else pixels
    n, size, _, channels = pixels.shape
    block = size // 8
    pooled = pixels.reshape(n, 8, block, 8, block, channels).mean(axis=(2, 4)).reshape(n, -1)
    bins = np.minimum((pixels * 16).astype(int), 15)
    histogram = np.stack([np.bincount(bins[..., c].reshape(n, -1)[i], minlength=16)
                          for i in range(n) for c in range(channels)]).reshape(n, -1)
    return np.hstack([pooled, histogram / (size * size)])


@pytest.mark.parametrize("modality", MODALITIES)
def test_learnable_but_not_trivial(modality: str) -> None:
    made = make_phantoms(modality, 400, size=64, seed=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
    scores = cross_val_score(model, _features(made.images), made.labels, groups=np.array(made.patient_ids),
                             cv=GroupKFold(n_splits=5))
    majority = max(made.labels.mean(), 1.0 - made.labels.mean())
    assert scores.mean() >= max(majority + 0.08, 0.62), f"not learnable: {scores.mean():.3f} vs {majority:.3f}"
    assert scores.max() < 1.0 and scores.mean() < 0.95, f"trivially separable: {scores}"
