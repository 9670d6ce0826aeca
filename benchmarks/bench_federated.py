"""Benchmark: a FedAvg round on Flower's simulation and deployment engines against the same round in-process.

    python benchmarks/bench_federated.py [--profile cpu] [--dataset phantom:chest_xray] [--size 64] [--rounds 3]

Runs the same federation (two sites, one local DC-GAN epoch per round) three times: on Flower's simulation
runtime (``federated.simulate``: each site a Ray worker with one CPU), on the deployment engine on this machine
(``federated.run_on_loopback``: a SuperLink and two SuperNode processes), and in this process, where the sites
train in turn and Flower's own weighted average joins them. Prints seconds per round and the ratios to in-process
(goal <= 1.5 for the simulation). The first round on Flower also starts the sites (workers, imports, reading
their tensors); it is printed apart, and the steady-state ratios use the later rounds, the regime a long
federation runs in. Whole-run times include starting and stopping the SuperLink.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medsec_utils import data, federated, profiles

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--dataset", default="phantom:chest_xray")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = profiles.resolve_profile(args.profile)
    images = data.load_dataset(args.dataset, size=args.size, seed=0, phantom_images=settings.phantom_images)
    sites = federated.Sites.from_sets([images], limit=settings.max_train_images)
    with tempfile.TemporaryDirectory() as tmp:
        config = federated.federation_config(dict(image_size=args.size, rounds=args.rounds,
                                                  store=str(Path(tmp) / "flower")), settings)
        print(f"{args.dataset} at {args.size} px, profile {args.profile}: sites of {[len(x) for x in sites.x]} images, "
              f"{args.rounds} rounds of 1 local epoch, {torch.get_num_threads()} threads in process")
        engines = {}
        for name, engine in (("simulation", federated.simulate), ("deployment", federated.run_on_loopback)):
            started = time.perf_counter()
            rounds = engine({**config, "store": str(Path(tmp) / name)}, sites).rounds()
            engines[name] = (rounds, time.perf_counter() - started)
        started = time.perf_counter()
        local = federated.run_in_process({**config, "store": str(Path(tmp) / "in_process")}, list(sites.x), CPU).rounds()
        local_total = time.perf_counter() - started
    local_round = np.mean([r["seconds"] for r in local])
    print(f"in process:          {local_round:.2f} s per round, whole run {local_total:.1f} s")
    for name, (rounds, total) in engines.items():
        later = np.mean([r["seconds"] for r in rounds[1:]])
        print(f"Flower {name + ':':12s} first round {rounds[0]['seconds']:.1f} s (starts the sites), later rounds "
              f"{later:.2f} s each, whole run {total:.1f} s; ratio to in process {later / local_round:.2f} steady "
              f"state{' (goal <= 1.5)' if name == 'simulation' else ''}, {total / local_total:.2f} whole run")
    first = engines["simulation"][0][0]
    print(f"payload per round: {first['bytes_to_sites'] + first['bytes_from_sites']:,} bytes")


if __name__ == "__main__":
    main()
