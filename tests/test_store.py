"""The results store: a run stopped by its budget resumes on a new machine (a new process, an empty artefact
cache, the same output folder) computing only what was not stored, and its page equals an uninterrupted run's;
a changed module stales exactly the steps that depend on it; a damaged stored file is computed again; ``verify``
recomputes a stored step from scratch. Smoke profile, one phantom data set, chapters 1 and 2 with two attacks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _paths import REPO
from medsec_utils import cache, store
from medsec_utils.plan import duration
from medsec_utils.steps import runner
from medsec_utils.store import Step, StepResult, Store

DATASET = "phantom:ct"
PARAMS = ["02.attacks=[fgsm, cw]", "02.epsilons=[0.00392156862745098, 0.00784313725490196]"]
ATTACK_STEPS = ["02_attacks/phantom_ct/fgsm/eps1", "02_attacks/phantom_ct/fgsm/eps2", "02_attacks/phantom_ct/cw/unbudgeted"]
CLASSIFIER_STEP = "01_classifiers/phantom_ct/seed0"


def _compendium_module():
    spec = importlib.util.spec_from_file_location("compendium", REPO / "scripts" / "compendium.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cli(cache_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, cache.CACHE_ENV: str(cache_root), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compendium.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)


def _run_args(out: Path) -> list[str]:
    return ["run", "--profile", "smoke", "--out", str(out), "--dataset", DATASET, "--chapter", "01", "--chapter", "02",
            "--no-plan", *[arg for param in PARAMS for arg in ("--param", param)]]


def _results(out: Path, chapter: str) -> list[dict]:
    """A page's records, less what differs between runs by design (timings)."""
    records = json.loads((out / chapter / "metrics.json").read_text())["results"]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run stopped by its budget after the first step (the plan's estimates made so that only it fits), resumed
    in a new process with an empty artefact cache; and an uninterrupted run of the same chapters."""
    base = tmp_path_factory.mktemp("store")
    resumed, whole = base / "resumed", base / "whole"
    compendium = _compendium_module()
    from medsec_utils.steps import runner

    first = True

    def one_step_fits(self, step, claim=False):
        nonlocal first
        fits, first = first, first and not claim
        return 1.0 if fits else 1e9

    saved = os.environ.get(cache.CACHE_ENV)
    os.environ[cache.CACHE_ENV] = str(base / "cache-first-machine")
    original = runner.Estimator.seconds
    runner.Estimator.seconds = one_step_fits
    try:
        extra = dict(compendium.parse_param(p) for p in PARAMS)
        code = compendium.run_chapters("smoke", resumed, [DATASET], ["01", "02"], extra, every=3600, planned=False,
                                       stop_after=3600.0)
    finally:
        runner.Estimator.seconds = original
        os.environ.pop(cache.CACHE_ENV) if saved is None else os.environ.__setitem__(cache.CACHE_ENV, saved)
    assert code == 3
    stopped = Store(resumed / "store").stored_ids()
    later = _cli(base / "cache-second-machine", *_run_args(resumed))
    complete = _cli(base / "cache-whole", *_run_args(whole))
    assert later.returncode == 0, later.stdout[-3000:] + later.stderr[-3000:]
    assert complete.returncode == 0, complete.stdout[-3000:] + complete.stderr[-3000:]
    return {"stopped": stopped, "resumed": resumed, "whole": whole, "later": later.stdout, "base": base}


def test_a_stopped_run_stores_what_it_finished_and_resumes_on_an_empty_cache(runs):
    assert runs["stopped"] == [CLASSIFIER_STEP]
    assert "1 steps: 1 current in the store, 0 to compute" in runs["later"]
    assert "steps: 1 taken from the store, 0 computed" in runs["later"]
    assert "3 steps: 0 current in the store, 3 to compute" in runs["later"]
    assert "steps: 0 taken from the store, 3 computed" in runs["later"]
    assert Store(runs["resumed"] / "store").stored_ids() == sorted([CLASSIFIER_STEP, *ATTACK_STEPS])


def test_the_resumed_pages_equal_an_uninterrupted_runs(runs):
    for chapter in ("01_classifiers", "02_attacks"):
        assert _results(runs["resumed"], chapter) == _results(runs["whole"], chapter)
    steps = json.loads((runs["resumed"] / "02_attacks" / "metrics.json").read_text())["provenance"]["steps"]
    assert sorted(steps) == sorted(ATTACK_STEPS) and all(len(s["commit"]) == 40 for s in steps.values())


def _steps_of(out: Path) -> dict[str, tuple[Store, Step]]:
    compendium = _compendium_module()
    found = {}
    for notebook in sorted(compendium.NOTEBOOKS.glob("0[12]_*.ipynb")):
        params = compendium.run_params(notebook, "smoke", out / notebook.stem, [DATASET],
                                       dict(compendium.parse_param(p) for p in PARAMS))
        chapter, chosen = compendium.open_steps(notebook, params)
        found.update({step.id: (chapter.store, step) for step in chosen})
    return found


def test_a_changed_module_stales_exactly_the_steps_that_depend_on_it(runs, monkeypatch):
    found = _steps_of(runs["resumed"])
    assert {sid: s.state(step)[0] for sid, (s, step) in found.items()} == dict.fromkeys(found, "current")
    monkeypatch.setitem(cache._DIGESTS, "attacks", "0" * 12)  # as if attacks.py had been edited
    states = {sid: s.state(step) for sid, (s, step) in _steps_of(runs["resumed"]).items()}
    assert {sid for sid, (state, _) in states.items() if state == "stale"} == set(ATTACK_STEPS)
    assert states[CLASSIFIER_STEP] == ("current", "")
    assert states[ATTACK_STEPS[0]][1] == "module attacks changed"


def test_a_damaged_stored_file_is_detected_and_computed_again_with_one_line(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "empty-cache"))  # a new session: it takes the kept classifier
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(runs["resumed"]), str(copy)], check=True)
    found = _steps_of(copy)
    held, step = found[ATTACK_STEPS[2]]
    arrays = held.folder(step) / store.ARRAYS
    arrays.write_bytes(arrays.read_bytes()[:-10] + b"0123456789")
    assert held.state(step) == ("damaged", f"{store.ARRAYS} altered (checksum differs)")
    result, from_store = held.get(step)
    assert not from_store and held.state(step) == ("current", "")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medsec store")]
    kept = held.kept(*step.needs[0][:2])
    assert lines == [f"medsec store: {ATTACK_STEPS[2]} damaged ({store.ARRAYS} altered (checksum differs)); "
                     "computing it again",
                     f"medsec store: {kept.parent.name}/{kept.name} copied from {kept}"]
    original = Store(runs["resumed"] / "store").load(step)
    assert store.compare(original, result)[0] == "equal"


def test_verify_recomputes_a_resumed_step_from_scratch_and_finds_it_equal(runs):
    done = _cli(runs["base"] / "cache-verify", "verify", "--out", str(runs["resumed"]), ATTACK_STEPS[1])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines() == [f"{ATTACK_STEPS[1]}: equal"]


def test_status_counts_every_step_current(runs):
    done = _cli(runs["base"] / "cache-status", "status", "--out", str(runs["resumed"]))
    lines = done.stdout.splitlines()
    assert done.returncode == 3  # chapters 3 to 5 were not run
    assert any(line.startswith("01_classifiers") and "1 steps: 1 current, 0 stale, 0 damaged, 0 missing" in line
               for line in lines), done.stdout
    assert any(line.startswith("02_attacks") and "3 steps: 3 current" in line for line in lines), done.stdout
    assert any(line.startswith("03_defenses") and "4 steps: 0 current, 0 stale, 0 damaged, 4 missing" in line
               for line in lines), done.stdout
    # chapter 4 on one data set: the feature check, the real training set, 3 generators x 2 classes, the DC-GAN's
    # synthetic and mixed training sets, the quality step; chapter 5: the sites, FedAvg every epoch, centralised,
    # local-only at each site
    assert any(line.startswith("04_synthetic_images") and "11 steps: 0 current, 0 stale, 0 damaged, 11 missing" in line
               for line in lines), done.stdout
    assert any(line.startswith("05_federated") and "5 steps: 0 current, 0 stale, 0 damaged, 5 missing" in line
               for line in lines), done.stdout
    # chapter 6: four membership models, the DP models at the smoke profile's two budgets, the attack step, the
    # attacks on chapter 4's three generators and on the classifier trained on the DC-GAN's images, the DC-GAN
    # with a private discriminator (two classes) and its attack step
    assert any(line.startswith("06_privacy") and "14 steps: 0 current, 0 stale, 0 damaged, 14 missing" in line
               for line in lines), done.stdout
    # the measured compute of a chapter is the sum of its stored steps' own wall times
    took = sum(json.loads((runs["resumed"] / "store" / step / store.MARKER).read_text())["provenance"]["seconds"]
               for step in ATTACK_STEPS)
    assert any(line.startswith("02_attacks") and line.endswith(f"current steps took {duration(took)}")
               for line in lines), done.stdout
    # status only reads: no folder for a chapter that was never run (an empty one made the book builder refuse)
    assert sorted(p.name for p in runs["resumed"].iterdir() if p.is_dir()) == ["01_classifiers", "02_attacks", "store"]


# The store on its own: atomic replacement, locks, comparisons, bad input.

CALLS: list[int] = []


def counting_recipe(value: float, pause: float = 0.0) -> StepResult:
    CALLS.append(1)
    time.sleep(pause)
    return StepResult({"value": value, "nested": {"list": [value, 2]}}, {"curve": np.arange(3) * value})


def _step(value: float = 1.0, pause: float = 0.0, step_id: str = "99_test/a/b") -> Step:
    return Step(step_id, {"value": value}, ("metrics",), counting_recipe, {"value": value, "pause": pause})


def test_a_replaced_step_keeps_none_of_its_old_files_and_a_current_one_is_never_computed_again(tmp_path):
    held = Store(tmp_path / "store")
    CALLS.clear()
    assert held.get(_step(1.0))[1] is False and held.get(_step(1.0))[1] is True and len(CALLS) == 1
    (held.folder(_step()) / "stray.txt").write_text("left by hand")
    state, why = held.state(_step(2.0))
    assert state == "stale" and why == "value 1.0 -> 2.0"
    result, hit = held.get(_step(2.0))
    assert not hit and result.record["value"] == 2.0 and len(CALLS) == 2
    assert sorted(p.name for p in held.folder(_step()).iterdir()) == [store.ARRAYS, store.RECORD, store.MARKER]
    assert not [p for p in (tmp_path / "store").rglob(".*")]


def summing_recipe(upstream: dict[str, StepResult], offset: float) -> StepResult:
    return StepResult({"sum": sum(result.record["value"] for result in upstream.values()) + offset})


def test_a_step_reading_stored_results_computes_them_first_and_goes_stale_with_them(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    held = Store(tmp_path / "store")

    def downstream(value: float) -> Step:
        ups = [_step(value, step_id="99_test/up/a"), _step(2.0, step_id="99_test/up/b")]
        return Step("99_test/down", {"offset": 0.5}, ("metrics",), summing_recipe, {"offset": 0.5}, after=ups)

    CALLS.clear()
    result, hit = held.get(downstream(1.0))
    assert not hit and result.record["sum"] == 3.5 and len(CALLS) == 2
    assert held.state(_step(1.0, step_id="99_test/up/a"))[0] == "current"
    assert held.get(downstream(1.0))[1] and len(CALLS) == 2  # current: its upstream results are not even loaded
    state, why = held.state(downstream(4.0))  # an upstream step's settings changed: both are stale
    assert state == "stale" and why.startswith("after ") and held.state(_step(4.0, step_id="99_test/up/a"))[0] == "stale"
    assert held.get(downstream(4.0))[0].record["sum"] == 6.5 and len(CALLS) == 3  # only the changed upstream step
    with pytest.raises(store.StoreError, match="99_test/down reads the stored results of 99_test/up/a, 99_test/up/b"):
        downstream(4.0).compute()


def test_two_runs_needing_one_step_compute_it_once(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    held, results = Store(tmp_path / "store"), []
    CALLS.clear()
    threads = [threading.Thread(target=lambda: results.append(held.get(_step(3.0, pause=1.0))[1])) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(CALLS) == 1 and sorted(results) == [False, True]


MODEL_PARTS = {"model": "shared by steps", "seed": 0}


def _train_model(folder: Path) -> None:
    """A model whose training is not reproducible (as EfficientNet-B3's is not across machines and threads)."""
    (folder / "model.bin").write_bytes(os.urandom(16))


def model_recipe(use: str) -> StepResult:
    folder, _ = cache.cached("toy_model", MODEL_PARTS, _train_model)
    return StepResult({"use": use, "weights": (folder / "model.bin").read_bytes().hex()})


def _model_step(use: str, keep: bool = True) -> Step:
    return Step(f"99_test/{use}", {"use": use}, ("metrics",), model_recipe, {"use": use},
                needs=[("toy_model", MODEL_PARTS, {"train": 1.0})], keep_needs=keep)


def test_a_shared_model_is_kept_and_every_later_step_on_any_cache_computes_with_that_version(
        tmp_path, monkeypatch, capsys):
    held = Store(tmp_path / "store")
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "first-session"))
    first = held.get(_model_step("train", keep=False))[0].record["weights"]
    entry = f"toy_model/{cache.artefact_key(MODEL_PARTS)}"
    assert not held.keeps("toy_model", MODEL_PARTS) and entry in held.load(_model_step("train")).provenance["needs"]
    assert held.get(_model_step("attack"))[0].record["weights"] == first
    assert held.keeps("toy_model", MODEL_PARTS)
    assert held.load(_model_step("attack")).provenance["needs"] == {
        entry: cache.folder_fingerprint(held.kept("toy_model", MODEL_PARTS))}
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "empty-cache"))  # a new session: it would train again
    assert held.get(_model_step("defence"))[0].record["weights"] == first
    retrained = tmp_path / "retrained-cache"  # a cache that trained its own version before this step
    monkeypatch.setenv(cache.CACHE_ENV, str(retrained))
    cache.cached("toy_model", MODEL_PARTS, _train_model)
    assert held.get(_model_step("generator"))[0].record["weights"] == first
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medsec store")]
    assert len(lines) == 2 and all(line.startswith(f"medsec store: {entry} copied from {held.kept('toy_model', MODEL_PARTS)}")
                                   for line in lines)
    assert "other version moved to" in lines[1] and len(list((retrained / cache.DAMAGED).rglob("model.bin"))) == 1
    assert runner.Estimator({"train": 60.0}, held).seconds(_model_step("new")) == 0.0  # kept: nothing to rebuild
    assert runner.Estimator({"train": 60.0}).seconds(_model_step("new")) == 0.0  # in this cache now
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "another-empty-cache"))
    assert runner.Estimator({"train": 60.0}).seconds(_model_step("new")) == 60.0


