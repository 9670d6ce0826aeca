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
and goes on in its own process with the cached result. With ``$MEDSEC_NNODES`` > 1 the job is also left in the
shared cache, where :func:`follow`, running on each other node, joins it through a c10d rendezvous that the
notebook's node hosts at ``$MEDSEC_RDZV_ENDPOINT``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")
_MODULE = __spec__.name if __spec__ else __name__  # what torchrun's processes run, also when this runs as __main__


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


NODES_ENV = "MEDSEC_NNODES"  # nodes that train each model together (default 1)
ENDPOINT_ENV = "MEDSEC_RDZV_ENDPOINT"  # host:port of this node's rendezvous, which the other nodes join
JOBS_FOLDER = "torchrun_jobs"  # under the (shared) artefact cache: jobs waiting for the other nodes


def run(nproc: int, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call ``function(*args, **kwargs)`` for its files: here when this process already runs under torchrun or
    there is one process to run; else on ``nproc`` processes of this node started with ``torchrun --standalone``,
    or, with ``$MEDSEC_NNODES`` > 1, on ``nproc`` processes here and those of :func:`follow` on the other nodes,
    which meet at ``$MEDSEC_RDZV_ENDPOINT`` (this node hosts the rendezvous). ``function`` must be importable by
    name; the arguments travel pickled through a job file; a ``device`` keyword becomes each process's own device
    (:func:`local_device`) and ``progress`` shows on rank 0 only. The processes' output is relayed here as it
    comes, so progress bars show in a notebook.

    Raises:
        ValueError: several nodes without ``$MEDSEC_RDZV_ENDPOINT``.
        RuntimeError: torchrun failed; the message names its exit code and ends with its last output.
    """
    nnodes = int(os.environ.get(NODES_ENV, "1"))
    if world_size() > 1 or (nproc <= 1 and nnodes <= 1):
        function(*args, **kwargs)
        return
    spec = {"function": f"{function.__module__}:{function.__qualname__}", "args": args, "kwargs": kwargs}
    if nnodes <= 1:
        with tempfile.TemporaryDirectory(prefix="medsec-torchrun-") as folder:
            job = Path(folder) / "job.pt"
            torch.save(spec, job)
            _torchrun(["--standalone", f"--nproc_per_node={nproc}"], job, function.__qualname__)
        return
    endpoint = os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        raise ValueError(f"{NODES_ENV}={nnodes} needs {ENDPOINT_ENV}=host:port, an address of this node that the "
                         f"other nodes reach (they run: python -m {_MODULE} follow)")
    jobs = jobs_folder()
    jobs.mkdir(parents=True, exist_ok=True)
    for stale in jobs.glob("*.pt"):  # left by a notebook on this node that was killed: no follower should join it
        if not _alive(int(stale.stem.rsplit("-", 1)[-1])):
            stale.unlink(missing_ok=True)
    job = jobs / f"{time.time_ns()}-{os.getpid()}.pt"
    torch.save(spec, job.with_suffix(".part"))
    os.replace(job.with_suffix(".part"), job)
    try:
        _torchrun(_rendezvous(nproc, nnodes, endpoint, job, host=True), job, function.__qualname__)
    finally:
        job.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def jobs_folder() -> Path:
    """Where :func:`run` leaves jobs for the other nodes: ``torchrun_jobs`` in the artefact cache, which several
    nodes must share anyway (rank 0, on whichever node, writes the artefacts there). The cache's root is read as
    ``cache.cache_root`` reads it; ``cache`` imports this module, so this one cannot import it."""
    return Path(os.environ.get("MEDSEC_CACHE") or Path.home() / ".cache" / "medsec").expanduser() / JOBS_FOLDER


def follow(nproc: int, nnodes: int, endpoint: str, *, jobs: Path | None = None, poll: float = 1.0,
           once: bool = False) -> None:
    """On a node other than the notebook's: join every job :func:`run` leaves in :func:`jobs_folder` with
    ``nproc`` processes, one job at a time, until interrupted (``once``: after the first job). A failed job is
    reported and the next one is taken."""
    jobs = jobs or jobs_folder()
    jobs.mkdir(parents=True, exist_ok=True)
    joined: set[str] = set()
    print(f"following {jobs}: {nproc} processes per job, rendezvous at {endpoint} (Ctrl-C stops)", flush=True)
    while True:
        for job in sorted(jobs.glob("*.pt")):
            if job.name in joined:
                continue
            joined.add(job.name)
            try:
                _torchrun(_rendezvous(nproc, nnodes, endpoint, job, host=False), job, job.stem)
            except RuntimeError as error:
                print(error, file=sys.stderr, flush=True)
            if once:
                return
        time.sleep(poll)


def _rendezvous(nproc: int, nnodes: int, endpoint: str, job: Path, *, host: bool) -> list[str]:
    """torchrun's options for one job on one of ``nnodes`` nodes: a c10d rendezvous named after the job."""
    return [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={job.stem}", f"--rdzv-conf=is_host={int(host)}"]


def _torchrun(options: list[str], job: Path, name: str) -> None:
    """Run ``job`` under torchrun with ``options``, relaying its output to stderr as it comes."""
    command = [sys.executable, "-m", "torch.distributed.run", *options, "-m", _MODULE, str(job)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        tail = b""
        while chunk := process.stdout.read1(4096):
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()
            tail = (tail + chunk)[-3000:]
    if process.returncode:
        raise RuntimeError(f"torchrun {' '.join(options)} {name} exited with "
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


def _main(argv: list[str]) -> None:
    if argv[:1] != ["follow"]:
        _run_job(Path(argv[0]))
        return
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE} follow", description=follow.__doc__)
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes on this node")
    parser.add_argument("--nnodes", type=int, required=True, help="nodes in all, as MEDSEC_NNODES on the first")
    parser.add_argument("--rdzv-endpoint", required=True, help="host:port, as MEDSEC_RDZV_ENDPOINT on the first")
    parser.add_argument("--once", action="store_true", help="stop after one job")
    options = parser.parse_args(argv[1:])
    try:
        follow(options.nproc_per_node, options.nnodes, options.rdzv_endpoint, once=options.once)
    except KeyboardInterrupt:
        print("stopped following", file=sys.stderr)


if __name__ == "__main__":
    _main(sys.argv[1:])
