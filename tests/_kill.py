"""Killed runs: the workloads ``test_killed_runs.py`` kills, the fork server that starts them, and what a test
reads back from a run (its log, its result, the artefact cache it left).

Run as ``python tests/_kill.py``, this module is a fork server: it imports torch and the library once, then for
every request on stdin (one JSON line: workload, cache folder, result file, log file) forks a child that runs
the workload against that ``MEDSEC_CACHE``, writes its result as JSON and exits, or dies by SIGKILL. Importing
torch, timm and the library takes 8 to 30 s on the shared 2-core test machine, longer than the tiny workloads
themselves: fresh interpreters would spend the test's budget on imports, and a kill drawn as a share of the run
would mostly land in them. A forked child is still a process of its own that SIGKILL ends at once, taking its
memory with it: all a restart finds is what the killed run wrote to disk. The server computes nothing before it
forks (the test also runs it single-threaded), so no thread pool of the server is carried into a child.

Each workload loads a tiny phantom data set, prints ``WORK_STARTED``, runs one cached unit of the library with
its progress bars on (what a user sees), and returns two parts: ``compare``, what ``metrics.json`` would get
from it (timings left out) with the fingerprints of the weights or images, which a restarted run must
reproduce exactly; and ``run``, how this process got there (cache hits, checkpoints it wrote).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

WORK_STARTED = "WORK_STARTED"
TIMINGS = {"seconds", "train_seconds", "seconds_per_image", "attack_seconds_per_image"}
CHECKPOINT = "checkpoint.pt"
MARKER = "artefact.json"  # medsec_utils.cache.MARKER, the completeness marker


# --- the workloads (run in forked children) -------------------------------------------------------------

def _settings(**sizes: Any) -> dict[str, Any]:
    from medsec_utils import profiles

    return profiles.resolve_profile("smoke", **{"max_train_images": 48, "max_eval_images": 16, "batch_size": 16,
                                                "bootstrap": 50, **sizes})


def _phantoms():
    from medsec_utils import data

    return data.load_dataset("phantom:ct?n=80", size=32, use_cache=False, progress=False)


def _untrained_classifier():
    """A seeded, untrained ResNet-10t: what the defences and attacks of these workloads act on (its weights do
    not matter to a killed run, only that they are the same in every run)."""
    import torch

    from medsec_utils import models

    torch.manual_seed(0)
    return models.build_classifier(1, "resnet10t").eval()


def _instrument(counts: dict[str, int], kill_before_marker: bool, kill_after_write: list | None) -> None:
    """Count the checkpoints this process writes (the epochs it trained itself, not those it resumed from) and
    the attacks it computes (not those it loaded); with ``kill_before_marker``, SIGKILL this process when the
    cache is about to write its first completeness marker: a kill at the last moment a run can lose work; with
    ``kill_after_write=[name, n]``, SIGKILL it just after its n-th write of a file called ``name``: a kill that
    lands mid-work however fast or slow the machine is."""
    from medsec_utils import attacks, cache

    save, write_json, attack = cache.torch_save_atomic, cache.write_json_atomic, attacks.evaluate_attack
    writes: dict[str, int] = {}

    def after_write(path: Path) -> None:
        name = Path(path).name
        writes[name] = writes.get(name, 0) + 1
        if kill_after_write and kill_after_write == [name, writes[name]]:
            os.kill(os.getpid(), signal.SIGKILL)

    def counting_save(obj: Any, path: Path) -> None:
        if Path(path).name == CHECKPOINT:
            counts["checkpoints_written"] += 1
        save(obj, path)
        after_write(path)

    def killing_write(path: Path, obj: Any) -> None:
        if kill_before_marker and Path(path).name == MARKER:
            os.kill(os.getpid(), signal.SIGKILL)
        write_json(path, obj)
        after_write(path)

    def counting_attack(*args: Any, **kwargs: Any) -> Any:
        counts["attacks_run"] += 1
        return attack(*args, **kwargs)

    cache.torch_save_atomic, cache.write_json_atomic, attacks.evaluate_attack = (counting_save, killing_write,
                                                                                 counting_attack)


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if key not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


CLASSIFIER = dict(epochs=5)  # training is most of the run: the test report after it takes half a second


def classifier() -> dict[str, Any]:
    """Chapter 1's unit of work: ``classifier_for`` (resumable, checkpointed every epoch), then the test record."""
    import torch

    from medsec_utils import cache, training
    from medsec_utils.reporting.classifiers import classifier_record

    settings, images = _settings(**CLASSIFIER), _phantoms()
    print(WORK_STARTED, flush=True)
    model, history, hit = training.classifier_for(images, settings, seed=0, device=torch.device("cpu"),
                                                  arch="resnet10t")
    report, _ = training.test_report(model, images, settings, seed=0, device=torch.device("cpu"))
    return {"compare": {"weights": cache.tensor_fingerprint(model.state_dict()), "history": history,
                        "record": classifier_record(images, report, history, settings, 0)},
            "run": {"hit": hit}}


