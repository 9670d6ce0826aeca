"""LBP + Random Forest: histograms are well formed and the forest learns a texture difference."""

import numpy as np
import torch

from medsec_utils import baselines


def _textures(n, seed):
    """Class 0 smooth gradients, class 1 the same with fine noise: a difference only texture shows."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.2, 0.8, 32).expand(32, 32)
    x = ramp.expand(n, 1, 32, 32).clone() + 0.02 * torch.rand(n, 1, 1, 1, generator=g)
    y = torch.arange(n) % 2
    x[y == 1] += 0.08 * torch.randn(int((y == 1).sum()), 1, 32, 32, generator=g)
    return x.clamp(0, 1), y


def test_lbp_histograms_are_normalised_per_radius_and_colour_is_averaged():
    x, _ = _textures(6, 0)
    h = baselines.lbp_histograms(x)
    assert h.shape == (6, 30)
    np.testing.assert_allclose(h.reshape(6, 3, 10).sum(2), 1.0)
    np.testing.assert_allclose(baselines.lbp_histograms(x.expand(6, 3, 32, 32)), h)


def test_the_forest_learns_texture_and_is_reproducible():
    x, y = _textures(80, 0)
    test_x, test_y = _textures(40, 1)
    forest = baselines.train_lbp_forest(x, y, seed=0, n_trees=50)
    p = baselines.lbp_forest_proba(forest, test_x)
    assert ((p >= 0.5) == test_y.numpy()).mean() > 0.9
    again = baselines.lbp_forest_proba(baselines.train_lbp_forest(x, y, seed=0, n_trees=50), test_x)
    np.testing.assert_array_equal(p, again)
