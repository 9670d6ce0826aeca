"""DATASET specs to image tensors, labels (0 = Normal, 1 = Pathology), patient ids and splits.

A spec is one string, optionally followed by ``?key=value&...`` options (``modality``, ``window``
as ``center,width`` in HU for DICOM CT, ``patient_regex`` to read patient ids from file names,
``n`` images for phantoms):

- ``phantom:chest_xray``, ``phantom:ct``, ``phantom:histology``: the built-in phantoms;
- a folder with ``manifest.csv``, or the CSV itself (columns ``path, label, patient_id, split``);
- an ImageFolder tree: one folder per class, optionally under ``train/ val/ test/``; labels from
  ``classes.yaml`` or from obvious class names (normal, pneumonia, ...);
- a MedMNIST ``.npz`` (``train_images``, ``train_labels``, ...);
- the name of a descriptor in ``data_manifests/`` (e.g. ``pneumoniamnist_64``), downloaded once.

Image files may be PNG/JPEG/TIFF or single-frame DICOM. Bad input raises :class:`DataError` with one
line naming the file or row and the fix. Run ``python -m medsec_utils.data check SPEC`` to see it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from . import cache
from ._io import DICOM_SUFFIXES, IMAGE_SUFFIXES, DataError, check_finite, read_image, resize, to_channels

__all__ = ["DataError", "ImageSet", "load_dataset", "assign_splits", "fetch", "deidentify_dicom", "MODALITIES"]

CHANNELS = {"chest_xray": 1, "ct": 1, "histology": 3}
MODALITIES = tuple(CHANNELS)
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
REQUIRED_COLUMNS = ("path", "label")
MANIFESTS_DIR = Path(os.environ.get("MEDSEC_MANIFESTS") or Path(__file__).resolve().parents[1] / "data_manifests")
DATA_ENV = "MEDSEC_DATA"
NORMAL_NAMES = {"normal", "benign", "negative", "healthy", "lung_n", "colon_n", "no_finding", "control"}
PATHOLOGY_NAMES = {"pneumonia", "abnormal", "pathology", "malignant", "tumor", "tumour", "cancer", "positive",
                   "disease", "lung_aca", "colon_aca", "opacity", "nodule", "covid"}
MODALITY_WORDS = {
    "chest_xray": ("xray", "cxr", "radiograph", "pneumonia", "cr", "dx"),
    "ct": ("ct", "nccd", "tomography"),
    "histology": ("histology", "histo", "pathmnist", "lc25000", "he", "wsi"),
}
SPEC_OPTIONS = ("modality", "window", "patient_regex", "n")
KNOWN_CAVEATS = {  # by a word of the manifest's ``source`` column: caveats to repeat wherever results appear
    "LC25000": "LC25000 holds 250 originals per class, each augmented 20x: near-duplicates cross any split, "
               "so accuracy is optimistic",
    "IQ-OTH/NCCD": "IQ-OTH/NCCD gives no patient ids: slices of one patient cross splits, so accuracy is optimistic",
    "Kermany": "Kermany chest X-rays: classes imbalanced about 1:3, read balanced accuracy and AUC",
}
DICOM_PATIENT = "<dicom>"  # placeholder: replaced by a pseudonym of the header's PatientID


@dataclass
class ImageSet:
    """A labelled image set in memory, with its splits and provenance.

    ``images`` is uint8 ``(N, C, size, size)``; use :meth:`tensors` for float tensors in [0, 1].
    """

    spec: str
    name: str
    modality: str
    images: torch.Tensor
    labels: torch.Tensor
    patient_ids: np.ndarray
    splits: np.ndarray
    checksum: str
    native_sizes: np.ndarray
    is_phantom: bool = False
    patient_ids_given: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def indices(self, split: str, limit: int | None = None, seed: int = 0) -> np.ndarray:
        """Indices of ``split``; with ``limit``, a seeded subsample stratified by label."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        index = np.flatnonzero(self.splits == split)
        if limit is None or limit >= len(index):
            return index
        labels = self.labels.numpy()[index]
        rng = np.random.default_rng(seed)
        chosen = []
        for label in (0, 1):
            members = index[labels == label]
            share = max(1, round(limit * len(members) / len(index))) if len(members) else 0
            chosen.append(rng.choice(members, size=min(share, len(members)), replace=False))
        return np.sort(np.concatenate(chosen))

    def tensors(self, split: str, limit: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] and int64 labels of ``split`` (optionally a stratified subsample)."""
        index = torch.as_tensor(self.indices(split, limit, seed))
        if len(index) == 0:
            raise DataError(f"{self.spec}: split {split!r} is empty; add images or give the splits explicitly")
        return self.images[index].float().div_(255.0), self.labels[index]

    def summary(self) -> pd.DataFrame:
        """Images and patients per split and class."""
        frame = pd.DataFrame({"split": self.splits, "label": self.labels.numpy(), "patient": self.patient_ids})
        frame["class"] = frame["label"].map({0: "0 normal", 1: "1 pathology"})
        table = frame.groupby(["split", "class"]).agg(images=("label", "size"), patients=("patient", "nunique"))
        order = {name: rank for rank, name in enumerate(SPLITS)}
        return table.sort_index(key=lambda level: level.map(order) if level.name == "split" else level)

    def provenance(self) -> dict[str, Any]:
        """What a result made on this set must record about it."""
        counts = {split: int((self.splits == split).sum()) for split in SPLITS}
        return {
            "spec": self.spec, "name": self.name, "modality": self.modality, "checksum": self.checksum,
            "image_size": self.size, "channels": self.channels, "images": counts,
            "pathology_share": round(float(self.labels.float().mean()), 4), "is_phantom": self.is_phantom,
            "patient_ids_given": self.patient_ids_given, "notes": list(self.notes),
        }


@dataclass
class _Source:
    """What a spec resolved to before decoding: one row per image."""

    name: str
    rows: pd.DataFrame  # path (Path, or index for npz), key (relative id), label, patient_id, split, where
    modality: str | None
    notes: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] | None = None  # npz: split -> image array; rows hold the index in 'path'


def load_dataset(
    spec: str,
    *,
    size: int = 64,
    seed: int = 0,
    phantom_images: int = 600,
    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    use_cache: bool = True,
    progress: bool = True,
) -> ImageSet:
    """Load the images of a DATASET spec at ``size`` x ``size`` px (see the module docstring).

    Missing splits are made per patient with ``seed``; no patient is ever in two splits.

    Raises:
        DataError: bad input, with one line naming the file or row and the fix.
    """
    base, options = parse_spec(spec)
    if base.startswith("phantom:"):
        return _load_phantoms(spec, base, options, size, seed, phantom_images, split_fractions)
    source = _resolve(base, options)
    modality = options.get("modality") or source.modality or infer_modality(source.name)
    if modality not in MODALITIES:
        raise DataError(f"{spec}: unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    checksum, pseudonym_key = _checksum(source)
    _pseudonymise_dicom_patients(source, pseudonym_key)
    _check_patients_in_one_split(source.rows, base)
    window = _parse_window(options.get("window"), spec)
    channels = CHANNELS[modality]

    def decode(folder: Path) -> None:
        images, sizes = _decode_all(source, size, channels, window, progress)
        cache.torch_save_atomic({"images": images, "sizes": torch.from_numpy(sizes)}, folder / "images.pt")

    if use_cache:
        parts = {"checksum": checksum, "size": size, "channels": channels, "window": window,
                 "code": cache.code_fingerprint("_io", "_dicom", "data")}
        folder, _ = cache.cached("images", parts, decode)
        decoded = torch.load(folder / "images.pt")
        decoded["sizes"] = decoded["sizes"].numpy()
    else:
        images, sizes = _decode_all(source, size, channels, window, progress)
        decoded = {"images": images, "sizes": sizes}
    rows = source.rows
    given_ids = bool((rows["patient_id"] != "").all())
    patients = np.where(rows["patient_id"] != "", rows["patient_id"], [f"image-{i}" for i in range(len(rows))])
    notes = list(source.notes)
    if not given_ids:
        notes.append("no patient ids for some images: each counts as its own patient, so images of one patient "
                     "may cross splits (for file trees, ?patient_regex=... reads ids from file names)")
    splits = _complete_splits(rows["split"].to_numpy(dtype=object), patients, rows["label"].to_numpy(), seed,
                              split_fractions, notes)
    _check_split_sizes(splits, rows["label"].to_numpy(), notes)
    return ImageSet(
        spec=spec, name=source.name, modality=modality, images=decoded["images"],
        labels=torch.tensor(rows["label"].to_numpy(), dtype=torch.int64), patient_ids=patients.astype(str),
        splits=splits, checksum=checksum, native_sizes=decoded["sizes"], patient_ids_given=given_ids, notes=notes,
    )


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``path?key=value&...`` into the base spec and its options."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec {spec!r} is empty; give a folder, manifest.csv, .npz, name or phantom:MODALITY")
    base, _, query = spec.strip().partition("?")
    options = dict(parse_qsl(query.replace("+", "%2B"), keep_blank_values=True))  # '+' is literal (regexes)
    unknown = sorted(set(options) - set(SPEC_OPTIONS))
    if unknown:
        raise DataError(f"{spec}: unknown option(s) {', '.join(unknown)}; known: {', '.join(SPEC_OPTIONS)}")
    return base, options


def infer_modality(name: str) -> str:
    """Modality named by words in a data set's name, e.g. ``chest_xray`` or ``pneumoniamnist_64``."""
    text = name.lower()
    tokens = set(re.split(r"[^a-z0-9]+", text))
    found = [m for m, words in MODALITY_WORDS.items() if any(w in tokens or (len(w) > 3 and w in text) for w in words)]
    if len(found) != 1:
        raise DataError(f"{name}: cannot tell the modality from the name; append ?modality=chest_xray, ct or "
                        "histology to the spec")
    return found[0]


