"""Benchmark: training throughput on 1 process and on 2 processes under torchrun (gloo, CPU).

    python benchmarks/bench_distributed.py [--size 64] [--batch 32] [--steps 8] [--nproc 1,2]

Trains the chapter-1 classifier (EfficientNet-B3) and a DC-GAN for ``--steps`` global batches of ``--batch``
images, once per process count, with the library's own trainers (``training.train_classifier``,
``generative.train_dcgan``), and prints images per second, the ratio to one process and the time torchrun takes
to start. One process uses every core; N processes use one thread each (torchrun's default). On a machine
whose processes share the same cores no speed-up is possible: the ratio then measures the cost of the
gradient all-reduce and of running N smaller batches. With one GPU per process the same code scales with the
number of devices as long as each process's share of the batch keeps its device busy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from medsec_utils import distributed, generative, training
from medsec_utils.models import build_classifier

GAN_SETTINGS = {"latent_dim": 64, "gan_width": 32}


def measure(result: Path, kind: str, size: int, batch: int, steps: int, *, device: torch.device,
            progress: bool) -> None:
    """Train ``kind`` for ``steps`` global batches; rank 0 saves seconds of training (after start-up)."""
    torch.manual_seed(0)
    x = torch.rand(batch * steps, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(len(x)) % 2
    distributed.barrier()
    started = time.perf_counter()
    if kind == "classifier":
        training.train_classifier(build_classifier(1), (x, y), (x[:batch], y[:batch]), epochs=1, batch_size=batch,
                                  lr=1e-3, weight_decay=0.0, seed=0, device=device, progress=progress)
    else:
        generator, discriminator = generative.build_generative("dcgan", 1, size, GAN_SETTINGS)
        generative.train_dcgan(generator, discriminator, x, epochs=1, batch_size=batch, lr=2e-4, seed=0,
                               device=device, progress=progress, average=False)
    distributed.barrier()
    if distributed.is_main():
        torch.save({"seconds": time.perf_counter() - started, "threads": torch.get_num_threads()}, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--nproc", default="1,2", help="comma-separated process counts")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    counts = [int(n) for n in args.nproc.split(",")]
    job = importlib.import_module("bench_distributed").measure  # by its module name, which torchrun's processes import
    print(f"{os.cpu_count()} cores; {args.steps} global batches of {args.batch} images at {args.size} px per run")
    for kind in ("classifier", "dcgan"):
        base = None
        for nproc in counts:
            with tempfile.TemporaryDirectory() as folder:
                result = Path(folder) / "result.pt"
                started = time.perf_counter()
                distributed.run(nproc, job, result, kind, args.size, args.batch, args.steps,
                                device=torch.device("cpu"), progress=False)
                wall = time.perf_counter() - started
                measured = torch.load(result)
            rate = args.batch * args.steps / measured["seconds"]
            base = base or rate
            print(f"{kind:10s} {nproc} process(es) x {measured['threads']} thread(s): {rate:7.1f} images/s, "
                  f"{rate / base:.2f}x one process; start-up and imports {wall - measured['seconds']:.1f} s",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
