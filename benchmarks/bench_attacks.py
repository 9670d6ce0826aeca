"""Benchmark: the project's attack evaluation against a bare torchattacks call, same model and batch.

    python benchmarks/bench_attacks.py [--images 32] [--size 64] [--repeats 3] [--profile cpu]

For each attack, times ``attacks.evaluate_attack`` (clean prediction, attack of the correctly classified
images, prediction on the results) and the bare torchattacks equivalent (attack every image, predict on
the results) on an EfficientNet-B3 (random init) at the profile's attack settings. The labels are the
model's own clean predictions, so both attack every image. Runs are interleaved; prints median seconds
per image and the ratio project / bare (goal <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medsec_utils import attacks, models, profiles

CPU = torch.device("cpu")


def bare(model: torch.nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, eps: float, settings: dict) -> float:
    """Seconds for a plain torchattacks call on the whole batch plus one prediction on its output."""
    started = time.perf_counter()
    torch.manual_seed(0)
    adversarial = attacks.make_attack(name, model, eps, settings)(x, y)
    with torch.no_grad():
        model(adversarial).argmax(1)
    return time.perf_counter() - started


def project(model: torch.nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, eps: float, settings: dict) -> float:
    """Seconds for ``attacks.evaluate_attack`` on the same batch."""
    started = time.perf_counter()
    attacks.evaluate_attack(model, name, x, y, eps=eps, settings=settings, device=CPU, batch_size=len(x),
                            progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--eps", type=float, default=2 / 255)
    args = parser.parse_args()
    settings = profiles.resolve_profile(args.profile)
    torch.manual_seed(0)
    model = models.build_classifier(1).eval()
    x = torch.rand(args.images, 1, args.size, args.size)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image "correct": both sides attack all of them
    print(f"EfficientNet-B3, {args.images} images at {args.size} px, {torch.get_num_threads()} threads, "
          f"profile {args.profile}, eps {args.eps * 255:g}/255")
    print(f"{'attack':<11}{'bare s/img':>12}{'project s/img':>15}{'ratio':>8}")
    for name in attacks.ATTACKS:
        bare(model, name, x[:4], y[:4], args.eps, settings)  # warm-up
        times = {"bare": [], "project": []}
        for _ in range(args.repeats):
            times["bare"].append(bare(model, name, x, y, args.eps, settings))
            times["project"].append(project(model, name, x, y, args.eps, settings))
        b, p = (statistics.median(times[k]) / args.images for k in ("bare", "project"))
        print(f"{name:<11}{b:>12.4f}{p:>15.4f}{p / b:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
