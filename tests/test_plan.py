"""The run plan: workload counts follow the chapters' loops, costs are measured and cached, and the progress
arithmetic of ``scripts/compendium.py`` scales the time left by how finished chapters compared with the plan."""

import importlib.util
import math

import pytest

from _paths import REPO
from medsec_utils import data, federated, plan, profiles

SMALL = dict(image_size=32, batch_size=4, fl_sizes=[32], gan_width=8, progan_width=8, ddpm_width=8, ddim_steps=2)


def _compendium():
    spec = importlib.util.spec_from_file_location("compendium", REPO / "scripts" / "compendium.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sizes(settings):
    sets = [data.load_dataset(f"phantom:{m}", size=settings.image_size, phantom_images=64, progress=False)
            for m in ("chest_xray", "ct", "histology")]
    return sets, [plan.SetSize.of(images, settings) for images in sets]


def test_workload_counts_follow_the_profile_and_data_sizes():
    settings = profiles.resolve_profile("smoke", **SMALL)
    _, sizes = _sizes(settings)
    rows = plan.workload(settings, sizes)
    chest = sizes[0]
    training = [r for r in rows if r["chapter"] == "01_classifiers" and r["unit"] == "classifier_train"]
    assert [r["count"] for r in training] == [settings.classifier_seeds * settings.epochs * s.train for s in sizes]
    three = plan.workload(profiles.resolve_profile("smoke", **SMALL, classifier_seeds=3), sizes)
    assert [r["count"] for r in three if r["unit"] == "classifier_train" and r["chapter"] == "01_classifiers"] == [
        3 * settings.epochs * s.train for s in sizes]
    assert chest.train == sum(chest.train_per_class) > 0
    doubled = plan.workload(profiles.resolve_profile("smoke", **SMALL, epochs=2 * settings.epochs), sizes)
    ch1 = lambda rs: sum(r["count"] for r in rs if r["chapter"] == "01_classifiers" and r["unit"] == "classifier_train")
    assert ch1(doubled) == 2 * ch1(rows)
    fewer = plan.workload(profiles.resolve_profile("smoke", **SMALL, attack_images=4), sizes)
    attack = lambda rs: sum(r["count"] for r in rs if r["chapter"] == "02_attacks")
    assert attack(fewer) < attack(rows)
    assert {r["chapter"] for r in rows} == set(plan.CHAPTERS)


def test_chapter_6_plans_the_units_its_steps_count():
    """The plan's chapter 6 counts what its steps will do, generators' audits and the private DC-GAN included (it
    once counted the membership and DP-SGD models only: a quarter of the chapter). Per unit, within 10 %: the plan
    takes half a split where a step counts its exact members."""
    import torch

    from medsec_utils.steps import privacy

    settings = profiles.resolve_profile("smoke", **SMALL, generator_size=32)
    sets = [data.load_dataset(f"phantom:{m}", size=32, phantom_images=settings.phantom_images, progress=False)
            for m in ("chest_xray", "ct", "histology")]  # as many as the smoke chapter has: a model needs 100 non-members
    sizes = [plan.SetSize.of(images, settings) for images in sets]
    params = {"seed": 0, "generators": ["dcgan", "progan", "ddpm"], "feature_space": None, "inception_weights": None}
    counted: dict[str, float] = {}
    for step in privacy.steps(sets, settings, params, torch.device("cpu")):
        for unit, count in step.units.items():
            counted[unit] = counted.get(unit, 0.0) + count
    planned: dict[str, float] = {}
    for row in plan.workload(settings, sizes):
        if row["chapter"] == "06_privacy":
            planned[row["unit"]] = planned.get(row["unit"], 0.0) + row["count"]
    assert set(planned) == set(counted)
    for unit, count in counted.items():
        assert planned[unit] == pytest.approx(count, rel=0.1), unit


def test_chapter_5_plans_as_many_federations_as_the_chapter_runs():
    settings = profiles.resolve_profile("smoke", **SMALL, fl_splits=["iid", "dirichlet"])
    sets, sizes = _sizes(settings)
    design = federated.Design.of(settings, 0)
    planned = [r for r in plan.workload(settings, sizes) if r["unit"].startswith("dcgan_") and
               r["unit"].endswith("px_step")]
    assert len(planned) == len(federated.plan_federations(sets, design))


def test_chapter_5_plans_the_extended_data_sets_extra_sizes_and_splits_as_the_chapter_runs_them():
    settings = profiles.resolve_profile("smoke", **SMALL)
    sets, sizes = _sizes(settings)
    extended = ("phantom_ct", [32, 64], ["iid", "dirichlet"])
    design = federated.Design.of(settings, 0, extended_dataset=extended[0], extended_sizes=extended[1],
                                 extended_splits=extended[2])
    rows = [r for r in plan.workload(settings, sizes, extended=extended) if r["unit"].endswith("px_step")]
    federations = federated.plan_federations(sets, design)
    assert sorted((r["dataset"], r["unit"]) for r in rows) == sorted(
        (f.name.replace(" | ", " | "), f"dcgan_{f.image_size}px_step") for f in federations)
    ct = {(f.split, f.image_size) for f in federations if f.name == "phantom_ct"}
    assert ct == {("iid", 32), ("iid", 64), ("dirichlet", 32), ("dirichlet", 64)}
    assert {(f.split, f.image_size) for f in federations if f.name == "phantom_histology"} == {("iid", 32)}
    features = {r["task"]: r["count"] for r in plan.workload(settings, sizes, extended=extended)
                if r["dataset"] == "phantom_ct" and r["unit"] == "features"}
    assert features["iid FID features at 64 px"] == 4 * features["iid FID features at 32 px"]  # pixels
    with pytest.raises(ValueError, match="extended_dataset 'chest' is none of this chapter's data sets"):
        federated.plan_federations(sets, federated.Design.of(settings, 0, extended_dataset="chest"))


def test_unit_costs_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    settings = profiles.resolve_profile("smoke", **SMALL)
    assert plan.unit_costs(settings, measure=False) == (None, False)  # a quick look never waits to measure
    costs, hit = plan.unit_costs(settings)
    assert not hit and plan.unit_costs(settings, measure=False) == (costs, True)
    assert not (tmp_path / "features").exists(), "embedding was timed through the cache, not measured"
    units = {r["unit"] for r in plan.workload(settings, _sizes(settings)[1])}
    assert units <= set(costs)
    assert all(math.isfinite(v) and v > 0 for v in costs.values())
    again, hit = plan.unit_costs(settings)
    assert hit and again == costs
    frame = plan.estimate(settings, _sizes(settings)[1], costs)
    assert frame["seconds"].notna().all()
    assert sum(plan.chapter_seconds(frame).values()) == pytest.approx(frame["seconds"].sum())


def test_a_generator_step_costs_its_epochs_not_the_once_per_model_work_after_them(monkeypatch):
    """Re-estimating batch-norm statistics for the averaged weights happens once per model, after training (and
    never on a FedAvg site): counted per step, it had tripled the planned cost of every DC-GAN step."""
    import time

    from medsec_utils import generative

    settings = profiles.resolve_profile("smoke", **SMALL)
    plain = plan._generator_costs("dcgan", generative.GENERATORS["dcgan"], settings, 1, 16)
    monkeypatch.setattr(generative.WeightAverage, "copy_to_model", lambda self, latents=None: time.sleep(2.0))
    slept = plan._generator_costs("dcgan", generative.GENERATORS["dcgan"], settings, 1, 16)
    assert slept["dcgan_step"] < plain["dcgan_step"] + 0.5, \
        "two seconds after the last epoch, over two steps, would be a second each"


def test_time_left_scales_with_how_finished_chapters_compared_with_the_plan():
    progress = _compendium().Progress({"a": 100.0, "b": 200.0, "c": 300.0}, every=3600)
    progress.chapter = "a"
    assert progress.left(40.0) == (60.0, 560.0)
    progress.done["a"] = 200.0  # twice its estimate: what is left is read as twice as long
    progress.chapter = "b"
    assert progress.left(100.0) == (300.0, 900.0)


def test_a_stopped_kernel_is_seen_and_its_pause_is_not_counted_as_work(monkeypatch):
    """``kill -STOP`` on the kernel pauses a run; the time left must not fall while it is paused. The "run" is a
    shell whose only child is the "kernel" (``sleep``): the test process itself may have other children."""
    import signal
    import subprocess
    import time

    import psutil

    compendium = _compendium()
    run = subprocess.Popen(["sh", "-c", "sleep 60; exit 0"])
    try:
        parent = psutil.Process(run.pid)
        deadline = time.monotonic() + 5
        while not parent.children() and time.monotonic() < deadline:
            time.sleep(0.01)
        kernel = parent.children()[0]
        assert not compendium.kernel_stopped(parent)
        kernel.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not compendium.kernel_stopped(parent) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert compendium.kernel_stopped(parent)
        of_this_run = compendium.kernel_stopped
        monkeypatch.setattr(compendium, "kernel_stopped", lambda: of_this_run(parent))
        progress = compendium.Progress({"a": 100.0}, every=0.05)
        progress.start("a")
        time.sleep(1.0)
        stopped_left = progress.left(time.perf_counter() - progress.started - progress.paused)[0]
        kernel.send_signal(signal.SIGCONT)
        time.sleep(0.2)
        seconds = progress.finish()
    finally:
        for process in [*psutil.Process(run.pid).children(), psutil.Process(run.pid)]:
            process.kill()
        run.wait()
    assert progress.paused > 0.7 and stopped_left > 99.5, "a second stopped: the time left has not fallen"
    assert seconds < 0.6, "the paused second is not working time"


@pytest.mark.parametrize("seconds, text", [(45, "45 s"), (750, "12 min 30 s"), (3900, "1 h 05 min")])
def test_durations_read_as_people_write_them(seconds, text):
    assert plan.duration(seconds) == text


def test_progress_lines_say_time_left_only_when_planned(capsys):
    compendium = _compendium()
    unplanned = compendium.Progress({"a": 0.0}, every=3600)
    unplanned.start("a")
    unplanned.finish()
    planned = compendium.Progress({"a": 10.0, "b": 20.0}, every=3600)
    planned.start("a")
    planned.finish()
    planned.start("b")
    planned.finish(ok=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("   done in") and "left" not in lines[0]
    assert "left" in lines[1] and lines[2].startswith("   b stopped after")
    assert list(planned.done) == ["a"]



def test_a_page_that_reads_stored_steps_is_timed_against_its_own_estimate_not_the_chapters(capsys):
    """The plan's chapter estimate (an empty cache's hours of training) is not what its page costs once its steps
    are stored: the page's lines say the page's time left, no total, and its seconds do not rescale the plan."""
    import time

    progress = _compendium().Progress({"a": 40000.0, "b": 30000.0}, every=0.05)
    progress.start("a", page_seconds=90.0)
    assert progress.left(30.0)[0] == 60.0
    time.sleep(0.2)
    progress.finish()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("s left of the page") and "in all" not in lines[0], lines
    assert lines[-1].startswith("   done in") and "left" not in lines[-1], lines
    assert progress.done == {} and progress.left(0.0)[1] == 30000.0, "the page's seconds scaled nothing"

def test_the_gpu_estimate_scales_the_published_throughput_to_the_image_size_by_pixel_count():
    reference = plan.GPU_REFERENCE
    ten_per_second = {"classifier_train": 0.1}  # seconds per image measured on this machine
    rate = reference["images_per_second"]
    assert plan.gpu_speedup(ten_per_second, reference["image_size"]) == pytest.approx(rate / 10)
    assert plan.gpu_speedup(ten_per_second, reference["image_size"] // 2) == pytest.approx(4 * rate / 10)


def test_a_parameter_can_be_given_to_one_chapter_alone_and_the_plan_counts_its_own_data_sets(tmp_path, monkeypatch):
    compendium = _compendium()
    assert compendium.parse_param("01.dataset=[a, b]") == ("01.dataset", ["a", "b"])
    for bad in ("1.dataset=x", "ab.dataset=x", "01.=x", "epochs"):
        with pytest.raises(Exception, match="NN.name=value"):
            compendium.parse_param(bad)
    extra = {"epochs": 2, "01.dataset": ["phantom:ct"], "02.epsilon": 0.1}
    assert compendium.chapter_params(extra, "01") == {"epochs": 2, "dataset": ["phantom:ct"]}
    assert compendium.chapter_params(extra, "03") == {"epochs": 2}
    assert compendium._extended_design(extra) is None
    assert compendium._extended_design({"05.extended_dataset": "chest_xray"}) == (
        "chest_xray", [64, 128], ["iid", "dirichlet"])  # the notebook's defaults
    assert compendium._extended_design({"extended_dataset": "ct", "05.extended_sizes": [128]}) == (
        "ct", [128], ["iid", "dirichlet"])
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    monkeypatch.setattr(plan, "unit_costs", lambda settings, **options: ({unit: 1.0 for unit in _units(settings)}, True))
    shared = ["phantom:chest_xray", "phantom:ct"]
    _, both = compendium.plan_chapters("smoke", shared, {"01.dataset": ["phantom:ct"]})[:2]
    _, plain = compendium.plan_chapters("smoke", shared, {})[:2]
    assert set(both[both["chapter"] == "01_classifiers"]["dataset"]) == {"phantom_ct"}
    assert set(plain[plain["chapter"] == "01_classifiers"]["dataset"]) == {"phantom_chest_xray", "phantom_ct"}
    others = [frame[frame["chapter"] != "01_classifiers"].sort_values(["chapter", "dataset", "task"],
                                                                        ignore_index=True) for frame in (both, plain)]
    assert others[0].equals(others[1])


def _units(settings):
    sizes = [plan.SetSize("x", 1, 8, 2, 2, (4, 4))]
    return {row["unit"] for row in plan.workload(settings, sizes)}


def test_a_step_past_its_plan_says_by_how_much_not_that_nothing_is_left_and_one_without_a_plan_says_neither():
    from medsec_utils.steps.runner import _heartbeat

    beat = _heartbeat("05_federated/chest_xray/iid/128px/fedavg_every1", planned=600.0, every=60.0)
    assert beat.line(180.0) == "3 min 00 s in, about 7 min 00 s left by the plan"
    assert beat.line(900.0) == "15 min 00 s in, 5 min 00 s over the plan of 10 min 00 s"
    unplanned = _heartbeat("06_privacy/phantom_ct/generators/dcgan", planned=None, every=60.0)
    assert unplanned.line(60.0) == "1 min 00 s in (no plan measured on this machine)"


def test_a_step_at_an_extended_federated_size_has_its_training_cost_measured(monkeypatch):
    """Chapter 5's extended data set trains at sizes beyond the profile's ``fl_sizes`` (128 px in ``cpu``): the
    costs a run plans its steps with must be measured at those sizes too, or their training is planned at 0 s."""
    from types import SimpleNamespace

    asked = []
    monkeypatch.setattr(plan, "unit_costs", lambda settings, measure=True: (asked.append(settings["fl_sizes"]), {}))
    settings = profiles.resolve_profile("smoke")
    steps = [SimpleNamespace(units={f"dcgan_{settings.fl_sizes[0]}px_step": 10, "features": 3}),
             SimpleNamespace(units={"dcgan_64px_step": 10, "dcgan_sample": 4})]
    plan.step_unit_costs(settings, steps)
    assert asked == [sorted({*settings.fl_sizes, 64})]