def assign_splits(
    patient_ids: np.ndarray, labels: np.ndarray, fractions: tuple[float, ...] = SPLIT_FRACTIONS, seed: int = 0,
    names: tuple[str, ...] = SPLITS,
) -> np.ndarray:
    """Split by patient: every image of a patient goes to one split, stratified by the patient's label.

    Returns one split name per image. Deterministic for a given ``seed``.
    """
    frame = pd.DataFrame({"patient": patient_ids, "label": labels})
    per_patient = frame.groupby("patient", sort=True)["label"].max()
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    weights = np.asarray(fractions, dtype=float) / np.sum(fractions)
    for label in (0, 1):
        members = np.array(per_patient.index[per_patient == label])
        rng.shuffle(members)
        bounds = np.round(np.cumsum(weights) * len(members)).astype(int)
        for start, stop, name in zip(np.r_[0, bounds[:-1]], bounds, names):
            assignment.update(dict.fromkeys(members[start:stop], name))
    return np.array([assignment[p] for p in patient_ids], dtype=object)


def _complete_splits(given: np.ndarray, patients: np.ndarray, labels: np.ndarray, seed: int,
                     fractions: tuple[float, float, float], notes: list[str]) -> np.ndarray:
    """Use the given splits; carve missing ones per patient (from train, or from everything)."""
    given = np.array([str(s).strip().lower() for s in given], dtype=object)
    if (given == "").all():
        notes.append(f"splits made per patient (seed {seed}, fractions {fractions})")
        return assign_splits(patients, labels, fractions, seed)
    splits = given.copy()
    missing = [name for name in SPLITS if name not in set(given)]
    if missing:
        if "train" in missing:
            raise DataError("the manifest gives splits but no 'train' split; add train rows or leave split empty")
        pool = given == "train"
        wanted = [fractions[SPLITS.index(name)] for name in missing]
        carved = assign_splits(patients[pool], labels[pool], (fractions[0], *wanted), seed, ("train", *missing))
        splits[pool] = carved
        notes.append(f"split(s) {', '.join(missing)} carved per patient from train (seed {seed})")
    return splits