DEFENSES = {"adversarial_training": dict(adv_train_epochs=3, adv_train_method="fgsm_rs"),
            "hgd": dict(hgd_epochs=3, defense_pgd_steps=2)}


def _defense(kind: str) -> dict[str, Any]:
    """Chapter 3's unit of work: ``defense_for`` one kind, then its record on the clean test images."""
    import torch

    from medsec_utils import cache, defenses
    from medsec_utils.reporting.defenses import defense_record

    settings, images, classifier = _settings(**DEFENSES[kind]), _phantoms(), _untrained_classifier()
    print(WORK_STARTED, flush=True)
    model, history, hit = defenses.defense_for(kind, images, classifier, settings, seed=0, device=torch.device("cpu"))
    x, y = images.tensors("test", settings["max_eval_images"], 0)
    record = defense_record(images, model, kind, "none", "gray-box", x, y, torch.zeros(len(y), dtype=torch.bool), None)
    return {"compare": {"weights": cache.tensor_fingerprint(model.state_dict()), "history": history,
                        "record": record},
            "run": {"hit": hit}}


GENERATOR = dict(gan_width=32, gan_steps=15, batch_size=8)


def dcgan() -> dict[str, Any]:
    """Chapter 4's unit of work: ``generator_for`` one class with the cheapest kind (resumable per epoch), then
    the fingerprint of seeded samples."""
    import torch

    from medsec_utils import cache, generative

    settings, images = _settings(**GENERATOR), _phantoms()
    print(WORK_STARTED, flush=True)
    model, history, hit, _ = generative.generator_for("dcgan", images, 1, settings, seed=0, device=torch.device("cpu"))
    samples = generative.sample(model, 16, seed=0, device=torch.device("cpu"))
    return {"compare": {"weights": cache.tensor_fingerprint(model.state_dict()), "history": history,
                        "samples": cache.tensor_fingerprint(samples)},
            "run": {"hit": hit}}


ATTACKS = [("pgd", 1), ("pgd", 2), ("pgd", 4), ("pgd", 8)]
ATTACK_SETTINGS = dict(pgd_steps=30)


def attacks() -> dict[str, Any]:
    """Chapter 2's unit of work: one attack per budget through ``evaluate_attack_cached`` (each outcome its own
    artefact; nothing resumes inside one), then their ``metrics.json`` records."""
    import torch

    from medsec_utils import attacks as attack_kinds
    from medsec_utils import cache
    from medsec_utils.reporting.attacks import attack_record

    settings, images, model = _settings(**ATTACK_SETTINGS), _phantoms(), _untrained_classifier()
    x, y = images.tensors("test", settings["max_eval_images"], 0)
    print(WORK_STARTED, flush=True)
    records, images_seen, hits = [], [], []
    for name, eps_255 in ATTACKS:
        outcome, hit = attack_kinds.evaluate_attack_cached(model, name, x, y, eps=eps_255 / 255, settings=settings,
                                                           device=torch.device("cpu"))
        parameters = attack_kinds.attack_parameters(name, eps_255 / 255, settings)
        records.append(attack_record(images, outcome, parameters, attack_kinds.quantized_accuracy(model, outcome)))
        images_seen.append(cache.tensor_fingerprint(outcome.adversarial))
        hits.append(hit)
    return {"compare": {"records": records, "adversarial": images_seen}, "run": {"hits": hits}}


WORKLOADS: dict[str, Callable[[], dict[str, Any]]] = {
    "classifier": classifier,
    "adversarial_training": lambda: _defense("adversarial_training"),
    "hgd": lambda: _defense("hgd"),
    "dcgan": dcgan,
    "attacks": attacks,
}


def _child(request: dict[str, Any]) -> None:
    """Run one workload in this (forked) process and leave with ``os._exit``: never return to the server loop."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.environ["MEDSEC_CACHE"] = request["cache"]
        counts = {"checkpoints_written": 0, "attacks_run": 0}
        _instrument(counts, request.get("kill_before_marker", False), request.get("kill_after_write"))
        result = WORKLOADS[request["workload"]]()
        result = {"compare": _without_timings(result["compare"]), "run": {**result["run"], **counts}}
        Path(request["result"]).write_text(json.dumps(result, indent=1, default=str))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The fork server: import everything once, then one forked child per request line, reaped in turn.

    Replies, one JSON line each: ``{"ready": true}`` once imported, ``{"pid": ...}`` when a child starts and
    ``{"pid": ..., "exit": code}`` when it ends (``-9``: killed by SIGKILL).
    """
    import matplotlib

    matplotlib.use("Agg")
    import torch  # noqa: F401  (everything a workload imports, imported before the first fork)

    from medsec_utils import attacks, cache, data, defenses, generative, models, profiles, training  # noqa: F401
    from medsec_utils.reporting import attacks as _a, classifiers as _c, defenses as _d  # noqa: F401

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        reply({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})


