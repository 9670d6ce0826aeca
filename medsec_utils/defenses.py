"""Defences against adversarial images, each composed with the classifier into one ``nn.Module``.

``DEFENSES`` is the table of kinds: each is a training function registered with ``register_defense``, with the
profile keys it reads, a builder of an untrained module of the same shape (to load cached weights into) and a
paragraph for the book. Adding a defence is one such entry plus its sizes in ``profiles.yaml``: ``defense_for``
trains or loads any kind and ``score_defense`` scores it. A defended model that can refuse inputs has a
``rejects(x)`` method (``Rejecting``, e.g. ``MagNet``), and scoring counts its refusals as outcomes.

A defended model maps images in [0, 1] to two logits and is differentiable end to end, so the attacks of
``medsec_utils.attacks`` can target the bare classifier (gray-box) or the whole pipeline (adaptive).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from tqdm import tqdm

from . import cache, distributed
from .attacks import make_attack, predict_labels
from .data import ImageSet
from .training import Perturb, Tensors, seed_everything, train_classifier

ADVERSARIAL_TRAINING = ("pgd", "fgsm_rs")

History = list[dict[str, float]]
DefenseTrainer = Callable[[ImageSet, nn.Module, Tensors, Mapping[str, Any], int, torch.device, bool, Path | None],
                          tuple[nn.Module, History]]
DefenseBuilder = Callable[[int, nn.Module], nn.Module]


@dataclass(frozen=True)
class DefenseKind:
    """One defence of the table.

    ``train(images, classifier, train, settings, seed, device, progress, checkpoint)`` returns the defended model
    and its training history; a trainer that trains in epochs saves its state to the file ``checkpoint`` (None:
    nowhere) after every epoch and resumes from it when it exists, so a killed run loses no finished epoch.
    ``build(channels, classifier)`` returns an untrained model of the same shape; ``settings_keys`` are the
    profile keys ``train`` reads (they go into the cache key).
    """

    name: str
    settings_keys: tuple[str, ...]
    train: DefenseTrainer
    build: DefenseBuilder
    about: str


DEFENSES: dict[str, DefenseKind] = {}


def register_defense(name: str, *, settings_keys: Sequence[str], build: DefenseBuilder,
                     about: str) -> Callable[[DefenseTrainer], DefenseTrainer]:
    """Decorator: enter the training function below it in ``DEFENSES`` as ``name`` (see ``DefenseKind``).

    Raises:
        ValueError: ``name`` is taken (its cached weights would be mistaken for the new defence's).
    """
    if name in DEFENSES:
        raise ValueError(f"defence {name!r} is already registered")

    def register(train: DefenseTrainer) -> DefenseTrainer:
        DEFENSES[name] = DefenseKind(name, tuple(settings_keys), train, build, about)
        return train

    return register


@runtime_checkable
class Rejecting(Protocol):
    """A defended model that can refuse inputs: ``rejects(x)`` is the mask of the images it refuses."""

    def rejects(self, x: torch.Tensor) -> torch.Tensor: ...


def adversarial_perturb(method: str, eps: float, steps: int) -> Perturb:
    """The ``perturb`` hook of ``train_classifier`` that turns each batch into adversarial images.

    Raises:
        ValueError: unknown method.
    """
    if method not in ADVERSARIAL_TRAINING:
        raise ValueError(f"unknown adversarial training method {method!r}; choose from {', '.join(ADVERSARIAL_TRAINING)}")

    def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if method == "pgd":
            attack = make_attack("pgd", model, eps, {"pgd_steps": steps})
        else:
            attack = torchattacks.FFGSM(model, eps=eps, alpha=1.25 * eps)
        return attack(x, y).detach()

    return perturb


def adversarially_train(model: nn.Module, train: Tensors, val: Tensors, *, method: str, eps: float, steps: int,
                        epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
                        device: torch.device, flip: bool = False, progress: bool = True,
                        checkpoint: Path | None = None, mixed_precision: bool = False) -> History:
    """Fine-tune ``model`` in place on adversarial images of every batch; keeps the best clean validation AUC.
    With ``checkpoint``, saves every epoch there and resumes from it (``train_classifier``; ``mixed_precision``
    applies to the training step, never to the attack)."""
    return train_classifier(model, train, val, epochs=epochs, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, seed=seed, device=device, flip=flip,
                            perturb=adversarial_perturb(method, eps, steps), progress=progress, checkpoint=checkpoint,
                            mixed_precision=mixed_precision)


class Defended(nn.Module):
    """``classifier(front(x))``: a preprocessing defence in front of a classifier."""

    def __init__(self, front: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.front = front
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.front(x))


class Denoiser(nn.Module):
    """U-Net with two down- and up-sampling levels that predicts the perturbation; returns ``x - perturbation``."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.down1, self.down2, self.bottom = _block(channels, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2, self.up1 = _block(6 * w, 2 * w), _block(3 * w, w)
        self.out = nn.Conv2d(w, channels, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity: no harm to clean accuracy before training
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(F.avg_pool2d(d1, 2))
        bottom = self.bottom(F.avg_pool2d(d2, 2))
        u2 = self.up2(torch.cat([F.interpolate(bottom, size=d2.shape[-2:]), d2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, size=d1.shape[-2:]), d1], 1))
        return (x - self.out(u1)).clamp(0, 1)


class AutoEncoder(nn.Module):
    """MagNet's convolutional auto-encoder (its "detector II" shape): two 3x3 conv layers, a pooling, and back."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2),
                                    nn.Conv2d(width, width, 3, padding=1), nn.Sigmoid())
        self.decode = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.Sigmoid(), nn.Upsample(scale_factor=2),
                                    nn.Conv2d(width, width, 3, padding=1), nn.Sigmoid(),
                                    nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class MagNet(Defended):
    """Reformer (the auto-encoder) in front of the classifier, with a reconstruction-error detector (``Rejecting``)."""

    def __init__(self, autoencoder: AutoEncoder, classifier: nn.Module, threshold: float = float("inf")) -> None:
        super().__init__(autoencoder, classifier)
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean absolute reconstruction error of each image (MagNet's L1 detector score)."""
        return (x - self.front(x)).abs().flatten(1).mean(1)

    @torch.no_grad()
    def rejects(self, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """Mask of the images the detector flags as adversarial."""
        device = self.threshold.device
        scores = [self.reconstruction_error(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(scores) > self.threshold.cpu() if scores else torch.zeros(0, dtype=torch.bool)

    @torch.no_grad()
    def calibrate(self, clean: torch.Tensor, false_positive_rate: float, batch_size: int = 128) -> float:
        """Set the threshold so that ``false_positive_rate`` of the ``clean`` images are rejected."""
        device = self.threshold.device
        scores = torch.cat([self.reconstruction_error(clean[i:i + batch_size].to(device)).cpu()
                            for i in range(0, len(clean), batch_size)])
        self.threshold.fill_(float(torch.quantile(scores.double(), 1 - false_positive_rate)))
        return float(self.threshold)


def train_denoiser(denoiser: Denoiser, classifier: nn.Module, train: Tensors, *, eps: list[float], steps: int,
                   epochs: int, batch_size: int, lr: float, seed: int, device: torch.device,
                   progress: bool = True, checkpoint: Path | None = None) -> History:
    """Train ``denoiser`` with the logits-guided loss against the frozen ``classifier``.

    Each batch is attacked with PGD at a budget drawn from ``eps`` (so the denoiser sees several
    strengths, as in the HGD paper's training set), then the loss is
    ``|classifier(denoiser(x_adv)) - classifier(x_clean)|_1``. With ``checkpoint``, resumable per epoch (``_fit``).
    """
    seed_everything(seed)
    classifier.eval().to(device).requires_grad_(False)
    denoiser.to(device)
    x, y = train

    def batch_loss(network: nn.Module, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        clean, labels = x[index].to(device), y[index].to(device)
        budget = eps[int(torch.randint(len(eps), (1,), generator=generator))]
        adversarial = make_attack("pgd", classifier, budget, {"pgd_steps": steps})(clean, labels)
        with torch.no_grad():
            target = classifier(clean)
        network.train()
        return (classifier(network(adversarial)) - target).abs().sum(1).mean()

    try:
        return _fit(denoiser, len(x), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                    desc="HGD denoiser", progress=progress, checkpoint=checkpoint)
    finally:
        classifier.requires_grad_(True)


def train_autoencoder(autoencoder: AutoEncoder, train: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                      seed: int, device: torch.device, noise: float = 0.025,
                      progress: bool = True, checkpoint: Path | None = None) -> History:
    """Train MagNet's auto-encoder to reconstruct clean images from copies with Gaussian noise (std ``noise``);
    with ``checkpoint``, resumable per epoch (``_fit``)."""
    seed_everything(seed)
    autoencoder.to(device)

    def batch_loss(network: nn.Module, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        clean = train[index].to(device)
        noisy = (clean + noise * torch.randn(clean.shape, generator=generator).to(device)).clamp(0, 1)
        network.train()
        return F.mse_loss(network(noisy), clean)

    return _fit(autoencoder, len(train), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                desc="MagNet auto-encoder", progress=progress, weight_decay=1e-9, checkpoint=checkpoint)


def _fit(module: nn.Module, n: int, batch_loss: Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor],
         *, epochs: int, batch_size: int, lr: float, seed: int, desc: str, progress: bool,
         weight_decay: float = 0.0, checkpoint: Path | None = None) -> History:
    """Adam on ``module`` over seeded shuffles of ``n`` items; ``batch_loss(network, index, generator)`` gives each
    loss, running ``network`` (``module``, or its ``DistributedDataParallel`` wrapper under torchrun, where
    ``index`` is this process's share of the batch and ``generator`` its own noise, see :mod:`.distributed`).

    With ``checkpoint``, every epoch saves the module, the optimiser, the history and both random states (the
    shuffling generator and torch's, which PGD's random starts draw from) there, and a run that finds the file
    resumes after its last epoch with the weights an uninterrupted run would reach.
    """
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, n // batch_size)
    history = []
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        module.load_state_dict(saved["module"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        history = saved["history"]
    bar = tqdm(total=epochs * steps_per_epoch, initial=len(history) * steps_per_epoch, desc=desc,
               disable=not progress, mininterval=5, unit="batch")
    network = distributed.parallel(module)
    for epoch in range(len(history), epochs):
        started, total = time.perf_counter(), 0.0
        order = torch.randperm(n, generator=generator)
        noise = distributed.draws(generator, seed, epoch)
        for step in range(steps_per_epoch):
            loss = batch_loss(network, distributed.shard(order[step * batch_size:(step + 1) * batch_size]), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            bar.update()
        history.append({"epoch": epoch + 1, "train_loss": total / steps_per_epoch,
                        "seconds": time.perf_counter() - started})
        if checkpoint is not None:
            cache.torch_save_atomic({"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                                     "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                                     "history": history}, checkpoint)
    bar.close()
    return history


def magnet_accuracy(magnet: MagNet, x: torch.Tensor, y: torch.Tensor, adversarial: bool | torch.Tensor,
                    batch_size: int = 128) -> dict[str, Any]:
    """Accuracy of a MagNet pipeline where the detector's rejection is an outcome.

    An adversarial image counts as defended when it is rejected or, if let through, diagnosed correctly;
    a clean image counts as correct only when it is let through and diagnosed correctly (a rejected
    clean image is a patient sent back for no reason). ``adversarial`` says which images are which: one
    flag for all, or a mask (e.g. the images an attack changed; the others are clean).
    """
    rejected = magnet.rejects(x, batch_size)
    device = magnet.threshold.device
    with torch.no_grad():
        pred = torch.cat([magnet(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    correct = pred == y
    good = _right_outcomes(rejected, correct, torch.as_tensor(adversarial).expand(len(y)))
    passed = ~rejected
    return {"accuracy": float(good.float().mean()), "n_correct": int(good.sum()), "n": len(y),
            "rejected_share": float(rejected.float().mean()),
            "accuracy_of_passed": float(correct[passed].float().mean()) if passed.any() else float("nan")}


class DetectorAware(nn.Module):
    """MagNet seen by an attacker who knows the detector (Carlini & Wagner 2017, "MagNet and efficient
    defenses against adversarial attacks are not robust to adversarial examples").

    Three logits: the two of the reformed image, and a "rejected" logit that wins once the reconstruction
    error passes the threshold. A *targeted* attack towards the wrong diagnosis must then both flip the
    diagnosis and stay under the detector's threshold.
    """

    def __init__(self, magnet: MagNet, sharpness: float = 1000.0) -> None:
        super().__init__()
        self.magnet = magnet
        self.sharpness = sharpness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.magnet(x)
        excess = self.magnet.reconstruction_error(x) - self.magnet.threshold
        rejected = logits.max(1).values + self.sharpness * excess
        return torch.cat([logits, rejected[:, None]], 1)


def detector_aware_pgd(magnet: MagNet, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
                       sharpness: float = 1000.0) -> torch.Tensor:
    """Targeted PGD on ``DetectorAware(magnet)`` towards the other diagnosis: adversarial images of ``x``."""
    attack = make_attack("pgd", DetectorAware(magnet, sharpness).eval(), eps, {"pgd_steps": steps})
    attack.set_mode_targeted_by_function(lambda images, labels: 1 - labels, quiet=True)
    return attack(x, y).detach()


def detector_aware_attack(magnet: MagNet, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
                          batch_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """``detector_aware_pgd`` on the images of ``x`` that ``magnet`` diagnoses right and lets through, in batches;
    the other images are returned as they are (there is nothing to attack). Kept in the artefact cache."""
    parts = {"magnet": cache.module_fingerprint(magnet), "images": cache.tensor_fingerprint(x, y),
             "eps": eps, "steps": steps, "batch_size": batch_size, "seed": seed, "device": device.type,
             "code": cache.code_fingerprint("defenses", "attacks")}
    return cache.memoised("detector_aware_attack", parts, lambda: _detector_aware_attack(
        magnet, x, y, eps=eps, steps=steps, batch_size=batch_size, seed=seed, device=device))[0]


def _detector_aware_attack(magnet: MagNet, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
                           batch_size: int, seed: int, device: torch.device) -> torch.Tensor:
    torch.manual_seed(seed)
    ok = (predict_labels(magnet, x, device) == y) & ~magnet.rejects(x)
    adversarial = x.clone()
    adversarial[ok] = torch.cat([detector_aware_pgd(magnet, xb.to(device), yb.to(device), eps=eps, steps=steps).cpu()
                                 for xb, yb in zip(x[ok].split(batch_size), y[ok].split(batch_size))] or [x[:0]])
    return adversarial


def score_defense(model: nn.Module, x: torch.Tensor, y: torch.Tensor, changed: torch.Tensor,
                  device: torch.device | None = None) -> dict[str, Any]:
    """How ``model`` fares on ``(x, y)``, where ``changed`` marks the adversarial images (the others are clean).

    ``n_correct`` counts the right diagnoses. For a ``Rejecting`` model a refusal is an outcome, as in
    ``magnet_accuracy``: right for an adversarial image, wrong for a clean one; it also gets the shares of
    adversarial and clean images refused and the accuracy on the adversarial images it let through. Kept in
    the artefact cache, keyed by the model's weights and class and the images.
    """
    device = device or next(model.parameters()).device
    parts = {"model": cache.module_fingerprint(model), "images": cache.tensor_fingerprint(x, y, changed), "device": device.type,
             "code": cache.code_fingerprint("defenses", "attacks")}
    return cache.memoised("defense_score", parts, lambda: _score(model, x, y, changed, device))[0]


def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, changed: torch.Tensor,
           device: torch.device) -> dict[str, Any]:
    correct = predict_labels(model, x, device) == y
    if not isinstance(model, Rejecting):
        return {"n_correct": int(correct.sum())}
    flagged = model.rejects(x)
    return {"n_correct": int(_right_outcomes(flagged, correct, changed).sum()),
            "rejected_adversarial_share": _share(flagged[changed]), "rejected_clean_share": _share(flagged[~changed]),
            "accuracy_of_passed_adversarial": _share(correct[changed & ~flagged])}


def _right_outcomes(rejected: torch.Tensor, correct: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
    """An adversarial image is defended when rejected or diagnosed right; a clean one must pass and be right."""
    return torch.where(adversarial, rejected | correct, ~rejected & correct)


def _share(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if len(mask) else float("nan")


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU())


@register_defense(
    "adversarial_training", build=lambda channels, classifier: copy.deepcopy(classifier),
    settings_keys=("adv_train_method", "adv_train_eps_255", "adv_train_epochs", "adv_train_lr", "defense_pgd_steps",
                   "batch_size", "weight_decay", "max_train_images", "max_eval_images", "mixed_precision"),
    about=("Adversarial training (Madry et al. 2018): the classifier is fine-tuned on adversarial images of each "
           "batch (PGD, or with adv_train_method fgsm_rs the cheap variant, FGSM from a random start; Wong, Rice & "
           "Kolter 2020), keeping the epoch with the best clean validation AUC."))
def _adversarial_training(images: ImageSet, classifier: nn.Module, train: Tensors, settings: Mapping[str, Any],
                          seed: int, device: torch.device, progress: bool,
                          checkpoint: Path | None) -> tuple[nn.Module, History]:
    robust = copy.deepcopy(classifier)
    history = adversarially_train(
        robust, train, images.tensors("val", settings["max_eval_images"], seed), method=settings["adv_train_method"],
        eps=settings["adv_train_eps_255"] / 255, steps=settings["defense_pgd_steps"],
        epochs=settings["adv_train_epochs"], batch_size=settings["batch_size"], lr=settings["adv_train_lr"],
        weight_decay=settings["weight_decay"], seed=seed, device=device, flip=images.modality == "histology",
        progress=progress, checkpoint=checkpoint, mixed_precision=settings.get("mixed_precision", False))
    return robust, history


@register_defense(
    "hgd", build=lambda channels, classifier: Defended(Denoiser(channels), classifier),
    settings_keys=("hgd_epochs", "hgd_eps_255", "hgd_lr", "defense_pgd_steps", "batch_size", "max_train_images"),
    about=("HGD, the high-level representation guided denoiser (Liao et al. 2018): a small U-Net in front of the "
           "classifier that predicts the perturbation and subtracts it, trained on PGD images of several budgets "
           "with the logits-guided loss: the L1 distance between the frozen classifier's logits on the denoised "
           "adversarial image and on the clean image."))
def _hgd(images: ImageSet, classifier: nn.Module, train: Tensors, settings: Mapping[str, Any], seed: int,
         device: torch.device, progress: bool, checkpoint: Path | None) -> tuple[nn.Module, History]:
    denoiser = Denoiser(images.channels)
    history = train_denoiser(denoiser, classifier, train, eps=[e / 255 for e in settings["hgd_eps_255"]],
                             steps=settings["defense_pgd_steps"], epochs=settings["hgd_epochs"],
                             batch_size=settings["batch_size"], lr=settings["hgd_lr"], seed=seed, device=device,
                             progress=progress, checkpoint=checkpoint)
    return Defended(denoiser, classifier), history


@register_defense(
    "magnet", build=lambda channels, classifier: MagNet(AutoEncoder(channels), classifier),
    settings_keys=("magnet_epochs", "magnet_lr", "magnet_fpr", "batch_size", "max_train_images", "max_eval_images"),
    about=("MagNet (Meng & Chen 2017): an auto-encoder trained on clean images. Its reconstruction error is a "
           "detector, with the threshold set to reject magnet_fpr of the clean validation images; its output, the "
           "'reformed' image, is what the classifier sees. A rejected adversarial image counts as defended, a "
           "rejected clean image as an error."))
def _magnet(images: ImageSet, classifier: nn.Module, train: Tensors, settings: Mapping[str, Any], seed: int,
            device: torch.device, progress: bool, checkpoint: Path | None) -> tuple[nn.Module, History]:
    autoencoder = AutoEncoder(images.channels)
    history = train_autoencoder(autoencoder, train[0], epochs=settings["magnet_epochs"], batch_size=settings["batch_size"],
                                lr=settings["magnet_lr"], seed=seed, device=device, progress=progress,
                                checkpoint=checkpoint)
    magnet = MagNet(autoencoder, classifier).to(device).eval()
    magnet.calibrate(images.tensors("val", settings["max_eval_images"], seed)[0], settings["magnet_fpr"])
    return magnet, history


def defense_for(kind: str, images: ImageSet, classifier: nn.Module, settings: Mapping[str, Any], *, seed: int,
                device: torch.device, progress: bool = True, nproc: int = 1) -> tuple[nn.Module, History, bool]:
    """The defended model of ``kind`` for ``classifier`` on ``images``: from the artefact cache, or trained now (on
    ``nproc`` processes under torchrun if more than one, see :mod:`.distributed`).

    The cache holds the defended module's whole ``state_dict``, loaded into ``build``'s untrained copy. The key
    holds the classifier's weights, the data checksum, the settings the defence reads (its ``settings_keys`` and
    ``max_train_images``, which picks its training images), the seed and the code of this module, ``training``
    and ``attacks``. Training checkpoints every epoch in the artefact's folder, so an interrupted run resumes where
    it stopped.

    Returns:
        ``(defended model in eval mode, training history, cache_hit)``.

    Raises:
        ValueError: unknown defence.
    """
    if kind not in DEFENSES:
        raise ValueError(f"unknown defence {kind!r}; choose from {', '.join(DEFENSES)}")
    defense = DEFENSES[kind]
    parts = {"kind": kind, "classifier": cache.tensor_fingerprint(classifier.state_dict()), "data": images.checksum,
             "seed": seed, "settings": {key: settings[key] for key in ("max_train_images", *defense.settings_keys)},
             "code": cache.code_fingerprint("defenses", "training", "attacks"), "torchattacks": torchattacks.__version__}
    folder, hit = cache.cached("defense", parts, lambda folder: distributed.run(
        nproc, train_defense_into, folder, kind, images, classifier, settings, seed=seed, device=device,
        progress=progress))
    defended = defense.build(images.channels, classifier.to(device).eval())
    defended.load_state_dict(torch.load(folder / "defense.pt", map_location="cpu"))
    return defended.to(device).eval(), json.loads((folder / "history.json").read_text()), hit


def train_defense_into(folder: Path, kind: str, images: ImageSet, classifier: nn.Module, settings: Mapping[str, Any],
                       *, seed: int, device: torch.device, progress: bool) -> None:
    """Train the defence of :func:`defense_for` and write ``defense.pt`` and ``history.json`` into ``folder``,
    resuming from its ``checkpoint.pt``."""
    if (folder / "history.json").is_file():
        return  # trained to the end by a run killed before the marker: defense.pt and history.json are whole
    seed_everything(seed)  # the initial weights depend on the seed only, not on what the process did before
    train = images.tensors("train", settings["max_train_images"], seed)
    defended, history = DEFENSES[kind].train(images, classifier.to(device).eval(), train, settings, seed, device,
                                             progress, folder / "checkpoint.pt")
    cache.torch_save_atomic({k: v.detach().cpu() for k, v in defended.state_dict().items()}, folder / "defense.pt")
    cache.write_json_atomic(folder / "history.json", history)
    cache.discard(folder / "checkpoint.pt")
