"""Provenance and metrics.json of a run, and what every chapter's reporting shares."""

import json
import subprocess
from importlib import metadata

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from _paths import REPO, shared_data  # noqa: E402
from medsec_utils import cache, data, reporting  # noqa: E402
from medsec_utils.reporting import classifiers  # noqa: E402


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
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert provenance["git"]["commit"] == head.stdout.strip()
    assert provenance["versions"]["torch"] == metadata.version("torch")
    assert provenance["device"].startswith("cpu") and provenance["wall_time_s"] >= 0
    assert provenance["figures"] == ["line.png"] and (tmp_path / "out" / "line.png").stat().st_size > 1000
    assert {"data", "reporting", "reporting.provenance", "cache"} <= set(provenance["library"]) <= set(cache.code_fingerprint())
    assert provenance["library"]["data"] == cache.code_fingerprint("data")["data"]


def test_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    monkeypatch.setattr(reporting.provenance, "git_state", lambda: {"commit": "a" * 40, "dirty": False})
    run = reporting.Run("99_test", tmp_path, params={}, settings={}, device=torch.device("cpu"))
    monkeypatch.setattr(reporting.provenance, "git_state", lambda: {"commit": "b" * 40, "dirty": True})  # committed meanwhile
    assert run.provenance()["git"] == {"commit": "a" * 40, "dirty": False}


def test_phantom_results_are_labelled_everywhere():
    images = data.load_dataset("phantom:chest_xray?n=40", size=32, use_cache=False, progress=False)
    assert "PHANTOM" in reporting.data_label(images)
    assert "phantom" in reporting.data_notice([images]).lower()
    fig = classifiers.plot_examples([images], per_class=2)
    assert "PHANTOM" in fig._suptitle.get_text()
    assert "phantom" in reporting.phantom_verdict_notice([images]).lower()


def test_real_results_are_not_labelled_as_phantoms():
    real = data.load_dataset(str(shared_data("ct")), size=32, progress=False)
    assert reporting.phantom_verdict_notice([real]) == "" and "PHANTOM" not in reporting.data_label(real)


def test_verdict_rule_and_interval_cells():
    assert reporting.verdict([True, True]) == "reproduced" and reporting.verdict([False, None]) == "not reproduced"
    assert reporting.verdict([True, False, None]) == "partly reproduced" and reporting.verdict([None]) == "not testable here"
    assert reporting.ci_cell(0.5, 0.25, 0.75) == "0.500 [0.250, 0.750]"


def test_the_study_is_cited_from_one_place_on_the_introduction_and_every_chapter_page(tmp_path, monkeypatch):
    """paper.yaml's citation: on the introduction (typed, so the book builds without running anything) and shown by
    ``open_chapter`` at the top of every chapter."""
    from medsec_utils import paper
    from medsec_utils.reporting import chapter

    citation = " ".join(paper.citation().split())
    assert citation.startswith("V.A. Kovalev") and "Evaluating vulnerabilities" in citation
    assert citation in " ".join((REPO / "book" / "intro.md").read_text().split())
    shown = []
    monkeypatch.setattr(chapter, "_show_markdown", shown.append)
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path / "cache"))
    chapter.open_chapter("01_classifiers", profile="smoke", dataset="phantom:ct?n=40", seed=0,
                         output_dir=str(tmp_path / "run"))
    assert shown and shown[0].startswith(f"**The study this book reproduces:** {paper.citation()}")


def test_headline_numbers_over_seeds_give_mean_spread_and_range_and_sit_beside_the_published_pneumoniamnist():
    records = [{"dataset": name, "phantom": False, "seed": seed, "test_accuracy": acc, "test_balanced_accuracy": acc,
                "test_auc": auc} for name, seed, acc, auc in [("ct", 0, 0.90, 0.97), ("ct", 1, 0.84, 0.94),
                                                              ("ct", 2, 0.87, 0.95), ("pneumoniamnist_28", 0, 0.85, 0.93)]]
    summary = classifiers.seed_summary(records)
    assert summary.loc["ct", "seeds"] == 3 and summary.loc["ct", "accuracy"] == "0.870 ± 0.030 (0.840-0.900)"
    assert summary.loc["ct", "AUC"] == "0.953 ± 0.015 (0.940-0.970)"
    assert summary.loc["pneumoniamnist_28", "AUC"] == "0.930 (one seed)"  # one seed: no spread
    table = classifiers.beside_pneumoniamnist(records, {"image_size": 64})
    assert table.loc["this book", "accuracy"] == 0.85 and table.loc["this book", "seeds"] == 1
    assert table.loc["MedMNIST v2 (Yang et al., Sci. Data 2023)", "auc"] == 0.944
    assert "this book" not in classifiers.beside_pneumoniamnist(records[:3], {"image_size": 64}).index
