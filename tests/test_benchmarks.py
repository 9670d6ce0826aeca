"""Benchmark scripts end to end in their quick modes: they run and print well-formed figures."""

import math
import os
import subprocess
import sys

from _paths import REPO

SPEEDUP_SECTIONS = ("training", "attack", "inference")
SPEEDUP_VARIANTS = ("float32", "channels_last", "bf16_autocast")


def test_bench_speedups_quick():
    """Every section has a row per variant with a positive finite ratio, the baseline at 1, "adopt" only above 1.1.

    One thread: a smoke check of the table, not a measurement (two threads on a busy 2-core machine spin in
    their barriers and take minutes).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_speedups.py"), "--quick", "--size", "16",
                          "--batch", "2", "--infer-batch", "2", "--repeats", "1"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {(fields[0], fields[1]): fields for fields in (line.split() for line in run.stdout.splitlines())
            if len(fields) > 5 and fields[0] in SPEEDUP_SECTIONS}
    assert set(rows) == {(section, variant) for section in SPEEDUP_SECTIONS for variant in SPEEDUP_VARIANTS}
    for (section, variant), fields in rows.items():
        seconds, images_per_second, ratio = map(float, fields[2:5])
        assert all(math.isfinite(v) and v > 0 for v in (seconds, images_per_second, ratio)), fields
        verdict = " ".join(fields[5:])
        if variant == "float32":
            assert ratio == 1.0 and verdict == "baseline"
        elif verdict.startswith("adopt"):
            assert ratio >= 1.1, fields
        elif ratio <= 1.1:
            assert verdict.startswith("keep"), fields
    assert "torch.compile: skipped" in run.stdout
    assert run.stdout.startswith("torch ") and "threads 1" in run.stdout.splitlines()[0]
