"""DICOM decoding, modality mapping, patient pseudonyms and de-identification (private plumbing of ``data``).

Reading policy:

* Files without the 128-byte preamble and ``DICM`` prefix are read with ``force=True`` only if the
  result holds pixel data and a transfer syntax: either from the file meta group, or inferred from
  the detected encoding when the native Pixel Data length equals exactly Rows x Columns x Samples x
  Bits (old ACR-NEMA style exports). Anything else is a ``DataError``.
* ``PALETTE COLOR`` images are expanded through their palette to RGB; YBR colour is converted to RGB.
* pydicom warnings and log records are silenced while reading, and no header value is ever printed,
  logged or put in an error message (only technical ones: transfer syntax, photometric interpretation).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space, get_decoder
from pydicom.pixels.utils import as_pixel_options, get_expected_length
from pydicom.sequence import Sequence

from ._common import DataError, min_max

LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)
MEDIASTINAL_WINDOW: tuple[float, float] = (40.0, 400.0)

MODALITY_NAMES = {"CR": "chest_xray", "DX": "chest_xray", "RG": "chest_xray", "CT": "ct", "SM": "histology"}

PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "AcquisitionDateTime",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "OperatorsName",
    "AccessionNumber",
    "StudyID",
    "StationName",
    "DeviceSerialNumber",
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "PatientComments",
    "AdditionalPatientHistory",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)

_REMOVE_KEYWORDS = (
    "AcquisitionComments",
    "AdditionalPatientHistory",
    "AdmissionID",
    "AdmittingDiagnosesDescription",
    "Allergies",
    "CountryOfResidence",
    "DerivationDescription",
    "DeviceSerialNumber",
    "EthnicGroup",
    "ImageComments",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "IssuerOfPatientID",
    "MedicalAlerts",
    "NameOfPhysiciansReadingStudy",
    "OtherPatientNames",
    "PatientAddress",
    "PatientAge",
    "PatientBirthName",
    "PatientBirthTime",
    "PatientComments",
    "PatientMotherBirthName",
    "PatientSize",
    "PatientState",
    "PatientWeight",
    "PerformedProcedureStepDescription",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "PregnancyStatus",
    "ProtocolName",
    "ReasonForStudy",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "RegionOfResidence",
    "RequestAttributesSequence",
    "RequestedProcedureDescription",
    "RequestingPhysician",
    "SeriesDescription",
    "SmokingStatus",
    "SpecialNeeds",
    "StudyDescription",
    "TextComments",
)
_REMOVE_TAGS = frozenset(keyword_dict[k] for k in _REMOVE_KEYWORDS)
_EMPTY_TAGS = frozenset({keyword_dict["PatientSex"]})

DEIDENTIFICATION_METHOD = "PS3.15 Annex E Basic Application Level Confidentiality Profile"
_DEID_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_YBR_TO_CONVERT = ("YBR_FULL", "YBR_FULL_422")
_NATIVE_SYNTAX = {
    (True, True): uid.ImplicitVRLittleEndian,
    (False, True): uid.ExplicitVRLittleEndian,
    (False, False): uid.ExplicitVRBigEndian,
}
_UNREADABLE_FIX = "re-export it from the PACS or remove it"


def read_dicom(path: Path, *, window: tuple[float, float] | None = None) -> np.ndarray:
    """Read a single-frame DICOM image as float32 ``(H, W)`` or RGB ``(H, W, 3)`` in [0, 1].

    CT is converted to Hounsfield units and windowed with ``window=(center, width)`` (default
    ``LUNG_WINDOW``); other grayscale images use the file's VOI LUT or window, else min-max.
    MONOCHROME1 is inverted so that bone is bright, as in MONOCHROME2.

    Raises:
        DataError: unreadable, truncated, multi-frame or pixel-less file, or undecodable pixels.
    """
    path = Path(path)
    center, width = _check_window(window or LUNG_WINDOW)
    dataset = _read_dataset(path)
    _check_single_image(dataset, path)
    with _quiet():
        pixels, photometric = _decode(dataset, path)
        image = _to_unit_range(pixels, photometric, dataset, (center, width), path)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def dicom_modality(path: Path) -> str | None:
    """Map the Modality tag to ``"chest_xray"`` (CR/DX/RG), ``"ct"`` or ``"histology"`` (SM); else None."""
    return MODALITY_NAMES.get(dicom_modality_code(path))


def dicom_modality_code(path: Path) -> str:
    """The Modality tag (0008,0060) as written, upper case, e.g. ``"CT"``; empty if absent."""
    dataset = _read_dataset(Path(path), header_only=True)
    return str(dataset.get("Modality") or "").strip().upper()


def dicom_patient_key(path: Path, key: bytes) -> str | None:
    """Pseudonymise PatientID as ``"pt-" + HMAC-SHA256(key, PatientID)[:16]`` for patient-level splits.

    The raw PatientID is never returned or logged; None if it is empty or missing.

    Raises:
        ValueError: empty ``key`` (a keyless hash of an ID is reversible by enumeration).
        DataError: unreadable file.
    """
    if not key:
        raise ValueError("dicom_patient_key needs a non-empty secret key")
    dataset = _read_dataset(Path(path), header_only=True)
    patient_id = str(dataset.get("PatientID") or "").strip()
    if not patient_id:
        return None
    return "pt-" + hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def deidentify(src: Path, dst: Path) -> None:
    """De-identify one DICOM file (PS3.15 Annex E Basic Profile via dicognito) and write it atomically.

    dicognito replaces names, IDs and UIDs with dummies and shifts dates; attributes the Basic
    Profile removes are deleted, PatientSex is emptied and private tags are dropped. Pixel data is
    not inspected, so files flagged ``BurnedInAnnotation == "YES"`` are refused.

    Raises:
        DataError: unreadable input or burned-in annotation.
    """
    from dicognito.anonymizer import Anonymizer

    src, dst = Path(src), Path(dst)
    dataset = _read_dataset(src)
    if str(dataset.get("BurnedInAnnotation") or "").upper() == "YES":
        raise DataError(f"{src}: burned-in annotation in the pixels; clean the pixel data before de-identifying it")
    with _quiet():
        Anonymizer().anonymize(dataset)
        dataset.remove_private_tags()
        dataset.walk(_strip_element)
        _mark_deidentified(dataset)
        _write_atomically(dataset, dst)


def _read_dataset(path: Path, *, header_only: bool = False) -> Dataset:
    """dcmread with warnings silenced; force-read only files that prove to hold valid pixel data."""
    with _quiet() as caught:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=header_only)
        except InvalidDicomError:
            dataset = _force_read(path)
        except Exception as err:  # pydicom raises many exception types on corrupt input
            raise _unreadable(path, _reason(err)) from None
    if any("End of file" in str(w.message) for w in caught):
        raise _unreadable(path, "file is truncated")
    return dataset


def _force_read(path: Path) -> Dataset:
    """Read a file lacking the DICM prefix; accept it only with pixel data and a known transfer syntax."""
    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as err:  # pydicom raises many exception types on non-DICOM input
        raise _unreadable(path, f"no DICOM header and forced read failed: {_reason(err)}") from None
    if not any(k in dataset for k in _PIXEL_KEYWORDS):
        raise _unreadable(path, "no DICOM header and no pixel data")
    if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
        _infer_native_syntax(dataset, path)
    return dataset


def _infer_native_syntax(dataset: Dataset, path: Path) -> None:
    """Set the uncompressed transfer syntax matching the detected encoding if Pixel Data fits exactly."""
    syntax = _NATIVE_SYNTAX.get(tuple(dataset.original_encoding))
    element = dataset["PixelData"] if "PixelData" in dataset else None
    try:
        expected = get_expected_length(dataset)
    except Exception:  # missing or invalid Rows/Columns/Bits Allocated
        expected = -1
    length = len(element.value or b"") if element is not None and not element.is_undefined_length else -2
    if syntax is None or length not in (expected, expected + 1):
        raise _unreadable(path, "no DICOM header and pixel data do not match the image size")
    if not isinstance(getattr(dataset, "file_meta", None), FileMetaDataset):
        dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax


def _check_single_image(dataset: Dataset, path: Path) -> None:
    """Reject files without pixel data and multi-frame files (the pipeline works on 2-D images)."""
    if not any(k in dataset for k in _PIXEL_KEYWORDS):
        raise DataError(f"{path}: DICOM file has no Pixel Data (not an image); export the image itself or remove it")
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise _unreadable(path, "invalid Number of Frames") from None
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export single 2-D slices or frames")


def _decode(dataset: Dataset, path: Path) -> tuple[np.ndarray, str]:
    """Decode the pixels; return the array and its photometric interpretation after decoding."""
    syntax = dataset.file_meta.get("TransferSyntaxUID") if getattr(dataset, "file_meta", None) else None
    if not syntax:
        raise _unreadable(path, "no transfer syntax in the file meta information")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DataError(f"{path}: cannot decode DICOM pixel data (unsupported transfer syntax {syntax.name}); {_codec_fix(syntax)}") from None
    if not decoder.is_available:
        raise DataError(f"{path}: cannot decode DICOM pixel data ({syntax.name}: no decoder installed); {_codec_fix(syntax)}")
    try:
        pixels, meta = decoder.as_array(dataset, **as_pixel_options(dataset))
    except Exception as err:  # decoders raise many exception types on corrupt data
        raise DataError(
            f"{path}: cannot decode DICOM pixel data ({syntax.name}: {_reason(err)}); "
            "the file is corrupt or truncated, re-export it from the PACS or remove it"
        ) from None
    return pixels, str(meta.get("photometric_interpretation") or dataset.get("PhotometricInterpretation") or "")


def _codec_fix(syntax: uid.UID) -> str:
    """Which package decodes this transfer syntax, or how to avoid needing one."""
    if syntax in uid.JPEG2000TransferSyntaxes:
        return "install pylibjpeg and pylibjpeg-openjpeg"
    if syntax in uid.JPEGTransferSyntaxes or syntax in uid.JPEGLSTransferSyntaxes:
        return "install pylibjpeg and pylibjpeg-libjpeg"
    if syntax in uid.RLETransferSyntaxes:
        return "install pylibjpeg and pylibjpeg-rle"
    return "convert it to an uncompressed transfer syntax (e.g. gdcmconv --raw) and re-run"


def _to_unit_range(
    pixels: np.ndarray, photometric: str, dataset: Dataset, window: tuple[float, float], path: Path
) -> np.ndarray:
    """Dispatch on photometric interpretation to grayscale, palette or colour scaling."""
    expected_ndim = 3 if int(dataset.get("SamplesPerPixel") or 1) > 1 else 2
    if pixels.ndim != expected_ndim:
        raise _unreadable(path, f"decoded pixel array has shape {pixels.shape}")
    try:
        if photometric in _MONOCHROME:
            return _grayscale(pixels, dataset, photometric, window)
        if photometric == "PALETTE COLOR":
            return _palette(pixels, dataset)
        if photometric == "RGB" or photometric in _YBR_TO_CONVERT:
            return _colour(pixels, dataset, photometric)
    except (AttributeError, IndexError, KeyError, NotImplementedError, TypeError, ValueError) as err:
        raise _unreadable(path, f"invalid LUT or pixel module attributes: {_reason(err)}") from None
    raise DataError(f"{path}: unsupported photometric interpretation {photometric!r}; convert it to MONOCHROME2 or RGB")


def _grayscale(pixels: np.ndarray, dataset: Dataset, photometric: str, window: tuple[float, float]) -> np.ndarray:
    """Modality LUT, then CT window in HU or the file's VOI (else min-max); invert MONOCHROME1 (not CT)."""
    values = apply_modality_lut(pixels, dataset)
    if str(dataset.get("Modality") or "").upper() == "CT":
        return _window(np.asarray(values, dtype=np.float64), window)
    image = _voi(values, dataset) if _has_voi(dataset) else min_max(np.asarray(values, dtype=np.float64))
    return 1.0 - image if photometric == "MONOCHROME1" else image


