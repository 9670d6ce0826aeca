"""Unchanged reruns: ``compendium.py run`` keeps a chapter whose inputs and files are as its last finished run
left them, and executes it again when any of them changed (or with ``--force``).

The chapters here are a one-cell notebook that counts its executions, so each test costs a kernel start, not a
chapter; the data checksum is checked on a small image folder."""

import importlib.util
import json
import shutil

import nbformat
import numpy as np
import pytest
from PIL import Image

from _paths import REPO
from medsec_utils import data


@pytest.fixture
def compendium(tmp_path, monkeypatch):
    """``scripts/compendium.py`` with its notebooks folder holding one counting chapter, ``01_count``."""
    spec = importlib.util.spec_from_file_location("compendium", REPO / "scripts" / "compendium.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    parameters = nbformat.v4.new_code_cell("profile = 'smoke'\noutput_dir = '.'\ndataset = None\nlabel = 'a'")
    parameters.metadata["tags"] = ["parameters"]
    count = nbformat.v4.new_code_cell(
        "from pathlib import Path\n"
        f"log = Path({str(tmp_path / 'executions.log')!r})\n"
        "log.write_text(log.read_text() + 'x' if log.exists() else 'x')\n"
        "Path(output_dir, 'metrics.json').write_text(repr(label))")
    nbformat.write(nbformat.v4.new_notebook(cells=[parameters, count], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), notebooks / "01_count.ipynb")
    monkeypatch.setattr(module, "NOTEBOOKS", notebooks)
    module.executions = lambda: len((tmp_path / "executions.log").read_text())
    return module


def _run(compendium, out, **options) -> dict:
    options = {"extra": {"label": "a"}, **options}
    compendium.run_chapters("smoke", out, ["phantom:ct"], [], planned=False, every=3600, **options)
    return json.loads((out / "wall_times.json").read_text())["chapters"]["01_count"]


def test_an_unchanged_chapter_is_kept_and_a_changed_one_executed_again(compendium, tmp_path, capsys):
    out = tmp_path / "run"
    assert not _run(compendium, out)["kept"] and compendium.executions() == 1
    record = _run(compendium, out)
    assert record["kept"] and compendium.executions() == 1
    assert "unchanged since" in capsys.readouterr().out

    (out / "01_count" / "metrics.json").write_text("'edited by hand'")
    assert not _run(compendium, out)["kept"] and compendium.executions() == 2
    assert (out / "01_count" / "metrics.json").read_text() == "'a'"

    assert not _run(compendium, out, extra={"label": "b"})["kept"] and compendium.executions() == 3
    assert not _run(compendium, out, extra={"label": "b"}, force=True)["kept"] and compendium.executions() == 4
    (out / "01_count" / "stray.txt").write_text("a file the run did not leave")
    assert not _run(compendium, out, extra={"label": "b"})["kept"] and compendium.executions() == 5


def test_an_edited_library_file_or_notebook_executes_the_chapter_again(compendium, tmp_path, monkeypatch):
    library = tmp_path / "medsec_utils"
    shutil.copytree(REPO / "medsec_utils", library, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(compendium, "LIBRARY", library)
    out = tmp_path / "run"
    _run(compendium, out)
    assert _run(compendium, out)["kept"]
    (library / "profiles.yaml").write_text((library / "profiles.yaml").read_text() + "\n# edited\n")
    assert not _run(compendium, out)["kept"] and compendium.executions() == 2
    notebook = compendium.NOTEBOOKS / "01_count.ipynb"
    notebook.write_text(notebook.read_text().replace("'x'", "'x' "))
    assert not _run(compendium, out)["kept"] and compendium.executions() == 3


def _image_folder(root):
    for label in ("normal", "pneumonia"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            pixels = np.full((12, 12), 40 * i + (100 if label == "pneumonia" else 0), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"p{i}.png")
    return root


def test_the_data_checksum_is_the_loaders_without_decoding_and_follows_every_byte(tmp_path):
    folder = _image_folder(tmp_path / "xray")
    before = data.spec_checksum(str(folder))
    assert before == data.load_dataset(str(folder), size=16, use_cache=False, progress=False).checksum
    assert data.spec_checksum(str(folder)) == before
    image = folder / "normal" / "p0.png"
    Image.fromarray(np.full((12, 12), 41, dtype=np.uint8)).save(image)
    assert data.spec_checksum(str(folder)) != before
    assert data.spec_checksum("phantom:ct?n=80") == "phantom:ct?n=80"
