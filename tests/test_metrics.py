"""Metrics and their confidence intervals against hand-computed values."""

import numpy as np
import pytest

from medsec_utils import metrics


def test_wilson_interval_matches_textbook_value():
    low, high = metrics.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert metrics.wilson_interval(10, 10)[1] == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 7, 181, 300, 879])
def test_wilson_interval_is_exact_at_zero_and_all(n):
    assert metrics.wilson_interval(0, n)[0] == 0.0 and metrics.wilson_interval(n, n)[1] == 1.0
    assert 0 < metrics.wilson_interval(0, n)[1] < 1 and 0 < metrics.wilson_interval(n, n)[0] < 1


def test_binary_report_hand_example():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.3, 0.9, 0.8, 0.4, 0.6, 0.95, 0.85])
    report = metrics.binary_report(y, p, n_boot=300, seed=1)
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["sensitivity"] == pytest.approx(5 / 6) and report["specificity"] == pytest.approx(3 / 4)
    assert report["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert report["confusion_matrix"] == [[3, 1], [1, 5]]
    assert report["auc"] == pytest.approx(22 / 24)
    low, high = report["auc_ci"]
    assert low <= report["auc"] <= high and high - low > 0


def test_bootstrap_interval_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 2, n)
        score = y + rng.normal(0, 1, n)
        low, high = metrics.bootstrap_interval(metrics.roc_auc_score, y, score, n_boot=300)
        return high - low

    assert width(2000) < width(100)
