"""Tests for medsec_utils.data: every DATASET spec kind, patient-level splits, one-line errors, checksums.

Real images are read from ``../shared/data`` (relative to the project root) and pydicom-data's
``data_store``. Without ``../shared/data`` the real-data tests skip; with it incomplete, or without a file of the
pinned pydicom-data, they fail, naming what is missing. Synthetic fixtures are
written to ``tmp_path``. ``MEDSEC_CACHE`` and ``MEDSEC_DATA`` point to temporary folders.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
import yaml
from PIL import Image

from medsec_utils import cache
from medsec_utils.data import DataError, ImageSet, assign_splits, check, load_dataset, main

from _paths import REPO, pinned_dicom, pydicom_data_dir, shared_data

DICOM_DIR = pydicom_data_dir()
RADIOGRAPHS = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG3_UNCR.dcm")  # RG1_* share one patient
needs_dicom = pytest.mark.usefixtures("pinned_radiographs")


@pytest.fixture
def pinned_radiographs() -> None:
    """The RG1/RG3 radiographs of pydicom-data: pinned, so a test that needs them fails when they are missing."""
    pinned_dicom(*RADIOGRAPHS)


shared = shared_data  # a path under ../shared/data: skip without the folder, fail when it is incomplete


def phantoms_available() -> str | None:
    """None if medsec_utils.phantoms.make_phantoms is importable, else the reason to skip."""
    try:
        from medsec_utils.phantoms import make_phantoms  # noqa: F401
    except ImportError as err:
        return f"medsec_utils.phantoms.make_phantoms is not importable yet ({err})"
    return None


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test touches ~/.cache: artefact cache and named-data root live in temporary folders."""
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MEDSEC_DATA", str(tmp_path_factory.mktemp("named_data")))


# ----------------------------------------------------------------------------- fixture builders

