"""Bad input, broadly: what uncleaned hospital exports hold is read correctly (and the check's notes say how)
or refused in one line naming the file and the fix; never a traceback, never a silent drop.

One parametrised test per family of inputs. A refused input is checked as users meet it, by running
``python -m medsec_utils.data check SPEC`` in a subprocess (all of them at once, in the ``refusals`` fixture,
as each start costs seconds of imports); a read input through :func:`load_dataset` and :func:`check`.
Every input is recorded with what the user saw, for the book's reliability page.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from medsec_utils import profiles, training
from medsec_utils.data import DataError, ImageSet, check, load_dataset
from medsec_utils.reporting import classifiers

from _faults import record
from _paths import REPO
from test_data import _isolated_env, write_image, write_manifest  # noqa: F401 (autouse: temporary caches)
from test_dicom import CT_SMALL, raw

CLI_AT_ONCE = 2  # CLI subprocesses at a time, one per core (each spends about 2 CPU-seconds importing torch)
SMALL_PIL_LIMIT = 10_000  # pixels: stands in for Pillow's ~89 million, so no huge file is written


@dataclass(frozen=True)
class Case:
    """One bad input. ``build(root)`` writes it under ``root`` and returns the spec.

    A refused input names ``culprit`` (a path relative to ``root``) and ``fix`` in its one line; a read
    input's ``verify(images, report)`` asserts the result and returns the report line or note the user sees.
    """

    name: str
    fault: str
    build: Callable[[Path], str]
    culprit: str = ""
    fix: str = ""
    verify: Callable[[ImageSet, str], str] | None = None
    size: int = 32
    pil_limit: int | None = None

    def __str__(self) -> str:
        return self.name


# ----------------------------------------------------------------------------- writers

def noise(seed: int, shape: tuple[int, ...] = (48, 48), high: int = 256, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def class_tree(root: Path, names: tuple[str, str] = ("normal", "pneumonia"), per_class: int = 3,
               suffixes: tuple[str, ...] = (".png",)) -> Path:
    """``root/<class>/<class><k><suffix>``: ``per_class`` noise images per class, cycling through ``suffixes``."""
    for c, name in enumerate(names):
        for k in range(per_class):
            write_image(root / name / f"{name}{k}{suffixes[k % len(suffixes)]}", seed=10 * c + k)
    return root


def manifest_folder(root: Path, csv: bytes, images: dict[str, np.ndarray] | None = None) -> Path:
    """``root/manifest.csv`` with the exact bytes ``csv`` beside the images (default a.png, b.png)."""
    for name, array in (images or {"a.png": noise(1), "b.png": noise(2)}).items():
        save(root / name, array)
    (root / "manifest.csv").write_bytes(csv)
    return root


def dicom(path: Path, patient: str, **header) -> Path:
    """A copy of pydicom's CT_small.dcm with its own PatientID and the ``header`` changes (None deletes)."""
    ds = raw(CT_SMALL)
    ds.PatientID = patient
    for keyword, value in header.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_pair(root: Path, first: dict, second: dict | None = None) -> Path:
    """``root/manifest.csv`` over a.dcm (label 0, header changes ``first``) and b.dcm (label 1, ``second``)."""
    dicom(root / "a.dcm", "P1", **first)
    dicom(root / "b.dcm", "P2", **(second or {}))
    write_manifest(root, [{"path": "a.dcm", "label": 0}, {"path": "b.dcm", "label": 1}])
    return root


def with_syntax(path: Path, syntax: str, encapsulated: bool = False) -> Path:
    """Relabel ``path``'s transfer syntax (the pixels stay uncompressed, wrapped in one fragment if asked)."""
    ds = raw(path)
    if encapsulated:
        ds.PixelData = encapsulate([ds.PixelData])
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- what a read case asserts

def report_line(report: str, start: str) -> str:
    """The one line of ``report`` starting with ``start``."""
    found = [line for line in report.splitlines() if line.startswith(start)]
    assert len(found) == 1, report
    return found[0]


def note(report: str, text: str) -> str:
    """The report's note containing ``text``."""
    found = [line for line in report.splitlines() if line.startswith("note: ") and text in line]
    assert len(found) == 1, f"no note with {text!r} in:\n{report}"
    return found[0]