# --- the test side ----------------------------------------------------------------------------------------

@dataclass
class Run:
    """One run of a workload: its files, when its work started, how long it worked, how it ended."""

    workload: str
    cache: Path
    log: Path
    result_file: Path
    exit: int | None = None
    work_seconds: float | None = None  # from WORK_STARTED to the end (or the kill)
    killed_after: float | None = None  # seconds after WORK_STARTED the SIGKILL was sent

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.result_file.read_text())

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def progress_lines(self) -> list[str]:
        """Every line the run printed, progress bar updates (``\\r``) split into lines of their own."""
        return [part.strip() for part in self.output.replace("\r", "\n").splitlines() if part.strip()]


class ForkServer:
    """The test side of :func:`serve`: start a workload, optionally SIGKILL it a given time after its work started."""

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 300) -> None:
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1, env={**os.environ, **(env or {})})
        self.timeout = timeout
        ready = self._read(timeout)
        if not ready.get("ready"):
            raise RuntimeError(f"the fork server did not start: {ready}")

    def _read(self, timeout: float) -> dict[str, Any]:
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if readable else ""
        if not line:
            raise RuntimeError(f"the fork server said nothing for {timeout} s (exit code {self.process.poll()})")
        return json.loads(line)

    def run(self, workload: str, cache: Path, tag: str, kill_after: float | None = None,
            kill_before_marker: bool = False, kill_after_write: tuple[str, int] | None = None) -> Run:
        """Run ``workload`` against ``cache`` to its end, or SIGKILL it ``kill_after`` s after it printed
        ``WORK_STARTED``, or have it SIGKILL itself just before its first cache marker or just after its n-th write
        of a file (``kill_after_write=(name, n)``); files go beside ``cache`` as ``<tag>.log`` and ``<tag>.json``."""
        cache.mkdir(parents=True, exist_ok=True)
        run = Run(workload, cache, cache.parent / f"{tag}.log", cache.parent / f"{tag}.json")
        self.process.stdin.write(json.dumps({"workload": workload, "cache": str(cache), "log": str(run.log),
                                             "result": str(run.result_file),
                                             "kill_before_marker": kill_before_marker,
                                             "kill_after_write": kill_after_write}) + "\n")
        self.process.stdin.flush()
        pid = self._read(60)["pid"]
        started, deadline = None, time.monotonic() + self.timeout
        while started is None:
            if run.log.is_file() and WORK_STARTED in run.log.read_text(errors="replace"):
                started = time.monotonic()
            elif select.select([self.process.stdout], [], [], 0.005)[0]:
                ended = json.loads(self.process.stdout.readline())
                raise RuntimeError(f"{workload} ended (exit {ended.get('exit')}) before its work started:\n"
                                   f"{run.output[-3000:]}")
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise RuntimeError(f"{workload} did not start its work within {self.timeout} s")
        if kill_after is not None:
            if not select.select([self.process.stdout], [], [], kill_after)[0]:
                os.kill(pid, signal.SIGKILL)
                run.killed_after = time.monotonic() - started
        ended = self._read(self.timeout)
        run.work_seconds = time.monotonic() - started
        run.exit = ended["exit"]
        return run

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def entries(cache: Path, kind: str) -> list[dict[str, Any]]:
    """The artefact folders of ``kind`` in ``cache``: complete (marker written) or not, finished (its last file,
    ``history.json`` or an attack's ``outcome.pt``, written: only the marker is missing), the epochs a checkpoint
    in it holds (None without one), and the temporary files of atomic writes a kill interrupted."""
    import torch

    found = []
    for folder in sorted((cache / kind).glob("*/")) if (cache / kind).is_dir() else []:
        checkpoint, epochs = folder / CHECKPOINT, None
        if checkpoint.is_file():
            saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
            epochs = saved["epoch"] if "epoch" in saved else len(saved["history"])
        found.append({"folder": folder, "complete": (folder / MARKER).is_file(), "epochs_done": epochs,
                      "finished": any((folder / name).is_file() for name in ("history.json", "outcome.pt")),
                      "temporaries": sorted(p.name for p in folder.glob(".*.tmp"))})
    return found


def stop_process_trees(processes: list[subprocess.Popen]) -> list[psutil.Process]:
    """Stop every started process and its descendants by PID; return the ones still alive."""
    tree = []
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            tree += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for member in tree:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=15)
    for member in alive:
        member.kill()
    _, alive = psutil.wait_procs(alive, timeout=5)
    return alive


if __name__ == "__main__":
    serve()

