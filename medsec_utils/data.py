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

Image files may be PNG/JPEG/TIFF (8- or 16-bit, any suffix case) or single-frame DICOM (also without a suffix).
The modality is the spec's ``?modality=``, else the DICOM Modality tag, else a word of the data set's name.
Bad input raises :class:`DataError` with one line naming the file or row and the fix; what is read but not
plain (stray files, spreadsheet dialects, 16-bit or transparent images) is said in the notes. Run
``python -m medsec_utils.data check SPEC`` to see both.
The readers of each kind of source are in ``_sources``, named downloads in ``_downloads``, image decoding in
``_io`` and ``_dicom``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd
import torch

from . import cache
from ._common import DataError, plural
from ._downloads import data_root, fetch, known_datasets, read_descriptor
from ._sources import (SPLITS, Source, decode_all, decode_notes, dicom_modalities, pseudonymise_dicom_patients, resolve,
                       source_checksum)

__all__ = ["DataError", "ImageSet", "load_dataset", "assign_splits", "fetch", "known_datasets", "read_descriptor",
           "data_root", "deidentify_dicom", "spec_checksum", "MODALITIES"]

CHANNELS = {"chest_xray": 1, "ct": 1, "histology": 3}
MODALITIES = tuple(CHANNELS)
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
MODALITY_WORDS = {
    "chest_xray": ("xray", "cxr", "radiograph", "pneumonia", "cr", "dx"),
    "ct": ("ct", "nccd", "tomography"),
    "histology": ("histology", "histo", "pathmnist", "lc25000", "he", "wsi"),
}
SPEC_OPTIONS = ("modality", "window", "patient_regex", "n")
MIN_PATIENTS_PER_CLASS = len(SPLITS)  # made splits give every split both classes from this many patients per class
# The modules whose code turns files into images: cache keys of anything made from loaded real images name them all.
READER_MODULES = ("data", "_common", "_downloads", "_sources", "_io", "_dicom")
PHANTOM_MODULES = ("phantoms", "_phantom_models", "_phantom_geometry")


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

    def require_both_classes(self, splits: tuple[str, ...] = SPLITS) -> None:
        """Refuse, in one line stating the minimum, a set with a split that lacks a class.

        Training needs both classes in train, model selection both in val and the test report both in test.
        """
        labels = self.labels.numpy()
        counts = {name: [int(((self.splits == name) & (labels == c)).sum()) for c in (0, 1)] for name in splits}
        short = [name for name, (normal, pathology) in counts.items() if not (normal and pathology)]
        if short:
            found = ", ".join(f"{name} {normal}+{pathology}" for name, (normal, pathology) in counts.items())
            raise DataError(
                f"{self.spec}: too few images for a classifier: split {short[0]} lacks Normal or Pathology images "
                f"(Normal+Pathology per split: {found}); every split needs at least one image of each class, so "
                f"at least {MIN_PATIENTS_PER_CLASS} patients per class when the splits are made here; add images")

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


