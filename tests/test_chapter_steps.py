"""Chapters 4 and 5 as steps of the results store (smoke profile, one phantom data set): chapter 4's quality step
judges the images its generators' class steps stored, so on an empty artefact cache it is computed again without
training a generator and gives the same result, and a change to a class step makes it stale; chapter 5 lists a
step per federation run in the study's order."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medsec_utils import cache, generative
from medsec_utils.reporting.chapter import open_from_params
from medsec_utils.store import MARKER, compare

CHAPTER4 = "04_synthetic_images/phantom_ct"
KINDS = ["dcgan", "progan", "ddpm"]


def _open(chapter: str, out, **params):
    return open_from_params(chapter, {"profile": "smoke", "dataset": "phantom:ct", "seed": 0,
                                      "output_dir": str(out / chapter), "feature_space": "random_vgg16",
                                      "inception_weights": None, **params})


@pytest.fixture(scope="module")
def chapter4(tmp_path_factory):
    root = tmp_path_factory.mktemp("chapter4")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cache.CACHE_ENV, str(root / "cache"))
        chapter = _open("04_synthetic_images", root / "out", generators=KINDS)
        steps = chapter.steps()
        return chapter, steps, chapter.results(steps), root


def test_chapter_4_steps_come_per_generator_and_class_with_the_quality_step_reading_them_last(chapter4):
    chapter, steps, results, _ = chapter4
    classes = [f"{CHAPTER4}/{kind}/{name}" for kind in KINDS for name in ("normal", "pathology")]
    replacement = [f"{CHAPTER4}/dcgan/replacement_{name}" for name in ("synthetic", "mixed")]  # smoke: DC-GAN only
    assert [step.id for step in steps] == [f"{CHAPTER4}/feature_check", f"{CHAPTER4}/replacement_real", *classes[:2],
                                           *replacement, *classes[2:], f"{CHAPTER4}/quality"]
    assert [step.id for step in steps[-1].after] == classes
    assert all([step.id for step in steps[i].after] == classes[:2] for i in (4, 5))
    n, size = chapter.settings["synthetic_images"], chapter.settings["image_size"]
    for step_id in classes:
        images, record = results[step_id].arrays["images"], results[step_id].record
        assert images.dtype == np.uint8 and images.shape == (n, 1, size, size) and len(np.unique(images)) > 2
        steps_run = [point["step"] for point in record["curve"]]  # snapshots (as many as epochs allow), then the end
        assert steps_run == sorted(set(steps_run)) and steps_run[-1] == record["history"][-1]["step"]
        assert [point["trained"] for point in record["curve"]] == [False] * (len(steps_run) - 1) + [True]
    assert len(results[classes[0]].record["curve"]) == generative.CURVE_POINTS  # the DC-GAN trains 4 epochs
    quality = results[f"{CHAPTER4}/quality"]
    assert set(quality.record["quality"]) == {"real train (floor)", *KINDS}
    assert quality.arrays["audit/dcgan/pixels/synthetic_distance"].shape == (2 * n,)
    n_train = len(chapter.sets[0].indices("train", chapter.settings["max_train_images"], 0))
    for step_id, n_images in zip([f"{CHAPTER4}/replacement_real", *replacement], (n_train, n_train, 2 * n_train)):
        rows = results[step_id].record["rows"]
        assert [row["model"] for row in rows] == ["efficientnet_b3", "lbp_random_forest"]
        assert all(row["n_train"] == n_images for row in rows), step_id


def test_the_quality_step_recomputed_on_an_empty_cache_trains_no_generator_and_equals_the_stored(chapter4, tmp_path,
                                                                                                monkeypatch):
    chapter, steps, results, _ = chapter4
    quality = steps[-1]
    markers = {step.id: (chapter.store.folder(step) / MARKER).read_bytes() for step in quality.after}
    shutil.rmtree(chapter.store.folder(quality))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "empty_cache"))
    again, from_store = chapter.store.get(quality)
    assert not from_store
    assert not (tmp_path / "empty_cache" / "generator").exists()  # read the stored images: no generator trained
    assert {step.id: (chapter.store.folder(step) / MARKER).read_bytes() for step in quality.after} == markers
    assert compare(results[quality.id], again) == ("equal", [])


def test_the_replacement_steps_sample_the_stored_generators_on_an_empty_cache(chapter4, tmp_path, monkeypatch):
    chapter, steps, results, _ = chapter4
    synthetic = next(step for step in steps if step.id.endswith("replacement_synthetic"))
    shutil.rmtree(chapter.store.folder(synthetic))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "empty_cache"))
    again, from_store = chapter.store.get(synthetic)
    assert not from_store and not (tmp_path / "empty_cache" / "generator").exists()
    assert compare(results[synthetic.id], again) == ("equal", [])


def test_a_changed_class_step_makes_the_quality_step_stale(chapter4):
    chapter, _, _, root = chapter4
    changed = _open("04_synthetic_images", root / "out", generators=KINDS, gan_steps=13)
    state = {step.id: chapter.store.state(step) for step in changed.steps()}
    assert state[f"{CHAPTER4}/dcgan/normal"][0] == "stale" and state[f"{CHAPTER4}/dcgan/normal"][1].startswith(
        "generator ")
    assert state[f"{CHAPTER4}/quality"] == ("stale", f"after {CHAPTER4}/dcgan/normal changed; "
                                                     f"after {CHAPTER4}/dcgan/pathology changed")
    assert state[f"{CHAPTER4}/ddpm/normal"][0] == state[f"{CHAPTER4}/progan/normal"][0] == "current"


def test_chapter_5_lists_a_step_per_federation_run_in_the_studys_order(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    chapter = _open("05_federated", tmp_path, extended_dataset="phantom_ct", extended_sizes=[32, 64],
                    extended_splits=["iid", "dirichlet"])
    ids = [step.id.removeprefix("05_federated/phantom_ct/") for step in chapter.steps()]
    runs = ["sites", "fedavg_every1", "centralised", "local_site0", "local_site1"]
    assert ids == [f"iid/32px/{run}" for run in runs] + [f"iid/64px/{run}" for run in runs] + [
        f"dirichlet/{size}px/{run}" for size in (32, 64) for run in runs if run != "centralised"]
