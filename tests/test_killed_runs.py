"""Killed runs: SIGKILL a real run at seeded random points, restart it, and get what an uninterrupted run gets.

Each workload (classifier training, adversarial training, HGD, a DC-GAN, a chain of attacks) first runs
uninterrupted in a cache of its own, which measures how long its work takes (T). Then, at a kill point drawn
from a seeded generator in (0.2 T, 0.9 T), it starts in a fresh cache, is killed that long after its
work started, and is started again in the same cache to its end. A timed kill on a busy machine may land
before the first checkpoint or after the last, so a second run kills itself just after the middle epoch's
checkpoint (for attacks: the first attack's marker), and a third just before the cache writes its completeness
marker (the work done, the checkpoint removed: the last moment a run can lose work).
The restarted run must give exactly the records ``metrics.json`` would get and the weights' fingerprints of the
uninterrupted run; it must resume after the last finished epoch (or, for attacks, keep every finished attack)
rather than start again; and no kill may leave a marker over half-written files, which the cache would report
as damaged. The runs are children of a fork server (``_kill.py``, which says why).

A federation is killed on Flower's deployment engine, a SuperLink and one SuperNode per site on 127.0.0.1: the
server (the SuperLink with the ServerApp it runs) and, separately, one SuperNode, each once, a seeded share of
site 1's round-1 work into its round 2 of 2; the resubmitted run resumes from the round store and ends with the
uninterrupted run's. Those two tests are marked slow (a few minutes): every round starts a fresh ClientApp
process per site, and a dead SuperNode is noticed only when it misses its heartbeats.

Every kill is recorded for the book's reliability page (``_faults.record``).
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from _faults import record
from _kill import CHECKPOINT, MARKER, ForkServer, Run, entries, stop_process_trees

SEED = 2024
INIT = Path(__file__).with_name("_init.py")  # the reaping init each SuperLink and SuperNode runs under
KILLS = 1  # timed kill points per workload (beside the two the run triggers itself)


def kill_points(name: str, seconds: float, n: int = KILLS) -> list[float]:
    """``n`` seeded delays in (0.2, 0.9) x ``seconds``, one in each of ``n`` equal parts of that range, so
    several kills spread over the work."""
    rng = random.Random(f"{SEED}:{name}")
    width = 0.7 / n
    return [seconds * (0.2 + width * (k + rng.random())) for k in range(n)]


@pytest.fixture(scope="module")
def server():
    """The fork server, single-threaded: on 2 cores shared with other test processes, two OpenMP threads per
    run wait on each other and make the work ten times slower and its length erratic; a run's result must
    equal the uninterrupted one at any fixed thread count."""
    forks = ForkServer(env={"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    yield forks
    forks.close()


@dataclass(frozen=True)
class Workload:
    """A resumable training of the library: the ``_kill.py`` workload, the cache kind it produces, what it is
    called on the reliability page, and the description of its progress bar (what the user sees)."""

    name: str
    kind: str
    what: str
    bar: str


TRAININGS = [
    Workload("classifier", "classifier", "classifier training", "train"),
    Workload("adversarial_training", "defense", "adversarial training", "train"),
    Workload("hgd", "defense", "HGD denoiser training", "HGD denoiser"),
    Workload("dcgan", "generator", "DC-GAN training", "DC-GAN"),
]


def _bars(run: Run, desc: str) -> list[tuple[str, int, int]]:
    """Every progress line of ``run``'s bar ``desc`` (a regular expression): the line, the steps it shows done,
    of how many."""
    found = [re.match(rf"{desc}:\s+\d+%\|.*?\|\s*(\d+)/(\d+)", line) for line in run.progress_lines()]
    return [(match[0], int(match[1]), int(match[2])) for match in found if match]


def _first_bar(run: Run, desc: str) -> tuple[str, int, int]:
    bars = _bars(run, desc)
    assert bars, f"no {desc!r} progress bar in the output of {run.log}:\n{run.output[-2000:]}"
    return bars[0]


def _reference(server: ForkServer, name: str, tmp_path: Path) -> Run:
    reference = server.run(name, tmp_path / "reference" / "cache", "reference")
    assert reference.exit == 0, reference.output[-3000:]
    return reference


def _kills(server: ForkServer, name: str, reference: Run, tmp_path: Path, mid_work: tuple[str, int]):
    """The killed runs of ``name``: one per seeded kill point; one killed by itself just after its
    ``mid_work = (file name, n)``-th write of that file (a checkpoint or a finished attack's marker: mid-work on
    any machine, where a timed kill may land before the first epoch or after the last on a busy one); then one
    killed by itself just before the cache writes its first marker (the last moment a run can lose work). A run
    that ends before its timed kill (the machine was busier during the reference run) is tried once more in a
    fresh cache, at the same share of its length. Yields ``(killed run, description of the moment)``."""
    for number, delay in enumerate(kill_points(name, reference.work_seconds)):
        cache = tmp_path / f"kill{number}" / "cache"
        killed = server.run(name, cache, "killed", kill_after=delay)
        if killed.exit == 0:
            share = delay / reference.work_seconds
            killed = server.run(name, cache.with_name("cache_again"), "killed_again",
                                kill_after=share * killed.work_seconds)
        assert killed.exit == -signal.SIGKILL, (f"{name} ended (exit {killed.exit}) before its kill:\n"
                                                f"{killed.output[-2000:]}")
        yield killed, f"{killed.killed_after:.1f} s into"
    file, count = mid_work
    killed = server.run(name, tmp_path / "kill_mid_work" / "cache", "killed", kill_after_write=mid_work)
    assert killed.exit == -signal.SIGKILL, killed.output[-2000:]
    yield killed, f"just after write {count} of {file} in"
    killed = server.run(name, tmp_path / "kill_at_marker" / "cache", "killed", kill_before_marker=True)
    assert killed.exit == -signal.SIGKILL, killed.output[-2000:]
    yield killed, "just before the cache marker of"


def _restart(server: ForkServer, killed: Run) -> Run:
    """Run the killed run's workload again in its cache, to its end; the cache found nothing damaged."""
    restarted = server.run(killed.workload, killed.cache, "restarted")
    assert restarted.exit == 0, restarted.output[-3000:]
    assert "damaged" not in restarted.output, restarted.output[-3000:]
    return restarted


