"""Provenance and metrics.json of a run; attack records, figures and the paper comparison."""

import json
from importlib import metadata

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medsec_utils import attacks, data, defenses, reporting  # noqa: E402


def test_run_writes_metrics_with_full_provenance(tmp_path):
    images = data.load_dataset("phantom:histology?n=40", size=32, use_cache=False, progress=False)
    run = reporting.Run("99_test", tmp_path / "out", params={"profile": "smoke", "seed": 3},
                        settings={"epochs": 1}, device=torch.device("cpu"))
    run.add_dataset(images)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    run.save_figure(fig, "line")
    path = run.finish([{"dataset": images.name, "test_accuracy": 0.5}])
    record = json.loads(path.read_text())
    provenance = record["provenance"]
    assert record["results"] == [{"dataset": images.name, "test_accuracy": 0.5}]
    assert provenance["parameters"] == {"profile": "smoke", "seed": 3}
    assert provenance["datasets"][0]["checksum"] == images.checksum and provenance["datasets"][0]["is_phantom"]
    assert len(provenance["git"]["commit"]) in (40, len("unknown"))
    assert provenance["versions"]["torch"] == metadata.version("torch")
    assert provenance["device"].startswith("cpu") and provenance["wall_time_s"] >= 0
    assert provenance["figures"] == ["line.png"] and (tmp_path / "out" / "line.png").stat().st_size > 1000
    assert {"data", "reporting", "cache"} <= set(provenance["library"]) <= set(reporting.cache.code_fingerprint())
    assert provenance["library"]["data"] == reporting.cache.code_fingerprint("data")["data"]


def test_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    monkeypatch.setattr(reporting, "git_state", lambda: {"commit": "a" * 40, "dirty": False})
    run = reporting.Run("99_test", tmp_path, params={}, settings={}, device=torch.device("cpu"))
    monkeypatch.setattr(reporting, "git_state", lambda: {"commit": "b" * 40, "dirty": True})  # committed meanwhile
    assert run.provenance()["git"] == {"commit": "a" * 40, "dirty": False}


def test_phantom_results_are_labelled_everywhere():
    images = data.load_dataset("phantom:chest_xray?n=40", size=32, use_cache=False, progress=False)
    assert "PHANTOM" in reporting.data_label(images)
    assert "phantom" in reporting.data_notice([images]).lower()
    fig = reporting.plot_examples([images], per_class=2)
    assert "PHANTOM" in fig._suptitle.get_text()


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
    assert "phantoms, not patients" in text


def test_attack_figures_draw_and_flag_phantoms():
    images = data.load_dataset("phantom:ct?n=40", size=32, use_cache=False, progress=False)
    records = [reporting.attack_record(images, _outcome(name, eps), {}) for name in ("fgsm", "pgd", "autoattack")
               for eps in (1 / 255, 2 / 255)] + [reporting.attack_record(images, _outcome("cw", None), {})]
    curves = reporting.plot_robustness_curves(records)
    assert len(curves.axes[0].lines) == 3 and "PHANTOM" in curves._suptitle.get_text()
    directions = reporting.plot_error_directions(records)
    assert "PHANTOM" in directions._suptitle.get_text()
    sizes = reporting.plot_perturbation_sizes({"ct [PHANTOM]": {"fgsm": _outcome(), "cw": _outcome("cw", None)}})
    assert "PHANTOM" in sizes._suptitle.get_text() and len(sizes.axes) == 1
    assert len(sizes.axes[0].collections[0].get_offsets()) == 3  # the three flipped images
    nothing_flipped = _outcome()
    nothing_flipped.adv_pred = nothing_flipped.clean_pred.clone()
    empty = reporting.plot_perturbation_sizes({"ct": {"fgsm": nothing_flipped}})
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


def test_changed_images_marks_only_images_an_attack_moved():
    clean = torch.zeros(3, 1, 4, 4)
    adversarial = clean.clone()
    adversarial[1, 0, 2, 2] = 1 / 255
    assert reporting.changed_images(clean, adversarial).tolist() == [False, True, False]


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


def _chapter4_records(images):
    real = torch.randn(40, 6, dtype=torch.float64)
    records = [reporting.quality_record(images, kind, real, real + shift, "toy features", 0, seconds_per_image=0.1)
               for kind, shift in (("real train (floor)", 0.0), ("dcgan", 1.0))]
    y = torch.arange(20) % 2
    for training_set, p in (("real", y.numpy() * 0.8 + 0.1), ("synthetic", 1 - (y.numpy() * 0.8 + 0.1))):
        for model in ("efficientnet_b3", "lbp_random_forest"):
            records.append(reporting.replacement_record(images, "dcgan", model, training_set, 100, y, p))
    return records