def test_a_step_made_with_another_version_of_a_shared_model_than_the_store_keeps_is_stale(tmp_path, monkeypatch):
    held = Store(tmp_path / "store")
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    held.get(_model_step("attack"))
    kept = held.kept("toy_model", MODEL_PARTS)
    shutil.rmtree(kept)  # as if another session had kept its own version first
    other = tmp_path / "other-cache"
    folder, _ = cache.cached("toy_model", MODEL_PARTS, _train_model, root=other)
    shutil.copytree(folder, kept)
    entry = f"toy_model/{cache.artefact_key(MODEL_PARTS)}"
    assert held.state(_model_step("attack")) == ("stale", f"made with another version of {entry} than _needs/ keeps")
    assert held.get(_model_step("attack"))[0].record["weights"] == (kept / "model.bin").read_bytes().hex()
    assert held.state(_model_step("attack")) == ("current", "")
    (kept / "model.bin").write_bytes(b"0" * 16)
    with pytest.raises(ValueError, match="is no intact artefact .model.bin: SHA-256 differs.: delete that folder"):
        held.get(_model_step("defence"))


def test_compare_tells_equal_from_within_tolerance_from_different():
    a = StepResult({"x": 1.0, "n": 3}, {"v": np.array([1.0, 2.0])})
    assert store.compare(a, StepResult({"x": 1.0, "n": 3}, {"v": np.array([1.0, 2.0])})) == ("equal", [])
    assert store.compare(a, StepResult({"x": 1.0 + 1e-9, "n": 3}, {"v": np.array([1.0, 2.0])}))[0] == "within tolerance"
    timed = StepResult({"x": 1.0, "n": 3, "seconds": 9.0, "history": [{"train_seconds": 2.0}]}, a.arrays)
    assert store.compare(timed, StepResult({**timed.record, "seconds": 1.0, "history": [{"train_seconds": 5.0}]},
                                           a.arrays)) == ("equal", [])
    verdict, differences = store.compare(a, StepResult({"x": 1.1, "n": 3}, {"v": np.array([1.0, 2.5])}))
    assert verdict == "different" and differences == ["record.x: 1.0 stored, 1.1 now", "arrays.v: 1 of 2 elements differ"]