@pytest.mark.parametrize("workload", TRAININGS, ids=[w.name for w in TRAININGS])
def test_a_killed_training_resumes_after_its_last_epoch_to_the_uninterrupted_result(workload, server, tmp_path):
    """Kill during training: the artefact stays incomplete, the restart trains only the epochs its checkpoint
    lacks (its progress bar starts there), and weights, history and record equal the uninterrupted run's. Killed
    after training but before the marker, the restart keeps the finished files and trains nothing."""
    reference = _reference(server, workload.name, tmp_path)
    expected = reference.result["compare"]
    epochs = len(expected["history"])
    assert reference.result["run"]["checkpoints_written"] == epochs  # one checkpoint per epoch, as claimed
    middle = epochs // 2 or 1
    for killed, moment in _kills(server, workload.name, reference, tmp_path, mid_work=(CHECKPOINT, middle)):
        [entry] = entries(killed.cache, workload.kind)
        restarted = _restart(server, killed)
        assert restarted.result["compare"] == expected, f"killed {moment} the work: results differ"
        run = restarted.result["run"]
        if entry["complete"]:  # killed after the artefact was finished: the restart loads it
            assert run["hit"] and run["checkpoints_written"] == 0
            done, phase = epochs, "after the artefact was complete"
            user_sees = "no line: the artefact loads from the cache"
        elif entry["finished"] and entry["epochs_done"] is None:  # trained, checkpoint removed, marker not written
            assert not run["hit"] and run["checkpoints_written"] == 0 and not _bars(restarted, workload.bar), run
            done, phase = epochs, "training finished, checkpoint removed, marker not written"
            user_sees = "no line: the restart takes the finished files and writes the marker, training nothing"
        else:  # the restart trains from the checkpoint, if there is one
            done = entry["epochs_done"] or 0
            user_sees, shown, total = _first_bar(restarted, workload.bar)
            assert not run["hit"] and run["checkpoints_written"] == epochs - done, (done, run)
            assert shown * epochs == done * total, f"bar {shown}/{total} steps, checkpoint {done}/{epochs} epochs"
            phase = f"epoch {done + 1} of {epochs}" if done < epochs else "after the last epoch, while saving"
        if moment.startswith("just after"):
            assert done == middle, f"killed after the checkpoint of epoch {middle}, resumed after epoch {done}"
        if moment.startswith("just before"):
            assert not entry["complete"] and entry["finished"] and entry["epochs_done"] is None, entry
        record("killed run", f"SIGKILL {moment} {workload.what} ({phase})", user_sees, "recovered", restarts=1,
               resumed_from_epoch=done, epochs=epochs, temporaries_left=len(entry["temporaries"]))