def _check_split_sizes(splits: np.ndarray, labels: np.ndarray, notes: list[str]) -> None:
    """Note empty splits and splits without one class (no AUC there); using an empty split is an error."""
    for name in SPLITS:
        members = labels[splits == name]
        missing = [("Normal", "Pathology")[label] for label in (0, 1) if not (members == label).any()]
        if len(members) == 0:
            notes.append(f"split {name} is empty")
        elif missing:
            notes.append(f"split {name} has no {missing[0]} images")


def _load_phantoms(spec: str, base: str, options: dict[str, str], size: int, seed: int, n: int,
                   fractions: tuple[float, float, float]) -> ImageSet:
    modality = base.split(":", 1)[1]
    if modality not in MODALITIES:
        raise DataError(f"{spec}: no phantom {modality!r}; use phantom:chest_xray, phantom:ct or phantom:histology")
    from . import phantoms

    n = int(options.get("n", n))
    made = phantoms.make_phantoms(modality, n=n, size=size, seed=seed)
    array = made.images if made.images.ndim == 4 else made.images[..., None]
    images = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))
    digest = hashlib.sha256(array.tobytes() + made.labels.tobytes()).hexdigest()
    patients = np.asarray(made.patient_ids, dtype=object)
    return ImageSet(
        spec=spec, name=f"phantom_{modality}", modality=modality, images=images,
        labels=torch.as_tensor(made.labels, dtype=torch.int64), patient_ids=patients.astype(str),
        splits=assign_splits(patients, made.labels, fractions, seed), checksum=f"sha256:{digest}",
        native_sizes=np.full((n, 2), size), is_phantom=True,
        notes=["built-in phantom images (synthetic), not patients",
               f"splits made per patient (seed {seed}, fractions {fractions})"],
    )


