"""Tests for medsec_utils._dicom on the real files of pydicom-data and pydicom's own test files."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import keyword_dict

from medsec_utils._dicom import (
    LUNG_WINDOW,
    MEDIASTINAL_WINDOW,
    PHI_KEYWORDS,
    deidentify,
    dicom_modality,
    dicom_patient_key,
    read_dicom,
)
from medsec_utils._io import DataError, read_image

from _paths import pinned_dicom


needs_data = pytest.mark.usefixtures("pinned_data")
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def pinned_data() -> Path:
    """pydicom-data's folder: a test that needs it fails when it is missing (it is pinned)."""
    return pinned_dicom()


def data(name: str) -> Path:
    """Path of one pydicom-data file; the test fails, naming the fix, if that file is missing."""
    return pinned_dicom(name) / name


def raw(path: Path) -> pydicom.Dataset:
    """Header and pixels read directly with pydicom, as the independent reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def hounsfield(path: Path) -> np.ndarray:
    """HU computed from the stored values with the header's slope and intercept."""
    ds = raw(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def lung_window(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Reference linear window: center - width/2 -> 0, center + width/2 -> 1."""
    center, width = window
    return np.clip((hu - (center - width / 2)) / width, 0, 1)


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    """The DataError message is a single line naming the file; return it."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert path.name in message
    return message


def assert_unit_image(image: np.ndarray, ndim: int) -> None:
    """float32, the expected rank, finite and within [0, 1]."""
    assert image.dtype == np.float32
    assert image.ndim == ndim
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0


@needs_data
@pytest.mark.parametrize("stem", ["RG1", "RG3"])
def test_radiograph_j2k_lossless_equals_uncompressed(stem: str) -> None:
    uncompressed = read_dicom(data(f"{stem}_UNCR.dcm"))
    lossless = read_dicom(data(f"{stem}_J2KR.dcm"))
    assert_unit_image(uncompressed, 2)
    assert uncompressed.shape == lossless.shape
    assert uncompressed.max() - uncompressed.min() > 0.5
    np.testing.assert_allclose(lossless, uncompressed, atol=1e-6)


@needs_data
def test_radiograph_j2k_lossy_is_close() -> None:
    lossy = read_dicom(data("RG1_J2KI.dcm"))
    reference = read_dicom(data("RG1_UNCI.dcm"))
    assert np.abs(lossy - reference).mean() < 0.01


@needs_data
def test_monochrome1_is_inverted_after_the_file_window() -> None:
    path = data("RG1_UNCR.dcm")
    ds = raw(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "VOILUTFunction" not in ds
    stored = ds.pixel_array.astype(np.float64)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 1.0 - np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    image = read_dicom(path)
    np.testing.assert_allclose(image, expected, atol=1e-5)
    assert np.corrcoef(stored.ravel(), image.ravel())[0, 1] < -0.99


@needs_data
@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm"])
def test_radiograph_modality(name: str) -> None:
    assert dicom_modality(data(name)) == "chest_xray"


@needs_data
def test_ct_lung_window_in_hounsfield_units() -> None:
    path = data("693_UNCR.dcm")
    hu = hounsfield(path)
    image = read_dicom(path)
    assert_unit_image(image, 2)
    np.testing.assert_allclose(image, lung_window(hu), atol=1e-6)
    assert hu[0, 0] == -3024 and image[0, 0] == 0.0
    bone = tuple(np.argwhere(hu > 150)[0])
    assert image[bone] == 1.0
    air = tuple(np.argwhere(hu == -1000)[0])
    assert image[air] == pytest.approx((-1000 + 1350) / 1500, abs=1e-6)


@needs_data
def test_ct_custom_window_changes_output() -> None:
    path = data("693_UNCR.dcm")
    hu = hounsfield(path)
    lung, mediastinal = read_dicom(path), read_dicom(path, window=MEDIASTINAL_WINDOW)
    assert not np.allclose(lung, mediastinal)
    np.testing.assert_allclose(mediastinal, lung_window(hu, MEDIASTINAL_WINDOW), atol=1e-6)
    assert mediastinal[tuple(np.argwhere(hu == -1000)[0])] == 0.0
    assert dicom_modality(path) == "ct"


@needs_data
def test_ct_j2k_lossless_equals_uncompressed() -> None:
    np.testing.assert_allclose(read_dicom(data("693_J2KR.dcm")), read_dicom(data("693_UNCR.dcm")), atol=1e-6)


def test_ct_small_from_pydicom() -> None:
    image = read_dicom(CT_SMALL)
    assert image.shape == (128, 128)
    np.testing.assert_allclose(image, lung_window(hounsfield(CT_SMALL)), atol=1e-6)
    assert dicom_modality(CT_SMALL) == "ct"


def test_invalid_window_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="window"):
        read_dicom(CT_SMALL, window=(40.0, 0.0))


@needs_data
@pytest.mark.parametrize("name", ["MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "vlut_04.dcm", "mlut_18.dcm", "JPEG-LL.dcm"])
def test_other_grayscale_reads_to_unit_range(name: str) -> None:
    image = read_dicom(data(name))
    assert_unit_image(image, 2)
    assert image.max() - image.min() > 0.5


@needs_data
def test_rgb_and_ybr_colour() -> None:
    rgb, ybr = read_dicom(data("SC_rgb.dcm")), read_dicom(data("SC_ybr_full_uncompressed.dcm"))
    assert_unit_image(rgb, 3)
    assert rgb.shape == (100, 100, 3)
    np.testing.assert_allclose(ybr, rgb, atol=7 / 255)
    np.testing.assert_array_equal(read_dicom(data("SC_rgb_16bit.dcm")), read_dicom(data("SC_rgb_expb_16bit.dcm")))
    np.testing.assert_array_equal(read_dicom(data("US1_J2KR.dcm")), read_dicom(data("US1_UNCR.dcm")))


@needs_data
def test_palette_colour_is_applied_in_any_byte_order() -> None:
    path = data("OBXXXX1A.dcm")
    ds = raw(path)
    lut = np.stack([np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, "<u2") for c in ("Red", "Green", "Blue")], -1)
    expected = lut[ds.pixel_array] / 65535
    image = read_dicom(path)
    assert image.shape == (600, 800, 3)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    np.testing.assert_array_equal(read_dicom(data("OBXXXX1A_expb.dcm")), image)
    np.testing.assert_array_equal(read_dicom(data("OBXXXX1A_rle.dcm")), image)


@needs_data
def test_headerless_palette_file_reads_with_inferred_syntax() -> None:
    path = data("OT-PAL-8-face.dcm")
    assert path.read_bytes()[128:132] != b"DICM"
    ds = raw(path)
    indices = np.frombuffer(ds.PixelData, np.uint8).reshape(480, 640)
    lut = np.stack([np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, "<u2") for c in ("Red", "Green", "Blue")], -1)
    np.testing.assert_allclose(read_dicom(path), lut[indices] / 65535, atol=1e-6)
    assert dicom_modality(path) is None


def test_headerless_copy_reads_like_the_original(tmp_path: Path) -> None:
    copy = tmp_path / "no_preamble.dcm"
    copy.write_bytes(CT_SMALL.read_bytes()[132:])
    np.testing.assert_array_equal(read_dicom(copy), read_dicom(CT_SMALL))


@needs_data
def test_headerless_file_with_short_pixel_data_is_rejected(tmp_path: Path) -> None:
    copy = tmp_path / "face_cut.dcm"
    copy.write_bytes(data("OT-PAL-8-face.dcm").read_bytes()[:-1000])
    with pytest.raises(DataError) as excinfo:
        read_dicom(copy)
    assert "not a readable DICOM file" in assert_one_line_error(excinfo, copy)


@needs_data
def test_file_without_pixel_data_is_rejected() -> None:
    path = data("emri_small_jpeg_2k_lossless_too_short.dcm")
    with pytest.raises(DataError) as excinfo:
        read_dicom(path)
    assert "truncated" in assert_one_line_error(excinfo, path)


@needs_data
@pytest.mark.parametrize(("name", "frames"), [("emri_small.dcm", 10), ("eCT_Supplemental.dcm", 2)])
def test_multi_frame_is_rejected(name: str, frames: int) -> None:
    path = data(name)
    with pytest.raises(DataError) as excinfo:
        read_dicom(path)
    assert f"multi-frame DICOM ({frames} frames)" in assert_one_line_error(excinfo, path)


@needs_data
@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
def test_truncated_copy_is_rejected(tmp_path: Path, name: str) -> None:
    source = data(name)
    content = source.read_bytes()
    pixel_bytes = len(raw(source).PixelData)
    copy = tmp_path / f"cut_{name}"
    copy.write_bytes(content[: len(content) - pixel_bytes // 2])
    with pytest.raises(DataError) as excinfo:
        read_dicom(copy)
    assert "re-export it from the PACS" in assert_one_line_error(excinfo, copy)


def test_text_file_renamed_dcm_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / "notes.dcm"
    fake.write_text("Patient: not an image\nthis is a text file\n")
    for call in (read_dicom, dicom_modality):
        with pytest.raises(DataError) as excinfo:
            call(fake)
        assert "not a readable DICOM file" in assert_one_line_error(excinfo, fake)
    with pytest.raises(DataError):
        deidentify(fake, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()


@needs_data
def test_bad_sequence_file_still_reads() -> None:
    image = read_dicom(data("bad_sequence.dcm"))
    assert image.shape == (512, 512)


@needs_data
def test_reader_leaks_no_warnings(recwarn: pytest.WarningsRecorder) -> None:
    with pytest.raises(DataError):
        read_dicom(data("emri_small_jpeg_2k_lossless_too_short.dcm"))
    read_dicom(data("OT-PAL-8-face.dcm"))
    assert len(recwarn) == 0


@needs_data
def test_read_image_integration() -> None:
    image = read_image(data("RG3_UNCR.dcm"), channels=3)
    assert image.shape == (1760, 1760, 3)


def test_phi_keywords_are_dicom_keywords() -> None:
    assert all(keyword in keyword_dict for keyword in PHI_KEYWORDS)
    assert {"PatientName", "PatientID", "PatientBirthDate", "StudyDate", "InstitutionName", "AccessionNumber"} <= set(PHI_KEYWORDS)


@pytest.mark.parametrize("name", ["CT_small.dcm", "RG1_UNCR.dcm"])
def test_deidentify_removes_phi_and_keeps_pixels(tmp_path: Path, name: str) -> None:
    source = CT_SMALL if name == CT_SMALL.name else data(name)  # pydicom's own test file, then pydicom-data's
    dst = tmp_path / "out" / "anon.dcm"
    deidentify(source, dst)
    before, after = raw(source), pydicom.dcmread(dst)
    phi_present = [k for k in PHI_KEYWORDS if str(before.get(k) or "")]
    assert len(phi_present) >= 10
    for keyword in phi_present:
        assert str(after.get(keyword) or "") != str(before.get(keyword)), keyword
    assert not any(element.tag.is_private for element in after.iterall())
    assert after.PatientIdentityRemoved == "YES"
    assert "Basic Application Level Confidentiality Profile" in after.DeidentificationMethod[0]
    assert after.PixelData == before.PixelData
    np.testing.assert_array_equal(read_dicom(dst), read_dicom(source))
    assert list(dst.parent.iterdir()) == [dst]


def test_deidentify_refuses_burned_in_annotation(tmp_path: Path) -> None:
    flagged = tmp_path / "burned.dcm"
    ds = raw(CT_SMALL)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(flagged)
    with pytest.raises(DataError) as excinfo:
        deidentify(flagged, tmp_path / "anon.dcm")
    assert_one_line_error(excinfo, flagged)
    assert not (tmp_path / "anon.dcm").exists()


def test_patient_key_is_a_keyed_pseudonym(tmp_path: Path) -> None:
    patient_id = str(raw(CT_SMALL).PatientID)
    first = dicom_patient_key(CT_SMALL, b"secret-1")
    assert first is not None and re.fullmatch(r"pt-[0-9a-f]{16}", first)
    assert dicom_patient_key(CT_SMALL, b"secret-1") == first
    assert dicom_patient_key(CT_SMALL, b"secret-2") != first
    assert patient_id not in first
    anonymous = tmp_path / "no_id.dcm"
    ds = raw(CT_SMALL)
    ds.PatientID = ""
    ds.save_as(anonymous)
    assert dicom_patient_key(anonymous, b"secret-1") is None
    with pytest.raises(ValueError, match="needs a non-empty secret key"):
        dicom_patient_key(CT_SMALL, b"")