def write_image(path: Path, size: tuple[int, int] = (48, 48), mode: str = "L", seed: int = 0) -> Path:
    """A small noise image (grayscale or RGB) in the format given by the suffix."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_manifest(folder: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if columns is not None:
        frame = frame[columns]
    frame.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def manifest_set(folder: Path, patients: int = 4, per_patient: int = 2, mode: str = "L", suffix: str = ".png",
                 split: dict[int, str] | None = None, size: tuple[int, int] = (48, 48)) -> Path:
    """Folder with images and manifest.csv; patient i has label i % 2 (split column only if ``split``)."""
    rows = []
    for p in range(patients):
        for k in range(per_patient):
            name = f"img/p{p:02d}_{k}{suffix}"
            write_image(folder / name, size, mode, seed=100 * p + k)
            row = {"path": name, "label": p % 2, "patient_id": f"P{p:02d}"}
            if split is not None:
                row["split"] = split[p]
            rows.append(row)
    write_manifest(folder, rows)
    return folder


def tree(root: Path, classes: dict[str, int], per_class: int = 3, layer: str = "", prefix: str = "p") -> Path:
    for c, name in enumerate(classes):
        for k in range(per_class):
            write_image(root / layer / name / f"{prefix}{c}{k}_{k}.png", seed=100 * c + 10 * k + len(layer))
    return root


def npz(path: Path, labels: dict[str, list[int]], dtype=np.uint8, side: int = 28) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, values in labels.items():
        images = rng.integers(0, 256, (len(values), side, side)).astype(np.uint8)
        arrays[f"{split}_images"] = images.astype(np.float32) / 255.0 if dtype != np.uint8 else images
        arrays[f"{split}_labels"] = np.asarray(values, dtype=np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def load(spec: str | Path, size: int = 32, **kwargs) -> ImageSet:
    kwargs.setdefault("use_cache", False)
    return load_dataset(str(spec), size=size, progress=False, **kwargs)


def assert_image_set(s: ImageSet, n: int, channels: int, size: int, modality: str) -> None:
    assert s.images.dtype == torch.uint8
    assert tuple(s.images.shape) == (n, channels, size, size)
    assert s.channels == channels and s.size == size and s.modality == modality
    assert s.labels.dtype == torch.int64 and set(s.labels.tolist()) == {0, 1}
    assert len(s.patient_ids) == len(s.splits) == len(s.native_sizes) == n
    assert set(s.splits) <= {"train", "val", "test"}
    for split in sorted(set(s.splits)):
        x, y = s.tensors(split)
        assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert len(x) == len(y) == int((s.splits == split).sum())
    assert float(s.images.float().std()) > 0  # not all one value


def assert_patients_in_one_split(patient_ids, splits) -> None:
    spread = pd.DataFrame({"p": patient_ids, "s": splits}).groupby("p")["s"].nunique()
    assert spread.max() == 1, f"patients in two splits: {list(spread[spread > 1].index)[:5]}"


# ----------------------------------------------------------------------------- 1. every spec kind loads

@pytest.mark.parametrize("modality,channels,mode", [("chest_xray", 1, "L"), ("ct", 1, "L"), ("histology", 3, "RGB")])
def test_manifest_folder_and_csv_path(tmp_path, modality, channels, mode):
    folder = manifest_set(tmp_path / "small_set", mode=mode)
    by_folder = load(f"{folder}?modality={modality}")
    by_csv = load(f"{folder / 'manifest.csv'}?modality={modality}")
    assert_image_set(by_folder, 8, channels, 32, modality)
    assert torch.equal(by_folder.images, by_csv.images) and by_folder.checksum == by_csv.checksum
    assert by_folder.labels.tolist() == [0, 0, 1, 1] * 2
    assert by_folder.patient_ids_given and sorted(set(by_folder.patient_ids)) == [f"P{p:02d}" for p in range(4)]
    assert (by_folder.native_sizes == 48).all()
    if channels == 3:  # real colour kept, not grey repeated three times
        assert not torch.equal(by_folder.images[:, 0], by_folder.images[:, 1])


def test_manifest_modality_inferred_from_folder_name(tmp_path):
    assert load(manifest_set(tmp_path / "cxr_small")).modality == "chest_xray"
    assert load(manifest_set(tmp_path / "lung_ct")).modality == "ct"
    with pytest.raises(DataError, match=r"modality=chest_xray"):
        load(manifest_set(tmp_path / "mystery"))


def test_real_ct_manifest_and_cache(tmp_path):
    folder = shared("ct")
    first = load_dataset(str(folder), size=32, progress=False)  # use_cache=True: decoded once, then read back
    assert_image_set(first, 977, 1, 32, "ct")
    assert int(first.labels.sum()) == 561
    assert {s: int((first.splits == s).sum()) for s in ("train", "val", "test")} == {"train": 697, "val": 99, "test": 181}
    assert not first.patient_ids_given and any("no patient ids" in note for note in first.notes)
    assert (first.native_sizes == 256).all()
    cache_files = list(Path(os.environ["MEDSEC_CACHE"]).rglob("images.pt"))
    assert len(cache_files) == 1
    again = load_dataset(str(folder), size=32, progress=False)
    assert torch.equal(first.images, again.images) and again.checksum == first.checksum
    assert np.array_equal(first.native_sizes, again.native_sizes)


def test_decoded_images_cache_round_trip(tmp_path):
    folder = manifest_set(tmp_path / "cxr_cache")
    first = load(folder, use_cache=True)
    cache_root = Path(os.environ["MEDSEC_CACHE"])
    assert len(list(cache_root.rglob("artefact.json"))) == 1
    again = load(folder, use_cache=True)  # read back from the cache
    assert torch.equal(first.images, again.images) and isinstance(again.native_sizes, np.ndarray)
    assert np.array_equal(first.native_sizes, again.native_sizes) and again.checksum == first.checksum
    assert torch.equal(again.images, load(folder, use_cache=False).images)
    load(folder, size=16, use_cache=True)
    assert len(list(cache_root.rglob("artefact.json"))) == 2


def test_parallel_decode_same_as_serial(tmp_path):
    """Worker processes give the very tensors, in row order, and the very error of decoding in one process."""
    folder = manifest_set(tmp_path / "cxr_parallel", patients=50, per_patient=2)  # 100 rows: several chunks
    serial, parallel = load(folder, workers=1), load(folder, workers=2)
    assert torch.equal(serial.images, parallel.images) and serial.images.dtype == parallel.images.dtype
    assert torch.equal(serial.labels, parallel.labels) and np.array_equal(serial.patient_ids, parallel.patient_ids)
    assert np.array_equal(serial.native_sizes, parallel.native_sizes) and serial.notes == parallel.notes
    for name in ("img/p35_1.png", "img/p45_0.png"):  # two bad files in later chunks: the first one is named
        (folder / name).write_text("this is not a PNG\n")
    errors = []
    for workers in (1, 2):
        with pytest.raises(DataError) as caught:
            load(folder, workers=workers)
        errors.append(caught.value)
    assert str(errors[0]) == str(errors[1]) and type(errors[0]) is type(errors[1])
    assert "p35_1.png" in str(errors[1]) and "unreadable" in str(errors[1]) and errors[1].__cause__ is None


def test_a_pool_that_cannot_start_falls_back_to_one_process_with_one_line(tmp_path, monkeypatch, capsys):
    """As in a script without ``if __name__ == "__main__":``, whose workers die importing it."""
    from concurrent.futures.process import BrokenProcessPool

    from medsec_utils import _sources

    folder = manifest_set(tmp_path / "cxr_broken_pool", patients=40, per_patient=2)
    serial = load(folder, workers=1)

    def broken(*args, **kwargs):
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(_sources, "_decode_in_pool", broken)
    assert torch.equal(load(folder, workers=2).images, serial.images)
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and "decoding in this one" in message[0] and "workers=1" in message[0]


def test_a_script_without_a_main_guard_loads_instead_of_hanging(tmp_path):
    """A plain script calling load_dataset with decode workers and a cache: its workers re-run the script and
    would wait forever on the cache lock the parent holds. They leave at once, and the parent decodes alone
    with its one line naming the guard."""
    folder = tree(tmp_path / "xray_noguard", {"normal": 0, "pneumonia": 1}, per_class=40)
    script = tmp_path / "noguard.py"
    script.write_text("from medsec_utils import data\n"
                      f"s = data.load_dataset({str(folder)!r}, size=24, workers=2, progress=False)\n"
                      "print('loaded', len(s.labels))\n")
    env = {**os.environ, "MEDSEC_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "loaded 80", done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("medsec")]
    assert len(lines) == 1 and "decoding in this one" in lines[0] and "__main__" in lines[0], done.stderr


def test_merged_class_folders_are_named_in_one_note(tmp_path):
    root = tree(tmp_path / "xray_three", {"COVID": 1, "NORMAL": 0, "PNEUMONIA": 1}, per_class=4)
    s = load(root)
    assert s.labels.tolist() == [1] * 4 + [0] * 4 + [1] * 4
    assert "classes: NORMAL -> Normal; COVID, PNEUMONIA -> Pathology" in s.notes
    plain = load(tree(tmp_path / "xray_two", {"normal": 0, "pneumonia": 1}, per_class=4))
    assert not [note for note in plain.notes if note.startswith("classes:")]


def test_real_chest_xray_manifest():
    folder = shared("chest_xray")
    s = load(folder, size=32)
    assert_image_set(s, 4180, 1, 32, "chest_xray")
    assert int(s.labels.sum()) == 3108 and s.patient_ids_given
    assert_patients_in_one_split(s.patient_ids, s.splits)
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(s.splits) == list(manifest["split"])
    assert list(s.labels.tolist()) == [int(v) for v in manifest["label"]]


def test_real_histology_subset_by_absolute_paths(tmp_path):
    folder = shared("histology")
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    subset = pd.concat([manifest[manifest["label"] == lab].head(5) for lab in ("0", "1")])
    rows = [{"path": str(folder / p), "label": lab} for p, lab in zip(subset["path"], subset["label"])]
    s = load(write_manifest(tmp_path / "histology", rows), size=32)
    assert_image_set(s, 10, 3, 32, "histology")
    assert not torch.equal(s.images[:, 0], s.images[:, 2])  # H&E colour, not grey


def test_image_folder_tree_obvious_names(tmp_path):
    root = tree(tmp_path / "xray_tree", {"normal": 0, "pneumonia": 1}, per_class=4)
    s = load(root)
    assert_image_set(s, 8, 1, 32, "chest_xray")
    assert s.labels.tolist() == [0] * 4 + [1] * 4
    assert any("splits made per patient" in note for note in s.notes)


def test_image_folder_tree_classes_yaml(tmp_path):
    root = tree(tmp_path / "xray_custom", {"clear": 0, "opaque": 1, "hazy": 2}, per_class=3)
    with pytest.raises(DataError, match="classes.yaml"):
        load(root)
    (root / "classes.yaml").write_text("clear: 0\nopaque: 1\nhazy: 1\n")
    s = load(root)
    assert_image_set(s, 9, 1, 32, "chest_xray")
    assert s.labels.tolist() == [0] * 3 + [1] * 6  # folders sorted: clear, hazy, opaque


def test_image_folder_tree_split_layout_with_patient_regex(tmp_path):
    root = tmp_path / "xray_split"
    for layer in ("train", "val", "test"):
        tree(root, {"normal": 0, "pneumonia": 1}, per_class=2, layer=layer, prefix=f"{layer}-")
    s = load(f"{root}?patient_regex=^([a-z]+-\\d)\\d+_")  # '+' must survive spec parsing
    assert_image_set(s, 12, 1, 32, "chest_xray")
    assert [int((s.splits == x).sum()) for x in ("train", "val", "test")] == [4, 4, 4]
    assert s.patient_ids_given and set(s.patient_ids[s.splits == "val"]) == {"val-0", "val-1"}
    assert_patients_in_one_split(s.patient_ids, s.splits)


def test_real_pneumoniamnist_npz():
    path = shared("medmnist", "pneumoniamnist_28.npz")
    s = load(path, size=64)
    assert_image_set(s, 3882 + 524 + 624, 1, 64, "chest_xray")
    assert [int((s.splits == x).sum()) for x in ("train", "val", "test")] == [3882, 524, 624]
    with np.load(path) as archive:
        expected = np.concatenate([archive[f"{x}_labels"].reshape(-1) for x in ("train", "val", "test")])
    assert s.labels.tolist() == expected.tolist()
    assert (s.native_sizes == 28).all()


def _descriptor(folder: Path, name: str, source: Path, md5: str | None = None, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"name": name, "modality": "chest_xray", "filename": f"{name}.npz", "url": source.as_uri(),
            "md5": md5 or hashlib.md5(source.read_bytes()).hexdigest(), **extra}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(body))


def test_npz_multiclass_needs_label_map(tmp_path, monkeypatch):
    source = npz(tmp_path / "src" / "xray_multi.npz", {"train": [0, 1, 2, 0, 1, 2, 2], "test": [0, 2, 1]})
    with pytest.raises(DataError, match=r"xray_multi\.npz.*\[2\].*label_map"):
        load(source)
    manifests = tmp_path / "manifests"
    _descriptor(manifests, "xray_multi", source, label_map={0: 0, 2: 1}, drop_other_labels=True)
    monkeypatch.setenv("MEDSEC_MANIFESTS", str(manifests))
    s = load("xray_multi")
    assert s.labels.tolist() == [0, 1, 0, 1, 1, 0, 1]  # class 2 -> 1, class 1 left out
    assert any("3 images of other classes left out" in note for note in s.notes)


def test_named_descriptor_downloads_verifies_and_loads(tmp_path, monkeypatch):
    source = npz(tmp_path / "src" / "remote.npz", {"train": [0, 1] * 6, "val": [0, 1], "test": [1, 0, 1]})
    manifests = tmp_path / "manifests"
    _descriptor(manifests, "tiny_xray", source)
    monkeypatch.setenv("MEDSEC_MANIFESTS", str(manifests))
    s = load("tiny_xray")
    target = Path(os.environ["MEDSEC_DATA"]) / "tiny_xray.npz"
    assert target.read_bytes() == source.read_bytes()
    assert_image_set(s, 17, 1, 32, "chest_xray")
    assert s.name == "tiny_xray"
    source.unlink()  # second load uses the stored copy, no download
    assert load("tiny_xray").checksum == s.checksum


def test_named_descriptor_wrong_md5_removes_file(tmp_path, monkeypatch):
    source = npz(tmp_path / "src" / "remote.npz", {"train": [0, 1] * 3})
    manifests = tmp_path / "manifests"
    _descriptor(manifests, "tiny_xray", source, md5="0" * 32)
    monkeypatch.setenv("MEDSEC_MANIFESTS", str(manifests))
    with pytest.raises(DataError) as caught:
        load("tiny_xray")
    message = str(caught.value)
    assert "MD5" in message and "0" * 32 in message and "\n" not in message
    assert not any(Path(os.environ["MEDSEC_DATA"]).iterdir()), "the bad download must be removed"


def test_named_descriptor_unreachable_url_says_where_to_put_file(tmp_path, monkeypatch):
    manifests = tmp_path / "manifests"
    ghost = tmp_path / "src" / "gone.npz"
    npz(ghost, {"train": [0, 1]})
    _descriptor(manifests, "tiny_xray", ghost)
    ghost.unlink()
    monkeypatch.setenv("MEDSEC_MANIFESTS", str(manifests))
    with pytest.raises(DataError) as caught:
        load("tiny_xray")
    message = str(caught.value)
    target = Path(os.environ["MEDSEC_DATA"]) / "tiny_xray.npz"
    assert "by hand" in message and str(target) in message and "\n" not in message
    assert not any(Path(os.environ["MEDSEC_DATA"]).iterdir())


@pytest.mark.parametrize("modality,channels", [("chest_xray", 1), ("ct", 1), ("histology", 3)])
def test_phantoms(modality, channels, monkeypatch):
    reason = phantoms_available()
    if reason:
        pytest.skip(reason)
    s = load(f"phantom:{modality}?n=30", size=32, seed=3, use_cache=True)
    assert s.is_phantom and s.provenance()["is_phantom"] is True
    assert s.images.dtype == torch.uint8 and tuple(s.images.shape) == (30, channels, 32, 32)
    assert set(s.labels.tolist()) <= {0, 1} and s.modality == modality
    assert_patients_in_one_split(s.patient_ids, s.splits)
    with monkeypatch.context() as patch:  # drawn once, then from the artefact cache
        patch.setattr("medsec_utils.phantoms.make_phantoms", lambda *a, **k: pytest.fail("phantoms drawn again"))
        same = load(f"phantom:{modality}?n=30", size=32, seed=3, use_cache=True)
    assert same.checksum == s.checksum and torch.equal(same.images, s.images)
    assert load(f"phantom:{modality}?n=30", size=32, seed=4).checksum != s.checksum
    x, _ = s.tensors("train")
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1


def test_unknown_phantom():
    with pytest.raises(DataError, match="phantom:chest_xray"):
        load("phantom:mri")


# ----------------------------------------------------------------------------- DICOM through the DATASET layer

def _phi(path: Path) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    values = [str(ds.get("PatientID") or ""), str(ds.get("PatientName") or "")]
    assert all(values), f"{path.name} should carry a PatientID and PatientName"
    return values


@pytest.fixture(scope="module")
def dicom_tree(tmp_path_factory) -> Path:
    """normal/a.dcm, normal/c.dcm (one patient), pneumonia/b.dcm (another): real CR radiographs."""
    pinned_dicom(*RADIOGRAPHS)
    root = tmp_path_factory.mktemp("dcm") / "dicom_tree"
    (root / "normal").mkdir(parents=True)
    (root / "pneumonia").mkdir()
    for name, target in zip(RADIOGRAPHS, ("normal/a.dcm", "normal/c.dcm", "pneumonia/b.dcm")):
        shutil.copy(DICOM_DIR / name, root / target)
    return root


@needs_dicom
def test_dicom_manifest_loads_as_chest_xray(dicom_tree, tmp_path):
    folder = tmp_path / "dicom_set"  # neutral name: the modality comes from the DICOM header (CR)
    rows = [{"path": str(dicom_tree / "normal" / "a.dcm"), "label": 0, "patient_id": "A"},
            {"path": str(dicom_tree / "pneumonia" / "b.dcm"), "label": 1, "patient_id": "B"}]
    s = load(write_manifest(folder, rows))
    assert_image_set(s, 2, 1, 32, "chest_xray")
    assert s.native_sizes.tolist() == [[1955, 1841], [1760, 1760]]


@needs_dicom
def test_dicom_tree_patient_pseudonyms_and_no_phi(dicom_tree):
    s = load(dicom_tree)
    assert_image_set(s, 3, 1, 32, "chest_xray")
    ids = list(s.patient_ids)
    assert all(p.startswith("pt-") for p in ids) and s.patient_ids_given
    assert ids[0] == ids[1] != ids[2]  # RG1_UNCR and RG1_UNCI are one patient
    assert_patients_in_one_split(s.patient_ids, s.splits)
    phi = _phi(dicom_tree / "normal" / "a.dcm") + _phi(dicom_tree / "pneumonia" / "b.dcm")
    provenance = json.dumps(s.provenance())
    report = check(str(dicom_tree), size=32)
    assert "modality  chest_xray" in report
    for value in phi:
        assert not any(value in p for p in ids), "raw PatientID leaked into patient ids"
        assert value not in provenance and value not in report and value not in " ".join(s.notes)
    assert load(dicom_tree).patient_ids.tolist() == ids  # stable for the same data


# ----------------------------------------------------------------------------- 2. patient-level splits

def _cohort(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for p in range(n):
        label = int(rng.random() < 0.35)
        count = int(rng.integers(1, 5))
        ids += [f"P{p:03d}"] * count
        labels += [label] * count if p % 25 else [0] + [1] * (count - 1)  # a few mixed-label patients
    return np.array(ids, dtype=object), np.array(labels)


@pytest.mark.parametrize("seed", [0, 1, 2, 7, 42])
def test_assign_splits_by_patient(seed):
    ids, labels = _cohort(seed=seed)
    splits = assign_splits(ids, labels, seed=seed)
    assert len(splits) == len(ids)
    assert_patients_in_one_split(ids, splits)
    assert np.array_equal(splits, assign_splits(ids, labels, seed=seed))
    per_patient = pd.DataFrame({"p": ids, "s": splits, "y": labels}).groupby("p").agg(s=("s", "first"), y=("y", "max"))
    shares = per_patient["s"].value_counts(normalize=True)
    for name, fraction in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        assert abs(shares[name] - fraction) < 0.03, (name, shares[name])
        assert set(per_patient.loc[per_patient["s"] == name, "y"]) == {0, 1}, f"{name} lacks a class"
    order = np.random.default_rng(99).permutation(len(ids))  # row order does not matter
    assert np.array_equal(assign_splits(ids[order], labels[order], seed=seed), splits[order])


def test_assign_splits_seed_changes_assignment():
    ids, labels = _cohort()
    assert not np.array_equal(assign_splits(ids, labels, seed=0), assign_splits(ids, labels, seed=1))


def test_manifest_without_split_column_splits_per_patient(tmp_path):
    s = load(manifest_set(tmp_path / "cxr_nosplit", patients=30, per_patient=3), size=16)
    assert set(s.splits) == {"train", "val", "test"}
    assert_patients_in_one_split(s.patient_ids, s.splits)
    assert any("splits made per patient (seed 0" in note for note in s.notes)
    other = load(tmp_path / "cxr_nosplit", size=16, seed=5)
    assert_patients_in_one_split(other.patient_ids, other.splits)
    assert not np.array_equal(other.splits, s.splits)


def test_manifest_train_test_only_carves_val_from_train(tmp_path):
    split = {p: "test" if p % 5 == 0 else "train" for p in range(30)}
    s = load(manifest_set(tmp_path / "cxr_tt", patients=30, per_patient=2, split=split), size=16)
    given = np.array([split[int(p[1:])] for p in s.patient_ids])
    assert np.array_equal(s.splits == "test", given == "test")  # test rows untouched
    val = s.splits == "val"
    assert val.any() and (given[val] == "train").all()
    assert_patients_in_one_split(s.patient_ids, s.splits)
    assert any("val carved per patient from train" in note for note in s.notes)


def test_given_splits_with_patient_in_two_splits_is_refused(tmp_path):
    folder = manifest_set(tmp_path / "cxr_leak", split={0: "train", 1: "train", 2: "test", 3: "test"})
    frame = pd.read_csv(folder / "manifest.csv")
    frame.loc[5, "split"] = "train"  # second image of P02
    frame.to_csv(folder / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"patient 'P02' is in splits \['test', 'train'\].*line 6"):
        load(folder)


# ----------------------------------------------------------------------------- 3. bad inputs: one-line errors

def _rows(names_labels):
    return [{"path": n, "label": lab} for n, lab in names_labels]


def _good_pair(folder: Path) -> list[tuple[str, int]]:
    write_image(folder / "a.png", seed=1)
    write_image(folder / "b.png", seed=2)
    return [("a.png", 0), ("b.png", 1)]


def bad_missing_file(root):
    f = root / "cxr_missing"
    write_manifest(f, _rows(_good_pair(f) + [("missing.png", 1)]))
    return str(f), 32, ["missing.png", "not found"]


def bad_unreadable(root):
    f = root / "cxr_text"
    pair = _good_pair(f)
    (f / "notimage.png").write_text("this is not a PNG\n")
    write_manifest(f, _rows(pair + [("notimage.png", 0)]))
    return str(f), 32, ["notimage.png", "unreadable"]


def bad_truncated_jpeg(root):
    f = root / "cxr_trunc"
    pair = _good_pair(f)
    write_image(f / "full.jpg", (64, 64), seed=3)
    blob = (f / "full.jpg").read_bytes()
    (f / "cut.jpg").write_bytes(blob[: len(blob) // 2])
    write_manifest(f, _rows(pair + [("cut.jpg", 1)]))
    return str(f), 32, ["cut.jpg", "truncated"]


def bad_corrupt_dicom(root):
    f = root / "cxr_dcm"
    pair = _good_pair(f)
    (f / "garbage.dcm").write_bytes(np.random.default_rng(5).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    write_manifest(f, _rows(pair + [("garbage.dcm", 1)]))
    return str(f), 32, ["garbage.dcm", "DICOM"]


def bad_label_two(root):
    f = root / "cxr_label2"
    write_manifest(f, _rows(_good_pair(f) + [("a.png", 2)]))
    return str(f / "manifest.csv"), 32, ["manifest.csv line 4", "label '2'"]


def bad_label_text(root):
    f = root / "cxr_labeltext"
    write_manifest(f, _rows([("a.png", 0), ("b.png", "abc")] + _good_pair(f)))
    return str(f), 32, ["manifest.csv line 3", "'abc'"]


def bad_one_class_manifest(root):
    f = root / "cxr_oneclass"
    write_manifest(f, _rows([(n, 0) for n, _ in _good_pair(f)]))
    return str(f), 32, ["manifest.csv", "Pathology (1) has no images"]


def bad_empty_class_folder(root):
    f = tree(root / "xray_tree_empty", {"normal": 0}, per_class=2)
    (f / "pneumonia").mkdir()
    return str(f), 32, [str(f / "pneumonia"), "no images"]


def bad_duplicate_path(root):
    f = root / "cxr_dup"
    write_manifest(f, _rows(_good_pair(f) + [("b.png", 0), ("a.png", 0)]))
    return str(f), 32, ["manifest.csv line 4", "(b.png)", "duplicate"]


def bad_missing_column(root):
    f = root / "cxr_nolabel"
    _good_pair(f)
    (f / "manifest.csv").write_text("path,diagnosis\na.png,0\nb.png,1\n")
    return str(f), 32, ["manifest.csv", "missing column(s) label"]


def bad_tiny_image(root):
    f = root / "cxr_tiny"
    pair = _good_pair(f)
    write_image(f / "tiny.png", (10, 10), seed=4)
    write_manifest(f, _rows(pair + [("tiny.png", 1)]))
    return str(f), 64, ["manifest.csv line 4", "tiny.png", "10x10"]


def bad_nan_pixels(root):
    path = npz(root / "xray_nan.npz", {"train": [0, 1, 0, 1]}, dtype=np.float32)
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["train_images"][2, 5, 5] = np.nan
    np.savez(path, **arrays)
    return str(path), 32, ["xray_nan.npz train_images[2]", "NaN"]


def bad_unknown_option(root):
    f = manifest_set(root / "cxr_opt", patients=2, per_patient=1)
    return f"{f}?colour=red", 32, ["colour", str(f)]


def bad_unknown_split(root):
    f = root / "cxr_split"
    _good_pair(f)
    write_manifest(f, [{"path": "a.png", "label": 0, "split": "train"},
                       {"path": "b.png", "label": 1, "split": "holdout"}])
    return str(f), 32, ["manifest.csv line 3", "'holdout'"]


def bad_unmapped_class_names(root):
    f = tree(root / "xray_odd", {"clear": 0, "opaque": 1}, per_class=1)
    return str(f), 32, [str(f / "classes.yaml"), "class folder"]


def bad_multiclass_npz(root):
    path = npz(root / "xray_multi.npz", {"train": [0, 1, 2]})
    return str(path), 32, ["xray_multi.npz", "[2]"]


def bad_no_such_spec(root):
    return str(root / "does_not_exist"), 32, ["does_not_exist"]


def bad_patient_two_splits(root):
    f = root / "cxr_leak"
    _good_pair(f)
    write_manifest(f, [{"path": "a.png", "label": 0, "patient_id": "P7", "split": "train"},
                       {"path": "b.png", "label": 1, "patient_id": "P7", "split": "test"}])
    return str(f), 32, ["'P7'", "manifest.csv line 2"]


BAD_INPUTS = [v for k, v in sorted(globals().items()) if k.startswith("bad_")]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=lambda f: f.__name__[4:])
def test_bad_input_one_line_error(tmp_path, make):
    spec, size, expected = make(tmp_path)
    with pytest.raises(DataError) as caught:
        load(spec, size=size)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize("make", BAD_INPUTS, ids=lambda f: f.__name__[4:])
def test_bad_input_cli_in_process(tmp_path, make, capsys):
    spec, size, expected = make(tmp_path)
    assert main(["check", spec, "--size", str(size)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and expected[0] in err, err


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Run ``python -m medsec_utils.data check`` on a few specs concurrently (imports cost seconds)."""
    root = tmp_path_factory.mktemp("cli")
    good = manifest_set(root / "cxr_good")
    source = npz(root / "src" / "remote.npz", {"train": [0, 1] * 3})
    _descriptor(root / "manifests", "tiny_xray", source, md5="0" * 32)
    specs = {
        "good": (str(good), "32"),
        "truncated_jpeg": (bad_truncated_jpeg(root)[0], "32"),
        "corrupt_dicom": (bad_corrupt_dicom(root)[0], "32"),
        "named_md5": ("tiny_xray", "32"),
    }
    env = dict(os.environ, MEDSEC_MANIFESTS=str(root / "manifests"), MEDSEC_DATA=str(root / "named"),
               MEDSEC_CACHE=str(root / "cache"))
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "medsec_utils.data", "check", spec, "--size", size], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (spec, size) in specs.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize("case", ["truncated_jpeg", "corrupt_dicom", "named_md5"])
def test_cli_subprocess_bad_input(cli_runs, case):
    code, out, err = cli_runs[case]
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def test_cli_subprocess_good_spec(cli_runs):
    code, out, err = cli_runs["good"]
    assert code == 0, err
    assert "Traceback" not in err
    assert "modality  chest_xray  (1 channel)" in out
    assert "images    8  native size 48x48 to 48x48 px, loaded at 32x32" in out
    assert "patients  4" in out and "checksum  sha256:" in out
    table = [line.split() for line in out.splitlines()]
    assert ["split", "class"] in table and any(row[:2] == ["images", "patients"] for row in table)
    assert any("normal" in row for row in table) and any("pathology" in row for row in table)
    assert any(row and row[0] == "train" for row in table)


