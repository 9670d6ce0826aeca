"""Plan and run the chapter notebooks with papermill, and build the Jupyter Book from a run.

    python scripts/compendium.py plan --profile cpu [--dataset SPEC ...] [--detail]
    python scripts/compendium.py run --profile smoke --out runs/smoke [--dataset SPEC ...] [--chapter 01]
                                     [--param 'splits=[iid]' ...] [--force] [--stop-after 140m]
    python scripts/compendium.py status --out book/reference
    python scripts/compendium.py verify --out book/reference (STEP ... | --sample N)
    python scripts/compendium.py pack --out DIR ARCHIVE.tar.gz | merge ARCHIVE.tar.gz --out book/reference
    python scripts/compendium.py book [--run runs/smoke] --out _build/smoke [--strict]

``plan`` prints each chapter's expected wall time from per-step costs measured on this machine
(``medsec_utils.plan``) and the total. ``run`` executes every notebook of ``notebooks/`` into
``OUT/<chapter>/`` (executed notebook, ``metrics.json``, figures), printing the time left as it goes and each
chapter's wall time at the end, less any time its kernel was stopped (``kill -STOP``; also in
``OUT/wall_times.json``). A chapter with a step table (``medsec_utils.steps``) first has its missing steps computed
here, each stored in ``OUT/store/`` as it finishes, and its notebook then reads every result from the store; with
``--stop-after`` the run stops cleanly between steps before the budget runs out and exits 3 ("more to do"; 0:
every page written). ``status`` and ``verify`` read the run's settings from ``OUT/run.json``. A chapter whose inputs (notebook,
parameters, library files, data checksums, installed packages) and files are as its last finished run left
them is kept, not executed again (``--force`` executes it anyway); a changed chapter still loads every
unchanged artefact from the cache. ``book`` stages the book sources, replaces
the committed reference run by ``--run`` if given, and builds HTML with Jupyter Book 1 without executing
anything again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
LIBRARY = ROOT / "medsec_utils"
REFERENCE = ROOT / "book" / "reference"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book", "medsec_utils/profiles.yaml")
DEFAULT_DATASETS = ["phantom:chest_xray", "phantom:ct", "phantom:histology"]  # the notebooks' default
WALL_TIMES = "wall_times.json"
INPUTS = "inputs.json"  # in each chapter folder: what its finished run was made from, and the files it left
RUN_RECORD = "run.json"  # in the run folder: profile, data sets and parameters, for status and verify
PAGE_SECONDS = 180.0  # what a budget keeps for executing a chapter whose steps are all stored, when never timed
MORE_TO_DO = 3  # exit status of a run stopped by its budget


def plan_chapters(profile: str, datasets: list[str], extra: dict | None = None,
                  measure: bool = True) -> tuple[dict[str, float], Any, float]:
    """Expected seconds per chapter from an empty cache, the task table behind them (``medsec_utils.plan``) and
    how many times faster one GPU would be (``plan.gpu_speedup``). ``extra`` entries that are profile settings
    (``epochs=3``) count; notebook-only parameters do not."""
    import pandas as pd

    from medsec_utils import data, plan, profiles

    known = profiles.resolve_profile(profile)
    overrides = {k: v for k, v in (extra or {}).items() if k in known}
    settings = profiles.resolve_profile(profile, **overrides)
    extended = _extended_design(extra)

    def sizes_of(specs: list[str]) -> list[Any]:
        return [plan.SetSize.of(data.load_dataset(spec, size=settings.image_size, progress=False,
                                                  phantom_images=settings.phantom_images), settings) for spec in specs]

    sizes = sizes_of(datasets or DEFAULT_DATASETS)
    print(f"plan: {profile} profile on {', '.join(f'{s.name} ({s.train} train, {s.test} test)' for s in sizes)}",
          flush=True)
    started = time.perf_counter()
    measured = settings if not extended else profiles.resolve_profile(  # the extended set's sizes measured too
        profile, **{**overrides, "fl_sizes": sorted(set(settings.fl_sizes) | set(extended[1]))})
    costs, hit = plan.unit_costs(measured, measure=measure)
    if costs is None:
        print("per-step costs not measured on this machine yet: no time estimates (`compendium.py plan` measures "
              "them in a minute or two)", flush=True)
        return {}, None, 1.0
    where = "from the artefact cache" if hit else f"measured now in {time.perf_counter() - started:.0f} s"
    print(f"per-step costs {where} ({plan.machine()['cpu']}, {plan.machine()['threads']} threads)", flush=True)
    frame = plan.estimate(settings, sizes, costs, extended=extended)
    for stem in plan.CHAPTERS:  # a chapter given data sets of its own (``--param 01.dataset=[...]``)
        own = (extra or {}).get(f"{stem[:2]}.dataset")
        if own:
            mine = plan.estimate(settings, sizes_of([own] if isinstance(own, str) else list(own)), costs,
                                 extended=extended)
            frame = pd.concat([frame[frame["chapter"] != stem], mine[mine["chapter"] == stem]], ignore_index=True)
            frame = frame.sort_values("chapter", kind="stable", ignore_index=True)
    return plan.chapter_seconds(frame), frame, plan.gpu_speedup(costs, settings.image_size)


def _extended_design(extra: dict | None) -> tuple[str, list[int], list[str]] | None:
    """Chapter 5's ``(extended_dataset, extended_sizes, extended_splits)`` when ``extra`` names an extended data set
    (``--param 05.extended_dataset=chest_xray``); sizes and splits not given are the notebook's defaults."""
    import ast

    import papermill

    given = {k: v for k, v in chapter_params(extra, "05").items() if k.startswith("extended_")}
    if not given.get("extended_dataset"):
        return None
    defaults = papermill.inspect_notebook(str(NOTEBOOKS / "05_federated.ipynb"))
    merged = {**{k: ast.literal_eval(v["default"]) for k, v in defaults.items() if k.startswith("extended_")}, **given}
    return merged["extended_dataset"], list(merged["extended_sizes"]), list(merged["extended_splits"])