def reads(n: int, labels: list[int] | None = None) -> Callable[[ImageSet, str], str]:
    """``n`` one-channel images (labels in order, if given), nothing dropped; the user sees the report's
    images line."""
    def verify(images: ImageSet, report: str) -> str:
        assert tuple(images.images.shape[:2]) == (n, 1)
        if labels is not None:
            assert images.labels.tolist() == labels
        return report_line(report, f"images    {n} ")
    return verify


def notes(n: int, *texts: str, labels: list[int] | None = None) -> Callable[[ImageSet, str], str]:
    """As :func:`reads`, and the report has one note holding each of ``texts``; the user sees those notes."""
    def verify(images: ImageSet, report: str) -> str:
        reads(n, labels)(images, report)
        return " | ".join(note(report, text) for text in texts)
    return verify


# ----------------------------------------------------------------------------- folders

def flat_folder(root):
    for k in range(4):
        write_image(root / "xray_flat" / f"img{k}.png", seed=k)
    return str(root / "xray_flat")


def empty_folder(root):
    (root / "xray_empty").mkdir()
    return str(root / "xray_empty")


def split_folders_without_classes(root):
    for split in ("train", "test"):
        for k in range(2):
            write_image(root / "xray_split" / split / f"img{k}.png", seed=k)
    return str(root / "xray_split")


def image_beside_class_folders(root):
    class_tree(root / "xray_loose")
    write_image(root / "xray_loose" / "overview.png", seed=99)
    return str(root / "xray_loose")


def stray_files(root):
    folder = class_tree(root / "xray_stray")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "normal" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    (folder / "pneumonia" / "notes.txt").write_text("reviewed, two cases unclear\n")
    return str(folder)


def system_folders(root):
    folder = class_tree(root / "xray_mac")
    apple_double = b"\0\5\26\7\0\2\0\0Mac OS X        "
    (folder / "__MACOSX" / "normal").mkdir(parents=True)
    (folder / "__MACOSX" / "normal" / "._normal0.png").write_bytes(apple_double)
    (folder / "normal" / "._normal0.png").write_bytes(apple_double)
    write_image(folder / "normal" / ".ipynb_checkpoints" / "normal0-checkpoint.png", seed=0)
    return str(folder)


def broken_classes_yaml(root):
    folder = class_tree(root / "xray_yaml", names=("clear", "opaque"))
    (folder / "classes.yaml").write_text("clear: 0\n  opaque: [1\n")
    return str(folder)


def upper_case_class_folders(root):
    return str(class_tree(root / "xray_kermany", names=("NORMAL", "PNEUMONIA")))


FOLDERS = [
    Case("flat_folder", "folder of images with no class sub-folders", flat_folder, "xray_flat", "own sub-folder"),
    Case("empty_folder", "empty folder", empty_folder, "xray_empty", "manifest.csv"),
    Case("split_folders_without_classes", "train/ and test/ folders holding images but no class folders",
         split_folders_without_classes, "xray_split/test", "own sub-folder"),
    Case("image_beside_class_folders", "an image beside the class folders (no label)", image_beside_class_folders,
         "xray_loose/overview.png", "move it into a class folder"),
    Case("broken_classes_yaml", "classes.yaml that is not valid YAML", broken_classes_yaml, "xray_yaml/classes.yaml",
         "'folder: 0' or 'folder: 1' per line"),
    Case("stray_files", "class folders with .DS_Store, Thumbs.db and notes.txt", stray_files,
         verify=notes(6, "ignored 3 files that are not images: .DS_Store, Thumbs.db, notes.txt",
                      labels=[0] * 3 + [1] * 3)),
    Case("system_folders", "__MACOSX/, .ipynb_checkpoints/ with an image copy and a ._ AppleDouble file",
         system_folders,
         verify=notes(6, "ignored 2 hidden or system folders: .ipynb_checkpoints, __MACOSX",
                      "ignored 1 file that is not an image: ._normal0.png")),
    Case("upper_case_class_folders", "class folders NORMAL/ and PNEUMONIA/", upper_case_class_folders,
         verify=reads(6, [0] * 3 + [1] * 3)),
]


# ----------------------------------------------------------------------------- file names

def upper_case_suffixes(root):
    return str(class_tree(root / "xray_upper", suffixes=(".PNG", ".JPG", ".TIFF", ".Jpeg", ".BMP", ".TIF")))


def upper_case_manifest_paths(root):
    return str(manifest_folder(root / "cxr_upper", b"path,label\nA.PNG,0\nB.JPG,1\n",
                               {"A.PNG": noise(1), "B.JPG": noise(2)}))


