"""Each chapter's self-check: it holds on the committed reference records and fails, naming the broken invariant, on a
copy with one number broken as a bug would break it."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from _paths import REPO
from medsec_utils.reporting import attacks, classifiers, defenses, federated, self_check, synthetic_images

REFERENCE = REPO / "book" / "reference"


def _results(chapter: str, *keys: str) -> list[dict]:
    record = json.loads((REFERENCE / chapter / "metrics.json").read_text())
    return [row for key in ("results", *keys) for row in record[key]]


def _failed(checks: dict[str, bool]) -> list[str]:
    return [name for name, ok in checks.items() if not ok]


def test_the_self_check_is_one_line_when_all_hold_and_names_each_broken_invariant():
    assert "all 2 invariants hold" in self_check({"a": True, "b": True}).data
    with pytest.raises(AssertionError, match=r"self-check failed \(1 of 2\): b$"):
        self_check({"a": True, "b": False})


def test_chapter_1_fails_on_an_accuracy_outside_its_interval_or_a_lost_test_image():
    records = _results("01_classifiers", "over_seeds")
    assert _failed(classifiers.invariants(records)) == []
    broken = copy.deepcopy(records)
    broken[0]["test_accuracy"] = broken[0]["test_accuracy_ci"][1] + 0.01
    broken[1]["test_confusion_matrix"][0][0] -= 1
    assert _failed(classifiers.invariants(broken)) == list(classifiers.invariants(records))


def test_chapter_2_fails_when_an_attack_raises_accuracy_above_clean():
    records = _results("02_attacks")
    assert _failed(attacks.invariants(records)) == []
    broken = copy.deepcopy(records)
    broken[0]["robust_accuracy"] = broken[0]["clean_accuracy"] + 0.01
    broken[0]["robust_accuracy_ci"] = [0.0, 1.0]
    assert _failed(attacks.invariants(broken)) == ["robust accuracy at most clean"]


def test_chapter_2_fails_when_one_attack_saw_another_version_of_the_classifier():
    """As the reference run's first chest X-ray and histology attacks did (a classifier trained again in another
    session: 296 and 292 of 300 chest X-ray images right before any attack)."""
    records = _results("02_attacks")
    broken = copy.deepcopy(records)
    broken[0]["clean_accuracy"] += 4 / 300
    assert _failed(attacks.invariants(broken)) == ["one classifier per data set: the same clean accuracy in every attack"]


def test_chapter_3_fails_on_a_cell_without_a_verdict_or_an_accuracy_outside_its_interval():
    records = [{"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10, "n_correct": 5, "n_adversarial": 3}]
    cells = {t: pd.DataFrame({"verdict": list(defenses.VERDICTS)}) for t in defenses.THREAT_MODELS}
    assert _failed(defenses.invariants(records, cells)) == []
    missing = {**cells, defenses.THREAT_MODELS[1]: cells[defenses.THREAT_MODELS[1]].iloc[:2]}
    assert _failed(defenses.invariants([{**records[0], "accuracy": 0.7}], missing)) == [
        "accuracy inside its interval in [0, 1]", "every Table 1 cell made has a verdict"]


def test_chapter_3_fails_when_an_undefended_cell_scores_other_than_chapter_2():
    """The committed reference: every undefended cell equals chapter 2's result for its attack and budget; one
    image miscounted in one cell (what an off-by-one in scoring would do) breaks that invariant alone."""
    records = [r for r in _results("03_defenses") if r.get("threat_model") in defenses.THREAT_MODELS]
    attacked = _results("02_attacks")
    cells = {t: pd.DataFrame({"verdict": list(defenses.VERDICTS)}) for t in defenses.THREAT_MODELS}
    assert _failed(defenses.invariants(records, cells, attacked)) == []
    broken = copy.deepcopy(records)
    cell = next(r for r in broken if r["defense"] == "none" and r["attack"] == "fgsm")
    cell["n_correct"] += 1
    cell["accuracy"], cell["ci_low"], cell["ci_high"] = cell["n_correct"] / cell["n"], 0.0, 1.0
    assert _failed(defenses.invariants(broken, cells, attacked)) == [
        "undefended cells as in chapter 2 (same attack, classifier and images)"]


def test_chapter_4_fails_on_a_negative_fid_or_a_share_out_of_range():
    records = [{"section": "quality", "fid": 1.0, "precision": 0.5, "recall": 0.5},
               {"section": "class_quality", "precision": 0.5, "recall": 0.5},
               {"section": "replacement", "accuracy": 0.8, "ci_low": 0.7, "ci_high": 0.9},
               {"section": "audit", "n_near_copies": 1, "n_synthetic": 10}]
    assert _failed(synthetic_images.invariants(records)) == []
    records[0]["fid"], records[1]["recall"] = -0.5, 1.5
    assert _failed(synthetic_images.invariants(records)) == ["FID not negative", "precision and recall in [0, 1]"]


def test_chapter_5_fails_on_a_federation_that_ran_fewer_rounds_than_its_period_gives():
    records = [{"section": "communication", "rounds": 5, "local_epochs": 3},
               {"section": "federated", "fid": 2.0}, {"section": "heterogeneity", "n_site_0": 4, "n_site_1": 5}]
    assert _failed(federated.invariants(records, fl_epochs=15)) == []
    assert _failed(federated.invariants(records, fl_epochs=30)) == ["each FedAvg run its rounds"]
