"""Benchmark: seconds per FedAvg round on Flower's simulation engine with each site at all of this process's threads
(what the sites inherited before ``federated.engines.site_threads``) and at its share, beside the same rounds in
process.

    OMP_NUM_THREADS=2 python benchmarks/bench_site_threads.py [--dataset ../shared/data/ct] [--rounds 3]

The two sites train at the same time on this machine; at two threads each on two cores they oversubscribe it.
Measured 2026-12-07 on 2 cores (CT, sites of 348 and 349 images, 64 px, cpu profile): rounds after the first
14.6 s at two threads per site, 4.7 s at one, 4.9 s in process.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from medsec_utils import data, federated, profiles
from medsec_utils.federated import engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="../shared/data/ct")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = profiles.resolve_profile("cpu")
    images = data.load_dataset(args.dataset, size=64, seed=0, phantom_images=settings.phantom_images, progress=False)
    sites = federated.Sites.from_sets([images], limit=settings.max_train_images)
    print(f"{args.dataset}: sites of {[len(x) for x in sites.x]} images, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads in this process", flush=True)
    share = engines.site_threads()
    with tempfile.TemporaryDirectory() as tmp:
        config = federated.federation_config(dict(image_size=64, rounds=args.rounds, store=str(Path(tmp) / "x")),
                                             settings)
        for name, threads in (("all threads per site", torch.get_num_threads()), ("share per site", share)):
            engines.site_threads = lambda threads=threads: threads
            done = federated.simulate({**config, "store": str(Path(tmp) / name)}, sites).rounds()
            print(f"simulation, {name} ({threads}): rounds {[round(r['seconds'], 1) for r in done]} s", flush=True)
        local = federated.run_in_process({**config, "store": str(Path(tmp) / "in")}, list(sites.x),
                                         torch.device("cpu")).rounds()
        print(f"in process: rounds {[round(r['seconds'], 1) for r in local]} s", flush=True)


if __name__ == "__main__":
    main()
