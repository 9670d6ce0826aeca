"""The cache fails safely: damaged entries are detected, moved aside and recomputed; concurrent runs produce once.

Each injected fault is recorded for the book's reliability page (``_faults.record``) with the line the user saw.
The concurrent tests start two real processes that meet at a barrier (a folder where each drops a file) before
asking for the artefact, so they really ask at the same time.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _faults import record

from medsec_utils import cache

REPO = Path(__file__).resolve().parents[1]
PARTS = {"a": 1}

IMPORTS = """
import json, os, sys, time
from pathlib import Path
"""
BARRIER = IMPORTS + """
meeting = Path(sys.argv[1])
(meeting / str(os.getpid())).touch()
deadline = time.time() + 120
while len(list(meeting.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.01)
"""


def _produce(calls: list[Path]):
    """A producer of a model file, a nested file and a leftover temporary file; counts its calls."""
    def produce(folder: Path) -> None:
        calls.append(folder)
        (folder / "model.pt").write_bytes(bytes(range(256)) * 64)
        (folder / "sub").mkdir(exist_ok=True)
        (folder / "sub" / "notes.txt").write_text("epoch 1: loss 0.5\n")
        (folder / ".model.pt.abc123.tmp").write_bytes(b"half a write")
    return produce


def _entry() -> str:
    return f"thing/{cache.artefact_key(PARTS)}"


def _cache_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("medsec cache:")]


def test_marker_lists_every_file_with_size_and_checksum_but_not_itself_or_temporary_files(tmp_path):
    folder, _ = cache.cached("thing", PARTS, _produce([]), root=tmp_path)
    files = json.loads((folder / cache.MARKER).read_text())["files"]
    assert sorted(files) == ["model.pt", "sub/notes.txt"]
    assert files["model.pt"]["bytes"] == 256 * 64
    assert files["sub/notes.txt"]["sha256"] == cache._sha256(folder / "sub" / "notes.txt")


def test_a_killed_runs_half_written_temporary_is_removed_before_producing_again(tmp_path):
    stale = tmp_path / "thing" / cache.artefact_key(PARTS) / ".checkpoint.pt.x1y2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")  # what SIGKILL during torch_save_atomic leaves
    seen = []
    folder, hit = cache.cached("thing", PARTS, lambda f: seen.extend(f.rglob("*.tmp")), root=tmp_path)
    assert not hit and seen == [] and not stale.exists()


def _truncate(folder: Path) -> None:
    path = folder / "model.pt"
    path.write_bytes(path.read_bytes()[:1000])


def _alter_one_byte(folder: Path) -> None:
    with (folder / "model.pt").open("r+b") as handle:
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 0x01]))


def _delete(folder: Path) -> None:
    (folder / "sub" / "notes.txt").unlink()


def _garble_marker(folder: Path) -> None:
    (folder / cache.MARKER).write_bytes(b'{"kind": "thing", "files": \x00\xff')


FAULTS = [
    (_truncate, "model.pt: 1000 bytes, expected 16384", "model.pt truncated to 1000 of 16384 bytes"),
    (_alter_one_byte, "model.pt: SHA-256 differs", "one bit flipped in one byte of model.pt"),
    (_delete, "sub/notes.txt: missing", "sub/notes.txt deleted"),
    (_garble_marker, "artefact.json unreadable", "artefact.json marker overwritten with garbage bytes"),
]


@pytest.mark.parametrize(("damage", "reported", "fault"), FAULTS, ids=["truncated", "altered", "deleted", "marker"])
def test_damaged_entry_is_reported_moved_aside_and_recomputed(tmp_path, capsys, damage, reported, fault):
    calls: list[Path] = []
    folder, _ = cache.cached("thing", PARTS, _produce(calls), root=tmp_path)
    original = {name: (folder / name).read_bytes() for name in ("model.pt", "sub/notes.txt")}
    damage(folder)
    damaged = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    capsys.readouterr()

    again, hit = cache.cached("thing", PARTS, _produce(calls), root=tmp_path)
    lines = _cache_lines(capsys.readouterr().err)
    assert len(lines) == 1 and _entry() in lines[0] and reported in lines[0] and "recomputing" in lines[0]
    assert (again, hit, len(calls)) == (folder, False, 2)
    assert {name: (again / name).read_bytes() for name in original} == original
    [aside] = (tmp_path / cache.DAMAGED / "thing").iterdir()
    assert str(aside) in lines[0] and sorted(p.relative_to(aside) for p in aside.rglob("*")) == damaged
    assert cache.cached("thing", PARTS, _produce(calls), root=tmp_path) == (folder, True) and len(calls) == 2
    assert _cache_lines(capsys.readouterr().err) == []
    record("damaged cache", f"{fault} in a finished cache entry", lines[0], "recovered", recomputed=1,
           moved_aside=1)


def test_marker_without_checksums_is_trusted_once_then_given_them(tmp_path, capsys):
    """Entries written before checksums existed hold hours of training: they are kept, not recomputed."""
    calls: list[Path] = []
    folder, _ = cache.cached("thing", PARTS, _produce(calls), root=tmp_path)
    marker = json.loads((folder / cache.MARKER).read_text())
    cache.write_json_atomic(folder / cache.MARKER, {k: v for k, v in marker.items() if k != "files"})
    capsys.readouterr()
    assert cache.cached("thing", PARTS, _produce(calls), root=tmp_path) == (folder, True) and len(calls) == 1
    [line] = _cache_lines(capsys.readouterr().err)
    assert _entry() in line and "no checksums" in line
    assert json.loads((folder / cache.MARKER).read_text())["files"] == marker["files"]
    _alter_one_byte(folder)
    assert cache.cached("thing", PARTS, _produce(calls), root=tmp_path) == (folder, False) and len(calls) == 2


def test_without_fcntl_the_cache_still_works_unlocked(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "fcntl", None)
    calls: list[Path] = []
    assert cache.cached("thing", PARTS, _produce(calls), root=tmp_path)[1] is False
    assert cache.cached("thing", PARTS, _produce(calls), root=tmp_path)[1] is True and len(calls) == 1


def _run_together(script: str, *args: str, cache_root: Path) -> list[tuple[dict, str]]:
    """Run ``script`` in two processes that meet at a barrier first; each prints one JSON line."""
    meeting = cache_root.parent / "meeting"
    meeting.mkdir()
    env = {**os.environ, cache.CACHE_ENV: str(cache_root)}
    code = BARRIER + textwrap.dedent(script)
    runs = [subprocess.Popen([sys.executable, "-c", code, str(meeting), *args], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    return [(json.loads(out.strip().splitlines()[-1]), err) for out, err in outputs]


SLOW_PRODUCER = """
from medsec_utils import cache
root, counter = Path(sys.argv[2]), Path(sys.argv[3])

def produce(folder):
    with counter.open("a") as handle:
        handle.write(f"{os.getpid()}\\n")
    time.sleep(1.5)
    cache.write_json_atomic(folder / "value.json", {"answer": 42, "by": os.getpid()})

folder, hit = cache.cached("slow", {"a": 1}, produce, root=root)
print(json.dumps({"hit": hit, "content": (folder / "value.json").read_text()}))
"""


def test_two_processes_needing_one_artefact_produce_it_once(tmp_path):
    root, counter = tmp_path / "cache", tmp_path / "produced.txt"
    results = _run_together(SLOW_PRODUCER, str(root), str(counter), cache_root=root)
    assert len(counter.read_text().splitlines()) == 1
    assert sorted(result["hit"] for result, _ in results) == [False, True]
    assert results[0][0]["content"] == results[1][0]["content"]
    waits = [line for _, err in results for line in _cache_lines(err)]
    assert waits == [f"medsec cache: waiting for another run producing slow/{cache.artefact_key({'a': 1})}"]
    assert not [path for path in root.rglob("*") if path.name.endswith(".tmp")]
    record("concurrent runs", "two processes need the same artefact at once; its producer takes 1.5 s", waits[0],
           "recovered", produced=1, waited=1)


KILLED_PRODUCER = """
from medsec_utils import cache

def produce(folder):
    (folder / "checkpoint.txt").write_text("epoch 1 of 3 done")
    print("producing", flush=True)
    time.sleep(600)

cache.cached("resumable", {"a": 1}, produce, root=Path(sys.argv[1]))
"""


def test_a_killed_producer_leaves_no_stale_lock_and_its_state_is_resumed(tmp_path, capsys):
    root = tmp_path / "cache"
    run = subprocess.Popen([sys.executable, "-c", IMPORTS + KILLED_PRODUCER, str(root)], cwd=REPO, text=True,
                           stdout=subprocess.PIPE)
    assert run.stdout.readline().strip() == "producing"
    run.kill()
    run.wait(timeout=30)

    resumed: list[str] = []

    def resume(folder: Path) -> None:
        resumed.append((folder / "checkpoint.txt").read_text())
        (folder / "model.txt").write_text("trained")

    started = time.perf_counter()
    folder, hit = cache.cached("resumable", {"a": 1}, resume, root=root)
    assert time.perf_counter() - started < 5 and not hit and resumed == ["epoch 1 of 3 done"]
    assert _cache_lines(capsys.readouterr().err) == [] and (folder / "model.txt").read_text() == "trained"
    record("killed run", "SIGKILL while producing a cache entry, then the same entry asked for again",
           "nothing: the next run takes the lock at once and resumes from the killed run's state", "recovered",
           restarts=1)


CLASSIFIER = """
from medsec_utils import cache, data, profiles, training
import torch
counter = Path(sys.argv[2])
train = training.train_classifier

def counted(*args, **kwargs):
    with counter.open("a") as handle:
        handle.write(f"{os.getpid()}\\n")
    time.sleep(1)  # long enough that the other process surely asks meanwhile
    return train(*args, **kwargs)

training.train_classifier = counted
images = data.load_dataset("phantom:ct?n=40", size=32, use_cache=False, progress=False)
settings = profiles.resolve_profile("smoke", epochs=1, max_train_images=16, max_eval_images=8, batch_size=8)
model, _, hit = training.classifier_for(images, settings, seed=0, device=torch.device("cpu"), arch="resnet10t",
                                        progress=False)
print(json.dumps({"hit": hit, "weights": cache.tensor_fingerprint(model.state_dict())}))
"""


def test_two_notebooks_needing_one_classifier_train_it_once(tmp_path):
    root, counter = tmp_path / "cache", tmp_path / "trained.txt"
    results = _run_together(CLASSIFIER, str(counter), cache_root=root)
    assert len(counter.read_text().splitlines()) == 1
    assert sorted(result["hit"] for result, _ in results) == [False, True]
    assert results[0][0]["weights"] == results[1][0]["weights"]
    waits = [line for _, err in results for line in _cache_lines(err)]
    assert len(waits) == 1 and "waiting for another run producing classifier/" in waits[0]
    assert not [path for path in root.rglob("*") if path.name.endswith(".tmp")]
    record("concurrent runs", "two processes call training.classifier_for on the same data and cache at once",
           waits[0], "recovered", produced=1, waited=1)


def test_a_long_wait_on_a_lock_says_what_it_waits_for_and_a_short_one_stays_silent(tmp_path, capsys):
    import fcntl
    import threading

    lock = tmp_path / "entry.lock"
    for quiet, released_after, expected in ((0.2, 0.8, ["waiting for X"]), (3.0, 0.3, [])):
        holder = open(lock, "a")
        fcntl.flock(holder, fcntl.LOCK_EX)
        threading.Timer(released_after, holder.close).start()
        with open(lock, "a") as handle:
            started = time.perf_counter()
            cache.wait_for_lock(handle, "waiting for X", quiet_seconds=quiet)
            assert time.perf_counter() - started >= released_after - 0.05
        assert capsys.readouterr().err.splitlines() == expected
