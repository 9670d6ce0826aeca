"""Fails safely, parts 4 and 5: no identifier leaves a DICOM, and the same seed gives the same numbers.

Identifier leak: a small CT data set is written as DICOM files (phantom slices, so the classifier has something
to learn) whose headers carry made-up, distinctive identifiers: patient name, patient IDs, birth date,
institution, referring physician, accession number, other patient IDs and a private tag. Chapters 1 and 2 run
on it in the smoke profile through ``scripts/compendium.py run``, as users run them, with a fresh artefact cache
(chapter 2 with one budgeted and one unbudgeted attack at its headline budget: see CHAPTER_2_SUBSET). The book
is then built from that run with ``scripts/compendium.py book --run``. The builder needs every chapter of a
run, so the run folder handed to it holds this run's chapters 1 and 2 beside copies of the committed reference
chapters 3 to 5: the pages of chapters 1 and 2 are built by the book's own staging and Jupyter Book build, not
a stand-in. Every file under the run folder, the cache and the built book is searched, and so is every file of
the repository that changed during the runs: raw bytes, case-insensitively, and inside containers (PNG tEXt,
zTXt and iTXt chunks, zip members such as torch ``.pt`` files, gzip, and base64 PNG images embedded in
notebooks and pages), for each identifier in the forms it could take. None may appear. A positive control runs
the same search over a copy of one of the DICOM files, bare and hidden in each kind of container, and must find
every identifier, so the check cannot pass by looking in the wrong place.

Same seed: chapter 1 of the leak run (seed 0, fresh cache) is compared with a second seed-0 run and a seed-1
run on the same files, each with its own fresh cache (with a shared cache the second run would read the first
one's trained model and prove nothing). The ``results`` records of ``metrics.json`` must be identical for the
same seed, field by field, except the wall-clock ``train_seconds``, and so must the trained classifier's
weights; with seed 1 some result fields must differ.

Both are recorded for the book's reliability page (``_faults.record``) with the counts measured.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _faults import record
from _paths import REPO
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medsec_utils.phantoms import make_phantoms

REFERENCE = REPO / "book" / "reference"
# Chapter 2 attacks with one budgeted and one unbudgeted attack at the headline budget only: every attack's
# records, tables and figures go through the same reporting code, and the full set (4 attacks x 5 budgets)
# takes over ten minutes on a loaded 2-core machine.
CHAPTER_2_SUBSET = ("attacks=[fgsm,cw]", f"epsilons=[{2 / 255!r}]")
PER_CLASS = 24  # slices per class: enough for per-patient train/val/test splits with both classes in each

# The planted header values, by DICOM keyword, and the forms searched for each (lower-cased at search time).
# Every patient's ID starts with PATIENT_ID_PREFIX, so searching the prefix finds any of them, whole or cut.
PATIENT_ID_PREFIX = "QXV7731"
PLANTED = {
    "PatientName": "Leakwell^Ottilie",
    "PatientID": f"{PATIENT_ID_PREFIX}-000 ... {PATIENT_ID_PREFIX}-NNN (one per patient)",
    "PatientBirthDate": "19640229",
    "InstitutionName": "Quillfeather Memorial Infirmary",
    "ReferringPhysicianName": "Brambleton^Ignatius",
    "AccessionNumber": "ACC58213977",
    "OtherPatientIDs": "OPI-ZK4418",
    "private tag (0011,1001)": "Vexmoor private memo",
}
FORMS = {
    "PatientName": ("Leakwell^Ottilie", "Leakwell", "Ottilie"),
    "PatientID": (PATIENT_ID_PREFIX,),
    "PatientBirthDate": ("19640229", "1964-02-29"),
    "InstitutionName": ("Quillfeather Memorial Infirmary", "Quillfeather"),
    "ReferringPhysicianName": ("Brambleton^Ignatius", "Brambleton", "Ignatius"),
    "AccessionNumber": ("ACC58213977", "58213977"),
    "OtherPatientIDs": ("OPI-ZK4418", "ZK4418"),
    "private tag (0011,1001)": ("Vexmoor private memo", "Vexmoor"),
}
NEEDLES = {form.lower().encode(): keyword for keyword, forms in FORMS.items() for form in forms}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE64_PNG = re.compile(rb"iVBORw0KGgo[A-Za-z0-9+/=]*(?:\\n[A-Za-z0-9+/=]+)*")  # also JSON strings split by \n
MAX_DEPTH = 4  # containers inside containers searched this deep


# ---------------------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------------------

def _png_text_chunks(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """The text of a PNG's tEXt, zTXt and iTXt chunks, decompressed: matplotlib and PIL write metadata there."""
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(blob):
        length = int.from_bytes(blob[position:position + 4], "big")
        kind, data = blob[position + 4:position + 8], blob[position + 8:position + 8 + length]
        position += 12 + length
        keyword, _, rest = data.partition(b"\0")
        name = keyword.decode("latin-1")
        if kind == b"tEXt":
            yield name, rest
        elif kind == b"zTXt":
            yield name, zlib.decompress(rest[1:])
        elif kind == b"iTXt":
            compressed, tail = rest[0], rest[2:]
            _language, _, tail = tail.partition(b"\0")
            translated, _, text = tail.partition(b"\0")
            yield name, translated + b"\0" + (zlib.decompress(text) if compressed else text)
        elif kind == b"IEND":
            return


