"""The artefact cache: keys, completeness markers, atomic writes, fingerprints."""

import copy
import hashlib
import json
import re
import time

import numpy as np
import pytest
import torch

from medsec_utils import cache


def test_key_is_stable_and_sensitive():
    parts = {"data": "sha256:abc", "epochs": 3, "lr": 0.001}
    assert cache.artefact_key(parts) == cache.artefact_key(dict(reversed(parts.items())))
    assert cache.artefact_key(parts) != cache.artefact_key({**parts, "epochs": 4})


def test_second_call_is_a_hit_and_does_not_produce(tmp_path):
    calls = []

    def produce(folder):
        calls.append(folder)
        (folder / "value.txt").write_text("42")

    first, hit1 = cache.cached("thing", {"a": 1}, produce, root=tmp_path)
    second, hit2 = cache.cached("thing", {"a": 1}, produce, root=tmp_path)
    assert (hit1, hit2) == (False, True)
    assert first == second and len(calls) == 1
    assert (second / "value.txt").read_text() == "42"
    assert json.loads((second / cache.MARKER).read_text())["parts"] == {"a": 1}


def test_interrupted_producer_leaves_no_complete_artefact(tmp_path):
    def broken(folder):
        (folder / "half.txt").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.cached("thing", {"a": 2}, broken, root=tmp_path)
    folder, hit = cache.cached("thing", {"a": 2}, lambda f: (f / "ok.txt").write_text("done"), root=tmp_path)
    assert not hit and (folder / "ok.txt").read_text() == "done"


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    cache.write_json_atomic(tmp_path / "m.json", {"x": 1})
    cache.torch_save_atomic({"y": 2}, tmp_path / "t.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.pt"]


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c"


def test_code_fingerprint_is_the_source_as_loaded_and_follows_its_changes(tmp_path, monkeypatch):
    everything = cache.code_fingerprint()
    assert {"data", "training", "models", "cache", "reporting"} <= set(everything)
    (tmp_path / "mod.py").write_text("x = 1\n")
    monkeypatch.setattr(cache, "PACKAGE_DIR", tmp_path)
    loaded = cache._source_digests()
    (tmp_path / "mod.py").write_text("x = 2\n")
    assert cache._source_digests()["mod"] != loaded["mod"]
    monkeypatch.setattr(cache, "_DIGESTS", loaded)  # the digests a process took when it imported the package
    assert cache.code_fingerprint("mod") == {"mod": loaded["mod"]}, "an edit during a run must not change keys"
    with pytest.raises(KeyError, match="no medsec_utils module nope"):
        cache.code_fingerprint("nope")


def test_tensor_fingerprint_follows_values_shape_and_dtype():
    a = torch.arange(6.0)
    assert cache.tensor_fingerprint(a) == cache.tensor_fingerprint(a.clone())
    assert cache.tensor_fingerprint(a) != cache.tensor_fingerprint(a.reshape(2, 3))
    assert cache.tensor_fingerprint(a) != cache.tensor_fingerprint(a.double())
    b = a.clone()
    b[3] += 1e-6
    assert cache.tensor_fingerprint(a) != cache.tensor_fingerprint(b)
    assert cache.tensor_fingerprint({"w": a, "n": torch.tensor(3)}) == cache.tensor_fingerprint({"n": torch.tensor(3), "w": a})
    assert cache.tensor_fingerprint({"n": torch.tensor(3)}) != cache.tensor_fingerprint({"n": torch.tensor(4)})