def print_plan(profile: str, datasets: list[str], extra: dict | None, detail: bool) -> None:
    """``plan``: each chapter's expected wall time and the total."""
    from medsec_utils.plan import GPU_REFERENCE, duration

    seconds, frame, speedup = plan_chapters(profile, datasets, extra)
    if detail:
        print(frame.assign(seconds=frame["seconds"].round(1)).to_string(index=False))
    gpu = f"one {GPU_REFERENCE['gpu']}"
    print(f"  {'chapter':22s} {'this machine':>14s} {gpu + ' (estimate)':>26s}")
    for chapter, value in seconds.items():
        print(f"  {chapter:22s} {duration(value):>14s} {duration(value / speedup):>26s}")
    total = sum(seconds.values())
    print(f"  {'total':22s} {duration(total):>14s} {duration(total / speedup):>26s}  (from an empty artefact cache; "
          f"cached parts cost almost nothing)")
    print(f"GPU column: this machine's seconds / {speedup:.0f}, the ratio of {GPU_REFERENCE['gpu']}'s published "
          f"EfficientNet-B3 training throughput ({GPU_REFERENCE['images_per_second']} images/s at "
          f"{GPU_REFERENCE['image_size']} px, {GPU_REFERENCE['source']}; scaled by pixel count) to the one measured "
          f"here, applied to all work: an estimate, not a measurement")


def kernel_stopped(parent: psutil.Process | None = None) -> bool:
    """Whether the processes this run (or ``parent``) started, the notebook's kernel,
    finished ones aside, are all stopped, as ``kill -STOP <kernel pid>`` pauses a long run to lend the machine to
    other work."""
    import psutil

    try:
        running = [c.status() for c in (parent or psutil.Process()).children()]
    except psutil.Error:
        return False
    running = [status for status in running if status != psutil.STATUS_ZOMBIE]
    return bool(running) and all(status == psutil.STATUS_STOPPED for status in running)