def upper_case_dicom_suffix(root):
    dicom(root / "ct_upper" / "normal" / "A.DCM", "P1")
    dicom(root / "ct_upper" / "pneumonia" / "B.DICOM", "P2")
    return str(root / "ct_upper")


def pacs_export_without_suffixes(root):
    folder = root / "ct_pacs"
    for c, name in enumerate(("normal", "pneumonia")):
        for k in range(2):
            dicom(folder / name / f"IM{k:04d}", f"P{c}{k}")
            dicom(folder / name / f"1.2.840.113619.2.55.{c}.{k}", f"Q{c}{k}")
    (folder / "normal" / "DICOMDIR").write_bytes(Path(get_testdata_file("DICOMDIR")).read_bytes())
    return str(folder)


FILE_NAMES = [
    Case("upper_case_suffixes", "image files named .PNG, .JPG, .TIFF, .Jpeg, .BMP, .TIF", upper_case_suffixes,
         verify=reads(6, [0] * 3 + [1] * 3)),
    Case("upper_case_manifest_paths", "manifest listing A.PNG and B.JPG", upper_case_manifest_paths,
         verify=reads(2, [0, 1])),
    Case("upper_case_dicom_suffix", "DICOM files named .DCM and .DICOM", upper_case_dicom_suffix,
         verify=notes(2, "modality ct from the DICOM Modality tag (CT) of 2 files")),
    Case("pacs_export_without_suffixes", "PACS export: DICOM files named IM0000 or by UID, and a DICOMDIR",
         pacs_export_without_suffixes,
         verify=notes(8, "ignored 1 file that is not an image: DICOMDIR", labels=[0] * 4 + [1] * 4)),
]


# ----------------------------------------------------------------------------- pixel formats

SIXTEEN = noise(3, high=65536, dtype=np.uint16)


def sixteen_and_eight_bit(root):
    eight = np.round(SIXTEEN / 257).astype(np.uint8)
    return str(manifest_folder(root / "cxr_depths", b"path,label\nsixteen.png,0\neight.png,1\n",
                               {"sixteen.png": SIXTEEN, "eight.png": eight}))


def same_pixels_at_both_depths(images: ImageSet, report: str) -> str:
    difference = (images.images[0].int() - images.images[1].int()).abs().max()
    assert int(difference) <= 1 and float(images.images[0].float().std()) > 50
    return note(report, "16-bit images (1) scaled by 65535, as 8-bit ones by 255")


def twelve_bit_in_sixteen(root):
    twelve = noise(4, high=4096, dtype=np.uint16)
    return str(manifest_folder(root / "cxr_12bit", b"path,label\ntwelve.png,0\nb.png,1\n",
                               {"twelve.png": twelve, "b.png": noise(2)}))


def transparent_rgba(root):
    opaque_right_half = np.where(np.arange(48) < 24, 0, 255).astype(np.uint8)[None, :].repeat(48, 0)
    rgba = np.dstack([noise(5, (48, 48, 3)), opaque_right_half])
    return str(manifest_folder(root / "cxr_rgba", b"path,label\nrgba.png,0\nrgb.png,1\n",
                               {"rgba.png": rgba, "rgb.png": rgba[..., :3].copy()}))


def transparent_reads_black(images: ImageSet, report: str) -> str:
    with_alpha, without = images.images[0, 0], images.images[1, 0]
    assert int(with_alpha[:, :24].max()) == 0 and torch.equal(with_alpha[:, 24:], without[:, 24:])
    return note(report, "images with an alpha channel (1) composited onto black")


def float_tiff(root):
    hounsfield = noise(6, high=2000, dtype=np.float32) - 1000
    return str(manifest_folder(root / "cxr_float", b"path,label\nhu.tif,0\nb.png,1\n",
                               {"hu.tif": hounsfield, "b.png": noise(2)}))


def multi_page_tiff(root):
    folder = manifest_folder(root / "cxr_pages", b"path,label\nstack.tif,0\nb.png,1\n", {"b.png": noise(2)})
    pages = [Image.fromarray(noise(k)) for k in range(3)]
    pages[0].save(folder / "stack.tif", save_all=True, append_images=pages[1:])
    return str(folder)