def test_a_killed_attack_chain_keeps_every_finished_attack_and_recomputes_the_rest(server, tmp_path):
    """Attack outcomes are cached one attack at a time, with nothing resumable inside one: a kill leaves the
    finished attacks and at most the one in progress unfinished; the restart loads the finished ones, computes
    only the rest, and every record and adversarial image equals the uninterrupted run's."""
    reference = _reference(server, "attacks", tmp_path)
    expected, attacks = reference.result["compare"], len(reference.result["run"]["hits"])
    assert reference.result["run"]["attacks_run"] == attacks and not any(reference.result["run"]["hits"])
    for killed, moment in _kills(server, "attacks", reference, tmp_path, mid_work=(MARKER, 1)):
        found = entries(killed.cache, "attack")
        complete, finished = sum(e["complete"] for e in found), sum(e["complete"] or e["finished"] for e in found)
        assert len(found) - complete <= 1, "more than one attack left incomplete"
        restarted = _restart(server, killed)
        assert restarted.result["compare"] == expected, f"killed {moment} the attacks: results differ"
        run = restarted.result["run"]
        assert run["hits"] == [True] * complete + [False] * (attacks - complete), (complete, run)
        assert run["attacks_run"] == attacks - finished, (finished, run)
        if moment.startswith("just after"):
            assert (complete, finished) == (1, 1), found
        if moment.startswith("just before"):
            assert (complete, finished) == (0, 1), found
        bars = _bars(restarted, r"pgd eps=[\d/.]+")
        user_sees = bars[0][0] if bars else "no line: every attack loads from the cache"
        phase = f"attack {complete + 1} of {attacks}" if complete < attacks else "after the last attack"
        phase += ", its outcome written but not its marker" if finished > complete else ""
        record("killed run", f"SIGKILL {moment} an attack evaluation ({phase}; each attack is cached whole)", user_sees,
               "recovered", restarts=1, attacks_kept=finished, attacks_recomputed=attacks - finished)


# --- a federation on Flower's deployment engine ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROUNDS = 2
RUN_CONFIG = f"image_size=32 rounds={ROUNDS} dataset='phantom:ct?n=80'"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command_name(process: psutil.Process) -> str:
    """``flwr-serverapp`` for ``python .../flwr-serverapp --token ...``; "?" for a process already gone."""
    try:
        words = process.cmdline()
        return Path(words[1] if len(words) > 1 and words[0].endswith(("python", "python3")) else words[0]).name
    except (psutil.Error, IndexError):
        return "?"