class Progress:
    """Prints, every ``every`` seconds while a chapter runs and after each chapter, the time spent and the time
    left, from the plan's estimates scaled by how the finished chapters compared with theirs. Time while the kernel
    is stopped (checked once a beat) does not count as work done. A chapter with a step table has its steps computed
    (with their own progress lines) before its page runs: for its page only the page's own estimate counts, and
    neither a time left in all (the later chapters' stored steps are not counted here) nor a scale comes of it."""

    def __init__(self, estimates: dict[str, float], every: float) -> None:
        self.estimates, self.every, self.done = estimates, every, {}
        self.chapter, self.started, self.paused, self.page_only = "", 0.0, 0.0, False
        self._stop, self._beating = threading.Event(), threading.Thread()

    def keep(self, chapter: str) -> None:
        """A chapter kept from an earlier run: it neither counts as left nor scales the estimates."""
        self._quiet()
        self.estimates.pop(chapter, None)
        self.chapter = ""

    def _scale(self) -> float:
        planned = sum(self.estimates.get(c, 0.0) for c in self.done)
        return sum(self.done.values()) / planned if planned > 0 else 1.0

    def left(self, working: float) -> tuple[float, float]:
        """Seconds left in the current chapter and in the whole run, after ``working`` seconds of the chapter."""
        scale = self._scale()
        chapter_left = max(0.0, self.estimates.get(self.chapter, 0.0) * scale - working)
        later = [c for c in self.estimates if c not in self.done and c != self.chapter]
        return chapter_left, chapter_left + scale * sum(self.estimates[c] for c in later)

    def _beat(self, stop: threading.Event) -> None:
        from medsec_utils.plan import duration

        last = time.perf_counter()
        while not stop.wait(self.every):
            now = time.perf_counter()
            if kernel_stopped():
                self.paused += now - last
            last = now
            elapsed = now - self.started
            paused = f" ({duration(self.paused)} of it paused)" if self.paused else ""
            chapter_left, total_left = self.left(elapsed - self.paused)
            left = (f", about {duration(chapter_left)} left of the page" if self.page_only else
                    f", about {duration(chapter_left)} left in the chapter, {duration(total_left)} in all"
                    if self.planned else "")
            print(f"   {self.chapter}: {duration(elapsed)} in{paused}{left}", flush=True)

    @property
    def planned(self) -> bool:
        return any(self.estimates.values())

    def start(self, chapter: str, page_seconds: float | None = None) -> None:
        """Start timing ``chapter``; ``page_seconds``: only its page is left to run, expected to take that long."""
        self._quiet()
        self.chapter, self.started, self.paused = chapter, time.perf_counter(), 0.0
        self.page_only = page_seconds is not None
        if self.page_only:
            self.estimates[chapter] = page_seconds
        self._stop = threading.Event()
        self._beating = threading.Thread(target=self._beat, args=(self._stop,), daemon=True)
        self._beating.start()

    def _quiet(self) -> None:
        """End the progress lines before anything else is printed."""
        self._stop.set()
        if self._beating.is_alive():
            self._beating.join()

    def finish(self, ok: bool = True) -> float:
        """Stop the progress lines; the chapter's working seconds (wall time less pauses). A failed chapter is not
        counted as done."""
        from medsec_utils.plan import duration

        self._quiet()
        seconds = time.perf_counter() - self.started - self.paused
        paused = f" and {duration(self.paused)} paused" if self.paused else ""
        if not ok:
            print(f"   {self.chapter} stopped after {duration(seconds)}{paused}", flush=True)
            return seconds
        if self.page_only:
            self.estimates.pop(self.chapter, None)
        else:
            self.done[self.chapter] = seconds
        self.chapter = ""
        left = f"; about {duration(self.left(0.0)[1])} left" if self.planned and not self.page_only else ""
        print(f"   done in {duration(seconds)}{paused}{left}", flush=True)
        return seconds


def chapter_inputs(notebook: Path, params: dict[str, Any]) -> dict[str, Any]:
    """What an executed chapter depends on: the notebook, its parameters, every file of the library, the data
    sets' checksums and the installed packages. Seeds are fixed everywhere, so the same inputs make the same
    chapter (on the same kind of device)."""
    from importlib import metadata

    inputs = {
        "notebook": _sha256(notebook),
        "parameters": params,
        "library": {str(p.relative_to(LIBRARY)): _sha256(p) for p in sorted(LIBRARY.rglob("*"))
                    if p.is_file() and "__pycache__" not in p.parts},
        "data": _data_checksums(params.get("dataset") or DEFAULT_DATASETS),
        "packages": sorted(f"{d.metadata.get('Name', '?')}=={d.version}" for d in metadata.distributions()),
    }
    return json.loads(json.dumps(inputs, default=str))  # as it reads back from inputs.json


def _data_checksums(specs: list[str]) -> dict[str, str]:
    from medsec_utils.data import spec_checksum

    with contextlib.chdir(ROOT):  # where the notebooks run, so relative specs name the same files
        return {spec: spec_checksum(spec) for spec in specs}