def large_image(root, side: tuple[int, int], name: str):
    gradient = np.linspace(0, 255, side[0], dtype=np.float32)[None, :].repeat(side[1], 0).astype(np.uint8)
    return str(manifest_folder(root / name, b"path,label\nscan.png,0\nb.png,1\n",
                               {"scan.png": gradient, "b.png": noise(2)}))


PIXELS = [
    Case("sixteen_and_eight_bit", "a 16-bit PNG and its 8-bit version in one data set", sixteen_and_eight_bit,
         verify=same_pixels_at_both_depths, size=48),
    Case("twelve_bit_in_sixteen", "a 16-bit PNG holding 12-bit values (0-4095)", twelve_bit_in_sixteen,
         verify=notes(2, "nearly black as their values use 12 bits or fewer: 1")),
    Case("transparent_rgba", "RGBA PNG, left half transparent", transparent_rgba, verify=transparent_reads_black,
         size=48),
    Case("float_tiff", "32-bit floating-point TIFF in Hounsfield units", float_tiff,
         verify=notes(2, "32-bit or floating-point images (1) scaled from darkest to brightest pixel")),
    Case("multi_page_tiff", "multi-page TIFF (3 pages)", multi_page_tiff, "cxr_pages/stack.tif",
         "export single 2-D images"),
    Case("large_image_within_limit", "4000x3000 px image (12 megapixels)",
         lambda root: large_image(root, (4000, 3000), "cxr_large_ok"),
         verify=lambda images, report: report_line(report, "images    2  native size 48x48 to 4000x3000 px")),
    Case("image_over_pixel_limit", f"120x100 px image over a pixel limit lowered to {SMALL_PIL_LIMIT:,}",
         lambda root: large_image(root, (120, 100), "cxr_large"), "cxr_large/scan.png", "downscale it",
         pil_limit=SMALL_PIL_LIMIT),
    Case("image_over_twice_the_pixel_limit", f"200x200 px image over twice a limit lowered to {SMALL_PIL_LIMIT:,} "
         "(Pillow's own decompression-bomb error)", lambda root: large_image(root, (200, 200), "cxr_huge"),
         "cxr_huge/scan.png", "downscale it", pil_limit=SMALL_PIL_LIMIT),
]


# ----------------------------------------------------------------------------- manifests

MANIFESTS = [
    Case("byte_order_mark", "manifest.csv saved with a UTF-8 byte-order mark",
         lambda root: str(manifest_folder(root / "cxr_bom", b"\xef\xbb\xbfpath,label\na.png,0\nb.png,1\n")),
         verify=notes(2, "manifest.csv has a byte-order mark: read as such", labels=[0, 1])),
    Case("crlf_line_ends", "manifest.csv with Windows CRLF line ends",
         lambda root: str(manifest_folder(root / "cxr_crlf", b"path,label\r\na.png,0\r\nb.png,1\r\n")),
         verify=notes(2, "manifest.csv has Windows (CRLF) line ends: read as such", labels=[0, 1])),
    Case("semicolons", "manifest.csv separated by semicolons (Excel in a decimal-comma locale)",
         lambda root: str(manifest_folder(root / "cxr_semicolon", b"path;label\na.png;0\nb.png;1\n")),
         verify=notes(2, "manifest.csv has semicolons between columns: read as such", labels=[0, 1])),
    Case("tabs", "manifest.csv separated by tabs",
         lambda root: str(manifest_folder(root / "cxr_tabs", b"path\tlabel\na.png\t0\nb.png\t1\n")),
         verify=notes(2, "manifest.csv has tabs between columns: read as such", labels=[0, 1])),
    Case("extra_columns", "manifest.csv with extra columns age and diagnosis",
         lambda root: str(manifest_folder(root / "cxr_extra",
                                          b"path,label,age,diagnosis\na.png,0,4,none\nb.png,1,7,RLL\n")),
         verify=notes(2, "manifest.csv: ignored column(s) age, diagnosis", labels=[0, 1])),
    Case("excel_export", "Excel export: byte-order mark, CRLF, semicolons, padded capitalised headers, "
         "an extra column and empty rows",
         lambda root: str(manifest_folder(root / "cxr_excel", b"\xef\xbb\xbf Path ; Label ;Comment\r\na.png;0;\r\n"
                                          b"b.png ; 1 ;ok\r\n;;\r\n;;\r\n")),
         verify=notes(2, "manifest.csv has a byte-order mark, Windows (CRLF) line ends, semicolons between columns",
                      "manifest.csv: ignored column(s) comment", "manifest.csv: skipped 2 empty rows", labels=[0, 1])),
    Case("latin1", "manifest.csv in Windows-1252 (a path with an accent)",
         lambda root: str(manifest_folder(root / "cxr_latin1", "path,label\nrésumé.png,0\nb.png,1\n".encode("cp1252"),
                                          {"résumé.png": noise(1), "b.png": noise(2)})),
         "cxr_latin1/manifest.csv", "save it as UTF-8 CSV"),
    Case("utf16", "manifest saved by Excel as 'Unicode text' (UTF-16, tabs)",
         lambda root: str(manifest_folder(root / "cxr_utf16",
                                          "path\tlabel\r\na.png\t0\r\nb.png\t1\r\n".encode("utf-16"))),
         "cxr_utf16/manifest.csv", "save it as UTF-8 CSV"),
    Case("repeated_column", "manifest.csv with columns label and Label",
         lambda root: str(manifest_folder(root / "cxr_twice", b"path,label,Label\na.png,0,0\nb.png,1,1\n")),
         "cxr_twice/manifest.csv", "keep one of each"),
]