def _window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Linear CT window: ``center - width/2`` maps to 0 and ``center + width/2`` to 1."""
    center, width = window
    return np.clip((hu - (center - width / 2.0)) / width, 0.0, 1.0)


def _has_voi(dataset: Dataset) -> bool:
    """True if the file carries a usable VOI LUT Sequence or Window Center/Width."""
    return _has_voi_lut(dataset) or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def _has_voi_lut(dataset: Dataset) -> bool:
    """Same test as pydicom's apply_voi_lut: first VOI LUT item has a descriptor and data."""
    items = dataset.get("VOILUTSequence")
    return bool(items) and "LUTDescriptor" in items[0] and "LUTData" in items[0]


def _voi(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Apply the file's VOI LUT or window and scale its full output range (not the image's) to [0, 1]."""
    if _has_voi_lut(dataset):
        values = np.rint(values).astype(np.int64)
    low, high = _voi_output_range(dataset)
    shown = np.asarray(apply_voi_lut(values, dataset), dtype=np.float64)
    return (shown - low) / (high - low) if high > low else np.zeros_like(shown)


def _voi_output_range(dataset: Dataset) -> tuple[float, float]:
    """Output range of the VOI transform, found by pushing its whole input domain through it."""
    if _has_voi_lut(dataset):
        entries, first, _ = dataset.VOILUTSequence[0].LUTDescriptor
        probe = np.arange(first, first + (entries or 2**16), dtype=np.int64)
    else:
        probe = np.array([-1e300, 1e300])
    out = np.asarray(apply_voi_lut(probe, dataset), dtype=np.float64)
    return float(out.min()), float(out.max())


def _palette(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Expand PALETTE COLOR indices to RGB, scaled by the palette's nominal entry bit depth."""
    _swap_big_endian_palette(dataset)
    bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
    return apply_color_lut(pixels, dataset)[..., :3].astype(np.float64) / (2**bits - 1)


