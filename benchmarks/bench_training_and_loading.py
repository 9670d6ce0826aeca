"""Benchmark: the project's training loop against raw timm steps, and data-loading throughput.

    python benchmarks/bench_training_and_loading.py [--images 256] [--size 64] [--batch 32] [--loading-only]

Prints (1) images/s of ``training.train_classifier`` and of a bare timm forward + backward + AdamW
step loop on the same batches, and their ratio (goal >= 0.9); (2) images/s of ``data.load_dataset``
decoding a manifest of JPEGs (the real chest X-rays of ../shared/data, or phantoms written as JPEG)
and a manifest of DICOM files (real radiographs of the pydicom-data package, half of them JPEG 2000)
with 1 worker process, 2 and one per core, and the speed-up over 1 worker measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medsec_utils import data, phantoms

ROOT = Path(__file__).resolve().parents[1]
SHARED_XRAY = ROOT.parent / "shared" / "data" / "chest_xray"
CPU = torch.device("cpu")


def raw_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Seconds for one pass of bare forward + backward + AdamW steps over ``x`` in order."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    for i in range(0, len(x) - batch + 1, batch):
        loss = F.cross_entropy(model(x[i:i + batch]), y[i:i + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def project_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Seconds for one epoch of ``train_classifier`` (augmentation, schedule, clipping; tiny val set)."""
    from medsec_utils import training  # not at the top: decoding workers import the main script's top level
    started = time.perf_counter()
    training.train_classifier(model, (x, y), (x[:2], y[:2]), epochs=1, batch_size=batch, lr=1e-3,
                              weight_decay=1e-4, seed=0, device=CPU, progress=False)
    return time.perf_counter() - started


def bench_training(n: int, size: int, batch: int) -> None:
    from medsec_utils import models  # not at the top: decoding workers import the main script's top level
    x = torch.rand(n, 1, size, size)
    y = torch.arange(n) % 2
    model = models.build_classifier(1)
    raw_steps(model, x[:batch * 2], y[:batch * 2], batch)  # warm-up: allocator, kernels
    times = {"raw timm": [], "project": []}
    for _ in range(2):  # interleaved, so drift in machine load hits both alike
        times["raw timm"].append(raw_steps(models.build_classifier(1), x, y, batch))
        times["project"].append(project_loop(models.build_classifier(1), x, y, batch))
    steps = n // batch * batch
    best = {name: min(values) for name, values in times.items()}
    print(f"training EfficientNet-B3, {steps} images at {size} px, batch {batch}, {torch.get_num_threads()} threads")
    for name, seconds in best.items():
        print(f"  {name:9s} {steps / seconds:7.1f} img/s  ({seconds:.1f} s, best of 2)")
    print(f"  ratio project / raw = {best['raw timm'] / best['project']:.3f}  (goal >= 0.9)")


def _jpeg_manifest(folder: Path, n: int) -> Path:
    made = phantoms.make_phantoms("chest_xray", n=n, size=224, seed=0)
    lines = ["path,label,patient_id,split"]
    for i, (image, label, patient) in enumerate(zip(made.images, made.labels, made.patient_ids)):
        Image.fromarray(image).save(folder / f"{i}.jpg", quality=90)
        lines.append(f"{i}.jpg,{label},{patient},")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def _dicom_manifest(folder: Path, copies: int) -> Path | None:
    try:
        import data_store
    except ImportError:
        return None
    store = Path(data_store.__file__).parent / "data"
    sources = {"RG1_UNCR.dcm": 1, "RG3_UNCR.dcm": 0, "RG1_J2KR.dcm": 1, "RG3_J2KR.dcm": 0}
    lines = ["path,label,patient_id,split"]
    for copy in range(copies):
        for name, label in sources.items():
            target = f"{copy}_{name}"
            shutil.copy(store / name, folder / target)
            lines.append(f"{target},{label},p{copy}{name[:3]},")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def bench_loading(size: int) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    worker_counts = sorted({1, 2, cores})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jpegs = SHARED_XRAY if SHARED_XRAY.is_dir() else _jpeg_manifest(tmp, 1000)
        (tmp / "dicom").mkdir()
        dicoms = _dicom_manifest(tmp / "dicom", copies=20)
        print(f"data loading at {size} px (decode, resize, quantise; no cache), {cores} cores, best of 2 "
              "interleaved rounds (the first also starts the fork server, once per session)")
        for label, spec in (("JPEG manifest", jpegs), ("DICOM manifest", dicoms)):
            if spec is None:
                print(f"  {label}: skipped (pydicom-data not installed)")
                continue
            times = {workers: [] for workers in worker_counts}
            for _ in range(2):  # interleaved, so drift in machine load hits every worker count alike
                for workers in worker_counts:
                    started = time.perf_counter()
                    images = data.load_dataset(str(spec), size=size, use_cache=False, progress=False, workers=workers)
                    times[workers].append(time.perf_counter() - started)
            rates = {workers: len(images.labels) / min(seconds) for workers, seconds in times.items()}
            for workers, rate in rates.items():
                print(f"  {label:15s} workers {workers}: {rate:7.1f} img/s  ({min(times[workers]):5.1f} s, "
                      f"speed-up {rate / rates[1]:.2f}x)")
            sizes = np.unique(images.native_sizes, axis=0)
            print(f"  {'':15s} {len(images.labels)} images, native {', '.join(f'{w}x{h}' for h, w in sizes[:3])}, "
                  f"{spec}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--loading-only", action="store_true", help="run the data-loading benchmark alone")
    args = parser.parse_args()
    torch.manual_seed(0)
    if not args.loading_only:
        bench_training(args.images, args.size, args.batch)
    bench_loading(args.size)


if __name__ == "__main__":
    main()
