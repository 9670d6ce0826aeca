"""Chapter 2's reporting: attack records, figures and the comparison with the study."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medsec_utils import attacks, data  # noqa: E402
from medsec_utils.reporting import attacks as reporting  # noqa: E402


def _outcome(attack="fgsm", eps=2 / 255):
    """Eight images: two already misdiagnosed, three flipped by the attack (two of them Pathology)."""
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    clean_pred = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])
    adv_pred = torch.tensor([0, 0, 1, 0, 1, 0, 0, 1])
    clean = torch.full((8, 1, 16, 16), 0.5)
    adversarial = clean.clone()
    adversarial[[0, 1, 4]] += 2 / 255
    return attacks.AttackOutcome(attack, eps, labels, clean_pred, adv_pred, clean, adversarial, seconds=1.2)


def test_attack_record_holds_accuracies_directions_and_sizes():
    images = data.load_dataset("phantom:ct?n=40", size=32, use_cache=False, progress=False)
    record = reporting.attack_record(images, _outcome(), {"eps": 2 / 255}, accuracy_8bit=0.5)
    assert (record["n"], record["n_attacked"], record["n_flipped"]) == (8, 6, 3)
    assert record["clean_accuracy"] == 6 / 8 and record["robust_accuracy"] == 3 / 8
    low, high = record["robust_accuracy_ci"]
    assert 0 < low < 3 / 8 < high < 1
    assert record["pathology_to_normal_rate"] == pytest.approx(2 / 3)
    assert record["normal_to_pathology_rate"] == pytest.approx(1 / 3)
    assert record["median_linf"] * 255 == pytest.approx(2) and record["median_psnr"] == pytest.approx(
        20 * np.log10(255 / 2))
    assert record["epsilon_255"] == 2 and record["seconds_per_image"] == 0.2 and record["phantom"]
    json.dumps(record)  # goes into metrics.json as it is


def test_paper_comparison_says_inside_above_or_below():
    images = data.load_dataset("phantom:ct?n=40", size=32, use_cache=False, progress=False)
    record = reporting.attack_record(images, _outcome(), {"eps": 2 / 255})
    paper = pd.DataFrame({"clean": [75.0], "fgsm": [0.0]}, index=["ct"])
    text = reporting.compare_with_paper([record], paper)
    assert "| ct | clean | 75.0 | 75.0" in text and "inside our interval" in text.splitlines()[2]
    assert "| ct | fgsm | 0.0 | 37.5" in text and "ours higher than the paper" in text.splitlines()[3]


def test_attack_figures_draw_and_flag_phantoms():
    images = data.load_dataset("phantom:ct?n=40", size=32, use_cache=False, progress=False)
    records = [reporting.attack_record(images, _outcome(name, eps), {}) for name in ("fgsm", "pgd", "autoattack")
               for eps in (1 / 255, 2 / 255)] + [reporting.attack_record(images, _outcome("cw", None), {})]
    curves = reporting.plot_robustness_curves(records)
    assert len(curves.axes[0].lines) == 3 and "PHANTOM" in curves._suptitle.get_text()
    directions = reporting.plot_error_directions(records)
    assert "PHANTOM" in directions._suptitle.get_text()
    psnr = {"fgsm": np.array([44.0, 45.0, 46.0]), "cw": np.array([50.0])}  # the three and one flipped images
    sizes = reporting.plot_perturbation_sizes({"ct [PHANTOM]": psnr})
    assert "PHANTOM" in sizes._suptitle.get_text() and len(sizes.axes) == 1
    assert sizes.axes[0].collections[0].get_offsets()[:, 1].tolist() == [44.0, 45.0, 46.0]
    empty = reporting.plot_perturbation_sizes({"ct": {"fgsm": np.zeros(0)}})
    assert "none" in empty.axes[0].texts[0].get_text()  # as on phantoms, where smoke classifiers flip nothing
    examples = reporting.plot_adversarial_examples({"ct [PHANTOM]": {"fgsm": _outcome(), "cw": _outcome("cw", None)}})
    assert len(examples.axes) == 5 and examples.axes[0].get_title().endswith("Pathology")
    assert examples.axes[1].get_title() == "fgsm\npredicted Normal"  # the example is a flipped Pathology image
    plt.close("all")


def test_budgets_matching_paper_lists_the_budgets_whose_interval_holds_the_quoted_value():
    images = data.load_dataset("phantom:ct?n=40", size=32, use_cache=False, progress=False)
    records = [reporting.attack_record(images, _outcome("fgsm", eps), {}) for eps in (1 / 255, 2 / 255)]
    records[0]["robust_accuracy_ci"] = (0.5, 0.7)
    records[1]["robust_accuracy_ci"] = (0.0, 0.1)
    paper = pd.DataFrame({"fgsm": [60.0], "autoattack": [0.0]}, index=["ct"])
    table = reporting.budgets_matching_paper(records, paper)
    assert table.to_dict("records") == [{"dataset": images.name, "attack": "fgsm", "paper (%)": 60.0,
                                         "budgets matching the paper (x 1/255)": "1"}]
    paper.loc["ct", "fgsm"] = 30.0
    assert reporting.budgets_matching_paper(records, paper).iloc[0, -1] == "none run"