def test_chapter_4_records_carry_the_metrics_json_fields_and_the_drop_is_real_minus_synthetic():
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    records = _chapter4_records(images)
    floor, dcgan = records[0], records[1]
    assert floor["fid"] == pytest.approx(0, abs=1e-6) and dcgan["fid"] == pytest.approx(6.0, rel=1e-3)
    for key in ("fid", "kid", "precision", "recall", "n_samples", "feature_extractor", "modality", "data_checksum"):
        assert key in dcgan
    table = reporting.replacement_table(records[2:])
    assert list(table.columns) == ["real", "synthetic", "drop real -> synthetic (pp)"]
    assert (table["drop real -> synthetic (pp)"] == 100.0).all()  # all right on real, all wrong on synthetic
    assert table.iloc[0]["real"].startswith("1.000 [")
    texts = " ".join(t.get_text() for t in reporting.plot_quality(records).texts)
    assert "features: toy features" in texts and reporting.PHANTOM_NOTICE in texts
    plt.close("all")


def _check_rows(space, noise_curve, sentinel):
    fields = {"dataset": "ct", "phantom": False, "feature_extractor": space}
    rows = [{**fields, "degradation": "gaussian noise (std)", "level": level, "fid": value, "sentinel": None}
            for level, value in zip((0.0, 0.05, 0.1, 0.2), noise_curve)]
    rows += [{**fields, "degradation": "box blur (px)", "level": level, "fid": value, "sentinel": None}
             for level, value in zip((1, 3, 5, 7), (0.1, 0.2, 0.4, 0.8))]
    return rows + [{**fields, "degradation": None, "level": None, "fid": sentinel, "sentinel": "noise"}]


def test_feature_check_passes_a_space_whose_fid_grows_and_keeps_sentinels_beyond():
    rows = (_check_rows("good", (0.1, 0.3, 1.0, 2.0), 9.0) + _check_rows("bumpy", (0.1, 1.0, 0.3, 2.0), 9.0)
            + _check_rows("fooled", (0.1, 0.3, 1.0, 2.0), 1.5))
    table = reporting.feature_check_table(rows).loc["ct"]
    assert table["passes"].to_dict() == {"good": True, "bumpy": False, "fooled": False}
    assert table.loc["bumpy", "rho, gaussian noise (std)"] == pytest.approx(0.8)
    assert table.loc["good", "farthest degraded / floor"] == pytest.approx(20.0)
    assert table.loc["fooled", "noise / floor"] == pytest.approx(15.0) and table.loc["good", "floor FID"] == 0.1
    figure = reporting.plot_feature_check(rows)
    assert len(figure.axes) == 2
    plt.close(figure)


def test_audit_figures_show_the_closest_pairs_first_and_flag_near_copies_in_red():
    from medsec_utils import metrics

    train = torch.rand(30, 1, 8, 8)
    synthetic = torch.rand(6, 1, 8, 8) * 0.1 + 2
    synthetic[4] = train[9]
    audit = metrics.memorisation_audit(train.flatten(1), torch.rand(10, 1, 8, 8).flatten(1), synthetic.flatten(1))
    fig = reporting.plot_closest_pairs({("toy", "dcgan"): (synthetic, train, audit)}, n=2)
    first = fig.axes[0]
    assert first.get_title() == "synthetic d=0" and first.title.get_color() == "red"
    assert fig.axes[2].title.get_color() != "red"
    assert len(reporting.plot_memorisation({("toy", "dcgan", "pixels"): audit}).axes) == 1
    plt.close("all")


def _federated_records():
    fields = {"dataset": "chest_xray", "modality": "chest_xray", "phantom": False, "data_checksum": "x"}
    config = {"alpha": 0.5, "image_size": 32, "networks": "both"}

    def curve(run, split, period, fids, model="server"):
        return reporting.federated_records(fields, {**config, "split": split, "local_epochs": period}, run, [
            {"round": r, "epoch": r * period, "model": model, "fid": fid} for r, fid in enumerate(fids)], "features")

    records = curve("FedAvg", "iid", 1, [90, 40, 20]) + curve("FedAvg", "iid", 1, [50, 30], model="site 0")[1:]
    records += curve("centralised", "pooled", 1, [90, 30, 10])
    records += curve("local only, site 0", "iid", 1, [90, 60, 40]) + curve("local only, site 1", "iid", 1, [90, 70, 20])
    records.append({**fields, "section": "heterogeneity", "split": "iid", "image_size": 32, "site_fid": 3.0})
    return records