# ----------------------------------------------------------------------------- 4. checksum

def _bmp_set(folder: Path) -> Path:
    """Uncompressed BMPs, so that one changed byte is one changed pixel and still decodes."""
    return manifest_set(folder, patients=3, per_patient=2, suffix=".bmp", size=(32, 32))


def test_checksum_tracks_bytes_and_labels_not_size_or_location(tmp_path):
    folder = _bmp_set(tmp_path / "cxr_sum")
    base = load(folder, size=32)
    assert base.checksum.startswith("sha256:") and load(folder, size=32).checksum == base.checksum
    assert load(folder, size=16).checksum == base.checksum
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "cxr_sum")
    assert load(moved, size=32).checksum == base.checksum

    image = folder / "img" / "p01_1.bmp"
    blob = bytearray(image.read_bytes())
    blob[-1] ^= 0x01
    image.write_bytes(bytes(blob))
    changed = load(folder, size=32)
    assert changed.checksum != base.checksum
    shutil.copy(moved / "img" / "p01_1.bmp", image)
    assert load(folder, size=32).checksum == base.checksum

    frame = pd.read_csv(folder / "manifest.csv")
    frame.loc[0, "label"] = 1
    frame.to_csv(folder / "manifest.csv", index=False)
    assert load(folder, size=32).checksum != base.checksum