def _swap_big_endian_palette(dataset: Dataset) -> None:
    """Byte-swap 16-bit palette LUT data of big-endian files in place (this dataset is private to the call).

    pydicom 3.0.2 ``apply_color_lut`` reads non-segmented LUT data in the machine's byte order, so
    Explicit VR Big Endian palettes come out wrong (e.g. 1 instead of 256).
    """
    if dataset.file_meta.TransferSyntaxUID.is_little_endian:
        return
    entries = int(dataset.RedPaletteColorLookupTableDescriptor[0]) or 2**16
    for colour in ("Red", "Green", "Blue", "Alpha"):
        keyword = f"{colour}PaletteColorLookupTableData"
        data = dataset.get(keyword)
        if isinstance(data, bytes) and len(data) == 2 * entries:
            dataset[keyword].value = np.frombuffer(data, dtype=">u2").astype("=u2").tobytes()


def _colour(pixels: np.ndarray, dataset: Dataset, photometric: str) -> np.ndarray:
    """Convert YBR_FULL(_422) to RGB if the decoder has not, and scale by Bits Stored."""
    if photometric in _YBR_TO_CONVERT:
        pixels = convert_color_space(pixels, photometric, "RGB")
    bits = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    return pixels.astype(np.float64) / (2**bits - 1)


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    """Validate a CT window ``(center, width)``; a programming error, hence ValueError."""
    center, width = (float(v) for v in window)
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise ValueError(f"CT window must be (center, width) with a finite width > 0, got {window!r}")
    return center, width