def chapter_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file a chapter run left in ``folder``."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != INPUTS}


def unchanged_run(folder: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the finished run in ``folder`` if it was made from ``inputs`` and its files are as it left
    them (none missing, added or edited); else None."""
    try:
        record = json.loads((folder / INPUTS).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("inputs") == inputs and record.get("files") == chapter_files(folder) else None


def run_chapters(profile: str, out: Path, datasets: list[str], chapters: list[str],
                 extra: dict | None = None, every: float = 60.0, planned: bool = True, force: bool = False,
                 stop_after: float | None = None) -> int:
    """Execute the chapter notebooks with papermill, each into ``out/<stem>/``; ``extra`` sets more parameters.
    A chapter with a step table first has its missing steps computed and stored in ``out/store/``. A chapter whose
    inputs and files are unchanged since its last finished run there is kept unless ``force``. With
    ``stop_after`` (seconds), stops before a step or notebook the plan says would not fit in what is left.
    Prints progress with the time left (from the plan unless ``planned`` is False), and each chapter's wall
    time at the end, also written to ``out/wall_times.json``. Returns 0 when every chosen page is written, else
    :data:`MORE_TO_DO`."""
    import papermill

    from medsec_utils.cache import write_json_atomic
    from medsec_utils.plan import duration
    from medsec_utils.steps.runner import Budget, BudgetReached

    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    chosen = [nb for nb in notebooks if not chapters or nb.name[:2] in chapters]
    if not chosen:
        sys.exit(f"no chapter notebook matches {chapters} in {NOTEBOOKS}")
    budget = Budget.of(stop_after)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RUN_RECORD, run_record(out, profile, datasets, extra, {nb.name[:2] for nb in chosen}))
    estimates = plan_chapters(profile, datasets, extra)[0] if planned or stop_after else {}
    progress = Progress({nb.stem: estimates.get(nb.stem, 0.0) for nb in chosen}, every)
    measured: dict[str, float] = {}
    planned_seconds: dict[str, float | None] = {}  # per page: its own estimate, or the chapter's without a step table
    for number, notebook in enumerate(chosen, 1):
        folder = out / notebook.stem
        folder.mkdir(parents=True, exist_ok=True)
        params = run_params(notebook, profile, folder, datasets, extra)
        print(f"== [{number}/{len(chosen)}] {notebook.name} -> {_relative(folder)} with {params}", flush=True)
        try:
            stored = compute_steps(notebook, params, out, budget, every, planned)
        except BudgetReached as reached:
            print(f"   {reached}; exit {MORE_TO_DO}: more to do, run again to go on", flush=True)
            return MORE_TO_DO
        inputs = {**chapter_inputs(notebook, params), "store": stored}
        earlier = None if force else unchanged_run(folder, inputs)
        needed = _page_seconds(out, notebook.stem) if stored else estimates.get(notebook.stem, PAGE_SECONDS)
        if earlier is None and not budget.fits(needed):
            print(f"   executing {notebook.name} needs about {duration(needed)}, {duration(budget.left)} of the "
                  f"budget is left: stopping before it; exit {MORE_TO_DO}: more to do, run again to go on", flush=True)
            return MORE_TO_DO
        estimate = needed if stored else estimates.get(notebook.stem)
        planned_seconds[notebook.stem] = estimate
        progress.start(notebook.stem, page_seconds=needed if stored else None)
        try:
            if earlier is None:
                (folder / INPUTS).unlink(missing_ok=True)
                papermill.execute_notebook(str(notebook), str(folder / notebook.name), parameters=params,
                                           cwd=str(ROOT), kernel_name="python3", progress_bar=False, log_output=False)
        except BaseException:
            progress.finish(ok=False)
            raise
        if earlier is not None:
            seconds = time.perf_counter() - progress.started
            progress.keep(notebook.stem)
            print(f"   unchanged since {earlier['finished']} (inputs and files checked in {seconds:.1f} s): kept; "
                  f"--force executes it again", flush=True)
        else:
            seconds = progress.finish()
            write_json_atomic(folder / INPUTS, {"inputs": inputs, "files": chapter_files(folder), "seconds": round(
                seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        measured[notebook.stem] = seconds
        _record_wall_time(out, notebook.stem, seconds, estimate, profile, datasets,
                          kept=earlier is not None, paused=0.0 if earlier is not None else progress.paused)
    _print_wall_times(measured, planned_seconds)
    return 0


def _page_seconds(out: Path, chapter: str) -> float:
    """What executing a chapter whose steps are all stored should take: its last execution here (at least 30 s),
    else :data:`PAGE_SECONDS`."""
    try:
        last = json.loads((out / WALL_TIMES).read_text())["chapters"][chapter]
    except (OSError, ValueError, KeyError):
        return PAGE_SECONDS
    return PAGE_SECONDS if last.get("kept") else max(30.0, float(last["seconds"]))


def run_params(notebook: Path, profile: str, folder: Path, datasets: list[str], extra: dict | None) -> dict[str, Any]:
    """The parameters papermill gives ``notebook`` in a run: profile, output folder, data sets and ``extra``."""
    params: dict[str, Any] = {"profile": profile, "output_dir": _relative(folder)}
    if datasets:
        params["dataset"] = datasets
    params.update(chapter_params(extra, notebook.name[:2]))
    return params


def notebook_defaults(notebook: Path) -> dict[str, Any]:
    """The values of a notebook's parameters cell (our own notebooks: plain assignments, run in an empty
    namespace)."""
    cells = json.loads(notebook.read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    namespace: dict[str, Any] = {}
    exec(compile(source, str(notebook), "exec"), {}, namespace)
    return namespace


def open_steps(notebook: Path, params: dict[str, Any]) -> tuple[Any, list[Any]] | None:
    """``(chapter, steps)`` as the notebook would open it with ``params``, or None for a chapter without a step
    table (it runs whole)."""
    from medsec_utils import steps
    from medsec_utils.reporting.chapter import open_from_params

    if steps.table(notebook.stem) is None:
        return None
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(io.StringIO()):  # the notebook prints its opening
        chapter = open_from_params(notebook.stem, {**notebook_defaults(notebook), **params})
        return chapter, chapter.steps()


def compute_steps(notebook: Path, params: dict[str, Any], out: Path, budget: Any, every: float,
                  planned: bool = True) -> dict[str, str]:
    """Compute the chapter's missing steps into ``out/store`` (none for a chapter without a step table); the
    SHA-256 of each step's marker, which the chapter's inputs then include."""
    from medsec_utils import plan
    from medsec_utils.steps.runner import Estimator, compute_missing
    from medsec_utils.store import MARKER

    opened = open_steps(notebook, params)
    if opened is None:
        return {}
    chapter, chosen = opened
    estimator = Estimator(plan.step_unit_costs(chapter.settings, chosen)[0] if planned or budget.deadline else {},
                          chapter.store)
    taken, computed = compute_missing(chosen, chapter.store, estimator, budget, every)
    print(f"   steps: {taken} taken from the store, {computed} computed", flush=True)
    return {step.id: _sha256(chapter.store.folder(step) / MARKER) for step in chosen}


def run_record(out: Path, profile: str, datasets: list[str], extra: dict | None, ran: set[str]) -> dict[str, Any]:
    """What ``run.json`` records for a run of the chapters ``ran`` (``{"01", ...}``): its profile, data sets and
    parameters, keeping the recorded ``NN.name`` parameters of the chapters it did not run when the profile, data sets
    and shared parameters are those recorded (a ``--chapter 06`` run into the reference folder must not make
    ``status`` judge chapter 1 without its MedMNIST set). Any other run replaces the record."""
    record = {"profile": profile, "datasets": datasets, "params": dict(extra or {})}
    try:
        before = json.loads((out / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return record
    shared = {key: value for key, value in before.get("params", {}).items() if "." not in key}
    if (before.get("profile"), before.get("datasets"), shared) != (
            profile, datasets, {key: value for key, value in record["params"].items() if "." not in key}):
        return record
    kept = {key: value for key, value in before["params"].items() if "." in key and key.split(".", 1)[0] not in ran}
    return {**record, "params": {**kept, **record["params"]}}


def read_run(out: Path) -> tuple[str, list[str], dict[str, Any]]:
    """``(profile, datasets, extra)`` of the run that wrote ``out`` (its ``run.json``)."""
    try:
        record = json.loads((out / RUN_RECORD).read_text())
    except (OSError, ValueError):
        sys.exit(f"{out / RUN_RECORD}: not found or unreadable; run `scripts/compendium.py run --out {out} ...` first "
                 "(it records the profile, data sets and parameters that status and verify use)")
    return record["profile"], record["datasets"], record["params"]


def print_status(out: Path) -> int:
    """``status``: per chapter, steps current, stale (and why), damaged and missing in ``out/store``, and the plan's
    time for what is left (when this machine's per-step costs are measured; status never waits to measure them);
    a chapter without a step table by its page. Exit 0 when everything is current, else :data:`MORE_TO_DO`."""
    from medsec_utils import plan
    from medsec_utils.plan import duration
    from medsec_utils.steps.runner import Estimator, chapter_status

    profile, datasets, extra = read_run(out)
    estimates = plan_chapters(profile, datasets, extra, measure=False)[0]
    total_left, total_computed, everything_current, stored = 0.0, 0.0, True, None

    def plan_text(seconds: float) -> str:
        return f"plan for what is left {duration(seconds)}" if estimates else "no plan measured"

    for notebook in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        params = run_params(notebook, profile, out / notebook.stem, datasets, extra)
        page = out / notebook.stem / INPUTS
        try:
            opened = open_steps(notebook, params)
        except ValueError as refused:  # this chapter cannot run on the run's data: say why, go on with the others
            print(f"{notebook.stem:22s} cannot list its steps on this run's data: {refused}")
            everything_current = False
            continue
        if opened is None:
            current = page.is_file() and unchanged_run(page.parent, chapter_inputs(notebook, params)) is not None
            left = 0.0 if current else estimates.get(notebook.stem, 0.0)
            print(f"{notebook.stem:22s} no step table yet: runs whole; page "
                  f"{'current' if current else 'missing or stale'}; {plan_text(left)}")
        else:
            chapter, chosen = opened
            costs = plan.step_unit_costs(chapter.settings, chosen, measure=False)[0]
            state = chapter_status(chosen, chapter.store, Estimator(costs or {}, chapter.store))
            counts, left = state["counts"], state["seconds_left"]
            total_computed += state["seconds_computed"]
            current = counts["current"] == len(chosen) and page.is_file()
            print(f"{notebook.stem:22s} {len(chosen)} steps: {counts['current']} current, {counts['stale']} stale, "
                  f"{counts['damaged']} damaged, {counts['missing']} missing; {plan_text(left)}; "
                  f"page {'written' if page.is_file() else 'not written'}; "
                  f"current steps took {duration(state['seconds_computed'])}")
            for why, count in state["reasons"].items():
                print(f"{'':22s}   {count} x {why}")
            stored = chapter.store
        total_left += left
        everything_current &= current
    size = f"store {stored.size_bytes() / 1e3:,.1f} kB in {len(stored.stored_ids())} steps" if stored else "no store"
    where = " (this machine, from an empty artefact cache)" if estimates else ""
    print(f"{'total':22s} {plan_text(total_left)}{where}; {size}; the current steps took {duration(total_computed)} "
          "in the runs that stored them (measured; a model a step took from the artefact cache is not counted again)")
    return 0 if everything_current else MORE_TO_DO


def verify_steps(out: Path, wanted: list[str], sample: int, seed: int) -> int:
    """``verify``: recompute the named (or ``sample`` random) stored steps from scratch and compare each with the
    stored result. Exit 1 when any differs beyond the tolerance."""
    import random

    from medsec_utils.steps.runner import pick, verify_step

    profile, datasets, extra = read_run(out)
    found = []
    for notebook in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        try:
            opened = open_steps(notebook, run_params(notebook, profile, out / notebook.stem, datasets, extra))
        except ValueError as refused:
            print(f"{notebook.stem}: skipped, cannot list its steps on this run's data: {refused}", file=sys.stderr)
            continue
        if opened is not None:
            found += [(opened[0].store, step) for step in opened[1]]
    if sample:
        stored = [(store, step) for store, step in found if store.state(step)[0] == "current"]
        chosen = random.Random(seed).sample(stored, min(sample, len(stored)))
    else:
        ids = {step.id for step in pick([step for _, step in found], wanted)}
        chosen = [(store, step) for store, step in found if step.id in ids]
    if not chosen:
        sys.exit(f"verify: no stored step matches {wanted or f'--sample {sample}'} in {out / 'store'}; "
                 "`status` lists the chapters, step ids look like 02_attacks/ct/fgsm/eps2")
    worst = 0
    for store, step in chosen:
        verdict, differences = verify_step(step, store)
        print(f"{step.id}: {verdict}", flush=True)
        for line in differences[:10]:
            print(f"   {line}")
        worst = max(worst, verdict == "different")
    return worst


def pack_store(out: Path, archive: Path) -> None:
    """``pack``: every stored step of ``out/store`` in one ``.tar.gz`` (what a GPU machine brings back)."""
    from medsec_utils.store import Store, pack

    print(f"{archive}: {pack(Store(out / 'store'), archive)} steps, {archive.stat().st_size / 1e6:.1f} MB")


def merge_store(archive: Path, out: Path) -> None:
    """``merge``: add the intact steps of a ``pack`` archive to ``out/store``, refusing damaged ones in one line."""
    from medsec_utils.store import Store, merge

    added, same, refused = merge(Store(out / "store"), archive)
    for step_id, problem in refused:
        print(f"{archive}: {step_id} refused ({problem})")
    print(f"{archive}: {added} steps added to {out / 'store'}, {same} already there, {len(refused)} refused; "
          f"`status --out {out}` says which are current")


def _record_wall_time(out: Path, chapter: str, seconds: float, estimate: float | None, profile: str,
                      datasets: list[str], kept: bool, paused: float) -> None:
    from medsec_utils import plan
    from medsec_utils.cache import write_json_atomic
    from medsec_utils.reporting.provenance import git_state

    path = out / WALL_TIMES
    record = json.loads(path.read_text()) if path.is_file() else {"chapters": {}}
    record["chapters"][chapter] = {"seconds": round(seconds, 1), "paused_seconds": round(paused, 1), "kept": kept,
                                   "estimated_seconds": estimate and round(estimate, 1),
                                   "profile": profile, "datasets": datasets or DEFAULT_DATASETS, "git": git_state(),
                                   "machine": plan.machine(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(path, record)


def _print_wall_times(measured: dict[str, float], estimates: dict[str, float | None]) -> None:
    from medsec_utils.plan import duration

    print("wall time per page (measured, less any pause | planned):")
    for chapter, seconds in measured.items():
        planned = estimates.get(chapter)
        print(f"  {chapter:22s} {duration(seconds):>14s} | {duration(planned) if planned else 'not planned':>14s}")
    print(f"  {'total':22s} {duration(sum(measured.values())):>14s} | "
          f"{duration(sum(estimates.get(c) or 0.0 for c in measured)) if any(estimates.values()) else 'not planned':>14s}")


def build_book(run: Path | None, out: Path, strict: bool) -> None:
    """Stage the book (optionally with another run's chapters) and build its HTML into ``out``."""
    with tempfile.TemporaryDirectory(prefix="medsec-book-") as tmp:
        stage = Path(tmp)
        for name in BOOK_SOURCES:
            source, target = ROOT / name, stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        if run is not None:
            _swap_in_run(run, stage / "book" / "reference")
        command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(stage), "--path-output", str(out.resolve())]
        if strict:
            command += ["-W", "-n", "--keep-going"]
        done = subprocess.run(command, check=False)
        if done.returncode:
            sys.exit(done.returncode)
    print(f"book: {out / '_build' / 'html' / 'index.html'}")


def _swap_in_run(run: Path, reference: Path) -> None:
    for chapter in sorted(p for p in reference.glob("[0-9][0-9]_*") if p.is_dir()):  # chapters, not the store
        fresh = run / chapter.name
        if not (fresh / f"{chapter.name}.ipynb").is_file():
            sys.exit(f"{fresh}: no executed {chapter.name}.ipynb; run `scripts/compendium.py run` first")
        shutil.rmtree(chapter)
        shutil.copytree(fresh, chapter)


def parse_param(text: str) -> tuple[str, object]:
    """``name=value`` with a YAML value (``splits=[iid]``, ``periods=[1, 5]``), as papermill's ``-y`` reads it."""
    import yaml

    name, sep, value = text.partition("=")
    chapter, dot, bare = name.strip().rpartition(".")
    if not sep or not bare.isidentifier() or (dot and not (len(chapter) == 2 and chapter.isdigit())):
        raise argparse.ArgumentTypeError(f"--param {text!r}: write name=value, e.g. --param 'splits=[iid]', or "
                                         f"NN.name=value for chapter NN alone, e.g. --param '01.dataset=[...]'")
    return name.strip(), yaml.safe_load(value)


def parse_duration(text: str) -> float:
    """Seconds of ``140m``, ``2h``, ``2h30m``, ``90s`` or a plain number of seconds."""
    import re

    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"--stop-after {text!r}: write a duration such as 140m, 2h, 2h30m or 90s")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return 3600 * hours + 60 * minutes + seconds


