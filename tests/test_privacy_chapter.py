"""Chapter 6 as steps of the results store (smoke profile, CT phantoms): per data set the membership models, the
DP-SGD models and the attack step that reads them; membership drawn per patient, each patient in half of the
models; a split or budget that cannot work refused before any model is trained."""

from __future__ import annotations

import numpy as np
import pytest

from medsec_utils.reporting.chapter import open_from_params
from medsec_utils.steps.privacy import membership

SPEC = "phantom:ct?n=400"


def _open(tmp_path, **params):
    return open_from_params("06_privacy", {"profile": "smoke", "dataset": SPEC, "seed": 0,
                                           "output_dir": str(tmp_path / "06_privacy"), **params})


def test_chapter_6_lists_the_membership_and_dp_models_then_the_attack_step_reading_them(tmp_path):
    steps = _open(tmp_path).steps()
    prefix = "06_privacy/phantom_ct"
    assert [s.id for s in steps] == [f"{prefix}/model{k}" for k in range(4)] + [
        f"{prefix}/dp_eps1", f"{prefix}/dp_eps8", f"{prefix}/attacks"]
    assert [s.id for s in steps[-1].after] == [s.id for s in steps[:-1]]
    assert steps[4].parts["epsilon"] == 1 and "opacus" in steps[4].packages


def test_each_patient_is_in_half_of_the_models_with_all_their_images(tmp_path):
    chapter = _open(tmp_path)
    images, settings = chapter.sets[0], chapter.settings
    inside = membership(images, settings, 0)
    assert inside.shape == (4, len(images.indices("train", settings["max_train_images"], 0)))
    assert (inside.sum(0) == 2).all()
    patients = images.patient_ids[images.indices("train", settings["max_train_images"], 0)]
    for patient in np.unique(patients):
        columns = inside[:, patients == patient]
        assert (columns == columns[:, :1]).all(), patient
    assert not np.array_equal(inside[0], inside[1])


@pytest.mark.parametrize(("params", "message"), [
    ({"privacy_models": 3}, "privacy_models 3: give an even number of at least 4"),
    ({"privacy_models": 2}, "privacy_models 2: give an even number of at least 4"),
    ({"max_train_images": 150}, r"phantom:ct\?n=400: 150 training images leave a model only \d+ non-members; "
                                r"membership at 1 % FPR needs at least 100: give at least 220 training images"),
    ({"dp_epsilons": [1, 0]}, "epsilon 0: give a positive finite privacy budget"),
    ({"dp_delta": 0.5}, r"delta 0.5: must be below 1 / n"),
])
def test_a_split_or_budget_that_cannot_work_is_refused_before_any_model_is_trained(tmp_path, params, message):
    chapter = _open(tmp_path, **params)
    with pytest.raises(ValueError, match=message):
        chapter.steps()
    assert not (tmp_path / "store").exists()