def _resolve(base: str, options: dict[str, str]) -> _Source:
    path = Path(base).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return _from_manifest(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _from_npz(path, {})
    if path.is_dir() and (path / "manifest.csv").is_file():
        return _from_manifest(path / "manifest.csv")
    if path.is_dir():
        return _from_tree(path, options)
    if (MANIFESTS_DIR / f"{base}.yaml").is_file():
        return _from_named(base)
    raise DataError(f"{base}: no such file, folder or data manifest; give a folder, manifest.csv, .npz, "
                    f"a name from {MANIFESTS_DIR} or phantom:MODALITY")


def _from_manifest(csv_path: Path) -> _Source:
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{csv_path}: not a readable CSV ({str(err).splitlines()[0]}); save it as UTF-8 CSV") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; a manifest needs path,label "
                        "(patient_id, split optional)")
    for column in ("patient_id", "split"):
        if column not in frame.columns:
            frame[column] = ""
    frame["where"] = [f"{csv_path} line {i + 2} ({p})" for i, p in enumerate(frame["path"])]
    raw_sources = frame["source"] if "source" in frame.columns else []
    frame["label"] = [_parse_label(value, where) for value, where in zip(frame["label"], frame["where"])]
    _check_splits(frame)
    duplicated = frame["path"].duplicated(keep="first")
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise DataError(f"{row['where']}: duplicate path (listed twice); keep one row per image")
    frame["key"] = frame["path"]
    frame["path"] = [csv_path.parent / p for p in frame["path"]]
    from_header = (frame["patient_id"] == "") & np.array([p.suffix.lower() in DICOM_SUFFIXES for p in frame["path"]])
    frame.loc[from_header, "patient_id"] = DICOM_PATIENT
    frame = frame[["path", "key", "label", "patient_id", "split", "where"]].reset_index(drop=True)
    sources = " ".join(set(raw_sources))
    notes = [caveat for word, caveat in KNOWN_CAVEATS.items() if word in sources]
    return _Source(name=csv_path.parent.name, rows=_require_classes(frame, csv_path), modality=_modality_hint(frame),
                   notes=notes)


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


def _check_patients_in_one_split(frame: pd.DataFrame, origin: str) -> None:
    known = frame[(frame["patient_id"] != "") & (frame["split"] != "")]
    spread = known.groupby("patient_id")["split"].nunique()
    if (spread > 1).any():
        patient = spread[spread > 1].index[0]
        rows = known[known["patient_id"] == patient]
        raise DataError(f"{origin}: patient {patient!r} is in splits {sorted(set(rows['split']))} "
                        f"({rows['where'].iloc[0]}); put all images of a patient in one split")


def _require_classes(frame: pd.DataFrame, origin: Path) -> pd.DataFrame:
    for label, name in ((0, "Normal (0)"), (1, "Pathology (1)")):
        if not (frame["label"] == label).any():
            raise DataError(f"{origin}: class {name} has no images; a binary task needs both classes")
    return frame


def _modality_hint(frame: pd.DataFrame) -> str | None:
    """The modality a DICOM file's header names (first file), else None."""
    first = Path(frame["path"].iloc[0])
    if first.suffix.lower() in DICOM_SUFFIXES and first.is_file():
        from ._dicom import dicom_modality

        return dicom_modality(first)
    return None


