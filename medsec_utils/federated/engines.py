"""The federation on Flower's two engines, started and stopped from Python: ``flwr run flower_app`` against a
SuperLink on 127.0.0.1 with a temporary ``FLWR_HOME``.

- :func:`simulate`: the simulation runtime (a SuperLink started with ``--simulation``, one simulated SuperNode
  per site), the way Flower 1.42 supports simulations (``run_simulation`` is deprecated);
- :func:`run_on_loopback`: the deployment engine (a SuperLink and one ``flower-supernode`` process per site),
  what a federation between hospitals runs on, here on one machine and without TLS.

Both hand the sites their tensors as a file in the artefact cache and the whole config as a JSON file named in
the run config (``config_file``), print the ServerApp's progress lines as they come, and stop every process they
started when the run ends, failed or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import torch

from .server_app import RoundStore
from .task import SITES, Sites, federation_config

FLOWER_APP = Path(__file__).resolve().parents[2] / "flower_app"  # the app folder `flwr run` takes, in the repository
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr of this environment
PROGRESS = re.compile(r"^(round \d+|resuming after|all \d+ rounds|.* holds \d+ round)")  # the ServerApp's own lines


def simulate(config: Mapping[str, Any], sites: Sites, *, verbose: bool = False) -> RoundStore:
    """Run the federation on ``sites`` on Flower's simulation runtime, one simulated SuperNode per site (one CPU
    each, and a share of the GPU if there is one). With ``verbose``, all of Flower's log is printed.

    Raises:
        ValueError: no ``store`` folder in the config.
        FileNotFoundError: the Flower app folder is missing (the library is not installed from the repository).
        RuntimeError: the federation stopped before its last round, with the end of Flower's log.
    """
    gpus = 1.0 / SITES if torch.cuda.is_available() else 0.0
    return _flwr_run(config, sites, verbose, ["--simulation"],
                     ["--federation-config",
                      f"num-supernodes={SITES} client-resources-num-cpus=1 client-resources-num-gpus={gpus}"])


def run_on_loopback(config: Mapping[str, Any], sites: Sites, *, verbose: bool = False) -> RoundStore:
    """Run the federation on ``sites`` on Flower's deployment engine on this machine: a SuperLink and one
    SuperNode process per site (``partition-id`` 0, 1, ...), insecure on 127.0.0.1. Raises as :func:`simulate`."""
    return _flwr_run(config, sites, verbose, [], [])


def _flwr_run(config: Mapping[str, Any], sites: Sites, verbose: bool, superlink_flags: list[str],
              run_flags: list[str]) -> RoundStore:
    config = federation_config(config)
    if not config["store"]:
        raise ValueError("a federation needs a store folder in the config, where the rounds are kept")
    if not (FLOWER_APP / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{FLOWER_APP}: no Flower app there; install medsec_utils from its repository "
                                f"(pip install -e .), which holds flower_app/")
    config["sites"] = str(sites.save())
    with tempfile.TemporaryDirectory(prefix="medsec-flower-") as folder:
        home = Path(folder)
        (home / "run_config.json").write_text(json.dumps(config))
        port = _free_port()
        (home / "config.toml").write_text(f'[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "OMP_NUM_THREADS": str(site_threads())}
        processes = [_start([BIN / "flower-superlink", "--insecure", *superlink_flags, "--host", "127.0.0.1",
                             "--port", str(port), "--disable-runtime-dependency-installation"], env)]
        try:
            _wait_for_port(port, processes[0])
            if not superlink_flags:
                processes += [_start([BIN / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                                      "--port", str(_free_port()), "--node-config", f"partition-id={site}"], env)
                              for site in range(SITES)]
            log = _stream([BIN / "flwr", "run", FLOWER_APP, "local", "--stream", *run_flags,
                           "--run-config", f"config_file='{home / 'run_config.json'}'"], env, verbose)
        finally:
            for process in processes:
                _stop(process)
    store = RoundStore(config["store"])
    if len(store.rounds()) < config["rounds"]:
        raise RuntimeError(f"the federation stopped after {len(store.rounds())} of {config['rounds']} rounds; the "
                           f"end of Flower's log:\n{log[-3000:]}")
    return store


def site_threads() -> int:
    """Threads each site's torch may use: this process's share per site. The sites train at the same time on this
    machine, and each would otherwise inherit all of this process's threads: on two cores, two sites at two threads
    each took 3.1 times as long per round as at one (``benchmarks/bench_site_threads.py``)."""
    return max(1, torch.get_num_threads() // SITES)


def _start(command: list[Any], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([str(part) for part in command], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _stream(command: list[Any], env: dict[str, str], verbose: bool) -> str:
    """Run ``command``, print its progress lines (every line with ``verbose``) as they come; its whole output."""
    lines = []
    with subprocess.Popen([str(part) for part in command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            lines.append(line)
            if verbose or PROGRESS.match(line):
                print(line, end="", flush=True)
    return "".join(lines)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the SuperLink did not listen on 127.0.0.1:{port} within {timeout:.0f} s "
                       f"(exit code {process.poll()})")


def _stop(process: subprocess.Popen) -> None:
    """Stop a process and every process it started (ServerApp, ClientApps, Ray workers)."""
    try:
        family = [process_info := psutil.Process(process.pid), *process_info.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=15)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait()
