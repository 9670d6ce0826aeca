"""Chapter 5's steps, per federation (data set or site pair, split and DC-GAN size, as ``federated.plan_federations``
lays them out): how different its sites are, then each run of the study on it (FedAvg at every aggregation period,
the centralised baseline where it runs, local-only at each site) with the FID of every stored model.

The federations' rounds stay in the artefact cache (volatile); a step stores its FID rows, the rounds' bytes and
seconds, and its run config. Every run fits in one step by the plan (the longest, a chest X-ray FedAvg at 128 px,
about 20 minutes on 2 cores), so none is split into blocks of rounds.
"""

from __future__ import annotations

from typing import Any

import flwr
import torch

from .. import federated, training
from ..data import ImageSet
from ..store import CORE_PACKAGES, Step, StepResult
from ._plumbing import data_modules, step_name
from .classifiers import classifier_need

SITES_STEP = "sites"
PACKAGES = (*CORE_PACKAGES, "flwr", "torchvision", "torchmetrics")
STUDY_MODULES = (*federated.study.TRAINING_MODULES, "federated.study", "metrics")


def steps(sets: list[ImageSet], settings: dict[str, Any], params: dict[str, Any], device: torch.device) -> list[Step]:
    """Per federation: its sites step, then one step per study run (``federated.study_runs``)."""
    design = design_of(settings, params)
    by_classifier = params["feature_space"] == "classifier"
    made = []
    for federation in federated.plan_federations(sets, design):
        root = f"05_federated/{federation_id(federation)}"
        first = federation.sets[0]
        classifier, rebuild = classifier_need(first, settings, design.seed, params.get("weights"))
        space = {"feature_space": params["feature_space"], "inception_weights": params.get("inception_weights"),
                 "space_classifier": {k: v for k, v in classifier.items() if k != "code"} if by_classifier else None,
                 "embedded_at": settings["image_size"]}
        modules = tuple(dict.fromkeys([m for images in federation.sets for m in data_modules(images)]
                                      + list(STUDY_MODULES) + (["models", "training"] if by_classifier else [])))
        inputs = dict(federation=federation, design=design, device=device, feature_space=params["feature_space"],
                      inception_weights=params.get("inception_weights"), weights=params.get("weights"),
                      verbose=params.get("verbose", False))
        common = {"data": [images.checksum for images in federation.sets], "sites": federation.sites.fingerprint,
                  "split": federation.split, "image_size": federation.image_size, **space, "seed": design.seed}
        n = sum(len(y) for y in federation.sites.y)
        ratio = (federation.image_size / settings["image_size"]) ** 2
        made.append(Step(f"{root}/{SITES_STEP}", common, modules, sites_result, inputs, PACKAGES,
                         units={"features": n * ratio}, needs=[rebuild] if by_classifier else []))
        tests = sum(len(images.indices("test", settings["max_eval_images"], design.seed)) for images in federation.sets)
        for run in federated.study_runs(federation, design):
            config = federated.study_config(federation, run, design)
            scored = (3 if run.name == "FedAvg" else 1) * (config["rounds"] + 1)
            pooled = n if run.site is None else len(run.sites.y[run.site])
            made.append(Step(
                f"{root}/{run_id(run)}",
                {**common, "run": run.name, "config": config, "run_sites": run.sites.fingerprint,
                 "fid_images": settings["fl_fid_images"], "max_eval_images": settings["max_eval_images"],
                 "flwr": flwr.__version__},
                modules, run_result, dict(inputs, run=run), PACKAGES,
                units={f"dcgan_{federation.image_size}px_step": settings["fl_epochs"] * max(
                    1, pooled // settings["batch_size"]),
                       "dcgan_sample": scored * settings["fl_fid_images"],
                       "features": (scored * settings["fl_fid_images"] + tests) * ratio},
                needs=[rebuild] if by_classifier else []))
    return made


def design_of(settings: dict[str, Any], params: dict[str, Any]) -> federated.Design:
    """The chapter's design from its notebook parameters (the profile's periods, sizes and splits where None)."""
    return federated.Design.of(settings, params["seed"], periods=params.get("periods"), sizes=params.get("sizes"),
                               splits=params.get("splits"), networks=params.get("networks", "both"),
                               cross_modality=params.get("cross_modality", True),
                               extended_dataset=params.get("extended_dataset"),
                               extended_sizes=params.get("extended_sizes", ()),
                               extended_splits=params.get("extended_splits", ()))


def federation_id(federation: federated.Federation) -> str:
    """``chest_xray/iid/64px``; a site pair ``chest_xray+ct/one_modality_per_site/64px``."""
    names = "+".join(step_name(images) for images in federation.sets)
    return f"{names}/{federation.split.replace(' ', '_')}/{federation.image_size}px"


def run_id(run: federated.StudyRun) -> str:
    """``fedavg_every3``, ``centralised``, ``local_site0``."""
    if run.name == "FedAvg":
        return f"fedavg_every{run.period}"
    return "centralised" if run.site is None else f"local_site{run.site}"


def sites_result(federation: federated.Federation, design: federated.Design, device: torch.device,
                 feature_space: str, inception_weights: str | None, weights: str | None, verbose: bool) -> StepResult:
    """The recipe of a sites step: ``federated.site_gap``."""
    gap = federated.site_gap(federation, design, _space(federation, design, feature_space, inception_weights, weights,
                                                        device), device)
    return StepResult({key: value for key, value in gap.items() if key != "federation"})


def run_result(federation: federated.Federation, design: federated.Design, run: federated.StudyRun,
               device: torch.device, feature_space: str, inception_weights: str | None, weights: str | None,
               verbose: bool) -> StepResult:
    """The recipe of a run step: ``federated.evaluate_run`` (the run from the artefact cache, or trained now)."""
    space = _space(federation, design, feature_space, inception_weights, weights, device)
    found = federated.evaluate_run(federation, run, design, space, device, verbose=verbose)
    return StepResult({key: value for key, value in found.items() if key != "federation"})


def _space(federation: federated.Federation, design: federated.Design, feature_space: str,
           inception_weights: str | None, weights: str | None, device: torch.device) -> federated.study.FeatureSpace:
    first = federation.sets[0]

    def classifiers() -> dict[str, torch.nn.Module]:
        return {first.name: training.classifier_for(first, design.settings, seed=design.seed, device=device,
                                                    weights=weights)[0]}

    return federated.feature_spaces([first], design, feature_space, inception_weights=inception_weights,
                                    classifiers=classifiers)[first.spec]
