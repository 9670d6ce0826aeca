"""Chapter 4's evaluation of generated images on tiny phantoms: feature spaces, the feature-space check,
generators and their images, the quality features and the memorisation audit."""

import pytest
import torch
from torch import nn

from medsec_utils import data, generative, profiles, synthetic_eval
from medsec_utils.models import build_classifier

CPU = torch.device("cpu")
LABEL = "ct [PHANTOM]"


class MeanPool(nn.Module):
    """A cheap encoder: each channel's mean over 4 x 4 cells."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


@pytest.fixture(scope="module")
def ct():
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    return {LABEL: images}, {LABEL: images.tensors("train", None, 0)}, {LABEL: images.tensors("test", None, 0)}


@pytest.fixture(scope="module")
def settings():
    return profiles.resolve_profile("smoke", image_size=16, synthetic_images=3, gan_steps=2)


def test_feature_spaces_share_one_network_unless_each_data_set_brings_its_classifier():
    classifiers = {"a": build_classifier(1, "test_resnet"), "b": build_classifier(1, "test_resnet")}
    shared = synthetic_eval.feature_spaces("random_vgg16", ["a", "b"], seed=3)
    assert shared["a"][0] is shared["b"][0] and "seed 3" in shared["a"][1]
    own = synthetic_eval.feature_spaces("classifier", ["a", "b"], classifiers)
    assert own["a"][0].classifier is classifiers["a"] and own["b"][0].classifier is classifiers["b"]
    assert own["a"][1].startswith("penultimate features")
    with pytest.raises(ValueError, match="feature_space 'classifier' needs the chapter-1 classifier of c"):
        synthetic_eval.feature_spaces("classifier", ["a", "c"], classifiers)


def test_feature_check_compares_the_chosen_space_with_the_classifiers_and_is_reproducible(ct, settings):
    sets, train, test = ct
    classifiers = {LABEL: build_classifier(1, "test_resnet").eval()}
    kwargs = dict(seed=0, device=CPU)
    checks = synthetic_eval.feature_check(sets, train, test, {LABEL: (MeanPool(), "mean pool")}, classifiers,
                                          settings, **kwargs)
    assert [about.split(" (")[0] for _, about in checks] == ["mean pool", "penultimate features"]
    rows = checks[LABEL, "mean pool"]
    assert len(rows) == 10 and [r["sentinel"] for r in rows[-2:]] == ["uniform noise", "untrained DC-GAN"]
    assert all(r["n_real"] == r["n_fake"] == 6 for r in rows)  # twice synthetic_images on each side
    again = synthetic_eval.feature_check(sets, train, test, {LABEL: (MeanPool(), "mean pool")}, classifiers,
                                         settings, **kwargs)
    assert [r["fid"] for r in again[LABEL, "mean pool"]] == [r["fid"] for r in rows]
    own = synthetic_eval.feature_spaces("classifier", [LABEL], classifiers)
    assert len(synthetic_eval.feature_check(sets, train, test, own, classifiers, settings, **kwargs)) == 1


def _dcgans(images, settings):
    """Both classes' DC-GANs of ``images``, as chapter 4's class steps get them."""
    return {c: generative.generator_for("dcgan", images, c, settings, seed=0, device=CPU, progress=False)
            for c in (0, 1)}


def test_generators_train_once_per_class_then_come_from_the_cache_and_sample_8_bit_images(ct, settings, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    found = _dcgans(ct[0][LABEL], settings)
    assert not any(f.hit for f in found.values()) and all(f.hit for f in _dcgans(ct[0][LABEL], settings).values())
    histories = {(LABEL, "dcgan", c): f.history for c, f in found.items()}
    spent = sum(epoch["seconds"] for history in histories.values() for epoch in history)
    assert spent > 0 and synthetic_eval.training_seconds(histories, LABEL, "dcgan") == pytest.approx(spent)
    assert synthetic_eval.training_seconds(histories, LABEL, synthetic_eval.FLOOR) is None
    x, y = generative.sample_labelled({c: f.model for c, f in found.items()}, {0: 3, 1: 3}, seed=0, device=CPU)
    assert x.shape == (6, 1, 16, 16) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(generative.from_uint8(generative.to_uint8(x)), x)  # 8-bit levels: stored as uint8 losslessly
    assert len(torch.unique(x)) > 2
    again, _ = generative.sample_labelled({c: f.model for c, f in found.items()}, {0: 3, 1: 3}, seed=0, device=CPU)
    assert torch.equal(again, x)


def test_curve_features_judge_each_snapshot_and_the_trained_generator_on_as_many_images(ct, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    sets = ct[0]
    settings = profiles.resolve_profile("smoke", image_size=16, gan_steps=4)  # one step per epoch: 4 epochs
    found = _dcgans(sets[LABEL], settings)
    histories = {(LABEL, "dcgan", c): f.history for c, f in found.items()}
    curves = {(LABEL, "dcgan", c): f.curve for c, f in found.items()}
    samples = {(LABEL, "dcgan"): generative.sample_labelled({c: f.model for c, f in found.items()}, {0: 5, 1: 5},
                                                            seed=0, device=CPU)}
    spaces = {LABEL: (MeanPool(), "mean pool")}
    found = synthetic_eval.curve_features(sets, spaces, curves, histories, samples, settings, per_class=3, seed=0,
                                          device=CPU)
    assert set(found) == {(LABEL, "dcgan", 0), (LABEL, "dcgan", 1)}
    for (_, _, c), points in found.items():
        assert [step for step, _ in points] == [step for step, _ in curves[LABEL, "dcgan", c]] + \
            [histories[LABEL, "dcgan", c][-1]["step"]]
        assert len(points) == 4 and all(vectors.shape == (3, 16) for _, vectors in points)
        x, y = samples[LABEL, "dcgan"]
        torch.testing.assert_close(points[-1][1], MeanPool()(x[y == c][:3]).double())
        assert not torch.allclose(points[0][1], points[-1][1]), "a snapshot is an earlier generator, not the last"


def test_quality_features_hold_the_test_images_a_floor_of_training_images_and_each_generator(ct):
    _, train, test = ct
    fake = torch.rand(6, 1, 16, 16), torch.tensor([0, 0, 0, 1, 1, 1])
    spaces = {LABEL: (MeanPool(), "mean pool")}
    features = synthetic_eval.quality_features(spaces, train, test, {(LABEL, "dcgan"): fake}, n_floor=5, seed=0,
                                               device=CPU)
    assert list(features) == [(LABEL, synthetic_eval.HELDOUT), (LABEL, synthetic_eval.FLOOR), (LABEL, "dcgan")]
    assert len(features[LABEL, synthetic_eval.HELDOUT]) == len(test[LABEL][1])
    floor = features[LABEL, synthetic_eval.FLOOR]
    assert floor.shape == (5, 16) and floor.dtype == torch.float64
    training = MeanPool()(train[LABEL][0]).double()
    assert all((training - row).abs().sum(1).min() < 1e-9 for row in floor)  # the floor is training images
    torch.testing.assert_close(features[LABEL, "dcgan"], MeanPool()(fake[0]).double())


def test_the_audit_flags_a_copied_training_image_in_both_spaces(ct):
    _, train, test = ct
    synthetic = torch.rand(4, 1, 16, 16) * 0.05 + 0.9
    synthetic[2] = train[LABEL][0][7]
    samples = {(LABEL, "dcgan"): (synthetic, torch.tensor([0, 0, 1, 1]))}
    spaces = {LABEL: (MeanPool(), "mean pool")}
    features = synthetic_eval.quality_features(spaces, train, test, samples, n_floor=4, seed=0, device=CPU)
    audits = synthetic_eval.memorisation_audits(spaces, train, test, samples, features, device=CPU)
    assert list(audits) == [(LABEL, "dcgan", "features"), (LABEL, "dcgan", "pixels")]
    for audit in audits.values():
        assert audit["near_copy"][2] and audit["nearest_train"][2] == 7
        assert audit["n_synthetic"] == 4 and audit["n_train"] == len(train[LABEL][1])


@pytest.mark.parametrize("steps, values, higher, bound, expected", [
    ([1000, 2000], [0.95, 0.90], False, 0.70, "about 32,000 steps (-0.050 per doubling)"),  # 0.2 at 0.05 a doubling
    ([1000, 2000], [0.94, 0.95], False, 0.70, "not heading for it (+0.010 per doubling of steps)"),
    ([1000, 2000], [0.20, 0.25], True, 0.30, "about 4,000 steps (+0.050 per doubling)"),
    ([1000, 2000], [0.20, 0.65], True, 0.50, "met"),
    ([1000, 2000], [0.90, 0.65], False, 0.70, "met"),
    ([1000, 2000, 4000], [0.20, 0.60, 0.45], True, 0.50,
     "missed at the last point, though the trend line crosses before it (+0.125 per doubling)"),
    ([1000, 2000], [0.900, 0.899], False, 0.70, "beyond 1000x the steps run (-0.001 per doubling)"),
    ([1000, 2000, 4000], [0.10, float("nan"), 0.20], True, 0.30, "about 16,000 steps (+0.050 per doubling)"),
    ([None, 2000], [0.10, 0.20], True, 0.30, "one point: no trend"),
    ([1000], [float("nan")], True, 0.30, "no finite point"),
])
def test_steps_to_reach_follows_the_curve_against_log_steps(steps, values, higher, bound, expected):
    assert synthetic_eval.steps_to_reach(steps, values, bound, higher) == expected


def test_progan_is_not_held_to_the_machine_reader_target():
    assert "machine_reader_accuracy" in synthetic_eval.quality_targets("dcgan")
    assert set(synthetic_eval.quality_targets("progan")) == {"precision", "recall", "diversity"}