def test_checksum_npz_tracks_labels(tmp_path):
    a = npz(tmp_path / "a" / "xray.npz", {"train": [0, 1, 0, 1]})
    b = npz(tmp_path / "b" / "xray.npz", {"train": [0, 1, 1, 1]})
    assert load(a).checksum == load(a, size=16).checksum
    assert load(a).checksum != load(b).checksum


# ----------------------------------------------------------------------------- 5. stratified subsample

def _image_set(labels: list[int], splits: list[str]) -> ImageSet:
    n = len(labels)
    return ImageSet(spec="test", name="test", modality="chest_xray", images=torch.zeros((n, 1, 4, 4), dtype=torch.uint8),
                    labels=torch.tensor(labels), patient_ids=np.array([f"p{i}" for i in range(n)]),
                    splits=np.array(splits, dtype=object), checksum="sha256:0", native_sizes=np.full((n, 2), 4))


def test_indices_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.25).astype(int).tolist()
    splits = rng.choice(["train", "val", "test"], 400, p=[0.7, 0.1, 0.2]).tolist()
    s = _image_set(labels, splits)
    train = np.flatnonzero(s.splits == "train")
    share = float(np.mean(np.asarray(labels)[train]))
    for limit in (20, 50, 101):
        chosen = s.indices("train", limit=limit, seed=3)
        assert abs(len(chosen) - limit) <= 1
        assert len(set(chosen)) == len(chosen) and set(chosen) <= set(train)
        assert np.all(np.diff(chosen) > 0)
        assert abs(np.mean(np.asarray(labels)[chosen]) - share) <= 1.0 / limit + 1e-9
        assert np.array_equal(chosen, s.indices("train", limit=limit, seed=3))
    assert not np.array_equal(s.indices("train", 50, seed=0), s.indices("train", 50, seed=1))
    assert np.array_equal(s.indices("train"), train)
    assert np.array_equal(s.indices("train", limit=10_000), train)
    x, y = s.tensors("val", limit=10, seed=0)
    assert x.shape[1:] == (1, 4, 4) and x.dtype == torch.float32 and len(x) == len(y)
    with pytest.raises(ValueError, match="unknown split"):
        s.indices("training")


