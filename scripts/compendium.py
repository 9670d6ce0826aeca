"""Run the chapter notebooks with papermill and build the Jupyter Book from a run.

    python scripts/compendium.py run --profile smoke --out runs/smoke [--dataset SPEC ...] [--chapter 01]
                                     [--param 'splits=[iid]' ...]
    python scripts/compendium.py book [--run runs/smoke] --out _build/smoke [--strict]

``run`` executes every notebook of ``notebooks/`` into ``OUT/<chapter>/`` (executed notebook,
``metrics.json``, figures). ``book`` stages the book sources, replaces the committed reference run by
``--run`` if given, and builds HTML with Jupyter Book 1 without executing anything again.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REFERENCE = ROOT / "book" / "reference"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book", "medsec_utils/profiles.yaml")


def run_chapters(profile: str, out: Path, datasets: list[str], chapters: list[str],
                 extra: dict | None = None) -> None:
    """Execute the chapter notebooks with papermill, each into ``out/<stem>/``; ``extra`` sets more parameters."""
    import papermill

    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    chosen = [nb for nb in notebooks if not chapters or nb.name[:2] in chapters]
    if not chosen:
        sys.exit(f"no chapter notebook matches {chapters} in {NOTEBOOKS}")
    for notebook in chosen:
        folder = out / notebook.stem
        folder.mkdir(parents=True, exist_ok=True)
        params = {"profile": profile, "output_dir": _relative(folder)}
        if datasets:
            params["dataset"] = datasets
        params.update(extra or {})
        print(f"== {notebook.name} -> {_relative(folder)} with {params}", flush=True)
        papermill.execute_notebook(str(notebook), str(folder / notebook.name), parameters=params, cwd=str(ROOT),
                                   kernel_name="python3", progress_bar=False, log_output=False)


def build_book(run: Path | None, out: Path, strict: bool) -> None:
    """Stage the book (optionally with another run's chapters) and build its HTML into ``out``."""
    with tempfile.TemporaryDirectory(prefix="medsec-book-") as tmp:
        stage = Path(tmp)
        for name in BOOK_SOURCES:
            source, target = ROOT / name, stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        if run is not None:
            _swap_in_run(run, stage / "book" / "reference")
        command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(stage), "--path-output", str(out.resolve())]
        if strict:
            command += ["-W", "-n", "--keep-going"]
        done = subprocess.run(command, check=False)
        if done.returncode:
            sys.exit(done.returncode)
    print(f"book: {out / '_build' / 'html' / 'index.html'}")


def _swap_in_run(run: Path, reference: Path) -> None:
    for chapter in sorted(p for p in reference.iterdir() if p.is_dir()):
        fresh = run / chapter.name
        if not (fresh / f"{chapter.name}.ipynb").is_file():
            sys.exit(f"{fresh}: no executed {chapter.name}.ipynb; run `scripts/compendium.py run` first")
        shutil.rmtree(chapter)
        shutil.copytree(fresh, chapter)


def parse_param(text: str) -> tuple[str, object]:
    """``name=value`` with a YAML value (``splits=[iid]``, ``periods=[1, 5]``), as papermill's ``-y`` reads it."""
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"--param {text!r}: write name=value, e.g. --param 'splits=[iid]'")
    return name.strip(), yaml.safe_load(value)


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the chapter notebooks with papermill")
    run.add_argument("--profile", default="smoke")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--dataset", action="append", default=[], help="DATASET spec (repeat for several)")
    run.add_argument("--chapter", action="append", default=[], help="two-digit chapter number (repeatable)")
    run.add_argument("--param", action="append", default=[], type=parse_param,
                     help="name=value: a notebook parameter for every chosen chapter (repeatable)")
    book = commands.add_parser("book", help="build the HTML book")
    book.add_argument("--run", type=Path, help="a run folder whose chapters replace the reference run")
    book.add_argument("--out", type=Path, required=True)
    book.add_argument("--strict", action="store_true", help="warnings are errors")
    args = parser.parse_args()
    if args.command == "run":
        run_chapters(args.profile, args.out, args.dataset, args.chapter, dict(args.param))
    else:
        build_book(args.run, args.out, args.strict)


if __name__ == "__main__":
    main()
