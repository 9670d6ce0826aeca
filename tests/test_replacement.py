"""The replacement experiment's training sets, and its classifiers cached by content."""

import numpy as np
import pytest
import torch

from medsec_utils import cache, replacement, training
from medsec_utils.models import build_classifier

CPU = torch.device("cpu")
SETTINGS = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0}


def _set(n, value, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g) * 0.1 + value, torch.arange(n) % 2


def test_training_sets_are_real_synthetic_or_both():
    real, synthetic = _set(6, 0.0), _set(4, 0.5)
    assert replacement.training_set("real", real, synthetic) is real
    assert replacement.training_set("synthetic", real, synthetic) is synthetic
    x, y = replacement.training_set("mixed", real, synthetic)
    assert len(x) == len(y) == 10 and torch.equal(x[6:], synthetic[0]) and torch.equal(y[:6], real[1])
    with pytest.raises(ValueError, match="choose from real, synthetic, mixed"):
        replacement.training_set("all", real, synthetic)


def test_classifier_on_tensors_is_cached_by_their_content(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    train, val = _set(16, 0.2), _set(8, 0.2, seed=1)
    kwargs = dict(seed=0, device=CPU, flip=False, arch="resnet18", progress=False)
    first, history, hit = replacement.classifier_on(train, val, SETTINGS, **kwargs)
    again, _, hit_again = replacement.classifier_on(train, val, SETTINGS, **kwargs)
    other, _, hit_other = replacement.classifier_on(_set(16, 0.7), val, SETTINGS, **kwargs)
    assert (hit, hit_again, hit_other) == (False, True, False) and len(history) == 1
    x = val[0]
    torch.testing.assert_close(first(x), again(x))
    assert not torch.allclose(first(x), other(x))


def test_classifier_on_gives_the_same_weights_whatever_the_process_drew_before(tmp_path, monkeypatch):
    train, val = _set(16, 0.2), _set(8, 0.2, seed=1)
    weights = []
    for earlier_draws in (1, 2):
        monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path / str(earlier_draws)))
        torch.manual_seed(earlier_draws)
        model, _, hit = replacement.classifier_on(train, val, SETTINGS, seed=0, device=CPU, flip=False,
                                                  arch="test_resnet", progress=False)
        assert not hit
        weights.append(cache.tensor_fingerprint(model.state_dict()))
    assert weights[0] == weights[1]


def test_the_experiment_scores_both_models_on_each_training_set_of_each_replacement_generator(tmp_path, monkeypatch):
    from medsec_utils import data, generative, profiles

    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    settings = profiles.resolve_profile("smoke", image_size=16, epochs=1, batch_size=8, rf_trees=5,
                                        replacement_generators=["ddpm", "dcgan"])
    torch.manual_seed(0)
    untrained = {c: generative.build_generative("dcgan", 1, 16, settings)[0] for c in (0, 1)}
    train, val, test = ({"ct": images.tensors(split, None, 0)} for split in ("train", "val", "test"))
    real_model = build_classifier(1, "test_resnet").eval()
    kwargs = dict(seed=0, device=CPU, arch="test_resnet")
    results = replacement.run_experiment({"ct": images}, {("ct", "dcgan"): untrained}, train, val, test,
                                         {"ct": real_model}, settings, **kwargs)
    assert [(r["generator"], r["training_set"], r["model"]) for r in results] == [
        ("dcgan", t, m) for t in replacement.TRAINING_SETS for m in ("test_resnet", replacement.LBP_FOREST)]
    n_real = len(train["ct"][1])
    assert [r["n_train"] for r in results[::2]] == [n_real, n_real, 2 * n_real]  # as many synthetic as real
    assert all(r["p_pathology"].shape == test["ct"][1].shape for r in results)
    np.testing.assert_array_equal(results[0]["p_pathology"], training.predict_proba(real_model, test["ct"][0], CPU))
    monkeypatch.setattr(replacement, "_replace", lambda *a, **k: pytest.fail("an unchanged rerun trained again"))
    again = replacement.run_experiment({"ct": images}, {("ct", "dcgan"): untrained}, train, val, test,
                                       {"ct": real_model}, settings, **kwargs)
    for first, second in zip(results, again):
        np.testing.assert_array_equal(first["p_pathology"], second["p_pathology"])
