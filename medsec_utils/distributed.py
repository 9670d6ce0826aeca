"""Data-parallel training under ``torchrun``: one process per device, each on its share of every batch.

Every trainer runs unchanged on one process. Under ``torchrun --nproc_per_node=N`` (which sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``) the first call here joins the process group (NCCL on CUDA, gloo on CPU) and then:

- every process shuffles with the same seeded generator and keeps the slice ``rank::N`` of each global batch
  (:func:`shard`), so the processes see disjoint images and together exactly the batch one process would see;
- gradients are averaged over the processes before each optimiser step: by ``DistributedDataParallel``
  (:func:`parallel`) where one network is run forward and backward once per step (classifiers, adversarial
  training, HGD, MagNet), and by one all-reduce of the gradients (:func:`average_gradients`) in the generators'
  loops, whose critic runs several times per step and is differentiated twice for ProGAN's gradient penalty,
  which DDP does not support (NVIDIA's StyleGAN3 training loop averages its gradients the same way);
- only rank 0 writes files (:mod:`medsec_utils.cache` asks :func:`is_main`); the others wait for it
  (:func:`barrier`) and read what it wrote, so a multi-node run needs the cache on a shared file system.

Batch-norm statistics stay per process on CPU (``SyncBatchNorm`` needs a GPU): with batch norm, N processes
match one process only as closely as batch statistics over 1/N of the batch match those over all of it.

A notebook hands its training to torchrun through :func:`run` (the trainers' ``nproc`` argument): it starts
``torchrun --standalone --nproc_per_node=N`` on one trainer's producing function, which fills the artefact cache,
and goes on in its own process with the cached result.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


def world_size() -> int:
    """Number of processes training together: ``WORLD_SIZE`` under torchrun, else 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return size


def rank() -> int:
    """This process's rank (0 on one process)."""
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    """True on the process that writes files: rank 0, or the only process."""
    return rank() == 0


def local_device() -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` on a GPU machine, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This process's slice ``rank::world_size`` of a global batch (the whole batch on one process)."""
    size = world_size()
    return batch if size == 1 else batch[rank()::size]


def draws(shared: torch.Generator, seed: int, epoch: int) -> torch.Generator:
    """The generator a process draws its noise from during ``epoch``: ``shared`` itself on one process; with
    several, a generator of its own seeded by ``(seed, epoch, rank)``, so the processes draw independent noise
    while the shuffles they draw from ``shared`` stay identical. Derived afresh every epoch, so a run resumed
    after its last checkpointed epoch draws the same, on any number of processes."""
    if world_size() == 1:
        return shared
    digest = hashlib.sha256(f"{seed}:{epoch}:{rank()}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def parallel(model: nn.Module) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` under torchrun (gradients averaged in backward, buffers
    taken from rank 0 at each forward), else ``model`` itself. Parameters are shared with ``model``."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replace each gradient by its mean over the processes (one all-reduce of all of them); nothing on one."""
    size = world_size()
    if size == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads:
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def barrier() -> None:
    """Wait until every process arrives here; nothing on one process."""
    if world_size() > 1:
        dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every process (any picklable object); ``value`` itself on one process."""
    if world_size() == 1:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run(nproc: int, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call ``function(*args, **kwargs)`` for its files: here when ``nproc`` is 1 or this process already runs under
    torchrun, else on ``nproc`` processes of one node started with ``torchrun --standalone``. ``function`` must
    be importable by name; the arguments travel pickled through a temporary file; a ``device`` keyword becomes
    each process's own device (:func:`local_device`) and ``progress`` shows on rank 0 only. The processes'
    output is relayed here as it comes, so progress bars show in a notebook.

    Raises:
        RuntimeError: torchrun failed; the message names its exit code and ends with its last output.
    """
    if nproc <= 1 or world_size() > 1:
        function(*args, **kwargs)
        return
    with tempfile.TemporaryDirectory(prefix="medsec-torchrun-") as folder:
        job = Path(folder) / "job.pt"
        torch.save({"function": f"{function.__module__}:{function.__qualname__}", "args": args, "kwargs": kwargs},
                   job)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", __name__, str(job)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
            tail = b""
            while chunk := process.stdout.read1(4096):
                sys.stderr.write(chunk.decode(errors="replace"))
                sys.stderr.flush()
                tail = (tail + chunk)[-3000:]
        if process.returncode:
            raise RuntimeError(f"torchrun --nproc_per_node={nproc} {function.__qualname__} exited with "
                               f"{process.returncode}:\n{tail.decode(errors='replace')}")


def _run_job(job: Path) -> None:
    """The body of every process :func:`run` starts."""
    spec = torch.load(job, weights_only=False)
    module, name = spec["function"].split(":")
    function = importlib.import_module(module)
    for part in name.split("."):
        function = getattr(function, part)
    kwargs = spec["kwargs"]
    if "device" in kwargs:
        kwargs["device"] = local_device()
    if "progress" in kwargs:
        kwargs["progress"] = kwargs["progress"] and is_main()
    function(*spec["args"], **kwargs)
    barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _run_job(Path(sys.argv[1]))