def test_checksum_tracks_patient_ids(tmp_path):
    folder = _bmp_set(tmp_path / "cxr_pid")
    base = load(folder, size=32)
    frame = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    frame.loc[0, "patient_id"] = "someone-else"
    frame.to_csv(folder / "manifest.csv", index=False)
    assert load(folder, size=32).checksum != base.checksum


def test_missing_file_error_names_the_manifest_line(tmp_path):
    folder = manifest_set(tmp_path / "cxr_line", patients=4)
    (folder / "img" / "p02_1.png").unlink()
    with pytest.raises(DataError, match=r"manifest\.csv line 7 \(img/p02_1\.png\): file not found"):
        load(folder)


def test_empty_split_is_noted_and_refused_when_used(tmp_path):
    folder = manifest_set(tmp_path / "cxr_tiny", patients=4)
    images = load(folder)
    assert any("is empty" in note for note in images.notes)
    empty = next(s for s in ("train", "val", "test") if not (images.splits == s).any())
    with pytest.raises(DataError, match=f"split '{empty}' is empty"):
        images.tensors(empty)


@needs_dicom
def test_dicom_pseudonym_is_not_keyed_by_the_published_checksum(dicom_tree):
    import hmac

    import pydicom

    images = load(dicom_tree)
    for path, pseudonym in zip(sorted(dicom_tree.rglob("*.dcm")), images.patient_ids):
        patient_id = str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)
        guess = hmac.new(images.checksum.encode(), patient_id.encode(), hashlib.sha256).hexdigest()[:16]
        assert guess not in pseudonym