def chapter_params(extra: dict | None, chapter: str) -> dict[str, Any]:
    """The parameters of chapter ``chapter`` (``01``): every ``name`` of ``extra``, then every ``NN.name`` of that
    chapter over them."""
    extra = extra or {}
    own = {key.split(".", 1)[1]: value for key, value in extra.items() if key.startswith(f"{chapter}.")}
    return {**{key: value for key, value in extra.items() if "." not in key}, **own}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the chapter notebooks with papermill")
    run.add_argument("--profile", default="smoke")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--dataset", action="append", default=[], help="DATASET spec (repeat for several)")
    run.add_argument("--chapter", action="append", default=[], help="two-digit chapter number (repeatable)")
    run.add_argument("--param", action="append", default=[], type=parse_param,
                     help="name=value: a notebook parameter for every chosen chapter, NN.name=value for chapter NN "
                          "alone (repeatable)")
    run.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines")
    run.add_argument("--force", action="store_true", help="execute chapters whose inputs and files are unchanged")
    run.add_argument("--stop-after", type=parse_duration, default=None, metavar="DURATION",
                     help="stop cleanly between steps before this much time (140m, 2h, 90s) is spent; exit 3 when "
                          "more is left to do")
    run.add_argument("--plan", action=argparse.BooleanOptionalAction, default=None,
                     help="plan first, for time-left estimates (default: every profile but smoke, whose run is "
                          "short and whose plan would cost a minute of measuring on a fresh cache)")
    planner = commands.add_parser("plan", help="expected wall time per chapter, before a run")
    planner.add_argument("--profile", default="smoke")
    planner.add_argument("--dataset", action="append", default=[], help="DATASET spec (repeat for several)")
    planner.add_argument("--param", action="append", default=[], type=parse_param,
                         help="name=value: a profile setting to override (repeatable)")
    planner.add_argument("--detail", action="store_true", help="also print every task's units and seconds")
    book = commands.add_parser("book", help="build the HTML book")
    book.add_argument("--run", type=Path, help="a run folder whose chapters replace the reference run")
    book.add_argument("--out", type=Path, required=True)
    book.add_argument("--strict", action="store_true", help="warnings are errors")
    status = commands.add_parser("status", help="steps stored, stale and missing per chapter, and the time left")
    status.add_argument("--out", type=Path, required=True, help="the run folder (book/reference for make reference)")
    verify = commands.add_parser("verify", help="recompute stored steps from scratch and compare")
    verify.add_argument("--out", type=Path, required=True)
    verify.add_argument("steps", nargs="*", help="step ids or id prefixes (02_attacks/ct)")
    verify.add_argument("--sample", type=int, default=0, help="verify this many random stored steps")
    verify.add_argument("--seed", type=int, default=0, help="seed of --sample's draw")
    pack = commands.add_parser("pack", help="every stored step of a run in one .tar.gz")
    pack.add_argument("--out", type=Path, required=True)
    pack.add_argument("archive", type=Path)
    merge = commands.add_parser("merge", help="add the steps of a pack archive to a run's store")
    merge.add_argument("archive", type=Path)
    merge.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        planned = args.profile != "smoke" if args.plan is None else args.plan
        sys.exit(run_chapters(args.profile, args.out, args.dataset, args.chapter, dict(args.param),
                              args.progress_every, planned, args.force, args.stop_after))
    elif args.command == "plan":
        print_plan(args.profile, args.dataset, dict(args.param), args.detail)
    elif args.command == "status":
        sys.exit(print_status(args.out))
    elif args.command == "verify":
        if bool(args.steps) == bool(args.sample):
            parser.error("verify: name steps or give --sample N, not both")
        sys.exit(verify_steps(args.out, args.steps, args.sample, args.seed))
    elif args.command == "pack":
        pack_store(args.out, args.archive)
    elif args.command == "merge":
        merge_store(args.archive, args.out)
    else:
        build_book(args.run, args.out, args.strict)


if __name__ == "__main__":
    main()
