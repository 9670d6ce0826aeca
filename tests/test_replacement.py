"""The replacement experiment's training sets, and its classifiers cached by content."""

import pytest
import torch

from medsec_utils import replacement

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
