"""Differentially private training (DP-SGD, Abadi et al., ACM CCS 2016) with Opacus, the yardstick the privacy
chapter holds synthetic images against.

DP-SGD clips each image's gradient to ``max_grad_norm`` and adds Gaussian noise to their sum; Opacus picks the
noise multiplier that spends exactly the budget (epsilon, delta) over the run's steps with Poisson-sampled batches,
by its Renyi-DP accountant (Mironov 2017; Mironov, Talwar & Zhang 2019). Batch norm mixes the images of a batch,
so no per-image gradient exists: :func:`dp_compatible` swaps every batch norm of a timm model for a group norm
with the same activation, and says which it swapped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers.norm_act import BatchNormAct2d, GroupNormAct
from torch import nn
from tqdm import tqdm

MAX_GROUPS = 32  # group norm groups: the largest divisor of the channels up to this (Wu & He 2018 use 32)
QUIET = ("Secure RNG turned off", "Optimal order is the largest alpha", "Full backward hook is firing")  # Opacus'
# notices: the noise is seeded on purpose (secure_mode would make a run unrepeatable); the RDP orders reach 63, and a
# larger one would tighten, never loosen, the epsilon reported; the hook fires on the first layer's output as designed
DP_STEP_COST = 4.8  # a DP-SGD image costs this many plain training images (benchmarks/bench_dp.py, functorch)
GRAD_SAMPLE_MODE = "functorch"  # per-image gradients by torch.func.vmap: see benchmarks/bench_dp.py
DP_GAN_STEP_COST = 3.2  # a DC-GAN step with a private discriminator costs this many plain ones (bench_dp.py, 64 px)


@dataclasses.dataclass(frozen=True)
class PrivacySpent:
    """The guarantee a DP-SGD run has: ``(epsilon, delta)`` after ``steps`` steps of Poisson-sampled batches at
    ``sample_rate`` with ``noise_multiplier`` and per-image clipping at ``max_grad_norm``; ``opacus`` its version."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    opacus: str


def check_privacy_budget(epsilon: float, delta: float, n_train: int) -> None:
    """Refuse a budget no training should start with, in one line naming the parameter and what is accepted:
    epsilon must be a positive finite number, delta in (0, 1) and below 1 / n (a larger delta allows publishing
    whole training images outright with that probability)."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon {epsilon!r}: give a positive finite privacy budget (for example 1, 3 or 8)")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta {delta!r}: give a probability in (0, 1), below 1 / n = 1 / {n_train}")
    if delta >= 1 / n_train:
        raise ValueError(f"delta {delta:g}: must be below 1 / n = {1 / n_train:.2g} for {n_train} training images "
                         f"(for example {10 ** math.floor(math.log10(1 / n_train) - 1):g})")


def dp_compatible(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` with every batch norm replaced by a group norm of the same channels, affine weights and activation
    (timm's ``BatchNormAct2d`` by ``GroupNormAct``) and every in-place activation made out-of-place, in place; and
    what was changed, in words.

    Raises:
        ValueError: a layer Opacus still cannot compute per-image gradients for, named.
    """
    from opacus.validators import ModuleValidator

    replaced: dict[str, int] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, _group_norm_like(child))
                kind = type(child).__name__
                replaced[kind] = replaced.get(kind, 0) + 1
    in_place = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for module in in_place:  # Opacus' backward hooks forbid changing a hooked layer's output in place
        module.inplace = False
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"{type(model).__name__}: Opacus cannot train {errors[0]}; replace that layer")
    changes = [f"{count} {kind} -> GroupNorm (up to {MAX_GROUPS} groups, same affine weights and activation)"
               for kind, count in replaced.items()]
    if in_place:
        changes.append(f"{len(in_place)} in-place activations made out-of-place (Opacus' hooks need their outputs)")
    return model, changes


