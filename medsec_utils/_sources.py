"""What a DATASET spec names, before decoding (private to ``data``): manifest CSV, ImageFolder tree or MedMNIST
``.npz``, read into one row per image; then its checksum, DICOM pseudonyms and the decoded pixels."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from tqdm.auto import tqdm

from ._common import DataError, listed, plural
from ._downloads import fetch, manifests_dir, read_descriptor
from ._io import SCALINGS, Decoded, check_finite, decode_image, is_dicom, is_image_file, resize, to_channels

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("path", "label")
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, "patient_id", "split", "source", "label_name")  # label_name: for people only
SEPARATORS = {",": "commas", ";": "semicolons", "\t": "tabs"}  # what Excel and PACS tools write, by locale
SYSTEM_FOLDERS = {"__macosx", "$recycle.bin", "system volume information"}  # besides hidden (.name) folders
NORMAL_NAMES = {"normal", "benign", "negative", "healthy", "lung_n", "colon_n", "no_finding", "control"}
PATHOLOGY_NAMES = {"pneumonia", "abnormal", "pathology", "malignant", "tumor", "tumour", "cancer", "positive",
                   "disease", "lung_aca", "colon_aca", "opacity", "nodule", "covid"}
KNOWN_CAVEATS = {  # by a word of the manifest's ``source`` column: caveats to repeat wherever results appear
    "LC25000": "LC25000 holds 250 originals per class, each augmented 20x: near-duplicates cross any split, "
               "so accuracy is optimistic",
    "IQ-OTH/NCCD": "IQ-OTH/NCCD gives no patient ids: slices of one patient cross splits, so accuracy is optimistic",
    "Kermany": "Kermany chest X-rays: classes imbalanced about 1:3, read balanced accuracy and AUC",
}
DICOM_PATIENT = "<dicom>"  # placeholder: replaced by a pseudonym of the header's PatientID
CHUNK_ROWS = 64  # most rows per task of a parallel decode, and fewest rows worth starting workers for
_worker_stop: Any = None  # in a decoding worker: the pool's event, set when the parent stops taking results


@dataclass
class Source:
    """What a spec resolved to before decoding: one row per image."""

    name: str
    rows: pd.DataFrame  # path (Path, or index for npz), key (relative id), label, patient_id, split, where
    modality: str | None
    notes: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] | None = None  # npz: split -> image array; rows hold the index in 'path'


def resolve(base: str, options: dict[str, str]) -> Source:
    """Read what ``base`` names: a manifest CSV, a folder (with ``manifest.csv``, or an ImageFolder tree), an
    ``.npz`` or the name of a descriptor in ``data_manifests/``."""
    path = Path(base).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return _from_manifest(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _from_npz(path, {})
    if path.is_dir() and (path / "manifest.csv").is_file():
        return _from_manifest(path / "manifest.csv")
    if path.is_dir():
        return _from_tree(path, options)
    if (manifests_dir() / f"{base}.yaml").is_file():
        return _from_named(base)
    raise DataError(f"{base}: no such file, folder or data manifest; give a folder, manifest.csv, .npz, "
                    f"a name from {manifests_dir()} or phantom:MODALITY")


def _from_manifest(csv_path: Path) -> Source:
    frame, notes = _read_manifest_csv(csv_path)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; a manifest needs path,label "
                        "(patient_id, split optional)")
    for column in ("patient_id", "split"):
        if column not in frame.columns:
            frame[column] = ""
    frame["where"] = [f"{csv_path} line {i + 2} ({p})" for i, p in zip(frame.index, frame["path"])]
    raw_sources = frame["source"] if "source" in frame.columns else []
    frame["label"] = [_parse_label(value, where) for value, where in zip(frame["label"], frame["where"])]
    _check_splits(frame)
    duplicated = frame["path"].duplicated(keep="first")
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise DataError(f"{row['where']}: duplicate path (listed twice); keep one row per image")
    frame["key"] = frame["path"]
    frame["path"] = [csv_path.parent / p for p in frame["path"]]
    from_header = (frame["patient_id"] == "") & np.array([is_dicom(p) for p in frame["path"]], dtype=bool)
    frame.loc[from_header, "patient_id"] = DICOM_PATIENT
    frame = frame[["path", "key", "label", "patient_id", "split", "where"]].reset_index(drop=True)
    sources = " ".join(set(raw_sources))
    notes += [caveat for word, caveat in KNOWN_CAVEATS.items() if word in sources]
    return Source(name=csv_path.parent.name, rows=_require_classes(frame, csv_path), modality=None, notes=notes)


def _read_manifest_csv(csv_path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The manifest's rows as stripped strings, indexed by data line (0 = line 2), with notes on its dialect.

    Spreadsheet exports differ from plain CSV: a UTF-8 byte-order mark, CRLF line ends, semicolons or tabs
    as separators (locales with decimal commas), padded or capitalised headers, extra columns and empty rows.
    All are read; the notes say which were found. Anything else that is not UTF-8 CSV is refused.
    """
    raw = csv_path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{csv_path}: not UTF-8 text (byte {err.start} is {raw[err.start]:#04x}); save it as "
                        "UTF-8 CSV (Excel: 'CSV UTF-8')") from None
    header = next((line for line in text.splitlines() if line.strip()), "")
    separator = _separator(header)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{csv_path}: not a readable CSV ({str(err).splitlines()[0]}); save it as UTF-8 CSV") from None
    frame.columns = [str(column).strip().lower() for column in frame.columns]
    repeated = sorted({column for column in frame.columns if list(frame.columns).count(column) > 1})
    if repeated:
        raise DataError(f"{csv_path}: column(s) {', '.join(repeated)} appear twice; keep one of each")
    frame = frame.apply(lambda column: column.str.strip())
    empty = (frame == "").all(axis=1)
    dialect = [what for found, what in ((raw.startswith(b"\xef\xbb\xbf"), "a byte-order mark"),
                                       (b"\r\n" in raw, "Windows (CRLF) line ends"),
                                       (separator != ",", SEPARATORS[separator] + " between columns")) if found]
    ignored = [column for column in frame.columns if column not in KNOWN_COLUMNS]
    notes = [f"{csv_path.name} has {', '.join(dialect)}: read as such"] if dialect else []
    notes += [f"{csv_path.name}: ignored column(s) {', '.join(ignored)}"] if ignored else []
    notes += [f"{csv_path.name}: skipped {plural(int(empty.sum()), 'empty row')}"] if empty.any() else []
    return frame[~empty], notes


def _separator(header: str) -> str:
    """The separator that splits the header into columns including path and label (comma if none does)."""
    for separator in SEPARATORS:
        names = {name.strip().strip("\"'").lower() for name in header.split(separator)}
        if set(REQUIRED_COLUMNS) <= names:
            return separator
    return ","


def _parse_label(value: str, where: str) -> int:
    value = str(value).strip()
    if value not in ("0", "1", "0.0", "1.0"):
        raise DataError(f"{where}: label {value!r} is not 0 or 1; use 0 = Normal, 1 = Pathology")
    return int(float(value))


def _check_splits(frame: pd.DataFrame) -> None:
    split = frame["split"].str.strip().str.lower()
    bad = ~split.isin(("", *SPLITS))
    if bad.any():
        row = frame[bad].iloc[0]
        raise DataError(f"{row['where']}: split {row['split']!r} is not train, val or test; fix or leave it empty")
    if (split == "").any() and (split != "").any():
        row = frame[split == ""].iloc[0]
        raise DataError(f"{row['where']}: empty split while other rows have one; fill it or empty the column")
    frame["split"] = split


def _require_classes(frame: pd.DataFrame, origin: Path) -> pd.DataFrame:
    for label, name in ((0, "Normal (0)"), (1, "Pathology (1)")):
        if not (frame["label"] == label).any():
            raise DataError(f"{origin}: class {name} has no images; a binary task needs both classes")
    return frame


def _from_tree(root: Path, options: dict[str, str]) -> Source:
    """One row per image of an ImageFolder tree; hidden and system folders and non-image files are left out
    and named in the notes, images outside a class folder are refused (they have no label)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not _is_system(p))
    split_names = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
    if folders and all(p.name.lower() in split_names for p in folders):
        layers = [(split_names[p.name.lower()], p) for p in folders]
    else:
        layers = [("", root)]
    class_dirs = [(split, c) for split, layer in layers for c in sorted(layer.iterdir())
                  if c.is_dir() and not _is_system(c)]
    if not class_dirs:
        raise _no_class_folders(root, [layer for _, layer in layers])
    class_map = _class_map(root, {c.name for _, c in class_dirs})
    merged = _merged_classes(class_map)
    regex = re.compile(options["patient_regex"]) if options.get("patient_regex") else None
    outside = [entry for top in sorted({root, *(layer for _, layer in layers)}) for entry in sorted(top.iterdir())]
    skipped_files = [f for f in outside if f.is_file() and f.name != "classes.yaml"]
    skipped_folders = [d for d in outside if d.is_dir() and _is_system(d)]
    unlabelled = [f for f in skipped_files if is_image_file(f) and not _is_system(f)]
    if unlabelled:
        raise DataError(f"{unlabelled[0]}: image outside the class folders, so it has no label; move it into a "
                        "class folder or delete it")
    records = []
    for split, class_dir in class_dirs:
        files, other_files, other_folders = _walk(class_dir)
        skipped_files += other_files
        skipped_folders += other_folders
        if not files:
            raise DataError(f"{class_dir}: class folder has no images (.png/.jpg/.tif/.dcm); add images "
                            "or remove the folder")
        records += [{"path": f, "key": f.relative_to(root).as_posix(), "label": class_map[class_dir.name],
                     "patient_id": _patient_from_name(f, regex), "split": split, "where": str(f)} for f in files]
    notes = [merged] if merged else []
    if skipped_files:
        what = "that is not an image" if len(skipped_files) == 1 else "that are not images"
        notes.append(f"ignored {plural(len(skipped_files), 'file')} {what}: {_names(skipped_files)}")
    if skipped_folders:
        notes.append(f"ignored {plural(len(skipped_folders), 'hidden or system folder')}: {_names(skipped_folders)}")
    return Source(name=root.name, rows=_require_classes(pd.DataFrame(records), root), modality=None, notes=notes)


def _is_system(path: Path) -> bool:
    """Hidden (``.DS_Store``, ``._x.png``, ``.ipynb_checkpoints``) or made by an OS (``__MACOSX``), not data."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FOLDERS


def _walk(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Image files under ``folder`` (sorted), the other files, and the hidden or system folders not entered."""
    images, others, skipped = [], [], []
    for top, dirs, files in os.walk(folder):
        skipped += [Path(top) / d for d in dirs if _is_system(Path(d))]
        dirs[:] = sorted(d for d in dirs if not _is_system(Path(d)))
        for name in files:
            path = Path(top) / name
            (images if is_image_file(path) and not _is_system(path) else others).append(path)
    return sorted(images), others, skipped


def _names(paths: list[Path], shown: int = 5) -> str:
    """Distinct file or folder names, sorted, the first ``shown`` of them (and how many more)."""
    return listed(sorted({p.name for p in paths}), shown)


def _no_class_folders(root: Path, layers: list[Path]) -> DataError:
    """The refusal of a folder with neither manifest.csv nor class sub-folders, saying what it holds."""
    images = [f for layer in layers for f in layer.iterdir() if f.is_file() and is_image_file(f)]
    found = f"{plural(len(images), 'image')} but no class sub-folders" if images else "no class sub-folders, no images"
    where = root if layers == [root] else layers[0]
    return DataError(f"{where}: {found}; put each class's images in its own sub-folder (e.g. normal/ and "
                     f"pneumonia/) or add {root / 'manifest.csv'} with columns path,label")


def _merged_classes(class_map: dict[str, int]) -> str:
    """One line saying how class folders were mapped, when they are not one Normal and one Pathology folder:
    ``classes: NORMAL -> Normal; COVID, PNEUMONIA -> Pathology`` (merged classes must not pass unsaid)."""
    names = [sorted(name for name, label in class_map.items() if label == value) for value in (0, 1)]
    if all(len(group) == 1 for group in names):
        return ""
    return "classes: " + "; ".join(f"{', '.join(group)} -> {label}" for group, label in zip(names, ("Normal", "Pathology"))
                                   if group)


def _class_map(root: Path, names: set[str]) -> dict[str, int]:
    classes_file = root / "classes.yaml"
    if classes_file.is_file():
        try:
            mapping = yaml.safe_load(classes_file.read_text()) or {}
        except yaml.YAMLError as err:
            raise DataError(f"{classes_file}: not valid YAML ({str(err).splitlines()[0]}); write one "
                            "'folder: 0' or 'folder: 1' per line") from None
        if not isinstance(mapping, dict) or set(mapping.values()) - {0, 1}:
            raise DataError(f"{classes_file}: must map each class folder to 0 (Normal) or 1 (Pathology), "
                            "e.g. {normal: 0, abnormal: 1}")
        unknown = sorted(names - set(mapping))
        if unknown:
            raise DataError(f"{classes_file}: class folder(s) {', '.join(unknown)} not mapped; add them or move "
                            "them out of the tree")
        return {str(k): int(v) for k, v in mapping.items()}
    mapping = {}
    for name in names:
        key = name.lower()
        if key in NORMAL_NAMES or key in PATHOLOGY_NAMES:
            mapping[name] = 0 if key in NORMAL_NAMES else 1
        else:
            raise DataError(f"{root}: cannot tell whether class folder {name!r} is Normal or Pathology; add "
                            f"{classes_file} mapping every class folder to 0 or 1")
    return mapping


def _patient_from_name(path: Path, regex: re.Pattern[str] | None) -> str:
    if is_dicom(path):
        return DICOM_PATIENT
    if regex is None:
        return ""
    match = regex.search(path.name)
    if not match:
        raise DataError(f"{path}: file name does not match patient_regex {regex.pattern!r}; fix the regex")
    return match.group(1) if match.groups() else match.group(0)


def _from_npz(path: Path, descriptor: dict[str, Any]) -> Source:
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz ({str(err).splitlines()[0]}); download it again") from None
    splits = [s for s in SPLITS if f"{s}_images" in keys]
    if "train" not in splits or any(f"{s}_labels" not in keys for s in splits):
        raise DataError(f"{path}: expected MedMNIST arrays train_images/train_labels (val_, test_ optional); "
                        f"found {', '.join(sorted(keys)) or 'none'}")
    label_map = {int(k): int(v) for k, v in (descriptor.get("label_map") or {0: 0, 1: 1}).items()}
    arrays, records, dropped = {}, [], 0
    for split in splits:
        labels = np.asarray(archive[f"{split}_labels"]).reshape(-1)
        images = archive[f"{split}_images"]
        if len(images) != len(labels):
            raise DataError(f"{path}: {split}_images has {len(images)} images but {split}_labels {len(labels)} labels")
        unknown = sorted(set(np.unique(labels).tolist()) - set(label_map))
        if unknown and not descriptor.get("drop_other_labels"):
            raise DataError(f"{path}: {split}_labels holds {unknown}, not 0/1; map them with label_map in a "
                            f"data manifest (see {manifests_dir() / 'pathmnist_64.yaml'})")
        keep = np.flatnonzero(np.isin(labels, list(label_map)))
        dropped += len(labels) - len(keep)
        arrays[split] = images
        records += [{"path": int(i), "key": f"{split}/{i}", "label": label_map[int(labels[i])], "patient_id": "",
                     "split": split,
                     "where": f"{path} {split}_images[{i}]"} for i in keep]
    notes = [f"{dropped} images of other classes left out, as the data manifest says"] if dropped else []
    frame = pd.DataFrame(records)
    name = descriptor.get("name") or path.stem
    return Source(name=name, rows=_require_classes(frame, path), modality=descriptor.get("modality"), notes=notes,
                   arrays=arrays)


def _from_named(name: str) -> Source:
    return _from_npz(fetch(name), read_descriptor(name))


def pseudonymise_dicom_patients(source: Source, key: bytes) -> None:
    """Replace DICOM placeholders by keyed hashes of PatientID; the raw id never leaves the reader.

    The key is derived from the files' bytes but is not the published checksum, so a pseudonym cannot
    be reversed by trying candidate ids without the data itself (which holds the ids anyway).
    """
    marked = source.rows["patient_id"] == DICOM_PATIENT
    if not marked.any():
        return
    from ._dicom import dicom_patient_key

    source.rows.loc[marked, "patient_id"] = [dicom_patient_key(Path(p), key) or "" for p in source.rows.loc[marked, "path"]]


def source_checksum(source: Source) -> tuple[str, bytes]:
    """SHA-256 over the file list, labels, patient ids, given splits and every file's bytes.

    Also returns a second digest of the bytes alone, never published, to key DICOM pseudonyms.
    """
    digest, secret = hashlib.sha256(), hashlib.sha256(b"medsec pseudonym key|")
    if source.arrays is not None:
        for split, array in sorted(source.arrays.items()):
            digest.update(split.encode() + np.ascontiguousarray(array).tobytes())
    for row in source.rows.itertuples():
        digest.update(f"{row.key}|{row.label}|{row.patient_id}|{row.split}|".encode())
        if source.arrays is None and Path(row.path).is_file():
            content = hashlib.sha256(Path(row.path).read_bytes()).digest()
            digest.update(content)
            secret.update(content)
    return f"sha256:{digest.hexdigest()}", secret.digest()


def dicom_modalities(source: Source) -> dict[str, list[Path]]:
    """The DICOM files of ``source`` per value of their Modality tag (0008,0060), upper case; files without
    the tag are left out."""
    if source.arrays is not None:
        return {}
    from ._dicom import dicom_modality_code

    found: dict[str, list[Path]] = {}
    for path in map(Path, source.rows["path"]):
        code = dicom_modality_code(path) if path.is_file() and is_dicom(path) else ""
        if code:
            found.setdefault(code, []).append(path)
    return found


def decode_all(source: Source, size: int, channels: int, window: tuple[float, float] | None, progress: bool,
               workers: int | None = None) -> dict[str, torch.Tensor]:
    """Decode, resize and quantise every image, in ``workers`` processes (None: one per usable core for DICOM,
    whose JPEG 2000 pixel data decodes at about 5 img/s per core; this process for other files, which decode at
    about 1,400 img/s, so that starting the workers, about 3 s, costs about what they save on a few thousand;
    measured by ``benchmarks/bench_training_and_loading.py``; pass ``workers`` to choose).

    Image files are decoded by a process pool in chunks of rows put back in row order, so the result is the
    same for any ``workers`` and a bad file raises the same DataError as in one process. Sources of fewer than
    :data:`CHUNK_ROWS` rows, and ``.npz`` arrays (decoded already), are decoded in this process: starting
    workers would cost more than it saves.

    Returns:
        ``images`` uint8 ``(N, C, size, size)``, ``sizes`` int64 ``(N, 2)`` native height and width,
        ``scaling`` int8 ``(N,)`` index into ``_io.SCALINGS`` and ``alpha`` bool ``(N,)``: what
        :func:`decode_notes` reports.
    """
    if workers is None and source.arrays is None and any(is_dicom(Path(path)) for path in source.rows["path"]):
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = 1 if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (or None: one per core for DICOM), not {workers}")
    with tqdm(total=len(source.rows), desc=f"decode {source.name}", disable=not progress, mininterval=2) as bar:
        if workers > 1 and source.arrays is None and len(source.rows) >= CHUNK_ROWS:
            try:
                decoded = _decode_in_pool(source, size, channels, window, workers, bar.update)
            except BrokenProcessPool as error:
                print(f"medsec data: decoding in {workers} processes failed ({error}); decoding in this one. A "
                      "script that loads data needs an `if __name__ == \"__main__\":` guard, or pass workers=1",
                      file=sys.stderr, flush=True)
                bar.reset()
                decoded = _decode_rows(source, size, channels, window, bar.update)
        else:
            decoded = _decode_rows(source, size, channels, window, bar.update)
    return {name: torch.from_numpy(array) for name, array in decoded.items()}


def _decode_in_pool(source: Source, size: int, channels: int, window: tuple[float, float] | None, workers: int,
                    advance: Callable[[int], object]) -> dict[str, np.ndarray]:
    """:func:`_decode_rows` over chunks of rows in ``workers`` processes, put back in row order.

    Each worker gets four chunks or more, so that all finish at nearly the same time. Workers fork from a
    forkserver that imports this module once per session (not from this process, whose torch threads make
    fork unsafe). On an error or Ctrl-C here, chunks not started are cancelled, the workers stop after their
    current image and are waited for, so none is left behind.
    """
    rows = source.rows
    decoded = _empty_arrays(len(rows), size, channels)
    step = min(CHUNK_ROWS, -(-len(rows) // (4 * workers)))
    starts = range(0, len(rows), step)
    chunks = (Source(source.name, rows.iloc[start:start + step], source.modality) for start in starts)
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["__main__", __name__])
    stop = context.Event()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(Image.MAX_IMAGE_PIXELS, stop))
    try:
        for start, chunk in zip(starts, pool.map(_decode_rows, chunks, repeat(size), repeat(channels), repeat(window))):
            for name, array in chunk.items():
                decoded[name][start:start + len(array)] = array
            advance(len(chunk["sizes"]))
    except DataError as error:
        raise error from None  # the worker's traceback would only bury the one line naming the file
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return decoded


def _start_worker(pixel_limit: int | None, stop: Any) -> None:
    """Set up a decoding worker: the parent's decompression-bomb limit (users raise it to read large trusted
    images) and its stop event. Ctrl-C is left to the parent, which sets the event; if the parent dies (killed,
    out of memory) the worker exits rather than wait for work forever."""
    global _worker_stop
    Image.MAX_IMAGE_PIXELS, _worker_stop = pixel_limit, stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def exit_with_parent() -> None:
        multiprocessing.parent_process().join()
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def _decode_rows(source: Source, size: int, channels: int, window: tuple[float, float] | None,
                 advance: Callable[[int], object] | None = None) -> dict[str, np.ndarray]:
    """The arrays of :func:`decode_all` for the rows of ``source``, calling ``advance(1)`` after each."""
    decoded = _empty_arrays(len(source.rows), size, channels)
    for i, row in enumerate(source.rows.itertuples()):
        if _worker_stop is not None and _worker_stop.is_set():
            break
        image = _read_row(source, row, channels, window)
        decoded["sizes"][i] = image.pixels.shape[:2]
        decoded["scaling"][i], decoded["alpha"][i] = SCALINGS.index(image.scaling), image.alpha
        array = resize(image.pixels, size, row.where)
        decoded["images"][i] = np.round(array * 255).astype(np.uint8).transpose(2, 0, 1)
        if advance is not None:
            advance(1)
    return decoded


def _empty_arrays(count: int, size: int, channels: int) -> dict[str, np.ndarray]:
    return {"images": np.empty((count, channels, size, size), np.uint8), "sizes": np.zeros((count, 2), np.int64),
            "scaling": np.zeros(count, np.int8), "alpha": np.zeros(count, bool)}


def decode_notes(decoded: dict[str, torch.Tensor]) -> list[str]:
    """What the notes must say about how :func:`decode_all` scaled images other than 8-bit ones."""
    count = {name: int((decoded["scaling"] == i).sum()) for i, name in enumerate(SCALINGS)}
    notes = []
    if count["16-bit"]:
        sixteen = decoded["images"][decoded["scaling"] == SCALINGS.index("16-bit")]
        dark = int((sixteen.flatten(1).amax(dim=1) <= 16).sum())
        notes.append(f"16-bit images ({count['16-bit']}) scaled by 65535, as 8-bit ones by 255 (each by its full "
                     "range), so an export gives the same grey levels at either bit depth"
                     + (f"; nearly black as their values use 12 bits or fewer: {dark} (re-export those at full "
                        "range or as 8-bit)" if dark else ""))
    if count["min-max"]:
        notes.append(f"32-bit or floating-point images ({count['min-max']}) scaled from darkest to brightest "
                     "pixel, each on its own (such files have no fixed range)")
    if decoded["alpha"].any():
        notes.append(f"images with an alpha channel ({int(decoded['alpha'].sum())}) composited onto black "
                     "(transparent pixels read as black)")
    return notes


def _read_row(source: Source, row: Any, channels: int, window: tuple[float, float] | None) -> Decoded:
    if source.arrays is None:
        if not Path(row.path).is_file():
            raise DataError(f"{row.where}: file not found at {row.path}; fix the path or restore the file")
        return decode_image(Path(row.path), channels=channels, window=window)
    raw = np.asarray(source.arrays[row.split][row.path])
    array = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float32)
    check_finite(array, row.where)
    if array.min() < 0 or array.max() > 1:
        raise DataError(f"{row.where}: float pixels outside [0, 1]; store uint8 images or scale them to [0, 1]")
    return Decoded(to_channels(array, channels, row.where), "8-bit" if raw.dtype == np.uint8 else "float", False)
