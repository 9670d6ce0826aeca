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