def _group_norm_like(norm: nn.BatchNorm2d) -> nn.Module:
    channels = norm.num_features
    groups = math.gcd(channels, MAX_GROUPS)
    if isinstance(norm, BatchNormAct2d):
        made = GroupNormAct(channels, num_groups=groups, eps=norm.eps, affine=norm.affine, apply_act=False)
        made.act, made.drop = norm.act, norm.drop
    else:
        made = nn.GroupNorm(groups, channels, eps=norm.eps, affine=norm.affine)
    if norm.affine:
        made.weight.data.copy_(norm.weight.data)
        made.bias.data.copy_(norm.bias.data)
    return made


def train_dp_classifier(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], *, epsilon: float, delta: float,
                        epochs: int, batch_size: int, lr: float, max_grad_norm: float, seed: int, device: torch.device,
                        progress: bool = True) -> tuple[list[dict[str, float]], PrivacySpent]:
    """Train ``model`` (made :func:`dp_compatible` first) with DP-SGD to the budget ``(epsilon, delta)`` over
    ``epochs``: Poisson-sampled batches of ``batch_size`` images on average, per-image clipping, SGD with momentum
    0.9, cross-entropy. Returns one record per epoch and the guarantee spent (from Opacus' accountant).

    Raises:
        ValueError: a budget :func:`check_privacy_budget` refuses, before anything is trained.
    """
    import opacus

    x, y = train
    check_privacy_budget(epsilon, delta, len(x))
    torch.manual_seed(seed)
    model = model.to(device).to(memory_format=torch.contiguous_format).train()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with _quiet():
        engine, private, optimizer, loader = _private(model, optimizer, loader, epsilon, delta, epochs, max_grad_norm,
                                                      seed, device)
        history = _train(private, optimizer, loader, engine, epochs, delta, device, progress, f"DP-SGD eps={epsilon:g}")
        spent = PrivacySpent(epsilon=engine.get_epsilon(delta), delta=delta,
                             noise_multiplier=optimizer.noise_multiplier, sample_rate=1 / len(loader),
                             steps=len(loader) * epochs, max_grad_norm=max_grad_norm, opacus=opacus.__version__)
    private.remove_hooks()  # leave ``model`` a plain module again (its weights were trained in place)
    return history, spent


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Opacus' notices of :data:`QUIET` left out, while it wraps and trains a model."""
    with warnings.catch_warnings():
        for known in QUIET:
            warnings.filterwarnings("ignore", message=known)
        yield


def _private(module: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, epsilon: float, delta: float,
             epochs: int, max_grad_norm: float, seed: int, device: torch.device) -> tuple[Any, Any, Any, Any]:
    """``(engine, module, optimizer, loader)`` made private by Opacus for the budget over ``epochs``: Poisson
    batches, per-image clipping, Gaussian noise from a seeded generator (a research run must rerun alike)."""
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    private, optimizer, loader = engine.make_private_with_epsilon(
        module=module, optimizer=optimizer, data_loader=loader, target_epsilon=epsilon, target_delta=delta,
        epochs=epochs, max_grad_norm=max_grad_norm, grad_sample_mode=GRAD_SAMPLE_MODE,
        noise_generator=torch.Generator(device).manual_seed(seed))
    return engine, private, optimizer, loader


def _train(private: nn.Module, optimizer: Any, loader: Any, engine: Any, epochs: int, delta: float,
           device: torch.device, progress: bool, desc: str) -> list[dict[str, float]]:
    history = []
    bar = tqdm(total=epochs * len(loader), desc=desc, disable=not progress, mininterval=5, unit="batch")
    for epoch in range(epochs):
        started, losses = time.perf_counter(), []
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            if len(images):  # Poisson sampling can draw an empty batch; Opacus still takes (and accounts) the step
                loss = F.cross_entropy(private(images.to(device)), labels.to(device))
                loss.backward()
                losses.append(loss.item())
            optimizer.step()
            bar.update()
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "epsilon": engine.get_epsilon(delta), "seconds": time.perf_counter() - started})
    bar.close()
    return history


