"""Benchmark: what an unchanged rerun costs against the cold run, per chapter, and how the plan compared.

    python benchmarks/bench_rerun.py [--profile smoke] [--chapter 01 ...] [--dataset SPEC ...] [--keep DIR]

Runs the chosen chapters (default: all) with ``scripts/compendium.py run`` three times into one folder on a
fresh artefact cache: cold (everything computed), unchanged (each chapter kept after checking its inputs and
files), and executed again with ``--force`` (every artefact from the cache: what a chapter costs when its
notebook or library changed but its artefacts did not). Prints for each chapter the three wall times, the
two ratios to the cold run (goal for the unchanged rerun: 0.05) and the plan's estimate of the cold run.
The cache and run folder live in a temporary folder (``--keep DIR`` keeps them there instead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.05


def run(work: Path, label: str, profile: str, chapters: list[str], datasets: list[str], *flags: str) -> dict[str, dict]:
    """One ``compendium.py run`` into ``work/run``; its ``wall_times.json`` chapters."""
    out = work / "run"
    command = [sys.executable, str(ROOT / "scripts" / "compendium.py"), "run", "--profile", profile, "--out", str(out),
               "--progress-every", "600", "--plan", *flags]
    command += [arg for chapter in chapters for arg in ("--chapter", chapter)]
    command += [arg for spec in datasets for arg in ("--dataset", spec)]
    print(f"{label}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env=dict(os.environ, MEDSEC_CACHE=str(work / "cache")))
    return json.loads((out / "wall_times.json").read_text())["chapters"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--chapter", action="append", default=[])
    parser.add_argument("--dataset", action="append", default=[])
    parser.add_argument("--keep", type=Path, help="keep the cache and runs in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsec-rerun-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cold = run(work, "cold", args.profile, args.chapter, args.dataset)
        kept = run(work, "unchanged", args.profile, args.chapter, args.dataset)
        forced = run(work, "forced", args.profile, args.chapter, args.dataset, "--force")
    print(f"\n{args.profile} profile, {', '.join(args.dataset) or 'the phantoms'}; goal: unchanged rerun <= {GOAL} "
          f"x cold; forced: executed again, every artefact from the cache")
    print(f"{'chapter':22s} {'planned s':>10s} {'cold s':>9s} {'rerun s':>9s} {'rerun/cold':>10s} {'forced s':>9s} "
          f"{'forced/cold':>11s}  verdict")
    for chapter, first in cold.items():
        again, executed = kept[chapter]["seconds"], forced[chapter]["seconds"]
        ratio = again / first["seconds"]
        if not kept[chapter]["kept"]:
            sys.exit(f"{chapter} was executed again on the unchanged rerun: rerun with --keep DIR and compare "
                     f"DIR/run/{chapter}/inputs.json with what changed")
        planned = first.get("estimated_seconds")
        print(f"{chapter:22s} {planned or float('nan'):10.0f} {first['seconds']:9.1f} {again:9.1f} {ratio:10.3f} "
              f"{executed:9.1f} {executed / first['seconds']:11.3f}  {'meets' if ratio <= GOAL else 'misses'} the goal")
    total_cold, total_kept, total_forced = (sum(c["seconds"] for c in runs.values()) for runs in (cold, kept, forced))
    print(f"{'total':22s} {sum(c.get('estimated_seconds') or 0 for c in cold.values()):10.0f} {total_cold:9.1f} "
          f"{total_kept:9.1f} {total_kept / total_cold:10.3f} {total_forced:9.1f} {total_forced / total_cold:11.3f}")


if __name__ == "__main__":
    main()