def _from_tree(root: Path, options: dict[str, str]) -> _Source:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_names = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
    if folders and all(p.name.lower() in split_names for p in folders):
        layers = [(split_names[p.name.lower()], p) for p in folders]
    else:
        layers = [("", root)]
    class_map = _class_map(root, {c.name for _, layer in layers for c in layer.iterdir() if c.is_dir()})
    regex = re.compile(options["patient_regex"]) if options.get("patient_regex") else None
    records = []
    for split, layer in layers:
        for class_dir in sorted(c for c in layer.iterdir() if c.is_dir() and c.name in class_map):
            files = sorted(f for f in class_dir.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES)
            if not files:
                raise DataError(f"{class_dir}: class folder has no images (.png/.jpg/.tif/.dcm); add images "
                                "or remove the folder")
            records += [{"path": f, "key": f.relative_to(root).as_posix(), "label": class_map[class_dir.name],
                         "patient_id": _patient_from_name(f, regex),
                         "split": split, "where": str(f)} for f in files]
    frame = pd.DataFrame(records)
    return _Source(name=root.name, rows=_require_classes(frame, root), modality=_modality_hint(frame))


def _class_map(root: Path, names: set[str]) -> dict[str, int]:
    classes_file = root / "classes.yaml"
    if classes_file.is_file():
        mapping = yaml.safe_load(classes_file.read_text()) or {}
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
    if path.suffix.lower() in DICOM_SUFFIXES:
        return DICOM_PATIENT
    if regex is None:
        return ""
    match = regex.search(path.name)
    if not match:
        raise DataError(f"{path}: file name does not match patient_regex {regex.pattern!r}; fix the regex")
    return match.group(1) if match.groups() else match.group(0)


def _pseudonymise_dicom_patients(source: _Source, key: bytes) -> None:
    """Replace DICOM placeholders by keyed hashes of PatientID; the raw id never leaves the reader.

    The key is derived from the files' bytes but is not the published checksum, so a pseudonym cannot
    be reversed by trying candidate ids without the data itself (which holds the ids anyway).
    """
    marked = source.rows["patient_id"] == DICOM_PATIENT
    if not marked.any():
        return
    from ._dicom import dicom_patient_key

    source.rows.loc[marked, "patient_id"] = [dicom_patient_key(Path(p), key) or "" for p in source.rows.loc[marked, "path"]]


def _from_npz(path: Path, descriptor: dict[str, Any]) -> _Source:
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
                            f"data manifest (see {MANIFESTS_DIR / 'pathmnist_64.yaml'})")
        keep = np.flatnonzero(np.isin(labels, list(label_map)))
        dropped += len(labels) - len(keep)
        arrays[split] = images
        records += [{"path": int(i), "key": f"{split}/{i}", "label": label_map[int(labels[i])], "patient_id": "",
                     "split": split,
                     "where": f"{path} {split}_images[{i}]"} for i in keep]
    notes = [f"{dropped} images of other classes left out, as the data manifest says"] if dropped else []
    frame = pd.DataFrame(records)
    name = descriptor.get("name") or path.stem
    return _Source(name=name, rows=_require_classes(frame, path), modality=descriptor.get("modality"), notes=notes,
                   arrays=arrays)


def _from_named(name: str) -> _Source:
    descriptor = read_descriptor(name)
    return _from_npz(fetch(name), descriptor)


def read_descriptor(name: str) -> dict[str, Any]:
    """The YAML descriptor ``data_manifests/<name>.yaml``."""
    path = MANIFESTS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise DataError(f"{name}: no data manifest {path}; known: {', '.join(known_datasets())}")
    return yaml.safe_load(path.read_text())


def known_datasets() -> list[str]:
    """Names of the descriptors in ``data_manifests/``."""
    return sorted(p.stem for p in MANIFESTS_DIR.glob("*.yaml"))