def train_dp_dcgan(generator: nn.Module, discriminator: nn.Module, images: torch.Tensor, *, epsilon: float,
                   delta: float, steps: int, batch_size: int, lr: float, max_grad_norm: float, seed: int,
                   device: torch.device, progress: bool = True) -> tuple[list[dict[str, float]], PrivacySpent]:
    """Train a DC-GAN on ``images`` in [0, 1] with a differentially private discriminator (Xie et al. 2018, DPGAN;
    Opacus' DC-GAN example): only the discriminator reads real images, so the generator, trained through it, is
    private to the same budget by post-processing. ``discriminator`` is made :func:`dp_compatible` first (its batch
    norms become group norms). Each of about ``steps`` steps: a Poisson-sampled real batch (``batch_size`` on
    average) and as many generated images (at least one) through the private discriminator, one clipped gradient
    per image, noise for the budget (generated images depend on no real one of the batch); then the generator's
    non-saturating step through the discriminator with Opacus' hooks off. Adam with beta1 0.5 for both, as the
    DC-GAN's. Returns one record per epoch and the guarantee spent.

    Raises:
        ValueError: a budget :func:`check_privacy_budget` refuses, before anything is trained.
    """
    import opacus

    from ..generative._plumbing import latent, to_model_range

    check_privacy_budget(epsilon, delta, len(images))
    torch.manual_seed(seed)
    discriminator, _ = dp_compatible(discriminator)
    generator, discriminator = generator.to(device).train(), discriminator.to(device).train()
    epochs = max(1, math.ceil(steps * batch_size / len(images)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    rng, bce = torch.Generator().manual_seed(seed), F.binary_cross_entropy_with_logits
    history = []
    with _quiet():
        engine, private, opt_d, loader = _private(discriminator, opt_d, loader, epsilon, delta, epochs, max_grad_norm,
                                                  seed, device)
        bar = tqdm(total=epochs * len(loader), desc=f"DP DC-GAN eps={epsilon:g}", disable=not progress, mininterval=5,
                   unit="step")
        for epoch in range(epochs):
            started, losses = time.perf_counter(), []
            for (real,) in loader:
                opt_d.zero_grad(set_to_none=True)
                # Poisson sampling can draw an empty real batch; one generated image then still gives Opacus its
                # per-image gradients for the step it takes (and accounts) anyway
                fake = generator(latent(max(len(real), 1), generator.latent_dim, rng).to(device)).detach()
                scores = private(torch.cat([to_model_range(real.to(device)), fake]))
                loss_d = bce(scores, torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).to(device))
                loss_d.backward()
                opt_d.step()
                private.disable_hooks()
                opt_g.zero_grad(set_to_none=True)
                fooled = private(generator(latent(batch_size, generator.latent_dim, rng).to(device)))
                loss_g = bce(fooled, torch.ones_like(fooled))
                loss_g.backward()
                opt_g.step()
                private.enable_hooks()
                losses.append((loss_d.item(), loss_g.item()))
                bar.update()
            history.append({"epoch": epoch + 1, "loss_d": float(np.mean([d for d, _ in losses])),
                            "loss_g": float(np.mean([g for _, g in losses])), "epsilon": engine.get_epsilon(delta),
                            "seconds": time.perf_counter() - started})
        bar.close()
        spent = PrivacySpent(epsilon=engine.get_epsilon(delta), delta=delta,
                             noise_multiplier=opt_d.noise_multiplier, sample_rate=1 / len(loader),
                             steps=len(loader) * epochs, max_grad_norm=max_grad_norm, opacus=opacus.__version__)
    private.remove_hooks()
    return history, spent


def privacy_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps by Opacus' RDP accountant (what :func:`train_dp_classifier`
    reports), for a plan or a check without training."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def describe(spent: PrivacySpent) -> dict[str, Any]:
    """The guarantee as a flat record for tables and the run record."""
    return dataclasses.asdict(spent)