def _strip_element(dataset: Dataset, element: pydicom.DataElement) -> None:
    """walk() callback: delete Basic Profile 'X' attributes and empty 'Z' ones left by dicognito."""
    if element.tag in _REMOVE_TAGS:
        del dataset[element.tag]
    elif element.tag in _EMPTY_TAGS:
        element.value = ""


def _mark_deidentified(dataset: Dataset) -> None:
    """Record the profile in PatientIdentityRemoved, DeidentificationMethod and its code sequence."""
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = [
        DEIDENTIFICATION_METHOD,
        f"dicognito {version('dicognito')}; dates shifted; private tags removed",
    ]
    codes = []
    for value, meaning in _DEID_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    dataset.DeidentificationMethodCodeSequence = Sequence(codes)


def _write_atomically(dataset: Dataset, dst: Path) -> None:
    """Write to a temporary file next to ``dst`` then os.replace, so readers never see a partial file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(handle)
    try:
        dataset.save_as(tmp_name, enforce_file_format=True)
        os.replace(tmp_name, dst)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextmanager
def _quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Record (hence hide) warnings and mute pydicom's logger, so nothing leaks into notebooks."""
    logger = logging.getLogger("pydicom")
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.disabled = was_disabled


def _reason(err: BaseException) -> str:
    """First line of an exception message, shortened, for a one-line DataError."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _unreadable(path: Path, reason: str) -> DataError:
    """The standard one-line error for a file that is not usable DICOM."""
    return DataError(f"{path}: not a readable DICOM file ({reason}); {_UNREADABLE_FIX}")
