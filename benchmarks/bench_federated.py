"""Benchmark: a FedAvg round on Flower's simulation engine against the same round done in-process.

    python benchmarks/bench_federated.py [--profile cpu] [--dataset phantom:chest_xray] [--size 64] [--rounds 3]

Runs the same federation (two sites, one local DC-GAN epoch per round) twice: on Flower's simulation
engine, where each site is a Ray worker with one CPU, and in this process, where the sites train in turn
and Flower's own weighted average joins them. Prints seconds per round and their ratio (goal <= 1.5).
The simulation's first round also starts the sites (workers, imports, reading their tensors); it is printed
apart, and the steady-state ratio uses the later rounds, the regime a long federation runs in.
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
        started = time.perf_counter()
        flower = federated.simulate(config, sites).rounds()
        flower_total = time.perf_counter() - started
        started = time.perf_counter()
        local = federated.run_in_process({**config, "store": str(Path(tmp) / "in_process")}, list(sites.x), CPU).rounds()
        local_total = time.perf_counter() - started
    flower_later = np.mean([r["seconds"] for r in flower[1:]])
    local_round = np.mean([r["seconds"] for r in local])
    print(f"Flower simulation: first round {flower[0]['seconds']:.1f} s (starts the sites), later rounds "
          f"{flower_later:.2f} s each, whole run {flower_total:.1f} s")
    print(f"in process:        {local_round:.2f} s per round, whole run {local_total:.1f} s")
    print(f"ratio Flower / in process, steady state: {flower_later / local_round:.2f} (goal <= 1.5); "
          f"whole run: {flower_total / local_total:.2f}")
    print(f"payload per round: {flower[0]['bytes_to_sites'] + flower[0]['bytes_from_sites']:,} bytes")


if __name__ == "__main__":
    main()
