"""Chapter 4's reporting: quality, replacement and audit records, the feature-space check and figures."""


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medsec_utils import data, synthetic_eval  # noqa: E402
from medsec_utils.reporting import synthetic_images as reporting  # noqa: E402
from medsec_utils.reporting.common import PHANTOM_NOTICE, data_label  # noqa: E402


def _chapter4_records(images):
    real = torch.randn(40, 6, dtype=torch.float64)
    records = [reporting.quality_record(images, kind, synthetic_eval.quality_figures(real, real + shift, seed=0),
                                        "toy features", seconds_per_image=0.1)
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
    assert "features: toy features" in texts and PHANTOM_NOTICE in texts
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


LABEL = "phantom_ct [PHANTOM]"  # data_label of phantom:ct


def _stored(**fields):
    """A :class:`reporting.Stored` with ``fields`` set and the rest empty."""
    empty = {name: {} for name in reporting.Stored.__dataclass_fields__}
    return reporting.Stored(**{**empty, "replacement": [], **fields})


def test_quality_records_follow_the_stored_figures_and_the_readers_get_the_lowest_fid_unless_one_is_chosen():
    from medsec_utils.synthetic_eval import FLOOR

    sets = {LABEL: data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)}
    assert data_label(sets[LABEL]) == LABEL
    real = torch.randn(20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    quality = {(LABEL, kind): synthetic_eval.quality_figures(real, real + shift, seed=0)
               for kind, shift in ((FLOOR, 0.1), ("dcgan", 2), ("ddpm", 1))}
    histories = {(LABEL, kind, c): [{"seconds": 1.5}, {"seconds": 0.5}] for kind in ("dcgan", "ddpm") for c in (0, 1)}
    stored = _stored(quality=quality, histories=histories, seconds_per_image={(LABEL, "dcgan"): 0.1,
                                                                              (LABEL, "ddpm"): 0.2},
                     feature_extractor={LABEL: "toy features"}, n_real={LABEL: 20})
    records = reporting.quality_records(sets, stored)
    assert [r["generator"] for r in records] == [FLOOR, "dcgan", "ddpm"]
    assert records[0]["train_seconds"] is None and records[0]["seconds_per_image"] is None
    assert records[2]["train_seconds"] == 4.0 and records[2]["n_real"] == 20 and records[2]["dataset"] == "phantom_ct"
    assert records[1]["fid"] == pytest.approx(16.0, rel=1e-6)  # a shift of 2 in each of 4 dimensions
    assert list(reporting.quality_table(records).columns) == reporting.QUALITY_COLUMNS
    assert reporting.reader_generators(records, ["dcgan", "ddpm"]) == {LABEL: "ddpm"}
    assert reporting.reader_generators(records, ["dcgan"]) == {LABEL: "dcgan"}
    assert reporting.reader_generators(records, ["dcgan", "ddpm"], "dcgan") == {LABEL: "dcgan"}


def test_replacement_results_become_records_and_the_drops_sit_beside_the_papers():
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    y = torch.arange(20) % 2
    right, wrong = y.numpy() * 0.8 + 0.1, 1 - (y.numpy() * 0.8 + 0.1)
    results = [{"dataset": LABEL, "generator": "dcgan", "training_set": training_set, "model": model,
                "n_train": 100, "p_pathology": p}
               for training_set, p in (("real", right), ("synthetic", wrong)) for model in ("efficientnet_b3",
                                                                                            "lbp_random_forest")]
    records = reporting.replacement_records({LABEL: images}, results, {LABEL: (None, y)})
    assert records == _chapter4_records(images)[2:]
    table = reporting.drops_against_paper([{"section": "quality"}, *records])
    assert list(table.columns) == ["paper: lowest drop", "paper: highest drop", f"this run: {LABEL}, dcgan"]
    assert table.loc["lbp_random_forest"].tolist() == [5.5, 13.25, 100.0]


def test_check_reader_and_audit_results_become_records_with_their_data_set_and_tables():
    from medsec_utils import metrics, reader_study

    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    sets = {LABEL: images}
    rows = [{k: v for k, v in row.items() if k not in ("dataset", "phantom", "feature_extractor")}
            for row in _check_rows("toy", (0.1, 0.3, 1.0, 2.0), 9.0)]  # as metrics.degradation_fids gives them
    checks = reporting.feature_check_records(sets, {(LABEL, "toy space"): rows})
    assert len(checks) == len(rows) and checks[0]["feature_extractor"] == "toy space"
    assert checks[0]["section"] == "feature_check" and checks[0]["data_checksum"] == images.checksum
    assert reporting.feature_check_table(checks).loc[("phantom_ct [PHANTOM]", "toy space"), "passes"]
    key = pd.DataFrame({"case": [f"case_{i}" for i in range(6)], "truth": ["real", "synthetic"] * 3})
    simulated = {"simulated A": reader_study.simulate_reader(key, auc=0.75, seed=0, name="simulated A")}
    answers = {**simulated, reader_study.MACHINE_READER: simulated["simulated A"].assign(
        reader=reader_study.MACHINE_READER, confidence=[5 if t == "synthetic" else 1 for t in key["truth"]])}
    shown = reader_study.Demonstration("ddpm", {}, key, answers, reader_study.score_readers(key, answers, n_boot=50),
                                       reader_study.pooled_auc(key, simulated, n_boot=50), 0.0)
    read = reporting.reader_records(sets, {LABEL: shown})
    assert [(r["reader"], r["simulated"], r["machine"], r["generator"], r["n_kit"]) for r in read] == [
        ("simulated A", True, False, "ddpm", 6), (reader_study.MACHINE_READER, False, True, "ddpm", 6),
        (reporting.POOLED_READER, True, False, "ddpm", 6)]
    table = reporting.reader_table(read)
    assert table.loc[("phantom_ct", "ddpm", reader_study.MACHINE_READER), ["accuracy", "auc"]].tolist() == [1.0, 1.0]
    assert len(reporting.reader_roc_figure({LABEL: shown}).axes[0].lines) == len(answers) + 1
    train = torch.rand(10, 4, generator=torch.Generator().manual_seed(0))
    audit = metrics.memorisation_audit(train, train + 0.5, train[:3])
    audits = reporting.audit_records(sets, {(LABEL, "dcgan", "pixels"): audit})
    assert audits[0]["n_near_copies"] == 3 and audits[0]["section"] == "audit"
    assert list(reporting.audit_table(audits).columns) == reporting.AUDIT_COLUMNS


def test_class_quality_shows_the_class_whose_samples_collapsed():
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    label, g = data_label(images), torch.Generator().manual_seed(0)
    heldout, heldout_y = torch.randn(80, 6, generator=g, dtype=torch.float64), torch.arange(80) % 2
    fake_y = torch.arange(60) % 2
    fake = torch.randn(60, 6, generator=g, dtype=torch.float64)
    fake[fake_y == 1] = fake[fake_y == 1][:1] + 1e-3 * fake[fake_y == 1]  # every Pathology sample one image
    figures = {(label, "dcgan", c): synthetic_eval.class_figures(heldout[heldout_y == c], fake[fake_y == c], seed=0)
               for c in (0, 1)}
    records = reporting.class_quality_records({label: images}, _stored(class_quality=figures,
                                                                       feature_extractor={label: "toy features"}))
    table = reporting.class_quality_table(records).loc[records[0]["dataset"]]
    normal, pathology = table.loc[("dcgan", "Normal")], table.loc[("dcgan", "Pathology")]
    assert normal["diversity"] == pytest.approx(1.0, abs=0.2) and pathology["diversity"] < 0.01
    assert normal["machine_reader_accuracy"] < 0.75 and pathology["machine_reader_accuracy"] >= 0.85
    assert normal["n_samples"] == 30 and normal["n_real"] == 40
    assert {r["section"] for r in records} == {"class_quality"} and len(records) == 2


def test_quality_curves_follow_each_generator_and_class_beside_a_floor_at_the_same_sample_size():
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    label, g = data_label(images), torch.Generator().manual_seed(0)
    heldout, heldout_y = torch.randn(80, 6, generator=g, dtype=torch.float64), torch.arange(80) % 2
    floor, floor_y = torch.randn(60, 6, generator=g, dtype=torch.float64), torch.arange(60) % 2
    collapsed = heldout[:1] + 1e-3 * torch.randn(20, 6, generator=g, dtype=torch.float64)
    like_real = torch.randn(20, 6, generator=g, dtype=torch.float64)
    curves = {(label, "dcgan", c): [{"step": step, "trained": trained, **synthetic_eval.class_figures(
        heldout[heldout_y == c], fake, seed=0)} for step, trained, fake in ((10, False, collapsed), (20, True, like_real))]
        for c in (0, 1)}
    floors = {(label, c): synthetic_eval.class_figures(heldout[heldout_y == c], floor[floor_y == c][:20], seed=0)
              for c in (0, 1)}
    records = reporting.quality_curve_records({label: images}, _stored(
        curves=curves, floor_curves=floors, feature_extractor={label: "toy features"}))
    frame = pd.DataFrame(records)
    assert set(frame["section"]) == {"quality_curve"} and len(frame) == 6
    points = frame[frame["generator"] == "dcgan"].set_index(["class", "step"])
    assert points.loc[("Normal", 10), "diversity"] < 0.01 < 0.8 < points.loc[("Normal", 20), "diversity"]
    assert points["trained"].tolist() == [False, True, False, True]
    floors = frame[frame["generator"] == "real train (floor)"]
    assert floors["step"].isna().all() and (floors["n_samples"] == 20).all() and list(floors["class"]) == [
        "Normal", "Pathology"]
    trends = reporting.curve_trend_table(records).droplevel("dataset")
    assert list(trends.index) == [("dcgan", "Normal"), ("dcgan", "Pathology")] and (trends["steps"] == 20).all()
    assert list(trends.columns[1:]) == ["precision (>= 0.5)", "recall (>= 0.3)", "diversity (>= 0.8)",
                                        "machine reader accuracy (<= 0.7)"]
    assert trends.loc[("dcgan", "Normal"), "diversity (>= 0.8)"].endswith(": met")
    for (_, name), row in trends.iterrows():
        last = points.loc[(name, 20)]
        assert row["precision (>= 0.5)"].startswith(f"{last['precision']:.2f}: ")
        assert row["machine reader accuracy (<= 0.7)"].startswith(f"{last['machine_reader_accuracy']:.2f}: ")
    figure = reporting.plot_quality_curves(records)
    assert len(figure.axes) == 4 and figure._suptitle.get_text() == PHANTOM_NOTICE
    assert all(len(ax.lines) >= 4 for ax in figure.axes)  # two lines of points and the two classes' floors
    plt.close(figure)


def test_the_studys_findings_are_judged_on_the_drops_and_their_intervals_and_the_readers_left_untested():
    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    y = torch.arange(400) % 2

    def predicting(errors):
        p = y.numpy() * 0.8 + 0.1
        p[:errors] = 1 - p[:errors]
        return p

    accuracies = {("efficientnet_b3", "real"): 0, ("efficientnet_b3", "synthetic"): 12,  # a 3-point drop
                  ("lbp_random_forest", "real"): 40, ("lbp_random_forest", "synthetic"): 200}  # a 40-point drop
    records = [reporting.replacement_record(images, "dcgan", model, training_set, 400, y, predicting(errors))
               for (model, training_set), errors in accuracies.items()]
    findings = reporting.study_findings(records).set_index("finding")["verdict"]
    assert findings.iloc[0] == "reproduced" and findings.iloc[1] == "not reproduced"
    assert findings["the deep model loses less than LBP + Random Forest"] == "reproduced"
    assert findings.iloc[-1] == "not testable here"
    evidence = reporting.study_findings(records).set_index("finding")["evidence"]
    assert "3.0 [" in evidence.iloc[0] and "40.0 [" in evidence.iloc[1]