def test_a_stop_after_duration_is_read_or_refused_in_one_line():
    compendium = _compendium_module()
    assert [compendium.parse_duration(t) for t in ("140m", "2h30m", "90s", "45")] == [8400, 9000, 90, 45]
    with pytest.raises(Exception, match="write a duration such as 140m"):
        compendium.parse_duration("soon")


def test_pack_and_merge_carry_steps_between_stores(tmp_path, capsys):
    compendium = _compendium_module()
    source, target = tmp_path / "gpu_run", tmp_path / "here"
    held = Store(source / "store")
    held.get(_step(1.0, step_id="99_test/a/one"))
    held.get(_step(2.0, step_id="99_test/a/two"))
    compendium.pack_store(source, tmp_path / "steps.tar.gz")
    compendium.merge_store(tmp_path / "steps.tar.gz", target)
    merged = Store(target / "store")
    assert merged.stored_ids() == ["99_test/a/one", "99_test/a/two"]
    assert merged.state(_step(2.0, step_id="99_test/a/two")) == ("current", "")
    assert merged.load(_step(2.0, step_id="99_test/a/two")).record["value"] == 2.0
    (held.folder(_step(step_id="99_test/a/one")) / store.RECORD).write_text('{"value": 5.0}')  # edited by hand
    compendium.pack_store(source, tmp_path / "edited.tar.gz")
    capsys.readouterr()
    compendium.merge_store(tmp_path / "edited.tar.gz", target)
    out = capsys.readouterr().out
    assert "99_test/a/one refused (result.json altered (checksum differs))" in out and "0 steps added" in out
    assert merged.load(_step(1.0, step_id="99_test/a/one")).record["value"] == 1.0