class Deployment:
    """A SuperLink and one SuperNode per site on 127.0.0.1, each in a session of its own, its log in ``folder``;
    ``flwr run`` submits the compendium's app (``flower_app/``)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        home = folder / "flwr_home"
        home.mkdir(parents=True)
        (home / "config.toml").write_text(
            f'[superlink.kill-test]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.env = {**os.environ, "FLWR_HOME": str(home), "MEDSEC_CACHE": str(folder / "cache"),
                    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.link: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}
        self.started: list[subprocess.Popen] = []

    def _start(self, name: str, command: list) -> subprocess.Popen:
        """``command`` under a reaping init (``_init.py``, which says why), as a container started with
        ``--init`` runs it; the returned process is the init, :func:`_command` its command."""
        log = open(self.folder / f"{name}.log", "a")
        process = subprocess.Popen([sys.executable, INIT, *map(str, command)], env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(process)
        return process

    def start_link(self) -> None:
        self.link = self._start("superlink", [BIN / "flower-superlink", "--insecure",
                                              "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                                              "--port", self.port])

    def start_node(self, site: int) -> None:
        self.nodes[site] = self._start(f"supernode_{site}", [
            BIN / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", _free_port(),
            "--node-config", f"partition-id={site}"])

    def activations(self) -> int:
        path = self.folder / "superlink.log"
        return path.read_text(errors="replace").count("Activated node") if path.is_file() else 0

    def wait_for_nodes(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.activations() < count:
            assert time.monotonic() < deadline, f"SuperNodes did not connect within {timeout} s"
            time.sleep(0.3)

    def submit(self, store: Path) -> subprocess.Popen:
        """``flwr run`` of two rounds into ``store``, streaming the ServerApp's log to stdout."""
        return subprocess.Popen([str(BIN / "flwr"), "run", str(ROOT / "flower_app"), "kill-test", "--stream",
                                 "--run-config", f"store='{store}' {RUN_CONFIG}"],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @staticmethod
    def kill_tree(process: subprocess.Popen) -> list[str]:
        """SIGKILL the command under the init ``process`` and every descendant at once (a machine that loses
        power); their command names. The init reaps them and follows."""
        try:
            tree = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        names = [_command_name(member) for member in tree]
        for member in tree:
            try:
                member.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        process.wait(timeout=30)
        return names

    def stop(self) -> list[psutil.Process]:
        """SIGTERM, then SIGKILL, every process started and its descendants; the ones still alive."""
        return stop_process_trees(self.started)


class Streamed:
    """A ``flwr run`` whose output a thread collects in ``lines``, so the test can watch processes meanwhile."""

    def __init__(self, run: subprocess.Popen) -> None:
        self.run, self.lines = run, []
        self.reader = threading.Thread(target=lambda: self.lines.extend(line.rstrip() for line in run.stdout),
                                       daemon=True)
        self.reader.start()

    def seen(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def tail(self) -> str:
        return "\n".join(self.lines[-60:])

    def finish(self, timeout: float = 600) -> int:
        """Wait for the end of the run and its output; its exit code."""
        code = self.run.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return code


def _store_state(store: Path) -> dict[str, object]:
    """The store's rounds (without timings) and the fingerprint and mtime of every weights file."""
    import torch

    from medsec_utils import cache, federated

    files = {path.relative_to(store).as_posix(): (cache.tensor_fingerprint(torch.load(path, map_location="cpu")),
                                                   path.stat().st_mtime_ns)
             for path in sorted(store.glob("round_*/*.pt"))}
    rounds = [{k: v for k, v in row.items() if k not in ("seconds", "sites")}
              for row in federated.RoundStore(store).rounds()]
    return {"store": str(store), "rounds": rounds, "files": files}


def test_a_round_store_keeps_each_round_once_and_resumes_only_its_own_federation(tmp_path):
    """What a restarted ServerApp relies on: ``resumable`` counts the rounds logged in order with their server
    model (a round whose uploads are stored but whose server model is not does not count), refuses a store of
    another federation in one line naming the settings, and ``log`` replaces the line of a round written again
    instead of adding a second one (what ``metrics.json`` counts rounds and bytes from)."""
    import torch
    from flwr.app import ArrayRecord

    from medsec_utils import federated

    config = federated.federation_config({"image_size": 32, "rounds": 3, "store": str(tmp_path)},
                                         federated.profile_settings("smoke"))
    store = federated.RoundStore(tmp_path)
    assert store.resumable(config) == 0
    arrays = ArrayRecord({"generator.w": torch.ones(2)})
    for server_round in (0, 1, 2):
        store.save(server_round, "site_0", arrays)
        if server_round < 2:
            store.save(server_round, "server", arrays)
            if server_round:
                store.log({"round": server_round, "seconds": 1.0})
    store.log({"round": 2, "seconds": 1.0})  # logged, but round 2's server model never written: not finished
    assert store.resumable({**config, "rounds": 5}) == 1  # more rounds continue the same federation
    store.log({"round": 1, "seconds": 2.0})  # a run that started again from round 1
    assert store.rounds() == [{"round": 1, "seconds": 2.0}]
    store.log({"round": 2, "seconds": 2.0})
    assert [row["round"] for row in store.rounds()] == [1, 2]
    with pytest.raises(ValueError, match=r"other settings \(local_epochs\).*new store folder"):
        store.resumable({**config, "local_epochs": 2})


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One SuperLink and two SuperNodes for the federation tests, and the store of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("deployment")
    flower = Deployment(folder)
    try:
        flower.start_link()
        for site in (0, 1):
            flower.start_node(site)
        flower.wait_for_nodes(2)
        run = Streamed(flower.submit(folder / "reference"))
        assert run.finish() == 0 and not run.seen("resuming"), run.tail()
        state = _store_state(folder / "reference")
        assert [row["round"] for row in state["rounds"]] == list(range(1, ROUNDS + 1)), run.tail()
        yield flower, state
    finally:
        alive = flower.stop()
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"


def _resumed_equal(store: Path, before: dict, reference: dict, run: Streamed) -> str:
    """Assert the restarted run resumed after round 1 (its line says so, round 1's files untouched) and left the
    store the uninterrupted run left, round 2 included; return the resume line."""
    resumed = next((line.strip() for line in run.lines if "resuming after round" in line), "")
    assert resumed.startswith("resuming after round 1 of 2"), run.tail()
    after = _store_state(store)
    assert after["rounds"] == reference["rounds"], after["rounds"]  # each round once, as uninterrupted
    assert {name: fp for name, (fp, _) in after["files"].items()} == {
        name: fp for name, (fp, _) in reference["files"].items()}
    for name, (fingerprint, mtime) in before["files"].items():
        if name.startswith(("round_000/", "round_001/")):
            assert after["files"][name] == (fingerprint, mtime), f"{name} was written again"
    return resumed


def _command(init: subprocess.Popen) -> psutil.Process:
    """The process the reaping init ``init`` started (a SuperLink or SuperNode): its first child, as the
    orphans it adopts later are its children too."""
    return min(psutil.Process(init.pid).children(), key=psutil.Process.create_time)


def _clientapps(node: subprocess.Popen) -> list[psutil.Process]:
    """The ClientApp processes a SuperNode runs now (one per message it works on; ended ones left out)."""
    try:
        children = psutil.Process(node.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    running = []
    for child in children:
        try:
            if _command_name(child) == "flwr-clientapp" and child.status() != psutil.STATUS_ZOMBIE:
                running.append(child)
        except psutil.NoSuchProcess:
            pass
    return running


def _replies(flower: Deployment, site: int) -> int:
    """Replies SuperNode ``site`` has sent so far (its log is kept across restarts)."""
    return (flower.folder / f"supernode_{site}.log").read_text(errors="replace").count("Sent successfully")


def _into_round_2(flower: Deployment, store: Path, name: str) -> tuple[Streamed, float, dict]:
    """Submit a run and time site 1's work in round 1 (from its ClientApp starting to its reply); once round 1 is
    stored and site 1's round-2 ClientApp runs, wait a seeded share in (0.2, 0.9) of that time. A round 2 that
    site 1 finishes before then (the machine got faster) is run to its end, and the whole is tried once more in
    a fresh store at half the share. Returns the run, the delay and the store as it was, site 1 still at work."""
    for attempt, scale in enumerate((1.0, 0.5)):
        target = store.with_name(f"{store.name}_again") if attempt else store
        run, deadline = Streamed(flower.submit(target)), time.monotonic() + 600
        started = replied = None
        replies = _replies(flower, 1)
        while not run.seen("round 1/2 done"):
            assert run.run.poll() is None and time.monotonic() < deadline, run.tail()
            started = started or (time.monotonic() if _clientapps(flower.nodes[1]) else None)
            if started and not replied and _replies(flower, 1) > replies:
                replied = time.monotonic()
            time.sleep(0.05)
        assert started and replied, "site 1's round-1 ClientApp or its reply was never seen"
        while not _clientapps(flower.nodes[1]):
            assert not run.seen("round 2/2 done") and time.monotonic() < deadline, run.tail()
            time.sleep(0.05)
        delay = scale * kill_points(name, replied - started, 1)[0]
        time.sleep(delay)
        if _replies(flower, 1) == replies + 1:  # site 1 has not replied to round 2: it is at work
            return run, delay, _store_state(target)
        run.finish()
    raise AssertionError("site 1 finished round 2 before both kill points")


@pytest.mark.slow
def test_a_killed_federation_server_resumes_after_its_last_stored_round(deployment):
    """SIGKILL the server side (the SuperLink and the ServerApp it runs) while the sites train round 2: round 1
    stays in the store as written, round 2 unlogged; with the deployment started again, the resubmitted run
    resumes after round 1 and ends with the uninterrupted run's store."""
    flower, reference = deployment
    store = flower.folder / "server_killed"
    run, delay, before = _into_round_2(flower, store, "server")
    store = Path(before["store"])
    killed = flower.kill_tree(flower.link)
    assert {"flower-superlink", "flwr-serverapp"} <= set(killed), killed
    assert run.finish() != 0, run.tail()  # the user's `flwr run` loses its SuperLink
    assert [row["round"] for row in _store_state(store)["rounds"]] == [1]
    for node in flower.nodes.values():  # a SuperNode does not rejoin a new SuperLink (refused as unknown, it
        flower.kill_tree(node)          # leaves): the operator restarts the deployment
    connected = flower.activations()
    flower.start_link()
    for site in (0, 1):
        flower.start_node(site)
    flower.wait_for_nodes(connected + 2)
    again = Streamed(flower.submit(store))
    assert again.finish() == 0, again.tail()
    user_sees = _resumed_equal(store, before, reference, again)
    record("killed run", f"SIGKILL {delay:.1f} s into site 1's part of round 2 of 2 of a federation, to the server "
           f"(SuperLink and ServerApp); SuperLink and SuperNodes started again, the run resubmitted", user_sees,
           "recovered", restarts=1, resumed_from_round=1, rounds=ROUNDS)


@pytest.mark.slow
def test_a_federation_with_a_killed_supernode_resumes_after_its_last_stored_round(deployment):
    """SIGKILL one SuperNode while it trains round 2: its ClientApp follows it, the round fails once the
    SuperLink counts the node as gone (missed heartbeats), naming the error; with the SuperNode started again
    after that, the resubmitted run resumes after round 1 and ends with the uninterrupted run's store."""
    flower, reference = deployment
    store = flower.folder / "supernode_killed"
    run, delay, before = _into_round_2(flower, store, "supernode")
    store = Path(before["store"])
    node = flower.nodes[1]
    orphans = _clientapps(node)
    supernode = _command(node)
    supernode.send_signal(signal.SIGKILL)
    supernode.wait(timeout=30)
    run.finish()  # `flwr run` exits with 0 even when its ServerApp raised: read what it printed
    flower.start_node(1)  # only now: started at once, it could take up the killed node's round-2 message
    refused = next((line.strip() for line in run.lines if "round 2: 1 of 2 sites replied" in line), "")
    assert refused, run.tail()
    assert [row["round"] for row in _store_state(store)["rounds"]] == [1]
    _, alive = psutil.wait_procs(orphans, timeout=30)
    for process in alive:
        process.kill()
    assert not alive, "the killed SuperNode's ClientApp outlived it by 30 s"
    assert node.wait(timeout=30) == -signal.SIGKILL  # its init reaped all and died as the SuperNode did
    again = Streamed(flower.submit(store))
    assert again.finish() == 0, again.tail()
    user_sees = _resumed_equal(store, before, reference, again)
    record("killed run", f"SIGKILL {delay:.1f} s into site 1's part of round 2 of 2 of a federation, to its "
           f"SuperNode; the SuperNode started again, the run resubmitted once Flower had failed round 2",
           f"{refused}; then, resubmitted: {user_sees}", "recovered", restarts=1, resumed_from_round=1, rounds=ROUNDS)
