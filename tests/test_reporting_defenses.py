"""Chapter 3's reporting: table cells, the defence table, heat maps, costs and the study's claims."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medsec_utils import attacks, data, defenses  # noqa: E402
from medsec_utils.reporting import defenses as reporting  # noqa: E402


class _Constant(torch.nn.Module):
    """A two-logit model that diagnoses every image as ``label``."""

    def __init__(self, label):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([1.0 - label, float(label)]))

    def forward(self, x):
        return self.logits.expand(len(x), 2)


def test_defense_record_scores_plain_models_and_counts_magnet_rejections_by_image_kind():
    images = data.load_dataset("phantom:ct?n=40", size=32, use_cache=False, progress=False)
    y = torch.tensor([1, 1, 1, 0, 0, 0])
    x = torch.full((6, 1, 8, 8), 0.5)
    changed = torch.tensor([True, True, False, True, False, False])
    plain = reporting.defense_record(images, _Constant(1), "none", "fgsm", "gray-box", x, y, changed, 2 / 255)
    assert (plain["accuracy"], plain["n"], plain["n_correct"], plain["n_adversarial"]) == (0.5, 6, 3, 3)
    assert plain["ci_low"] < 0.5 < plain["ci_high"] and "rejected_adversarial_share" not in plain
    assert plain["epsilon_255"] == 2 and plain["threat_model"] == "gray-box" and plain["defense"] == "none"

    magnet = defenses.MagNet(torch.nn.Identity(), _Constant(1)).eval()
    x[[0, 3, 5]] = 0.9  # these three are "far from the data": the detector rejects them
    magnet.reconstruction_error = lambda images: (images.flatten(1).mean(1) > 0.7).float()
    magnet.threshold.fill_(0.5)
    record = reporting.defense_record(images, magnet, "magnet", "fgsm", "gray-box", x, y, changed, 2 / 255)
    # adversarial 0 (rejected, right), 1 (passed, Pathology right), 3 (rejected, right);
    # clean 2 (passed, right), 4 (passed, Normal called Pathology: wrong), 5 (rejected clean: wrong)
    assert record["n_correct"] == 4 and record["accuracy"] == pytest.approx(4 / 6)
    assert record["rejected_adversarial_share"] == pytest.approx(2 / 3)
    assert record["rejected_clean_share"] == pytest.approx(1 / 3)
    assert record["accuracy_of_passed_adversarial"] == 1.0
    json.dumps(record)


def _cells(values):
    """Records of one data set from ``{(threat model, attack, defence): accuracy}`` on 100 images each."""
    cells = []
    for (threat_model, attack, defense), accuracy in values.items():
        low, high = reporting.metrics.wilson_interval(round(accuracy * 100), 100)
        cells.append({"dataset": "ct", "modality": "ct", "phantom": False, "threat_model": threat_model,
                      "attack": attack, "defense": defense, "accuracy": accuracy, "ci_low": low, "ci_high": high})
    return cells


PAPER_LIKE = {("gray-box", "none", "none"): 0.95, ("gray-box", "fgsm", "none"): 0.5,
              ("gray-box", "autoattack", "none"): 0.0, ("gray-box", "cw", "none"): 0.0,
              ("gray-box", "none", "adversarial_training"): 0.93, ("gray-box", "fgsm", "adversarial_training"): 0.95,
              ("gray-box", "autoattack", "adversarial_training"): 0.93, ("gray-box", "cw", "adversarial_training"): 0.92,
              ("gray-box", "none", "hgd"): 0.98, ("gray-box", "fgsm", "hgd"): 0.97,
              ("gray-box", "autoattack", "hgd"): 0.96, ("gray-box", "cw", "hgd"): 0.95,
              ("gray-box", "none", "magnet"): 0.9, ("gray-box", "fgsm", "magnet"): 0.7,
              ("gray-box", "autoattack", "magnet"): 0.6, ("gray-box", "cw", "magnet"): 0.6}


def test_paper_claims_are_reproduced_on_a_table_that_shows_them_and_refuted_on_one_that_does_not():
    claims = reporting.paper_claims(_cells(PAPER_LIKE), "gray-box").set_index("claim")["verdict"]
    assert (claims == "reproduced").all(), claims
    opposite = {key: (1 - value if key[1] != "none" else value) for key, value in PAPER_LIKE.items()}
    claims = reporting.paper_claims(_cells(opposite), "gray-box").set_index("claim")
    assert (claims["verdict"] == "not reproduced").all(), claims
    assert "ct: mean accuracy under attack" in claims.loc["MagNet is weaker than HGD", "evidence"]


def test_defense_table_heat_maps_and_costs_lay_out_attack_by_defence():
    records = _cells(PAPER_LIKE) + _cells({("adaptive", a, d): 0.1 for (_, a, d) in PAPER_LIKE})
    table = reporting.defense_table(records, "gray-box")
    assert list(table.columns) == ["none", "adversarial_training", "hgd", "magnet"]
    assert list(table.index.get_level_values("attack")) == ["none", "fgsm", "autoattack", "cw"]
    assert table.loc[("ct", "fgsm"), "hgd"].startswith("0.970 [")
    fig = reporting.plot_defense_heatmaps(records)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "ct: adaptive"
    assert [t.get_text() for t in fig.axes[0].texts][:4] == ["0.95", "0.93", "0.98", "0.90"]
    history = {("ct", kind): [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}] for kind in ("hgd", "magnet")}
    assert len(reporting.plot_defense_training(history).axes) == 2
    plt.close("all")
    costs = reporting.defense_costs(records, {("ct", "hgd"): [{"seconds": 2.0}, {"seconds": 3.0}]})
    assert costs.loc[("ct", "hgd"), "training seconds"] == 5.0
    assert costs.loc[("ct", "magnet"), "clean accuracy cost"] == pytest.approx(-0.05)
    assert costs.loc[("ct", "none"), "clean accuracy"] == 0.95


STUDY = reporting.pd.DataFrame(
    {"none": [90.0, 40.0, 10.0], "hgd": [None, 95.0, 80.0]},
    index=reporting.pd.MultiIndex.from_tuples([("ct", "none"), ("ct", "fgsm"), ("ct", "autoattack")],
                                              names=["modality", "attack"]))


def _at(values, eps_255=None):
    """:func:`_cells` of ``{(attack, defence): accuracy}`` in the gray-box setting at budget ``eps_255``."""
    return [{**cell, "epsilon_255": eps_255} for cell in _cells({("gray-box", a, d): v for (a, d), v in values.items()})]


def test_each_study_cell_gets_ours_beside_it_and_a_verdict_computed_from_our_interval():
    records = _at({("none", "none"): 0.9, ("fgsm", "none"): 0.1, ("fgsm", "hgd"): 1.0, ("autoattack", "hgd"): 0.8,
                   ("cw", "none"): 0.0, ("none", "hgd"): 0.9})
    cells = reporting.paper_cells(records, "gray-box", STUDY).set_index(["attack", "defense"])
    assert len(cells) == 4  # no CW in the study; the study has no clean cell for HGD
    assert cells.loc[("none", "none"), "verdict"] == "inside our interval"
    assert cells.loc[("fgsm", "none"), "verdict"] == "study above ours"  # 40 % against 10 % [5.5, 17.4]
    assert cells.loc[("fgsm", "hgd"), "verdict"] == "study below ours"  # 95 % against 100 % [96.3, 100]
    assert cells.loc[("fgsm", "none"), "difference (pp)"] == -30.0
    counts = reporting.verdict_counts({"gray-box": cells.reset_index()}).loc[("gray-box", "ct")]
    assert (counts["inside our interval"], counts["study above ours"], counts["study below ours"], counts["cells"]) \
        == (2, 1, 1, 4)
    fig = reporting.plot_paper_differences({"gray-box": cells.reset_index(), "adaptive": cells.reset_index()})
    marks = [t.get_text() for t in fig.axes[0].texts]
    assert len(fig.axes) == 2 and "+0 ✓" in marks and "-30" in marks
    plt.close("all")


def test_the_matched_budget_is_where_the_undefended_cells_agree_with_the_study_and_defended_cells_follow_it():
    records = (_at({("fgsm", "none"): 0.9, ("autoattack", "none"): 0.8, ("fgsm", "hgd"): 0.9}, 1)
               + _at({("fgsm", "none"): 0.4, ("autoattack", "none"): 0.1, ("fgsm", "hgd"): 0.95,
                      ("autoattack", "hgd"): 0.5}, 2)
               + _at({("fgsm", "none"): 0.0, ("autoattack", "none"): 0.0, ("fgsm", "hgd"): 0.2}, 4))
    budgets = reporting.matched_budgets(records, STUDY).set_index("epsilon_255")
    assert budgets["matched"].tolist() == [False, True, False]
    assert budgets.loc[1, "undefended: mean |ours - study| (pp)"] == 60.0  # (50 + 70) / 2
    matched = reporting.at_matched_budgets(records, STUDY)
    assert set(matched["epsilon_255"]) == {2} and len(matched) == 4
    tied = _at({("fgsm", "none"): 0.5, ("autoattack", "none"): 0.5}, 1) + _at({("fgsm", "none"): 0.5,
                                                                             ("autoattack", "none"): 0.5}, 2)
    assert reporting.matched_budgets(tied, STUDY)["matched"].tolist() == [True, False]  # the smaller budget
    assert matched.set_index(["attack", "defense"]).loc[("autoattack", "hgd"), "verdict"] == "study above ours"


def test_gray_box_cells_at_each_budget_put_the_bare_classifiers_adversarial_images_through_every_pipeline(
        tmp_path, monkeypatch):
    from medsec_utils.steps.defenses import gray_box_cells

    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    torch.manual_seed(0)
    bare = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2)).eval()
    x, y = torch.rand(8, 1, 16, 16), torch.tensor([0, 1] * 4)
    records = [reporting.cell_record(images, kind, cell) for kind, model in (("none", bare), ("hgd", _Constant(1)))
               for cell in gray_box_cells(bare, model, ["fgsm", "cw"], [1 / 255, 8 / 255], x, y, {}, seed=0,
                                          device=torch.device("cpu"))]
    assert [(r["attack"], r["epsilon_255"], r["defense"]) for r in records] == [
        ("fgsm", 1, "none"), ("fgsm", 8, "none"), ("fgsm", 1, "hgd"), ("fgsm", 8, "hgd")]  # CW has no budget
    outcome, hit = attacks.evaluate_attack_cached(bare, "fgsm", x, y, eps=8 / 255, settings={}, seed=0,
                                                  device=torch.device("cpu"))
    assert hit  # the cells reused (here: made) the cached adversarial images
    assert records[1]["accuracy"] == pytest.approx(float((bare(outcome.adversarial).argmax(1) == y).float().mean()))
    assert records[3]["accuracy"] == 0.5 and records[1]["threat_model"] == "gray-box"