# ----------------------------------------------------------------------------- DICOM

def unknown_syntax(root):
    folder = dicom_pair(root / "ct_unknown_syntax", {})
    with_syntax(folder / "a.dcm", "1.2.3.4.5.6.7")
    return str(folder)


def video_syntax(root):
    folder = dicom_pair(root / "ct_hevc", {})
    with_syntax(folder / "b.dcm", uid.HEVCMP51, encapsulated=True)
    return str(folder)


def deflated_syntax(root):
    folder = dicom_pair(root / "ct_deflated", {})
    with_syntax(folder / "a.dcm", uid.DeflatedExplicitVRLittleEndian)
    return str(folder)


DICOM = [
    Case("unknown_transfer_syntax", "DICOM file with an unknown transfer syntax UID 1.2.3.4.5.6.7", unknown_syntax,
         "ct_unknown_syntax/a.dcm", "convert it to an uncompressed transfer syntax"),
    Case("video_transfer_syntax", "DICOM file in HEVC/H.265 video transfer syntax (no decoder)", video_syntax,
         "ct_hevc/b.dcm", "convert it to an uncompressed transfer syntax"),
    Case("no_pixel_data", "DICOM file without Pixel Data (e.g. a report or presentation state)",
         lambda root: str(dicom_pair(root / "ct_no_pixels", {"PixelData": None})), "ct_no_pixels/a.dcm",
         "export the image itself or remove it"),
    Case("deflated_transfer_syntax", "DICOM file in Deflated Explicit VR Little Endian", deflated_syntax,
         verify=reads(2, [0, 1])),
]


# ----------------------------------------------------------------------------- modality

MODALITY = [
    Case("modality_from_dicom_tag", "neutral folder name, DICOM Modality CT",
         lambda root: str(dicom_pair(root / "export_2024", {})),
         verify=notes(2, "modality ct from the DICOM Modality tag (CT) of 2 files")),
    Case("modality_unmodelled", "neutral folder name, DICOM Modality MR",
         lambda root: str(dicom_pair(root / "export_mr", {"Modality": "MR"}, {"Modality": "MR"})), "export_mr/a.dcm",
         "append ?modality=chest_xray, ct or histology to the spec"),
    Case("modality_stated_for_unmodelled", "DICOM Modality MR with ?modality=ct in the spec",
         lambda root: str(dicom_pair(root / "export_mr_ct", {"Modality": "MR"}, {"Modality": "MR"})) + "?modality=ct",
         verify=reads(2, [0, 1])),
    Case("modalities_mixed", "DICOM files of Modality CT and CR in one data set",
         lambda root: str(dicom_pair(root / "export_mixed", {"Modality": "CR"})), "export_mixed/a.dcm",
         "keep one modality per data set"),
    Case("modality_unknown", "neutral folder name, PNG images (no DICOM tag)",
         lambda root: str(manifest_folder(root / "export_png", b"path,label\na.png,0\nb.png,1\n")), "export_png",
         "append ?modality=chest_xray, ct or histology to the spec"),
]

FAMILIES = {"folders": FOLDERS, "file names": FILE_NAMES, "pixels": PIXELS, "manifests": MANIFESTS, "dicom": DICOM,
            "modality": MODALITY}
REFUSED = [case for cases in FAMILIES.values() for case in cases if case.verify is None]


