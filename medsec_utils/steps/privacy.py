"""Chapter 6's steps, per data set: the membership models (chapter 1's classifier trained on half of the training
split, ``privacy_models`` of them), the DP-SGD models at each budget of ``dp_epsilons``, then the attack step that
reads all of them; and per generator kind of chapter 4 (``params["generators"]``), the attacks on its two class
generators, read from chapter 4's stored class steps (``after``, in the run's shared results store), and for a
kind of ``replacement_generators`` the loss attack on the classifier trained only on its images (chapter 4's
replacement experiment), beside chapter 1's classifier, for the same real patients. On the first data set, a
DC-GAN per class with a differentially private discriminator, attacked and judged beside chapter 4's.

A generator's members are the training images of its class (chapter 4 trains each class's generator on all of
them); its non-members are val and test images of that class: held out from every generator, and no page
reports a generator's accuracy on them (too few val images alone for 1 % FPR on CT: 99). Images of a patient who
also has training images are left out; half of the other patients' images calibrate GAN-Leaks instead.

Membership is drawn per patient: each patient of the training split is in exactly half of the models (Carlini et
al.'s protocol), so a model's members and non-members are the two halves of one split, of one distribution, and
never the test split, on which each model's accuracy is reported. The DP models train on model 0's half, so they
have its members. Every model stores its logits on the whole training split, which is all the attacks read.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from .. import data, generative, metrics, replacement, synthetic_eval, training
from ..data import ImageSet
from ..models import build_classifier
from ..privacy import dp
from ..privacy.attacks import MEMBERSHIP_ATTACKS
from ..privacy.audit import audit, score_audit
from ..privacy.outputs import model_logits
from ..store import CORE_PACKAGES, Step, StepResult
from . import synthetic_images
from ._plumbing import data_modules, step_name
from .classifiers import classifier_need

MODEL_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "max_train_images", "max_eval_images", "bootstrap")
DP_KEYS = ("dp_epochs", "dp_delta", "dp_lr", "dp_max_grad_norm", "batch_size", "max_train_images",
           "max_eval_images", "bootstrap")
GAN_LEAKS = ("gan_leaks", "gan_leaks_calibrated")
GENERATOR_ATTACKS = {"dcgan": GAN_LEAKS, "progan": GAN_LEAKS, "ddpm": (*GAN_LEAKS, "denoising_error")}
REFERENCE_SHARE = 0.5  # of the held-out patients: GAN-Leaks' calibration images, the rest are the non-members
GENERATOR_KEYS = ("max_train_images", "max_eval_images", "bootstrap", "synthetic_images", "ddim_steps")
CHAPTER_4_PARAMS = ("generators", "feature_space", "inception_weights")  # chapter 4's parameters in its steps' keys
DP_GAN_KEYS = ("dp_gan_epsilon", "dp_delta", "dp_max_grad_norm", "gan_steps", "gan_lr", "latent_dim", "gan_width",
               "batch_size", "max_train_images", "synthetic_images")
MIN_NONMEMBERS = 100  # a model's other half must resolve a TPR at 1 % FPR (its DP twins are judged alone)
PRIVACY_MODULES = ("models", "training", "metrics", "privacy.outputs")  # what a model step's logits depend on


def steps(sets: list[ImageSet], settings: dict[str, Any], params: dict[str, Any], device: torch.device) -> list[Step]:
    """Per data set: ``model0`` ... ``model<k-1>``, ``dp_eps<e>`` per budget, then ``attacks`` after all of them.
    Raises ValueError for a membership split or privacy budget that cannot work, before anything is trained."""
    seed = params["seed"]
    made = []
    for images in sets:
        inside = membership(images, settings, seed)
        n_pool, n_half = inside.shape[1], int(inside[0].sum())
        for epsilon in settings["dp_epsilons"]:  # refused here, before any model of the chapter is trained
            dp.check_privacy_budget(epsilon, settings["dp_delta"], n_half)
        n_val = len(images.indices("val", settings["max_eval_images"], seed))
        n_test = len(images.indices("test", settings["max_eval_images"], seed))
        common = dict(images=images, settings=settings, seed=seed, device=device)
        models = [Step(
            id=f"06_privacy/{step_name(images)}/model{k}",
            parts={"data": images.checksum, "size": images.size, "model": k, "models": len(inside), "seed": seed,
                   **{key: settings[key] for key in MODEL_KEYS}},
            modules=(*data_modules(images), *PRIVACY_MODULES), recipe=membership_model_result,
            inputs=dict(**common, k=k), packages=(*CORE_PACKAGES, "timm", "scikit-learn"),
            units={"classifier_train": settings["epochs"] * n_half,
                   "predict": n_pool + n_test + settings["epochs"] * n_val}) for k in range(len(inside))]
        private = [Step(
            id=f"06_privacy/{step_name(images)}/dp_eps{epsilon:g}",
            parts={"data": images.checksum, "size": images.size, "epsilon": epsilon, "models": len(inside),
                   "seed": seed, **{key: settings[key] for key in DP_KEYS}},
            modules=(*data_modules(images), *PRIVACY_MODULES, "privacy.dp"), recipe=dp_model_result,
            inputs=dict(**common, epsilon=float(epsilon)), packages=(*CORE_PACKAGES, "timm", "scikit-learn", "opacus"),
            units={"classifier_train": dp.DP_STEP_COST * settings["dp_epochs"] * n_half, "predict": n_pool + n_test})
            for epsilon in settings["dp_epsilons"]]
        made += [*models, *private, Step(
            id=f"06_privacy/{step_name(images)}/attacks",
            parts={"seed": seed, "bootstrap": settings["bootstrap"], "models": len(inside),
                   "epsilons": list(settings["dp_epsilons"])},
            modules=("metrics", "privacy.membership", "privacy.attacks", "privacy.audit"), recipe=attacks_result,
            inputs=dict(images=images, settings=settings, seed=seed), packages=(*CORE_PACKAGES, "scikit-learn"),
            after=[*models, *private])]
        made += generator_steps(images, settings, params, device)
    if params.get("generators") and "dcgan" in params["generators"]:
        made += dp_gan_steps(sets[0], settings, params, device)
    return made


def generator_steps(images: ImageSet, settings: dict[str, Any], params: dict[str, Any],
                    device: torch.device) -> list[Step]:
    """One step per kind of ``params["generators"]``: its attacks on chapter 4's two class generators of
    ``images``, after their class steps (built from ``params``' chapter-4 parameters, so they must be the ones
    chapter 4 ran with: the store then has them; else they are computed first)."""
    kinds = params.get("generators") or []
    if not kinds:
        return []
    at_size, chapter_4 = _chapter_4(images, settings, params, device)
    name, seed = step_name(at_size), params["seed"]
    n_members = len(at_size.indices("train", settings["max_train_images"], seed))
    n_queries = n_members + sum(len(at_size.indices(split, settings["max_eval_images"], seed))
                                for split in ("val", "test"))
    made = []
    for kind in kinds:
        pair = [chapter_4[f"04_synthetic_images/{name}/{kind}/{label}"]
                for label in synthetic_images.CLASS_STEPS.values()]
        attacks = GENERATOR_ATTACKS[kind]
        own = {key: settings[key] for key in (("denoising_timesteps", "denoising_draws") if kind == "ddpm"
                                              else ("gan_leaks_samples",))}
        forwards = n_queries * len(settings["denoising_timesteps"]) * settings["denoising_draws"]
        units = {f"{kind}_sample": 2 * settings["gan_leaks_samples"]} if kind != "ddpm" else {
            "ddpm_sample": forwards / settings["ddim_steps"]}  # a denoising error is one of a sample's U-Net passes
        made.append(Step(
            id=f"06_privacy/{name}/generators/{kind}",
            parts={"data": at_size.checksum, "size": at_size.size, "kind": kind, "attacks": list(attacks),
                   "seed": seed, **own, **{key: settings[key] for key in GENERATOR_KEYS}},
            modules=(*data_modules(at_size), "generative", "privacy.membership", "privacy.attacks", "privacy.audit"),
            recipe=generator_attacks_result, inputs=dict(images=at_size, settings=settings, seed=seed, device=device,
                                                         kind=kind),
            packages=(*CORE_PACKAGES, "scikit-learn", "scipy", "diffusers"), units=units, after=pair))
        if kind in settings["replacement_generators"]:
            made.append(_synthetic_classifier_step(at_size, kind, pair, settings, params, device, n_queries))
    return made


def _synthetic_classifier_step(images: ImageSet, kind: str, pair: list[Step], settings: dict[str, Any],
                               params: dict[str, Any], device: torch.device, n_queries: int) -> Step:
    """The loss attack, for the real patients, on chapter 4's classifier trained only on ``kind``'s images (its
    replacement experiment's synthetic training set) beside chapter 1's classifier trained on the real ones."""
    seed, weights = params["seed"], params.get("weights")
    classifier, rebuild = classifier_need(images, settings, seed, weights)
    n_train = len(images.indices("train", settings["max_train_images"], seed))
    n_val = len(images.indices("val", settings["max_eval_images"], seed))
    return Step(
        id=f"06_privacy/{step_name(images)}/synthetic_classifier/{kind}",
        parts={"data": images.checksum, "size": images.size, "kind": kind, "seed": seed,
               "classifier": {key: value for key, value in classifier.items() if key != "code"},
               **{key: settings[key] for key in (*MODEL_KEYS, "ddim_steps")}},
        modules=(*data_modules(images), "models", "training", "generative", "replacement", "metrics",
                 "privacy.outputs", "privacy.membership", "privacy.attacks", "privacy.audit"),
        recipe=synthetic_classifier_result,
        inputs=dict(images=images, settings=settings, seed=seed, device=device, kind=kind, weights=weights,
                    nproc=params.get("nproc", 1)),
        packages=(*CORE_PACKAGES, "timm", "scikit-learn", "scipy", "diffusers"),
        units={f"{kind}_sample": n_train, "classifier_train": settings["epochs"] * n_train,
               "predict": 2 * n_queries + settings["epochs"] * n_val},
        needs=[rebuild], after=pair)


def dp_gan_steps(images: ImageSet, settings: dict[str, Any], params: dict[str, Any],
                 device: torch.device) -> list[Step]:
    """On the chapter's first data set: a DC-GAN per class with a differentially private discriminator at
    ``dp_gan_epsilon`` (chapter 4's DC-GAN settings and steps), then one step after them and chapter 4's DC-GAN
    class steps that attacks the private generators and sets their quality beside the plain ones'."""
    seed = params["seed"]
    at_size, chapter_4 = _chapter_4(images, settings, params, device)
    name = step_name(at_size)
    classes = [Step(
        id=f"06_privacy/{name}/dp_dcgan/{class_name}",
        parts={"data": at_size.checksum, "size": at_size.size, "label": label, "seed": seed,
               **{key: settings[key] for key in DP_GAN_KEYS}},
        modules=(*data_modules(at_size), "generative", "privacy.dp"), recipe=dp_gan_result,
        inputs=dict(images=at_size, settings=settings, seed=seed, device=device, label=label),
        packages=(*CORE_PACKAGES, "opacus"),
        units={"dcgan_step": dp.DP_GAN_STEP_COST * settings["gan_steps"],
               "dcgan_sample": settings["synthetic_images"]})
        for label, class_name in synthetic_images.CLASS_STEPS.items()]
    plain = [chapter_4[f"04_synthetic_images/{name}/dcgan/{c}"] for c in synthetic_images.CLASS_STEPS.values()]
    n_test = len(at_size.indices("test", settings["max_eval_images"], seed))
    return [*classes, Step(
        id=f"06_privacy/{name}/dp_dcgan/attacks",
        parts={"seed": seed, **{key: settings[key] for key in ("gan_leaks_samples", *GENERATOR_KEYS)},
               **{key: params.get(key) for key in CHAPTER_4_PARAMS[1:]}},
        modules=(*data_modules(at_size), "generative", "metrics", "synthetic_eval", "privacy.membership",
                 "privacy.attacks", "privacy.audit"),
        recipe=dp_gan_attacks_result,
        inputs=dict(images=at_size, settings=settings, seed=seed, device=device, weights=params.get("weights"),
                    feature_space=params.get("feature_space"), inception_weights=params.get("inception_weights")),
        packages=(*CORE_PACKAGES, "scikit-learn", "scipy", "torchvision", "torchmetrics"),
        units={"dcgan_sample": 2 * settings["gan_leaks_samples"],
               "features": n_test + 4 * settings["synthetic_images"]},
        after=[*classes, *plain])]


def _chapter_4(images: ImageSet, settings: dict[str, Any], params: dict[str, Any],
               device: torch.device) -> tuple[ImageSet, dict[str, Step]]:
    """``images`` at chapter 4's ``generator_size`` and chapter 4's steps on them by id, listed with ``params``'
    chapter-4 parameters (:data:`CHAPTER_4_PARAMS`)."""
    at_size = images if images.size == settings["generator_size"] else data.load_dataset(
        images.spec, size=settings["generator_size"], seed=params["seed"], phantom_images=settings["phantom_images"])
    chapter_4 = {step.id: step for step in synthetic_images.steps(
        [at_size], settings, {**{key: params.get(key) for key in CHAPTER_4_PARAMS}, "seed": params["seed"],
                              "weights": params.get("weights"), "nproc": params.get("nproc", 1)}, device)}
    return at_size, chapter_4


def membership(images: ImageSet, settings: dict[str, Any], seed: int) -> np.ndarray:
    """Bool ``(privacy_models, training images)``: which model trains on which image. Each patient is in exactly
    half of the models, with all their images: patients, largest first (in random order within a size), take the
    ways of choosing half of the models in turn (in a random order), so every model gets about half of the images
    and no two models train on the same half. Raises ValueError, before anything is trained, for an odd or too
    small number of models, or a training split that leaves a model fewer than ``MIN_NONMEMBERS`` non-members."""
    count = settings["privacy_models"]
    if count < 4 or count % 2:
        raise ValueError(f"privacy_models {count}: give an even number of at least 4 (each image in half of them, "
                         "every target with shadow models that did and did not train on each image)")
    pool = images.indices("train", settings["max_train_images"], seed)
    unique, which, sizes = np.unique(images.patient_ids[pool], return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    halves = list(itertools.combinations(range(count), count // 2))
    order = rng.permutation(len(halves))
    shuffled = rng.permutation(len(unique))
    largest_first = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    by_patient = np.zeros((count, len(unique)), bool)
    for rank, patient in enumerate(largest_first):  # every half in turn: each model gets its share of images
        by_patient[list(halves[order[rank % len(halves)]]), patient] = True
    inside = by_patient[:, which]
    fewest = int((~inside).sum(1).min())
    if fewest < MIN_NONMEMBERS:
        raise ValueError(f"{images.spec}: {len(pool)} training images leave a model only {fewest} non-members; "
                         f"membership at 1 % FPR needs at least {MIN_NONMEMBERS}: give at least "
                         f"{2 * MIN_NONMEMBERS + 20} training images (max_train_images, or a larger data set)")
    return inside


def membership_model_result(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device,
                            k: int) -> StepResult:
    """Chapter 1's classifier trained on model ``k``'s half of the training split (selected on the val split as
    there): its logits on the whole split and its test report."""
    x, y = images.tensors("train", settings["max_train_images"], seed)
    inside = torch.as_tensor(membership(images, settings, seed)[k])
    training.seed_everything(seed + k)
    model = build_classifier(images.channels)
    history = training.train_classifier(
        model, (x[inside], y[inside]), images.tensors("val", settings["max_eval_images"], seed),
        epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
        weight_decay=settings["weight_decay"], seed=seed + k, device=device, flip=images.modality == "histology")
    return _model_result(model.eval(), images, settings, seed, device, x, {"history": history})


def dp_model_result(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device,
                    epsilon: float) -> StepResult:
    """The classifier trained with DP-SGD to ``(epsilon, dp_delta)`` on model 0's half: logits on the whole
    training split, test report, the guarantee spent and what Opacus needed changed."""
    x, y = images.tensors("train", settings["max_train_images"], seed)
    inside = torch.as_tensor(membership(images, settings, seed)[0])
    training.seed_everything(seed)
    model, changes = dp.dp_compatible(build_classifier(images.channels))
    history, spent = dp.train_dp_classifier(
        model, (x[inside], y[inside]), epsilon=epsilon, delta=settings["dp_delta"], epochs=settings["dp_epochs"],
        batch_size=settings["batch_size"], lr=settings["dp_lr"], max_grad_norm=settings["dp_max_grad_norm"],
        seed=seed, device=device)
    return _model_result(model.eval(), images, settings, seed, device, x,
                         {"history": history, "privacy": dp.describe(spent), "changes": changes})


def _model_result(model: torch.nn.Module, images: ImageSet, settings: dict[str, Any], seed: int,
                  device: torch.device, pool: torch.Tensor, record: dict[str, Any]) -> StepResult:
    report, _ = training.test_report(model, images, settings, seed=seed, device=device)
    logits = model_logits(model, pool, device)
    return StepResult({**record, "report": report}, {"logits": logits.numpy().astype(np.float32)})


def attacks_result(upstream: dict[str, StepResult], images: ImageSet, settings: dict[str, Any],
                   seed: int) -> StepResult:
    """Every attack on every stored model of this data set (:func:`medsec_utils.privacy.audit.audit`)."""
    prefix = f"06_privacy/{step_name(images)}"
    count = settings["privacy_models"]
    logits = torch.stack([torch.from_numpy(upstream[f"{prefix}/model{k}"].arrays["logits"]).double()
                          for k in range(count)])
    private = {float(e): torch.from_numpy(upstream[f"{prefix}/dp_eps{e:g}"].arrays["logits"]).double()
               for e in settings["dp_epsilons"]}
    pool = images.indices("train", settings["max_train_images"], seed)
    records, arrays = audit(logits, private, images.labels[pool], membership(images, settings, seed),
                            images.patient_ids[pool], n_boot=settings["bootstrap"], seed=seed)
    return StepResult({"records": records}, arrays)


def generator_membership(images: ImageSet, settings: dict[str, Any], seed: int, *,
                         reference_share: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(index, is_member, reference, shared)`` for chapter 4's generators: training images (members, as each
    class's generator trained on all of its class) then the val and test images (non-members) less the
    ``shared`` ones of a patient who also has training images, and less the ``reference``: the images of a seeded
    ``reference_share`` of their patients, which calibrate GAN-Leaks (Chen et al.: real images of the population
    that are neither members nor non-members). Members are a seeded subsample with the non-members' class shares:
    each image is scored by its own class's generator, and a class whose images lie closer to their generator's
    samples would otherwise pass for membership wherever the two sides mix the classes differently."""
    train = images.indices("train", settings["max_train_images"], seed)
    held_out = np.concatenate([images.indices(split, settings["max_eval_images"], seed) for split in ("val", "test")])
    shared = np.isin(images.patient_ids[held_out], images.patient_ids[train])
    held_out = held_out[~shared]
    rng = np.random.default_rng(seed)
    patients = np.unique(images.patient_ids[held_out])
    in_reference = np.isin(images.patient_ids[held_out],
                           rng.choice(patients, round(reference_share * len(patients)), replace=False))
    reference, held_out = held_out[in_reference], held_out[~in_reference]
    labels = images.labels.numpy()
    shares = {c: float(np.mean(labels[held_out] == c)) for c in synthetic_images.CLASS_STEPS}
    total = min(int((labels[train] == c).sum()) / share for c, share in shares.items() if share)
    members = np.sort(np.concatenate([rng.choice(train[labels[train] == c], int(total * share), replace=False)
                                      for c, share in shares.items()]))
    index = np.concatenate([members, held_out])
    return index, np.r_[np.ones(len(members), bool), np.zeros(len(held_out), bool)], reference, int(shared.sum())


def generator_attacks_result(upstream: dict[str, StepResult], images: ImageSet, settings: dict[str, Any], seed: int,
                             device: torch.device, kind: str) -> StepResult:
    """Every attack of ``GENERATOR_ATTACKS[kind]`` on the class generators of chapter 4, each image scored by its own
    class's generator: GAN-Leaks against ``gan_leaks_samples`` images a GAN draws from its stored weights (the
    DDPM: its stored ``synthetic_images``, as sampling it costs minutes), the DDPM's denoising error at
    ``denoising_timesteps``. Members: the training split; non-members: val and test, less any patient with
    training images. Records per image (and per patient) and the ROCs as arrays."""
    index, is_member, reference, shared = generator_membership(images, settings, seed,
                                                               reference_share=REFERENCE_SHARE)
    queries = images.images[torch.as_tensor(index)].float().div_(255.0)
    labels = images.labels[torch.as_tensor(index)]
    references = images.images[torch.as_tensor(reference)].float().div_(255.0)
    reference_labels = images.labels[torch.as_tensor(reference)]
    scores = {attack: np.zeros(len(index)) for attack in GENERATOR_ATTACKS[kind]}
    name, samples = step_name(images), {}
    for label in synthetic_images.CLASS_STEPS:
        mine = (labels == label).numpy()
        generator = synthetic_images.stored_generator(upstream, images, kind, label, settings, device)
        if kind == "ddpm":
            stored, stored_labels = synthetic_images.stored_samples(upstream, name, kind)
            generated = stored[stored_labels == label]
            scores["denoising_error"][mine] = MEMBERSHIP_ATTACKS["denoising_error"].score(
                generator, queries[mine], settings["denoising_timesteps"], draws=settings["denoising_draws"],
                seed=seed, device=device)
        else:
            generated = generative.sample(generator, settings["gan_leaks_samples"], seed=seed + label, device=device)
        scores["gan_leaks"][mine] = MEMBERSHIP_ATTACKS["gan_leaks"].score(queries[mine], generated)
        scores["gan_leaks_calibrated"][mine] = MEMBERSHIP_ATTACKS["gan_leaks"].score(
            queries[mine], generated, reference=references[reference_labels == label])
        samples[synthetic_images.CLASS_STEPS[label]] = len(generated)
    records, arrays = score_audit(f"generator: {kind}", scores, is_member, images.patient_ids[index],
                                  n_boot=settings["bootstrap"], seed=seed)
    return StepResult({"records": records, "nonmembers_sharing_a_patient": shared, "reference": len(reference),
                       "samples": samples}, arrays)


def synthetic_classifier_result(upstream: dict[str, StepResult], images: ImageSet, settings: dict[str, Any],
                                seed: int, device: torch.device, kind: str, weights: str | None,
                                nproc: int) -> StepResult:
    """The loss attack on two classifiers with the generators' members and non-members
    (:func:`generator_membership`): chapter 4's deep model trained on ``kind``'s synthetic training set (the same
    images and training as its replacement experiment: artefact cache, else made again from the stored
    generators) and chapter 1's classifier, trained on the real training images."""
    generators = {label: synthetic_images.stored_generator(upstream, images, kind, label, settings, device)
                  for label in synthetic_images.CLASS_STEPS}
    real = images.tensors("train", settings["max_train_images"], seed)
    val = images.tensors("val", settings["max_eval_images"], seed)
    synthetic = replacement.synthetic_set(generators, real[1], settings, seed=seed, device=device)
    on_synthetic, history, _ = replacement.classifier_on(synthetic, val, settings, seed=seed, device=device,
                                                         flip=images.modality == "histology", nproc=nproc)
    on_real = training.classifier_for(images, settings, seed=seed, device=device, weights=weights, nproc=nproc)[0]
    index, is_member, _, shared = generator_membership(images, settings, seed)
    queries = images.images[torch.as_tensor(index)].float().div_(255.0)
    labels = images.labels[torch.as_tensor(index)]
    records, arrays = [], {}
    for target, model in ((f"classifier on {kind} images", on_synthetic), ("classifier on real images", on_real)):
        scores = {"loss": MEMBERSHIP_ATTACKS["loss"].score(model_logits(model, queries, device), labels)}
        found, rocs = score_audit(target, scores, is_member, images.patient_ids[index], n_boot=settings["bootstrap"],
                                  seed=seed)
        records += found
        arrays.update(rocs)
    return StepResult({"records": records, "nonmembers_sharing_a_patient": shared, "history": history}, arrays)


def dp_gan_result(images: ImageSet, settings: dict[str, Any], seed: int, device: torch.device,
                  label: int) -> StepResult:
    """A DC-GAN of class ``label`` with a private discriminator (``dp.train_dp_dcgan``, chapter 4's DC-GAN
    settings, ``gan_steps`` steps on average): its history, the guarantee spent, its weights as float16 (arrays
    ``weights/<name>``) and ``synthetic_images`` images from them (seed ``seed + label``, as chapter 4 draws)."""
    x, y = images.tensors("train", settings["max_train_images"], seed)
    training.seed_everything(seed + label)
    generator, discriminator = generative.GENERATORS["dcgan"].build(images.channels, images.size, settings)
    history, spent = dp.train_dp_dcgan(
        generator, discriminator, x[y == label], epsilon=settings["dp_gan_epsilon"], delta=settings["dp_delta"],
        steps=settings["gan_steps"], batch_size=settings["batch_size"], lr=settings["gan_lr"],
        max_grad_norm=settings["dp_max_grad_norm"], seed=seed + label, device=device)
    weights = generative.half_state(generator)
    model = generative.from_half_state("dcgan", images.channels, images.size, settings, weights, device)
    samples = generative.sample(model, settings["synthetic_images"], seed=seed + label, device=device)
    return StepResult({"history": history, "privacy": dp.describe(spent)},
                      {"images": generative.to_uint8(samples).numpy(),
                       **{f"{synthetic_images.WEIGHTS}{k}": v for k, v in weights.items()}})


def dp_gan_attacks_result(upstream: dict[str, StepResult], images: ImageSet, settings: dict[str, Any], seed: int,
                          device: torch.device, weights: str | None, feature_space: str,
                          inception_weights: str | None) -> StepResult:
    """GAN-Leaks (plain and calibrated, as :func:`generator_attacks_result`) on the private DC-GANs, and chapter
    4's quality figures (FID, KID, precision, recall against the held-out test images, in chapter 4's feature
    space) of their stored images beside those of chapter 4's DC-GAN."""
    name = step_name(images)
    index, is_member, reference, _ = generator_membership(images, settings, seed, reference_share=REFERENCE_SHARE)
    queries = images.images[torch.as_tensor(index)].float().div_(255.0)
    labels = images.labels[torch.as_tensor(index)]
    references = images.images[torch.as_tensor(reference)].float().div_(255.0)
    reference_labels = images.labels[torch.as_tensor(reference)]
    scores = {attack: np.zeros(len(index)) for attack in GAN_LEAKS}
    for label, class_name in synthetic_images.CLASS_STEPS.items():
        state = {key.removeprefix(synthetic_images.WEIGHTS): value for key, value
                 in upstream[f"06_privacy/{name}/dp_dcgan/{class_name}"].arrays.items()
                 if key.startswith(synthetic_images.WEIGHTS)}
        model = generative.from_half_state("dcgan", images.channels, images.size, settings, state, device)
        generated = generative.sample(model, settings["gan_leaks_samples"], seed=seed + label, device=device)
        mine = (labels == label).numpy()
        scores["gan_leaks"][mine] = MEMBERSHIP_ATTACKS["gan_leaks"].score(queries[mine], generated)
        scores["gan_leaks_calibrated"][mine] = MEMBERSHIP_ATTACKS["gan_leaks"].score(
            queries[mine], generated, reference=references[reference_labels == label])
    spent = {c: upstream[f"06_privacy/{name}/dp_dcgan/{c}"].record["privacy"]["epsilon"]
             for c in synthetic_images.CLASS_STEPS.values()}
    target = f"generator: DP DC-GAN eps={settings['dp_gan_epsilon']:g}"
    records, arrays = score_audit(target, scores, is_member, images.patient_ids[index], n_boot=settings["bootstrap"],
                                  seed=seed)
    classifier = training.classifier_for(images, settings, seed=seed, device=device, weights=weights)[0] \
        if feature_space == "classifier" else None
    encoder, about = synthetic_eval.feature_spaces(feature_space, [name], {name: classifier},
                                                   inception_weights=inception_weights, seed=seed)[name]
    real = metrics.image_features(encoder, images.tensors("test", settings["max_eval_images"], seed)[0], device)
    quality = {}
    for generator, prefix in (("generator: dcgan", f"04_synthetic_images/{name}/dcgan"),
                              (target, f"06_privacy/{name}/dp_dcgan")):  # keyed as the attack records' targets
        fake = torch.cat([generative.from_uint8(torch.from_numpy(upstream[f"{prefix}/{c}"].arrays["images"]))
                          for c in synthetic_images.CLASS_STEPS.values()])
        quality[generator] = synthetic_eval.quality_figures(real, metrics.image_features(encoder, fake, device),
                                                            seed=seed)
    return StepResult({"records": records, "quality": quality, "feature_extractor": about,
                       "epsilon_spent": spent}, arrays)
