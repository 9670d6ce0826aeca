"""Chapter 5's reporting: FID curves, the summary against both baselines and the study's findings."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from medsec_utils.reporting import federated as reporting  # noqa: E402


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


def _federation(split="iid", size=32):
    from types import SimpleNamespace

    images = SimpleNamespace(name="phantom_ct", modality="ct", is_phantom=True, checksum="sha256:ab")
    return SimpleNamespace(sets=(images,), split=split, image_size=size, name="phantom_ct")


def test_chapter_records_put_each_federation_heterogeneity_first_and_communication_after_its_fedavg_fids():
    federation = _federation()
    gaps = [{"federation": federation, "site_fid": 2.0, "site_fid_relative": 0.1, "images": [60, 64],
             "pathology_shares": [0.3, 0.35]}]
    config = {"split": "iid", "alpha": 0.5, "image_size": 32, "local_epochs": 1, "networks": "both"}
    rounds = [{"round": 1, "seconds": 5.0, "bytes_to_sites": 10, "bytes_from_sites": 10},
              {"round": 2, "seconds": 1.0, "bytes_to_sites": 10, "bytes_from_sites": 10}]
    fids = [{"round": r, "epoch": r, "model": "server", "fid": 9.0 - r} for r in range(3)]
    results = [{"federation": federation, "run": run, "config": {**config, "split": split}, "fids": fids,
                "rounds": rounds, "feature_extractor": "f"} for run, split in (("FedAvg", "iid"), ("centralised", "pooled"))]
    records = reporting.chapter_records(gaps, results)
    assert [r["section"] for r in records] == ["heterogeneity"] + ["federated"] * 3 + ["communication"] + ["federated"] * 3
    assert records[0]["n_site_0"] == 60 and records[0]["n_site_1"] == 64 and records[0]["phantom"]
    assert records[4]["bytes_per_round"] == 20 and records[4]["seconds_per_later_round"] == 1.0
    assert {r["split"] for r in records if r.get("run") == "centralised"} == {"pooled"}
    table = reporting.sites_table(gaps)
    assert table.loc[("phantom_ct", "iid", 32, 1), "images"] == 64
    assert list(reporting.communication_table(records)["rounds"]) == [2]


def test_design_notice_names_what_the_profile_leaves_out():
    from types import SimpleNamespace

    settings = {"profile": "smoke", "fl_epochs": 2}
    small = SimpleNamespace(settings=settings, periods=[1], sizes=[32], splits=["iid"], networks="both", extended=None)
    assert "leaves out 128 px (the study's), aggregation every 1, 3 and 5 epochs" in reporting.design_notice(small)
    full = SimpleNamespace(settings=settings, periods=[1, 3, 5], sizes=[64, 128], splits=["iid", "dirichlet"],
                           networks="both", extended=None)
    assert "leaves out" not in reporting.design_notice(full)
    from medsec_utils import federated, profiles

    one_set = federated.Design.of(profiles.Settings({**settings, "fl_periods": [1, 3, 5], "fl_sizes": [64],
                                                     "fl_splits": ["iid"]}), 0, extended_dataset="chest_xray",
                                  extended_sizes=[64, 128], extended_splits=["iid", "dirichlet"])
    notice = reporting.design_notice(one_set)
    assert "chest_xray alone also federates at [64, 128] px under splits ['iid', 'dirichlet']" in notice
    assert "leaves out" not in notice
