"""Chapters end to end: papermill runs on real data (smoke profile) and strict book builds.

nbval runs every notebook on its defaults (the phantoms); these tests add the real images of
``../shared/data`` when that folder exists, and build the book from the committed reference run and
from a fresh run.

What a smoke run on real data can catch, and what it cannot. The smoke profile trains for 2 epochs on 256
images: on the real chest X-rays its classifiers may predict one class for every image, and an attack on a
constant classifier flips nothing. So these tests check plumbing and bookkeeping, never effect sizes:
- loading: real files of every modality decode, split per patient and reach every chapter (chapter 1);
- completeness: every attack x budget, every Table-1 cell of both threat models, every generator, training
  set, audit space and reader-kit file is present (chapters 2-4), every federation's rounds (chapter 5);
- invariants that hold for any model: intervals contain their estimate, robust <= clean accuracy, the
  two threat models agree on the bare classifier, shares lie in [0, 1], FIDs are >= 0;
- provenance and the book: checksums match, figures are listed, a strict build passes and flags changed
  code; the run's wall times are kept beside the plan.
Attack strength, defence gains and generator quality are judged on the reference run (``cpu`` profile), and
each library piece's behaviour by its own unit tests (``test_attacks``, ``test_defenses``, ...).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _paths import REPO, SHARED, shared_data
from medsec_utils import plan

ROOT = REPO
REAL = [SHARED / "chest_xray", SHARED / "ct", SHARED / "histology"]
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RELEASED = [chapter for chapter in CHAPTERS if chapter not in plan.AWAITING_REFERENCE]  # with a reference page


def _compendium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compendium.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, check=False)


# Chapters whose code depends only on the channel count run on fewer real data sets (nbval runs every
# chapter on all three phantoms): the attacks, defences and privacy audits on the CT slices, chapter 4 on one
# grey and one colour set, chapter 5 on the two sets its chest X-ray | CT site pair needs (a smoke federation
# costs about 40 s of Flower start-up). Chapter 1, which loads every modality's files, runs on all three.
ATTACKED = [SHARED / "ct"]
SYNTHESISED = [SHARED / "chest_xray", SHARED / "histology"]
FEDERATED = [SHARED / "chest_xray", SHARED / "ct"]
REAL_RUNS = ((("01",), REAL), (("05",), FEDERATED), (("04",), SYNTHESISED), (("02", "03", "06"), ATTACKED))


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """Every chapter in the smoke profile on the real images of ../shared/data, as set out in REAL_RUNS."""
    for folder in REAL:
        shared_data(folder.name)
    out = tmp_path_factory.mktemp("real_run")
    for chapters, folders in REAL_RUNS:
        args = ["run", "--profile", "smoke", "--out", str(out), "--plan"]
        args += [arg for chapter in chapters for arg in ("--chapter", chapter)]
        args += [arg for folder in folders for arg in ("--dataset", str(folder))]
        done = _compendium(*args)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_run_records_each_chapters_wall_time_beside_the_plan(real_run):
    chapters = json.loads((real_run / "wall_times.json").read_text())["chapters"]
    assert sorted(chapters) == CHAPTERS
    for record in chapters.values():
        assert record["seconds"] > 0 and record["estimated_seconds"] > 0, record
        assert record["git"]["commit"] and record["machine"]["cores"] >= 1


@pytest.mark.slow
def test_chapter_1_on_real_data_records_results_and_provenance(real_run):
    record = json.loads((real_run / "01_classifiers" / "metrics.json").read_text())
    results = {r["modality"]: r for r in record["results"]}
    assert set(results) == {"chest_xray", "ct", "histology"}
    for result in results.values():
        assert not result["phantom"] and result["n_train"] > 0 and result["n_test"] > 0
        assert result["epochs"] >= 1 and result["train_seconds"] > 0
        for key in ("test_accuracy", "test_balanced_accuracy", "test_auc"):
            low, high = result[f"{key}_ci"]
            assert 0 <= low <= result[key] <= high <= 1
    provenance = record["provenance"]
    assert provenance["parameters"]["profile"] == "smoke"
    assert [d["checksum"] for d in provenance["datasets"]] == [r["data_checksum"] for r in record["results"]]
    assert all(not d["is_phantom"] for d in provenance["datasets"])
    assert {"examples.png", "training_curves.png", "confusion_matrices.png", "roc_curves.png"} <= set(
        provenance["figures"])
    seeds = record["over_seeds"]  # the smoke profile: one seed, the run's own, whose figures are the headline's
    assert [(r["modality"], r["seed"]) for r in seeds] == [(m, 0) for m in results]
    assert all(r["test_accuracy"] == results[r["modality"]]["test_accuracy"] for r in seeds)


@pytest.mark.slow
def test_chapter_2_on_real_data_records_every_attack_and_budget(real_run):
    record = json.loads((real_run / "02_attacks" / "metrics.json").read_text())
    results = record["results"]
    budgets = record["provenance"]["parameters"]["epsilons"]
    assert {r["modality"] for r in results} == {folder.name for folder in ATTACKED}
    for modality in (folder.name for folder in ATTACKED):
        rows = [r for r in results if r["modality"] == modality]
        assert sorted(r["epsilon"] for r in rows if r["attack"] == "autoattack") == sorted(budgets)
        assert [r["epsilon"] for r in rows if r["attack"] == "cw"] == [None]
        for row in rows:
            assert not row["phantom"] and row["n"] > 0
            for key in ("clean_accuracy", "robust_accuracy", "seconds_per_image", "pathology_to_normal_rate"):
                assert key in row
            assert 0 <= row["robust_accuracy"] <= row["clean_accuracy"] <= 1
            low, high = row["robust_accuracy_ci"]
            assert low <= row["robust_accuracy"] <= high
    assert {"robustness_curves.png", "adversarial_examples.png", "error_directions.png"} <= set(
        record["provenance"]["figures"])


@pytest.mark.slow
def test_chapter_3_on_real_data_fills_every_cell_of_both_tables(real_run):
    record = json.loads((real_run / "03_defenses" / "metrics.json").read_text())
    parameters = record["provenance"]["parameters"]
    cells = [r for r in record["results"] if r["attack"] != "detector_aware_pgd"]
    assert {r["modality"] for r in cells} == {folder.name for folder in ATTACKED}
    for modality in (folder.name for folder in ATTACKED):
        rows = {(r["threat_model"], r["attack"], r["defense"]): r for r in cells if r["modality"] == modality}
        assert set(rows) == {(t, a, d) for t in ("gray-box", "adaptive") for a in ["none", *parameters["attacks"]]
                             for d in ["none", *parameters["defenses"]]}
        for row in rows.values():
            assert not row["phantom"] and row["n"] > 0
            assert 0 <= row["ci_low"] <= row["accuracy"] <= row["ci_high"] <= 1
        for attack in ["none", *parameters["attacks"]]:  # on the bare classifier both threat models are one attack
            assert rows["gray-box", attack, "none"]["accuracy"] == rows["adaptive", attack, "none"]["accuracy"]
        assert 0 <= rows["gray-box", "fgsm", "magnet"]["rejected_adversarial_share"] <= 1
    assert {r["modality"] for r in record["results"] if r["attack"] == "detector_aware_pgd"} == {
        folder.name for folder in ATTACKED}
    assert {claim["threat model"] for claim in record["claims"]} == {"gray-box", "adaptive"}
    assert {"defense_training.png", "defense_heatmaps.png", "paper_differences.png"} <= set(
        record["provenance"]["figures"])
    verdicts = {(row["threat model"], row["dataset"]): row for row in record["paper_verdicts"]}
    assert len(verdicts) == 2 * len(ATTACKED)  # every study cell of the modality, per threat model
    assert all(row["cells"] == 13 and sum(row[v] for v in ("inside our interval", "study above ours",
                                                           "study below ours")) == 13 for row in verdicts.values())
    budgets = record["matched_budgets"]
    assert {row["epsilon_255"] for row in budgets} == {round(e * 255, 3) for e in parameters["budgets"]}
    assert sum(row["matched"] for row in budgets) == len(ATTACKED)


@pytest.mark.slow
def test_book_builds_strictly_from_a_fresh_run_and_flags_changed_code(real_run, tmp_path):
    """A page run whole (a chapter without a step table; here chapter 5's record without its steps) is flagged
    when a module it imported changed; a page drawn from the store only when a module one of its stored results
    depends on changed, and it says so per result; a change to the page's own drawing code leaves its results
    current."""
    stale = tmp_path / "stale_run"
    shutil.copytree(real_run, stale)
    whole = stale / "05_federated" / "metrics.json"
    record = json.loads(whole.read_text())
    del record["provenance"]["steps"]  # as a chapter without a step table records its run
    record["provenance"]["library"]["training"] = "0" * 12  # code changed since the run
    del record["provenance"]["library"]["metrics"]  # as if added after the run: not a change to this page
    whole.write_text(json.dumps(record))
    for chapter, changed in (("01_classifiers", "training"), ("02_attacks", "reporting.attacks")):
        metrics = stale / chapter / "metrics.json"
        record = json.loads(metrics.read_text())
        record["provenance"]["library"][changed] = "0" * 12
        first = next(iter(record["provenance"]["steps"].values()))
        if changed in first["code"]:
            first["code"][changed] = "0" * 12  # one stored result's module changed since it was computed
        metrics.write_text(json.dumps(record))
    done = _compendium("book", "--run", str(stale), "--out", str(tmp_path / "build"), "--strict")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    html = tmp_path / "build" / "_build" / "html" / "book" / "reference"
    page = (html / "05_federated" / "05_federated.html").read_text()
    assert "Provenance of this run" in page
    assert "The library changed since this run" in page and "module(s) training differ" in page
    stored = (html / "01_classifiers" / "01_classifiers.html").read_text()
    assert "Provenance of this run" in stored and "chest_xray" in stored and "stored result(s) computed at" in stored
    assert "Results no longer current" in stored and "1 of the 3 stored results" in stored
    assert "The library changed since this run" not in stored
    drawn = (html / "02_attacks" / "02_attacks.html").read_text()
    assert "Results no longer current" not in drawn and "The library changed since this run" not in drawn


def test_every_chapter_has_its_reference_page_in_the_book_or_is_listed_as_awaiting_it():
    toc = (ROOT / "_toc.yml").read_text()
    assert set(plan.AWAITING_REFERENCE) <= set(CHAPTERS) and list(plan.CHAPTERS) == CHAPTERS
    for chapter in CHAPTERS:
        page = f"book/reference/{chapter}/{chapter}"
        awaiting = chapter in plan.AWAITING_REFERENCE
        assert (ROOT / f"{page}.ipynb").is_file() != awaiting, f"{chapter}: awaiting its reference run is {awaiting}"
        assert (f"file: {page}" in toc) != awaiting, f"{chapter}: in _toc.yml must be {not awaiting}"


def test_committed_reference_run_builds_strictly(tmp_path):
    for chapter in RELEASED:
        assert (ROOT / "book" / "reference" / chapter / f"{chapter}.ipynb").is_file(), f"no reference run of {chapter}"
    done = _compendium("book", "--out", str(tmp_path / "build"), "--strict")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    html = tmp_path / "build" / "_build" / "html"
    for chapter in RELEASED:
        page = (html / "book" / "reference" / chapter / f"{chapter}.html").read_text()
        assert "Provenance of this run" in page


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    for chapter in CHAPTERS:
        notebook = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text())
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c.get("execution_count") is None for c in code), chapter
        parameters = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
        assert len(parameters) == 1, chapter
        source = "".join(parameters[0]["source"])
        for name in ("profile", "dataset", "seed", "output_dir"):
            assert f"{name} = " in source, f"{chapter}: parameter {name} missing"


def test_reference_run_used_the_cpu_profile_on_real_data():
    for chapter in RELEASED:
        record = json.loads((ROOT / "book" / "reference" / chapter / "metrics.json").read_text())
        provenance = record["provenance"]
        assert provenance["parameters"]["profile"] == "cpu", chapter
        assert provenance["datasets"] and not any(d["is_phantom"] for d in provenance["datasets"]), chapter


@pytest.mark.slow
def test_chapter_4_on_real_data_records_quality_replacement_and_audit(real_run):
    record = json.loads((real_run / "04_synthetic_images" / "metrics.json").read_text())
    by_section = {}
    for row in record["results"]:
        assert not row["phantom"]
        by_section.setdefault(row["section"], []).append(row)
    for name in (folder.name for folder in SYNTHESISED):
        quality = {r["generator"]: r for r in by_section["quality"] if r["dataset"] == name}
        assert set(quality) == {"real train (floor)", "dcgan", "progan", "ddpm"}, name
        for row in quality.values():
            assert row["fid"] >= 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
            assert row["n_samples"] > 0 and "random-init VGG-16" in row["feature_extractor"]
        checks = [r for r in by_section["feature_check"] if r["dataset"] == name]
        spaces = ("random-init VGG-16 fc2", "penultimate features")
        assert {(r["feature_extractor"].split(" (")[0], r["degradation"]) for r in checks if r["sentinel"] is None} == {
            (space, kind) for space in spaces for kind in ("gaussian noise (std)", "box blur (px)")}, name
        assert {(r["feature_extractor"].split(" (")[0], r["sentinel"]) for r in checks if r["sentinel"]} == {
            (space, sentinel) for space in spaces for sentinel in ("uniform noise", "untrained DC-GAN")}, name
        assert all(r["fid"] >= 0 for r in checks), name
        assert {(r["model"], r["training_set"]) for r in by_section["replacement"] if r["dataset"] == name} == {
            (m, t) for m in ("efficientnet_b3", "lbp_random_forest") for t in ("real", "synthetic", "mixed")}
        assert {(r["generator"], r["space"]) for r in by_section["audit"] if r["dataset"] == name} == {
            (g, s) for g in ("dcgan", "progan", "ddpm") for s in ("features", "pixels")}
        assert any(r["reader"].startswith("machine") for r in by_section["reader_study"] if r["dataset"] == name)
        kit = Path(record["reader_kits"]) / name
        assert len(list((kit / "kit").glob("case_*.png"))) == 20 and (kit / "sealed_key" / "answer_key.csv").is_file()
    assert all(0 <= r["near_copy_share"] <= 1 for r in by_section["audit"])
    assert {"feature_check.png", "samples.png", "quality.png", "memorisation.png", "closest_pairs.png"} <= set(
        record["provenance"]["figures"])


@pytest.mark.slow
def test_chapter_5_on_real_data_records_every_round_baseline_and_site_pair(real_run):
    record = json.loads((real_run / "05_federated" / "metrics.json").read_text())
    parameters = record["provenance"]["parameters"]
    rows = [r for r in record["results"] if not r["phantom"]]
    assert len(rows) == len(record["results"])
    fed = [r for r in rows if r["section"] == "federated"]
    for name in [folder.name for folder in FEDERATED] + ["chest_xray | ct"]:
        fedavg = [r for r in fed if r["dataset"] == name and r["run"] == "FedAvg"]
        rounds = {r["round"] for r in fedavg}
        assert rounds == set(range(max(rounds) + 1)) and max(rounds) >= 1, name
        assert {r["model"] for r in fedavg if r["round"] >= 1} == {"server", "site 0", "site 1"}, name
        assert {r["run"] for r in fed if r["dataset"] == name} == {
            "FedAvg", "centralised", "local only, site 0", "local only, site 1"}, name
        assert all(r["fid"] >= 0 and "random-init VGG-16" in r["feature_extractor"] for r in fedavg), name
        sites = [r for r in rows if r["section"] == "heterogeneity" and r["dataset"] == name]
        assert sites and all(r["site_fid"] >= 0 and r["n_site_0"] > 0 and r["n_site_1"] > 0 for r in sites), name
        traffic = [r for r in rows if r["section"] == "communication" and r["dataset"] == name]
        assert traffic and all(r["bytes_per_round"] > 0 and r["first_round_seconds"] > 0 for r in traffic), name
    assert {r["local_epochs"] for r in fed if r["run"] == "FedAvg"} == set(parameters["periods"])
    assert {"fid_curves.png", "heterogeneity.png"} <= set(record["provenance"]["figures"])


@pytest.mark.slow
def test_each_chapter_run_records_the_code_of_its_own_reporting_module_only(real_run):
    reporting_modules = {chapter: f"reporting.{chapter[3:]}" for chapter in CHAPTERS}
    for chapter, own in reporting_modules.items():
        library = json.loads((real_run / chapter / "metrics.json").read_text())["provenance"]["library"]
        assert own in library and all(digest for digest in library.values()), chapter
        assert not set(library) & (set(reporting_modules.values()) - {own}), (chapter, sorted(library))