def test_memoised_computes_once_and_keeps_arrays_and_containers(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"rows": [{"p": np.arange(3)}], "x": torch.ones(2)}

    first, hit = cache.memoised("value", {"a": 1}, compute, root=tmp_path)
    again, hit_again = cache.memoised("value", {"a": 1}, compute, root=tmp_path)
    assert (hit, hit_again, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(again["rows"][0]["p"], first["rows"][0]["p"])
    assert torch.equal(again["x"], first["x"])


def test_fingerprints_tell_models_and_folders_apart_by_content(tmp_path):
    assert cache.module_fingerprint(torch.nn.Linear(2, 2)) != cache.module_fingerprint(torch.nn.Linear(2, 2))
    torch.manual_seed(0)
    one = torch.nn.Linear(2, 2)
    assert cache.module_fingerprint(one) == cache.module_fingerprint(copy.deepcopy(one))
    assert cache.module_fingerprint(torch.nn.AdaptiveAvgPool2d(4)) != cache.module_fingerprint(torch.nn.AdaptiveAvgPool2d(2))
    folder, _ = cache.cached("entry", {"b": 1}, lambda f: (f / "w.pt").write_bytes(b"weights"), root=tmp_path)
    copied = tmp_path / "copy"
    copied.mkdir()
    (copied / "w.pt").write_bytes(b"weights")
    assert cache.folder_fingerprint(folder) == cache.folder_fingerprint(copied)  # marker or files: same content
    (copied / "w.pt").write_bytes(b"other")
    assert cache.folder_fingerprint(folder) != cache.folder_fingerprint(copied)


# Killing the survivors of a mutation run (benchmarks/mutation_scores.md): what a mutant changed, a test now sees.

def test_the_cache_lives_in_the_users_cache_folder_unless_medsec_cache_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.cache_root() == tmp_path / ".cache" / "medsec"
    monkeypatch.setenv(cache.CACHE_ENV, "~/elsewhere")
    assert cache.cache_root() == tmp_path / "elsewhere"


def test_a_key_takes_values_json_cannot_hold_by_their_text(tmp_path):
    assert cache.artefact_key({"weights": tmp_path / "w.pt"}) == cache.artefact_key({"weights": str(tmp_path / "w.pt")})


def test_module_names_and_fingerprints_cover_exactly_the_named_modules():
    assert cache.module_name(cache.PACKAGE_DIR / "reporting" / "federated.py") == "reporting.federated"
    assert cache.module_name(cache.PACKAGE_DIR / "federated" / "__init__.py") == "federated"
    assert list(cache.code_fingerprint("metrics")) == ["metrics"]
    generative = cache.code_fingerprint("generative")
    assert {"generative", "generative.dcgan", "generative._loop"} <= set(generative)
    assert all(name == "generative" or name.startswith("generative.") for name in generative)
    assert set(cache.code_fingerprint()) > set(generative) | {"metrics"}
    digest = cache.code_fingerprint("metrics")["metrics"]
    assert digest == hashlib.sha256((cache.PACKAGE_DIR / "metrics.py").read_bytes()).hexdigest()[:12]
    assert cache.module_digests(["metrics", "no_such_module"]) == {"metrics": digest, "no_such_module": None}
    with pytest.raises(KeyError, match="no medsec_utils module nowhere"):
        cache.code_fingerprint("nowhere")


def test_fingerprints_tell_names_classes_and_file_bytes_apart(tmp_path):
    a, b = torch.zeros(2), torch.ones(2)
    assert cache.tensor_fingerprint({"x": a}) != cache.tensor_fingerprint({"y": a}) != cache.tensor_fingerprint(a)
    assert cache.tensor_fingerprint(a) != cache.tensor_fingerprint(b)
    assert cache.module_fingerprint(torch.nn.ReLU()) != cache.module_fingerprint(torch.nn.ReLU6())
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"weights")
    second.write_bytes(b"weights")
    assert cache.file_fingerprint(first) == cache.file_fingerprint(second) == cache._sha256(first)[:20]
    second.write_bytes(b"weightz")
    assert cache.file_fingerprint(first) != cache.file_fingerprint(second)