def _leave_a_worker_of_an_unguarded_script() -> None:
    """Refuse to load while a multiprocessing worker starts up by re-running the main script (as ``__mp_main__``;
    multiprocessing marks that phase with ``_inheriting``, the flag behind its own "bootstrapping phase" error):
    in a script without an ``if __name__ == "__main__":`` guard the worker would wait forever on the cache lock its
    parent holds. The worker exits at once instead: the pool breaks, and the parent decodes in its own process,
    saying why in one line."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        os._exit(1)


def load_dataset(
    spec: str,
    *,
    size: int = 64,
    seed: int = 0,
    phantom_images: int = 600,
    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    use_cache: bool = True,
    progress: bool = True,
    workers: int | None = None,
) -> ImageSet:
    """Load the images of a DATASET spec at ``size`` x ``size`` px (see the module docstring).

    Missing splits are made per patient with ``seed``; no patient is ever in two splits. Image files are
    decoded in ``workers`` processes (None: one per core for DICOM, whose JPEG 2000 pixel data is slow to
    decode, and this process for other files, which decode about as fast as workers start); the images are the
    same for any ``workers``, and small data sets are decoded in this process anyway. Workers import the main
    script, as multiprocessing does: in a script, keep the code under ``if __name__ == "__main__":`` (and heavy
    imports out of its top level), or pass ``workers=1``; without the guard decoding falls back to this process.

    Raises:
        DataError: bad input, with one line naming the file or row and the fix.
    """
    _leave_a_worker_of_an_unguarded_script()
    base, options = parse_spec(spec)
    if base.startswith("phantom:"):
        return _load_phantoms(spec, base, options, size, seed, phantom_images, split_fractions, use_cache)
    source = resolve(base, options)
    notes = list(source.notes)
    modality = _modality(base, options, source, notes)
    checksum, pseudonym_key = source_checksum(source)
    pseudonymise_dicom_patients(source, pseudonym_key)
    _check_patients_in_one_split(source.rows, base)
    window = _parse_window(options.get("window"), spec)
    channels = CHANNELS[modality]

    def decode(folder: Path) -> None:
        cache.torch_save_atomic(decode_all(source, size, channels, window, progress, workers), folder / "images.pt")

    if use_cache:
        parts = {"checksum": checksum, "size": size, "channels": channels, "window": window,
                 "code": cache.code_fingerprint(*READER_MODULES)}
        folder, _ = cache.cached("images", parts, decode)
        decoded = torch.load(folder / "images.pt")
    else:
        decoded = decode_all(source, size, channels, window, progress, workers)
    notes += decode_notes(decoded)
    rows = source.rows
    given_ids = bool((rows["patient_id"] != "").all())
    patients = np.where(rows["patient_id"] != "", rows["patient_id"], [f"image-{i}" for i in range(len(rows))])
    if not given_ids:
        notes.append("no patient ids for some images: each counts as its own patient, so images of one patient "
                     "may cross splits (for file trees, ?patient_regex=... reads ids from file names)")
    splits = _complete_splits(rows["split"].to_numpy(dtype=object), patients, rows["label"].to_numpy(), seed,
                              split_fractions, notes)
    _check_split_sizes(splits, rows["label"].to_numpy(), notes)
    return ImageSet(
        spec=spec, name=source.name, modality=modality, images=decoded["images"],
        labels=torch.tensor(rows["label"].to_numpy(), dtype=torch.int64), patient_ids=patients.astype(str),
        splits=splits, checksum=checksum, native_sizes=decoded["sizes"].numpy(), patient_ids_given=given_ids,
        notes=notes,
    )


def spec_checksum(spec: str) -> str:
    """The checksum ``load_dataset`` records for a spec of files (file list, labels, patient ids, given splits
    and every file's bytes), without decoding an image. A phantom spec stands for itself: its images follow from
    the spec, the profile and the code."""
    base, options = parse_spec(spec)
    return spec if base.startswith("phantom:") else source_checksum(resolve(base, options))[0]


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


def modality_from_name(name: str) -> str | None:
    """Modality named by words in a data set's name, e.g. ``chest_xray`` or ``pneumoniamnist_64``; None if no
    word or words of two modalities."""
    text = name.lower()
    tokens = set(re.split(r"[^a-z0-9]+", text))
    found = [m for m, words in MODALITY_WORDS.items() if any(w in tokens or (len(w) > 3 and w in text) for w in words)]
    return found[0] if len(found) == 1 else None


def _modality(base: str, options: dict[str, str], source: Source, notes: list[str]) -> str:
    """The spec's ``?modality=``, else the data manifest's, else the DICOM Modality tag, else the name's.

    DICOM files naming a modality the compendium does not model (e.g. MR) or different ones are refused
    unless the spec states the modality; the notes say when the tag decided.
    """
    modality = options.get("modality") or source.modality
    if modality:
        if modality not in MODALITIES:
            raise DataError(f"{base}: unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
        return modality
    from ._dicom import MODALITY_NAMES

    tags = dicom_modalities(source)
    named = {MODALITY_NAMES.get(code) for code in tags}
    fix = "append ?modality=chest_xray, ct or histology to the spec"
    if len(named) > 1:
        found = ", ".join(f"{code} ({plural(len(files), 'file')}, e.g. {files[0]})"
                          for code, files in sorted(tags.items()))
        raise DataError(f"{base}: DICOM files of different modalities: {found}; keep one modality per data set, "
                        f"or {fix}")
    if named == {None}:
        code, files = next(iter(tags.items()))
        raise DataError(f"{files[0]}: DICOM Modality {code} is none of CR/DX/RG (chest_xray), CT (ct) or SM "
                        f"(histology); if these images should be read as one of them, {fix}")
    if named:
        modality = named.pop()
        notes.append(f"modality {modality} from the DICOM Modality tag ({', '.join(sorted(tags))}) of "
                     f"{plural(sum(map(len, tags.values())), 'file')}")
        return modality
    modality = modality_from_name(source.name)
    if modality is None:
        raise DataError(f"{base}: cannot tell the modality: the name {source.name!r} does not say it and no "
                        f"image is a DICOM file with a Modality tag; {fix}")
    return modality


def assign_splits(
    patient_ids: np.ndarray, labels: np.ndarray, fractions: tuple[float, ...] = SPLIT_FRACTIONS, seed: int = 0,
    names: tuple[str, ...] = SPLITS,
) -> np.ndarray:
    """Split by patient: every image of a patient goes to one split, stratified by the patient's label.

    A class with at least one patient per split gets at least one patient in every split (small data sets
    would otherwise round a split's share to none). Returns one split name per image; deterministic for a
    given ``seed``.
    """
    frame = pd.DataFrame({"patient": patient_ids, "label": labels})
    per_patient = frame.groupby("patient", sort=True)["label"].max()
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    weights = np.asarray(fractions, dtype=float) / np.sum(fractions)
    for label in (0, 1):
        members = np.array(per_patient.index[per_patient == label])
        rng.shuffle(members)
        counts = np.diff(np.r_[0, np.round(np.cumsum(weights) * len(members)).astype(int)])
        wanted = weights > 0
        if len(members) >= wanted.sum():  # enough patients: no wanted split left without this class
            for empty in np.flatnonzero(wanted & (counts == 0)):
                counts[np.argmax(counts)] -= 1
                counts[empty] += 1
        bounds = np.cumsum(counts)
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


def _check_patients_in_one_split(frame: pd.DataFrame, origin: str) -> None:
    known = frame[(frame["patient_id"] != "") & (frame["split"] != "")]
    spread = known.groupby("patient_id")["split"].nunique()
    if (spread > 1).any():
        patient = spread[spread > 1].index[0]
        rows = known[known["patient_id"] == patient]
        raise DataError(f"{origin}: patient {patient!r} is in splits {sorted(set(rows['split']))} "
                        f"({rows['where'].iloc[0]}); put all images of a patient in one split")


def _load_phantoms(spec: str, base: str, options: dict[str, str], size: int, seed: int, n: int,
                   fractions: tuple[float, float, float], use_cache: bool) -> ImageSet:
    modality = base.split(":", 1)[1]
    if modality not in MODALITIES:
        raise DataError(f"{spec}: no phantom {modality!r}; use phantom:chest_xray, phantom:ct or phantom:histology")
    from . import phantoms

    n = int(options.get("n", n))
    def draw() -> phantoms.PhantomSet:
        return phantoms.make_phantoms(modality, n=n, size=size, seed=seed)

    parts = {"modality": modality, "n": n, "size": size, "seed": seed,
             "code": cache.code_fingerprint(*PHANTOM_MODULES)}
    made = cache.memoised("phantoms", parts, draw)[0] if use_cache else draw()
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


def _parse_window(text: str | None, spec: str) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{spec}: window must be 'center,width' in HU, e.g. window=-600,1500") from None
    return center, width


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