# ----------------------------------------------------------------------------- running them

def check_command(case: Case, spec: str) -> list[str]:
    """``python -m medsec_utils.data check SPEC``; with ``pil_limit``, the same module run after lowering
    Pillow's pixel limit (the one change a test needs to stand in for a huge file)."""
    if case.pil_limit is None:
        return [sys.executable, "-m", "medsec_utils.data", "check", spec, "--size", str(case.size)]
    code = (f"import runpy, sys; from PIL import Image; Image.MAX_IMAGE_PIXELS = {case.pil_limit}; "
            f"sys.argv = ['medsec_utils.data', 'check', {spec!r}, '--size', '{case.size}']; "
            "runpy.run_module('medsec_utils.data', run_name='__main__')")
    return [sys.executable, "-c", code]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every refused case built and checked by the CLI in a subprocess, a few at a time."""
    root = tmp_path_factory.mktemp("refused")
    env = dict(os.environ, MEDSEC_CACHE=str(root / ".cache"), MEDSEC_DATA=str(root / ".named"))
    commands = {case.name: check_command(case, case.build(root)) for case in REFUSED}

    def run(name: str) -> tuple[str, subprocess.CompletedProcess]:
        return name, subprocess.run(commands[name], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(CLI_AT_ONCE) as pool:
        return {name: (root, done) for name, done in pool.map(run, commands)}


def verify_case(family: str, case: Case, tmp_path: Path, refusals) -> None:
    """Assert the case is read as its ``verify`` says, or refused in one line naming the file and the fix;
    record what the user saw."""
    if case.verify is None:
        root, done = refusals[case.name]
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert "Traceback" not in done.stderr and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert str(root / case.culprit) in lines[0] and case.fix in lines[0], lines[0]
        record("bad input", f"{family}: {case.fault}", lines[0], "refused")
        return
    spec = case.build(tmp_path)
    images = load_dataset(spec, size=case.size, use_cache=False, progress=False)
    report = check(spec, size=case.size)
    record("bad input", f"{family}: {case.fault}", case.verify(images, report), "read")


FAMILIES = {"folders": FOLDERS, "file names": FILE_NAMES, "pixels": PIXELS, "manifests": MANIFESTS,
            "dicom": DICOM, "modality": MODALITY}


@pytest.mark.parametrize(("family", "case"), [(family, case) for family, cases in FAMILIES.items() for case in cases],
                         ids=lambda value: str(value).replace(" ", "_"))
def test_each_input_is_read_with_a_note_or_refused_in_one_line(family, case, tmp_path, refusals):
    verify_case(family, case, tmp_path, refusals)


@pytest.mark.parametrize("per_class", [5, 2], ids=["10_images", "4_images"])
def test_small_data_set_in_chapter_one(per_class, tmp_path):
    """Chapter 1's example figure and classifier on a tiny set: 10 images work, 4 are refused in one line
    stating the minimum before any training."""
    root = class_tree(tmp_path / "xray_small", per_class=per_class)
    images = load_dataset(str(root), size=32, use_cache=False, progress=False)
    figure = classifiers.plot_examples([images], per_class=4)
    shown = sum(1 for ax in figure.axes if ax.images)
    plt.close(figure)
    test_labels = images.labels[images.splits == "test"]
    assert shown == sum(min(4, int((test_labels == label).sum())) for label in (0, 1))
    settings = profiles.resolve_profile("smoke", epochs=1, image_size=32)
    fault = f"chapter 1 (example figure, classifier) on {2 * per_class} images"
    cpu = torch.device("cpu")
    if per_class >= 3:
        model, history, _ = training.classifier_for(images, settings, seed=0, device=cpu, arch="resnet10t",
                                                    progress=False)
        report, _ = training.test_report(model, images, settings, seed=0, device=cpu)
        assert len(history) == 1 and report["n"] == 2 and report["confusion_matrix"] != [[0, 0], [0, 0]]
        record("bad input", fault, f"figure with {shown} test images; classifier trained, tested on {report['n']}",
               "read")
        return
    with pytest.raises(DataError) as caught:
        training.classifier_for(images, settings, seed=0, device=cpu, arch="resnet10t", progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(root) in message and "at least 3 patients per class" in message
    assert not (Path(os.environ["MEDSEC_CACHE"]) / "classifier").exists(), "refused before training began"
    record("bad input", fault, message, "refused")