# ----------------------------------------------------------------------------- import structure

PACKAGE = REPO / "medsec_utils"


def _internal_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of ``medsec_utils`` that ``path`` imports anywhere (top level or inside functions)."""
    name = cache.module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name.removeprefix("medsec_utils.") for alias in node.names
                       if alias.name.startswith("medsec_utils.")]
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("medsec_utils")):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                base = node.module.split(".")[1:]
            stem = ".".join(base)
            targets = [f"{stem}.{alias.name}".strip(".") for alias in node.names]
            targets = [t for t in targets if t in modules] or [stem]
        else:
            continue
        found.update(t for t in targets if t in modules)
    return found


def test_no_module_of_the_package_takes_part_in_an_import_cycle():
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {cache.module_name(p) for p in paths} - {""}
    graph = {cache.module_name(p): _internal_imports(p, modules) for p in paths}
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert graph["_io"] >= {"_common", "_dicom"} and "_io" not in graph["_dicom"], "the checker must see lazy imports"


def test_data_error_is_one_class_wherever_it_is_imported():
    from medsec_utils import _dicom, _io

    assert DataError is _io.DataError is _dicom.DataError


def test_a_spec_splits_into_its_base_and_options_keeping_plus_and_blank_values():
    from medsec_utils.data import parse_spec

    assert parse_spec(" scans/ct?patient_regex=^(p\\d+)_a+b&n=40 ") == (
        "scans/ct", {"patient_regex": "^(p\\d+)_a+b", "n": "40"})
    assert parse_spec("scans?modality=") == ("scans", {"modality": ""})
    assert parse_spec("phantom:ct") == ("phantom:ct", {})
    with pytest.raises(DataError, match=r"^scans\?size=3&foo=1: unknown option\(s\) foo, size; known: modality, "
                                        r"window, patient_regex, n$"):
        parse_spec("scans?size=3&foo=1")
    for empty in ("", "   ", None):
        with pytest.raises(DataError, match=r"^dataset spec .* is empty; give a folder, manifest\.csv, \.npz, name "
                                            r"or phantom:MODALITY$"):
            parse_spec(empty)


@pytest.mark.parametrize("name, modality", [
    ("chest_xray", "chest_xray"), ("pneumoniamnist_64", "chest_xray"), ("ChestXray2017", "chest_xray"),
    ("CT-slices", "ct"), ("nccd_lung", "ct"), ("LC25000_subset", "histology"), ("he_stained", "histology"),
    ("my_cxr", "chest_xray"), ("mycxrset", None), ("check", None), ("picture", None), ("ct_and_xray", None),
    ("scans", None)])
def test_a_name_says_its_modality_by_whole_short_words_or_longer_words_anywhere(name, modality):
    """Words of up to 3 letters count only as whole tokens ("he" is not found in "check", "ct" not in
    "picture"); longer ones anywhere in the name; words of two modalities say nothing."""
    from medsec_utils.data import modality_from_name

    assert modality_from_name(name) == modality


def test_a_ct_window_is_two_numbers_in_hounsfield_units():
    from medsec_utils.data import _parse_window

    assert _parse_window("-600,1500", "ct?window=-600,1500") == (-600.0, 1500.0)
    assert _parse_window(" 40 , 400", "s") == (40.0, 400.0)
    assert _parse_window(None, "s") is None and _parse_window("", "s") is None
    for bad in ("-600", "1,2,3", "level,width"):
        with pytest.raises(DataError, match=r"^ct: window must be 'center,width' in HU, e\.g\. window=-600,1500$"):
            _parse_window(bad, "ct")


def test_a_specs_checksum_is_the_loaded_sets_and_a_phantoms_is_the_spec_itself(tmp_path):
    from medsec_utils.data import spec_checksum

    folder = _bmp_set(tmp_path / "cxr_sum")
    assert spec_checksum(str(folder)) == load(folder, size=32).checksum
    assert spec_checksum(f"{folder}?modality=chest_xray") == load(folder, size=32).checksum
    root = tmp_path / "xray_split"
    for layer in ("train", "val", "test"):
        tree(root, {"normal": 0, "pneumonia": 1}, per_class=2, layer=layer, prefix=f"{layer}-")
    by_regex = f"{root}?patient_regex=^([a-z]+-\\d)\\d+_"  # the options reach the source: patient ids differ
    assert spec_checksum(by_regex) == load(by_regex).checksum != spec_checksum(str(root))
    assert spec_checksum("phantom:ct?n=80") == "phantom:ct?n=80"
    assert spec_checksum("phantom:histology") == "phantom:histology"