def test_is_cached_answers_without_producing_and_discard_removes_a_file_once(tmp_path):
    parts = {"x": 1}
    assert not cache.is_cached("thing", parts, root=tmp_path)
    cache.cached("thing", parts, lambda folder: (folder / "out.txt").write_text("made"), root=tmp_path)
    assert cache.is_cached("thing", parts, root=tmp_path) and not cache.is_cached("thing", {"x": 2}, root=tmp_path)
    target = tmp_path / "gone.txt"
    target.write_text("x")
    cache.discard(target)
    cache.discard(target)  # a second discard of a missing file is no error
    assert not target.exists()


def test_atomic_writes_leave_the_content_readable_by_all_and_no_temporary_file(tmp_path):
    folder = tmp_path / "a" / "b"  # folders made as needed
    cache.write_json_atomic(folder / "record.json", {"b": [1, 2]})
    cache.write_text_atomic(folder / "note.txt", "text")
    assert json.loads((folder / "record.json").read_text()) == {"b": [1, 2]}
    assert (folder / "note.txt").read_text() == "text"
    assert sorted(p.name for p in folder.iterdir()) == ["note.txt", "record.json"]
    assert {(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {0o644}  # shared artefacts, not mkstemp's 0600
    with pytest.raises((AttributeError, TypeError), match="pickle"):
        cache.torch_save_atomic(lambda: 0, folder / "bad.pt")  # a failed write leaves nothing behind
    assert sorted(p.name for p in folder.iterdir()) == ["note.txt", "record.json"]


def test_memoised_values_are_kept_per_kind_and_parts_with_how_long_they_took(tmp_path):
    first, _ = cache.memoised("sums", {"n": 1}, lambda: 1, root=tmp_path)
    second, hit = cache.memoised("sums", {"n": 2}, lambda: 2, root=tmp_path)
    assert (first, second, hit) == (1, 2, False)
    markers = [json.loads(p.read_text()) for p in (tmp_path / "sums").glob(f"*/{cache.MARKER}")]
    assert len(markers) == 2 and all(m["kind"] == "sums" and 0 <= m["seconds"] < 1 for m in markers)
    cache.write_json_atomic(tmp_path / "paths.json", {"weights": tmp_path / "w.pt"})
    assert json.loads((tmp_path / "paths.json").read_text()) == {"weights": str(tmp_path / "w.pt")}


def test_keys_and_fingerprints_are_the_first_20_hex_digits_of_a_sha256(tmp_path):
    """Folder names and recorded fingerprints have one documented length: a longer digest names the same thing
    but every stored key would change."""
    hex20 = re.compile("[0-9a-f]{20}")
    assert hex20.fullmatch(cache.artefact_key({"a": 1}))
    assert hex20.fullmatch(cache.tensor_fingerprint(torch.zeros(3)))
    path = tmp_path / "weights.pth"
    path.write_bytes(b"weights")
    assert cache.file_fingerprint(path) == hashlib.sha256(b"weights").hexdigest()[:20]


def test_an_entrys_marker_records_its_seconds_to_the_hundredth(tmp_path):
    def produce(folder):
        time.sleep(0.015)
        (folder / "x.txt").write_text("x")

    folder, _ = cache.cached("thing", {"n": 1}, produce, root=tmp_path)
    seconds = json.loads((folder / cache.MARKER).read_text())["seconds"]
    assert seconds == round(seconds, 2) and 0.01 <= seconds < 60


def test_the_packages_own_init_is_no_module_and_names_follow_every_level():
    assert "" not in cache.code_fingerprint() and "metrics" in cache.code_fingerprint()
    assert cache.module_name(cache.PACKAGE_DIR / "reporting" / "extra" / "__init__.py") == "reporting.extra"


def test_a_models_fingerprint_names_the_module_of_its_class():
    """Two classes of one name and structure in different modules are different models."""
    first = type("Net", (torch.nn.Linear,), {"__module__": "hospital_a.models"})(2, 2)
    second = type("Net", (torch.nn.Linear,), {"__module__": "hospital_b.models"})(2, 2)
    second.load_state_dict(first.state_dict())
    assert repr(first) == repr(second)
    assert cache.module_fingerprint(first) != cache.module_fingerprint(second)