def _layers(where: str, blob: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """``blob`` and, recursively, whatever it contains: PNG text chunks, zip members, gzip, base64 PNGs."""
    yield where, blob
    if depth >= MAX_DEPTH:
        return
    if blob.startswith(PNG_SIGNATURE):
        for key, text in _png_text_chunks(blob):
            yield from _layers(f"{where} [PNG text {key!r}]", text, depth + 1)
    if blob.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            for member in archive.namelist():
                yield from _layers(f"{where} [zip member {member}]", archive.read(member), depth + 1)
    if blob.startswith(b"\x1f\x8b"):
        yield from _layers(f"{where} [gunzipped]", gzip.decompress(blob), depth + 1)
    for i, match in enumerate(BASE64_PNG.finditer(blob)):
        image = base64.b64decode(match.group(0).replace(b"\\n", b"") + b"==", validate=False)
        yield from _layers(f"{where} [base64 PNG {i}]", image, depth + 1)


def _kind(path: Path) -> str:
    """What a file counts as in the coverage figures."""
    if path.name == "metrics.json":
        return "metrics.json"
    return path.suffix.lower() or "(no suffix)"


def search(files: list[Path]) -> tuple[list[tuple[str, str, str]], Counter, int]:
    """Search ``files`` for every form of every planted identifier.

    Returns the hits ``(where, keyword, form)``, the files searched by kind and the number of layers searched
    (files plus everything unpacked from them).
    """
    hits, kinds, layers = [], Counter(), 0
    for path in files:
        kinds[_kind(path)] += 1
        for where, blob in _layers(str(path), path.read_bytes()):
            layers += 1
            lowered = blob.lower()
            hits += [(where, keyword, needle.decode()) for needle, keyword in NEEDLES.items() if needle in lowered]
    return hits, kinds, layers


def files_under(*roots: Path) -> list[Path]:
    """Every regular file under ``roots``, hidden ones included."""
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def repository_files() -> dict[Path, float]:
    """The repository's files (outside .git, .venv and caches) with their modification times."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache"}
    found = {}
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [s for s in subfolders if s not in skip]
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                found[path] = path.stat().st_mtime
    return found


# ---------------------------------------------------------------------------------------------------------------
# The data set and the runs
# ---------------------------------------------------------------------------------------------------------------

def write_dicom_set(root: Path) -> list[Path]:
    """Write 2 x PER_CLASS single-frame CT slices as DICOM files under ``root/normal`` and ``root/pathology``.

    Pixels are phantom CT slices stored as Hounsfield units that the lung window maps back onto the phantom;
    a phantom patient's slices share one PatientID. Every header carries the identifiers of PLANTED.
    """
    phantoms = make_phantoms("ct", 5 * PER_CLASS, size=64, seed=7)
    chosen = {0: [], 1: []}
    for i, label in enumerate(phantoms.labels.tolist()):
        if len(chosen[label]) < PER_CLASS:
            chosen[label].append(i)
    assert all(len(indices) == PER_CLASS for indices in chosen.values()), "too few phantoms of one class"
    patients = sorted({phantoms.patient_ids[i] for indices in chosen.values() for i in indices})
    written = []
    for label, indices in chosen.items():
        folder = root / ("normal", "pathology")[label]
        folder.mkdir(parents=True)
        for n, i in enumerate(indices):
            uids = [generate_uid(entropy_srcs=["medsec leak test", str(label), str(n), part]) for part in "ise"]
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = uids[0]
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = uids[1:]  # deterministic: the same files every session
            ds.Modality = "CT"
            ds.PatientName = PLANTED["PatientName"]
            ds.PatientID = f"{PATIENT_ID_PREFIX}-{patients.index(phantoms.patient_ids[i]):03d}"
            for keyword in ("PatientBirthDate", "InstitutionName", "ReferringPhysicianName", "AccessionNumber",
                            "OtherPatientIDs"):
                setattr(ds, keyword, PLANTED[keyword])
            ds.private_block(0x0011, "MEDSEC LEAK TEST", create=True).add_new(0x01, "LO",
                                                                              PLANTED["private tag (0011,1001)"])
            ds.Rows = ds.Columns = 64
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope = -1350, 1  # lung window (-600, 1500): HU -1350 .. 150
            hounsfield = np.round(phantoms.images[i].astype(np.float64) / 255 * 1500).astype(np.int16)
            ds.PixelData = hounsfield.tobytes()
            path = folder / f"slice_{n:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written


def compendium(cache: Path, *args: str) -> None:
    """Run ``scripts/compendium.py`` with ``cache`` as the artefact cache; fail with the end of its output."""
    env = {**os.environ, "MEDSEC_CACHE": str(cache)}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "compendium.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"compendium.py {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}"


def run_chapter(cache: Path, out: Path, dataset: Path, chapter: str, *params: str) -> Path:
    """Run one chapter in the smoke profile on ``dataset`` into ``out`` with ``cache``, as a user would."""
    args = ["run", "--profile", "smoke", "--out", str(out), "--dataset", str(dataset), "--chapter", chapter]
    compendium(cache, *args, *[arg for param in params for arg in ("--param", param)])
    return out


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory) -> Path:
    """A folder of DICOM slices (class folders ``normal/`` and ``pathology/``) carrying made-up identifiers."""
    root = tmp_path_factory.mktemp("dicom") / "scans"
    write_dicom_set(root)
    return root


@pytest.fixture(scope="module")
def leak_run(tmp_path_factory, dicom_set) -> dict[str, Path | list[Path]]:
    """Chapters 1 and 2 (smoke) on the DICOM set with a fresh cache, and the book built from that run."""
    base = tmp_path_factory.mktemp("leak_run")
    cache, out, book = base / "cache", base / "run", base / "book"
    before = repository_files()
    run_chapter(cache, out, dicom_set, "01", "seed=0")
    run_chapter(cache, out, dicom_set, "02", "seed=0", *CHAPTER_2_SUBSET)
    for chapter in sorted(p.name for p in REFERENCE.iterdir() if p.is_dir()):  # the builder wants every chapter
        shutil.copytree(out / chapter if (out / chapter).is_dir() else REFERENCE / chapter, base / "book_run" / chapter)
    compendium(cache, "book", "--run", str(base / "book_run"), "--out", str(book))
    this_file = Path(__file__).resolve()
    changed = [p for p, mtime in repository_files().items() if before.get(p) != mtime and p != this_file]
    return {"cache": cache, "out": out, "book": book, "repository_changes": changed}


# ---------------------------------------------------------------------------------------------------------------
# Identifier leak
# ---------------------------------------------------------------------------------------------------------------

def test_the_search_finds_every_identifier_in_a_dicom_file_bare_and_inside_each_container(dicom_set, tmp_path):
    """Positive control: the search that must find nothing in the outputs finds every planted identifier in a
    copy of one input file, and finds them again when the file is hidden in each container it unpacks."""
    source = next(dicom_set.rglob("*.dcm"))
    content = source.read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    shutil.copy2(source, scratch / "copy.dcm")
    (scratch / "copy.dcm.gz").write_bytes(gzip.compress(content))
    with zipfile.ZipFile(scratch / "model.pt", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", content)
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", content.decode("latin-1"), zip=True)  # zTXt: compressed, invisible to a raw search
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, "PNG", pnginfo=info)
    (scratch / "figure.png").write_bytes(buffer.getvalue())
    notebook = {"cells": [{"cell_type": "code", "outputs": [{"data": {
        "image/png": base64.b64encode(buffer.getvalue()).decode()}}]}]}
    (scratch / "page.ipynb").write_text(json.dumps(notebook))

    for path in files_under(scratch):
        hits, kinds, _ = search([path])
        assert {keyword for _, keyword, _ in hits} == set(PLANTED), f"{path.name}: found only {hits}"
        assert kinds == Counter({_kind(path): 1})
        if path.name != "copy.dcm":  # the container hides the bytes: they are found only once unpacked
            assert all("[" in where for where, _, _ in hits), f"{path.name}: found without unpacking"
    assert not search([REFERENCE / "01_classifiers" / "metrics.json"])[0]  # and it does not find them everywhere


@pytest.mark.slow
def test_no_identifier_from_the_dicom_headers_reaches_any_file_the_runs_wrote(leak_run, dicom_set):
    """Chapters 1 and 2 on the DICOM set, and the book built from them: no identifier in any file, at any depth."""
    assert len(list(dicom_set.rglob("*.dcm"))) == 2 * PER_CLASS
    in_inputs = {keyword for _, keyword, _ in search(files_under(dicom_set))[0]}
    assert in_inputs == set(PLANTED), "the input files do not carry every identifier"
    html = leak_run["book"] / "_build" / "html"
    for chapter in ("01_classifiers", "02_attacks"):
        page = (html / "book" / "reference" / chapter / f"{chapter}.html").read_text()
        assert "Provenance of this run" in page and "scans" in page, f"{chapter}: the page is not this run's"
    files = files_under(leak_run["out"], leak_run["cache"], leak_run["book"]) + leak_run["repository_changes"]
    files = [path for path in files if path.is_file()]  # another process may have removed a repository file
    hits, kinds, layers = search(files)
    assert not hits, "identifiers found:\n" + "\n".join(f"{keyword} as {form!r} in {where}"
                                                        for where, keyword, form in hits[:20])
    assert len(files) >= 100, f"only {len(files)} files searched"
    for kind in (".pt", ".png", ".ipynb", "metrics.json", ".html"):
        assert kinds[kind] >= 1, f"no {kind} file searched: {dict(kinds)}"
    assert len(list(leak_run["out"].rglob("metrics.json"))) == 2
    assert kinds[".pt"] >= 2 and layers > len(files)  # decoded images and models, each unpacked
    counts = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    record("identifier leak",
           f"DICOM headers carrying a made-up patient name, patient IDs, birth date, institution, referring "
           f"physician, accession number, other patient IDs and a private tag; chapters 1 and 2 run on them "
           f"(smoke profile, chapter 2 with FGSM and Carlini-Wagner at 2/255) and the book built from that run",
           f"no identifier in any of {len(files)} files of the run folder, the cache, the built book and the "
           f"repository files changed meanwhile ({counts}; {layers} layers searched after unpacking zip, gzip, "
           f"PNG text chunks and embedded images); the same search finds all {len(in_inputs)} in the input files",
           "none found", files_searched=len(files), identifiers_planted=len(PLANTED),
           identifiers_found=len({keyword for _, keyword, _ in hits}),
           found_in_positive_control=in_inputs == set(PLANTED))


# ---------------------------------------------------------------------------------------------------------------
# Same seed, same numbers
# ---------------------------------------------------------------------------------------------------------------

WALL_CLOCK_FIELDS = {"train_seconds"}  # the only field of a chapter-1 record that measures time, not results


def results(out: Path) -> list[dict]:
    """The ``results`` records of a chapter-1 run, wall-clock fields removed, values as canonical JSON text."""
    records = json.loads((out / "01_classifiers" / "metrics.json").read_text())["results"]
    return [{key: json.dumps(value, sort_keys=True) for key, value in row.items() if key not in WALL_CLOCK_FIELDS}
            for row in records]


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory, leak_run, dicom_set) -> dict[str, Path]:
    """Chapter 1 on the DICOM set: the leak run (seed 0), a second seed-0 run and a seed-1 run, each with its own
    fresh cache, so no run reads another's trained models."""
    base = tmp_path_factory.mktemp("seed_runs")
    second = run_chapter(base / "cache_seed0", base / "seed0", dicom_set, "01", "seed=0")
    other = run_chapter(base / "cache_seed1", base / "seed1", dicom_set, "01", "seed=1")
    return {"first": leak_run["out"], "second": second, "other": other,
            "first_cache": leak_run["cache"], "second_cache": base / "cache_seed0"}


def classifier_weights(cache: Path) -> tuple[dict, dict]:
    """The first classifier trained into ``cache``: its key parts, code digests left out, and its state dict.

    Code digests are left out because the library may be edited between two runs of a long test session; the
    first is the one chapter 1 trained (chapter 2 retrains only if the code changed in between).
    """
    import torch

    markers = sorted((cache / "classifier").glob("*/artefact.json"), key=lambda path: path.stat().st_mtime)
    assert markers, f"no classifier was trained into {cache}"
    parts = {key: value for key, value in json.loads(markers[0].read_text())["parts"].items() if key != "code"}
    return parts, torch.load(markers[0].parent / "model.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_the_same_seed_gives_identical_results_and_another_seed_different_ones(seed_runs):
    """Two chapter-1 runs with seed 0 and separate caches agree on every result field; seed 1 changes some."""
    first, second, other = (results(seed_runs[name]) for name in ("first", "second", "other"))
    assert first and len(first) == len(second)
    fields = sorted(first[0])
    assert {"test_accuracy", "test_auc", "test_auc_ci", "n_train", "data_checksum"} <= set(fields)
    differing = [(i, key) for i, (a, b) in enumerate(zip(first, second)) for key in sorted(set(a) | set(b))
                 if a.get(key) != b.get(key)]
    assert not differing, f"seed 0 twice, results differ in {differing}"
    parts, weights = classifier_weights(seed_runs["second_cache"])  # trained afresh in its own cache
    first_parts, first_weights = classifier_weights(seed_runs["first_cache"])
    assert parts == first_parts and parts["seed"] == 0 and weights.keys() == first_weights.keys()
    unequal = [name for name in weights if not (weights[name] == first_weights[name]).all()]
    assert not unequal, f"seed 0 twice, trained weights differ in {unequal[:5]}"
    changed = sorted({key for a, b in zip(first, other) for key in fields if a.get(key) != b.get(key)})
    assert len(other) != len(first) or changed, "seed 1 gave exactly the results of seed 0"
    compared = len(first) * len(fields)
    record("same seed", "chapter 1 (smoke, DICOM CT slices) run twice with seed 0, each run with its own empty cache",
           f"all {compared} result values of {len(first)} record(s) identical ({', '.join(fields)}; "
           f"wall-clock train_seconds left out), and so are all {len(weights)} tensors of the trained classifier",
           "identical", records_compared=len(first), values_compared=compared, tensors_compared=len(weights))
    record("same seed", "chapter 1 (smoke, DICOM CT slices) run with seed 1 beside the seed-0 run",
           f"{len(changed)} of {len(fields)} result fields differ: {', '.join(changed)}", "different",
           records_compared=len(first), fields_differing=len(changed))