def test_federated_summary_sets_the_last_server_fid_against_both_baselines_and_the_heterogeneity():
    summary = reporting.federated_summary(_federated_records())
    row = summary.loc[("chest_xray", "iid", 32, 1)]
    # medians over the second half of training (epochs 1 and 2 of 2)
    assert row["server_fid"] == 30 and row["centralised_fid"] == 20 and row["local_only_fid"] == 47.5
    assert row["server_over_centralised"] == 1.5 and row["server_over_local_only"] == pytest.approx(30 / 47.5)
    assert row["untrained_fid"] == 90 and row["server_over_untrained"] == pytest.approx(1 / 3)
    assert row["site_heterogeneity_fid"] == 3.0 and np.isnan(row["site_heterogeneity_relative"])


def test_federated_figures_draw_the_pooled_baseline_in_each_split_panel():
    records = _federated_records()
    fig = reporting.plot_federated_fid(records)
    legend = {text.get_text() for text in fig.legends[0].get_texts()}
    assert {"FedAvg server", "FedAvg site 0", "centralised", "local only, site 0", "local only, site 1"} <= legend
    assert len(fig.axes) == 1 and len([line for line in fig.axes[0].get_lines() if len(line.get_xdata())]) >= 5
    plt.close(fig)
    fig = reporting.plot_heterogeneity(reporting.federated_summary(records))
    assert fig.axes[0].get_xlabel().startswith("FID between the two sites")
    plt.close(fig)


def _claims_records(modality, heterogeneity, server, centralised, period=1, size=64):
    fields = {"dataset": modality, "modality": modality, "phantom": False, "data_checksum": "x"}
    config = {"alpha": 0.5, "image_size": size, "networks": "both"}

    def curve(run, split, local_epochs, fids):
        return reporting.federated_records(fields, {**config, "split": split, "local_epochs": local_epochs}, run, [
            {"round": r, "epoch": r * local_epochs, "model": "server", "fid": fid} for r, fid in enumerate(fids)], "f")

    records = curve("FedAvg", "iid", period, server) + curve("centralised", "pooled", 1, centralised)
    records += curve("local only, site 0", "iid", 1, centralised) + curve("local only, site 1", "iid", 1, centralised)
    return records + [{**fields, "section": "heterogeneity", "split": "iid", "image_size": size,
                       "site_fid": heterogeneity}]


def test_federated_claims_judge_each_finding_by_its_stated_rule():
    smooth = [100, 80, 60, 50, 40, 35, 30]
    records = (_claims_records("chest_xray", 1.0, [100, 82, 61, 50, 41, 36, 33], smooth)  # ratio 1.1: converges
               + _claims_records("ct", 2.0, [100, 40, 90, 35, 95, 40, 60], smooth)  # swings: unstable
               + _claims_records("histology", 3.0, [100, 90, 95, 92, 96, 94, 150], smooth))  # ratio 5: fails
    claims = reporting.federated_claims(records).set_index("finding")["verdict"]
    assert claims["chest X-ray: FedAvg converges"] == "reproduced"
    assert claims["CT: FedAvg is unstable"] == "reproduced"
    assert claims["histology: FedAvg fails"] == "reproduced"
    assert claims["every 5 epochs at 128 px: FedAvg fails"] == "not testable here"
    assert claims["FedAvg does worse the more the sites' images differ"] == "reproduced"
    swapped = (_claims_records("chest_xray", 3.0, [100, 90, 95, 92, 96, 94, 150], smooth)
               + _claims_records("ct", 2.0, [100, 82, 61, 50, 41, 36, 33], smooth)
               + _claims_records("histology", 1.0, [100, 82, 61, 50, 41, 36, 33], smooth)
               + _claims_records("histology", 1.0, [100, 61, 41, 33], smooth, period=2, size=128))
    claims = reporting.federated_claims(swapped).set_index("finding")["verdict"]
    assert claims["chest X-ray: FedAvg converges"] == "not reproduced"
    assert claims["CT: FedAvg is unstable"] == "not reproduced"
    assert claims["histology: FedAvg fails"] == "not reproduced"
    assert claims["FedAvg does worse the more the sites' images differ"] == "inconclusive (p >= 0.05)"


def test_federated_claims_do_not_blame_fedavg_when_centralised_training_learned_nothing():
    flat = [100, 99, 98, 99, 97, 98, 99]
    records = _claims_records("chest_xray", 1.0, [100, 98, 99, 97, 99, 98, 98], flat)
    claims = reporting.federated_claims(records).set_index("finding")
    assert claims.loc["chest X-ray: FedAvg converges", "verdict"] == "not testable here"
    assert "centralised/untrained 0.98" in claims.loc["chest X-ray: FedAvg converges", "evidence"]