def test_cleaning_removes_what_killed_runs_left_and_spares_a_live_runs_writes(tmp_path):
    held = Store(tmp_path / "store")
    held.get(_step(1.0))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = held.folder(_step()).with_name(f".b.{dead.stdout.strip()}.tmp")
    writing = held.folder(_step()).with_name(f".b.{os.getpid()}.tmp")
    for folder in (killed, writing):
        folder.mkdir()
    held.clean()
    assert not killed.exists() and writing.exists() and held.state(_step(1.0)) == ("current", "")


def test_the_budget_scales_the_plan_by_this_chapters_steps_and_never_below_half():
    from medsec_utils.steps.runner import Budget

    budget = Budget.of(600.0)
    assert budget.scale == 1.0 and budget.fits(590) and not budget.fits(610)
    budget.count(planned=3600.0, spent=360.0)  # a chapter whose plan was ten times its time
    assert budget.scale == 0.5 and budget.fits(1150) and not budget.fits(1250)
    budget.new_chapter()
    assert budget.scale == 1.0
    budget.count(planned=100.0, spent=300.0)  # slower than planned: estimates grow
    assert budget.scale == 3.0 and not budget.fits(250)


def test_a_run_of_some_chapters_keeps_the_recorded_parameters_of_the_others(tmp_path):
    """run.json after a ``--chapter 06`` run into a folder whose run gave chapters 1 and 5 their own parameters:
    those stay (status and verify rebuild chapter 1's steps with them); a run with other data sets, profile or
    shared parameters replaces the record."""
    compendium = _compendium_module()
    before = {"profile": "cpu", "datasets": ["a", "b"], "params": {"01.dataset": ["a", "b", "m.npz"],
                                                                  "05.extended_dataset": "a", "06.dp_epochs": 2}}
    (tmp_path / compendium.RUN_RECORD).write_text(json.dumps(before))
    record = compendium.run_record(tmp_path, "cpu", ["a", "b"], {"06.dp_epochs": 3}, {"06"})
    assert record == {**before, "params": {"01.dataset": ["a", "b", "m.npz"], "05.extended_dataset": "a",
                                           "06.dp_epochs": 3}}
    assert compendium.run_record(tmp_path, "cpu", ["a", "b"], None, {"06"})["params"] == {
        "01.dataset": ["a", "b", "m.npz"], "05.extended_dataset": "a"}
    assert compendium.run_record(tmp_path, "cpu", ["a", "b"], None, {"01", "05", "06"})["params"] == {}
    for other in (("smoke", ["a", "b"], None), ("cpu", ["a"], None), ("cpu", ["a", "b"], {"seed": 1})):
        assert compendium.run_record(tmp_path, *other, {"06"}) == {
            "profile": other[0], "datasets": other[1], "params": other[2] or {}}
    assert compendium.run_record(tmp_path / "new", "cpu", ["a"], None, {"06"})["params"] == {}