def data_root() -> Path:
    """Where named data sets are stored: ``$MEDSEC_DATA`` or ``~/.cache/medsec/data``."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "medsec" / "data").expanduser()


def fetch(name: str, root: Path | None = None) -> Path:
    """Path of a named data set's file, downloading it once and verifying its MD5.

    Raises:
        DataError: download impossible (says where to put the file by hand) or checksum mismatch.
    """
    descriptor = read_descriptor(name)
    target = (root or data_root()) / descriptor["filename"]
    if target.is_file():
        if (actual := _md5(target)) != descriptor["md5"]:
            raise DataError(f"{target}: MD5 {actual} is not the expected {descriptor['md5']}; replace the file "
                            f"with a fresh download from {descriptor['url']}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(descriptor["url"], timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}", disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise DataError(f"{name}: cannot download {descriptor['url']} ({err}); download it by hand and put it at "
                        f"{target} (md5 {descriptor['md5']})") from None
    actual = _md5(partial)
    if actual != descriptor["md5"]:
        partial.unlink()
        raise DataError(f"{name}: the download from {descriptor['url']} has MD5 {actual}, not the expected "
                        f"{descriptor['md5']}; it was discarded, try again or put a verified copy at {target}")
    os.replace(partial, target)
    return target


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum(source: _Source) -> tuple[str, bytes]:
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


def _parse_window(text: str | None, spec: str) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{spec}: window must be 'center,width' in HU, e.g. window=-600,1500") from None
    return center, width


def _decode_all(source: _Source, size: int, channels: int, window: tuple[float, float] | None,
                progress: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Decode, resize and quantise every image to uint8 ``(N, C, size, size)``; keep native sizes."""
    rows = source.rows
    images = torch.empty((len(rows), channels, size, size), dtype=torch.uint8)
    sizes = np.zeros((len(rows), 2), dtype=np.int64)
    for i, row in enumerate(tqdm(rows.itertuples(), total=len(rows), desc=f"decode {source.name}",
                                 disable=not progress, mininterval=2)):
        array = _read_row(source, row, channels, window)
        sizes[i] = array.shape[:2]
        array = resize(array, size, row.where)
        images[i] = torch.from_numpy(np.round(array * 255).astype(np.uint8).transpose(2, 0, 1))
    return images, sizes


def _read_row(source: _Source, row: Any, channels: int, window: tuple[float, float] | None) -> np.ndarray:
    if source.arrays is None:
        if not Path(row.path).is_file():
            raise DataError(f"{row.where}: file not found at {row.path}; fix the path or restore the file")
        return read_image(Path(row.path), channels=channels, window=window)
    raw = np.asarray(source.arrays[row.split][row.path])
    array = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float32)
    check_finite(array, row.where)
    if array.min() < 0 or array.max() > 1:
        raise DataError(f"{row.where}: float pixels outside [0, 1]; store uint8 images or scale them to [0, 1]")
    return to_channels(array, channels, row.where)


def deidentify_dicom(src: Path | str, dst: Path | str) -> None:
    """Write a copy of a DICOM file de-identified by the DICOM PS3.15 basic profile (see ``_dicom``)."""
    from ._dicom import deidentify

    deidentify(Path(src), Path(dst))


def check(spec: str, size: int = 64) -> str:
    """Human-readable report of a data set: counts per split and class, patients, sizes, modality."""
    images = load_dataset(spec, size=size, use_cache=False, progress=sys.stderr.isatty())
    heights, widths = images.native_sizes[:, 0], images.native_sizes[:, 1]
    lines = [
        f"dataset   {images.name}  ({images.spec})",
        f"modality  {images.modality}  ({images.channels} channel{'s' if images.channels > 1 else ''})",
        f"images    {len(images.labels)}  native size {widths.min()}x{heights.min()} to {widths.max()}x{heights.max()}"
        f" px, loaded at {size}x{size}",
        f"patients  {len(set(images.patient_ids))}" + ("" if images.patient_ids_given else "  (ids not given)"),
        f"checksum  {images.checksum}",
        "",
        images.summary().to_string(),
    ]
    lines += [f"note: {note}" for note in images.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m medsec_utils.data check SPEC [--size N]``: exit 0 if the data set loads, else 2."""
    parser = argparse.ArgumentParser(prog="python -m medsec_utils.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="validate a DATASET spec and print its summary")
    check_parser.add_argument("spec", help="folder, manifest.csv, .npz, data manifest name or phantom:MODALITY")
    check_parser.add_argument("--size", type=int, default=64, help="image size to validate against (px)")
    args = parser.parse_args(argv)
    try:
        print(check(args.spec, size=args.size))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
