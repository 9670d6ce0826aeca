"""Where tests find real data: ../shared/data beside the repository, and pydicom-data's DICOM files."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def pydicom_data_dir() -> Path | None:
    """Folder of the pydicom-data package's files (package ``data_store``), or None if not installed."""
    try:
        import data_store
    except ImportError:
        return None
    folder = Path(data_store.__file__).parent / "data"
    return folder if folder.is_dir() else None


def pinned_dicom(*names: str) -> Path:
    """pydicom-data's folder, holding every file of ``names``. It is pinned in requirements.txt, so a missing file
    fails the test, naming the fix, instead of skipping it (a skip would hide the DICOM tests silently)."""
    import pytest

    folder = pydicom_data_dir()
    missing = [name for name in names if folder is None or not (folder / name).is_file()]
    if missing:
        pytest.fail(f"pydicom-data (pinned in requirements.txt) lacks {', '.join(missing)}: run scripts/install.sh",
                    pytrace=False)
    return folder


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data. The test skips when that folder is absent altogether (a clone without the
    shared data) and fails, naming what is missing, when the folder is there but incomplete."""
    import pytest

    if not SHARED.is_dir():
        pytest.skip(f"no real data at {SHARED}")
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing from {SHARED}: the shared data are incomplete (see its README)", pytrace=False)
    return path
