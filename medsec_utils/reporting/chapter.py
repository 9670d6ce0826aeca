"""The opening every chapter notebook shares: settings, data sets, the run record and, on request, classifiers.

A notebook calls :func:`open_chapter` once and then narrates; nothing here is specific to one chapter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import data, paper, profiles, steps, store
from .common import data_label, data_notice
from .provenance import Run

Tensors = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Chapter:
    """A chapter run's resolved inputs: ``settings``, the loaded ``sets`` (in the order of the specs) and ``run``;
    ``nproc`` processes train each model (torchrun, :mod:`medsec_utils.distributed`)."""

    run: Run
    settings: profiles.Settings
    sets: list[data.ImageSet]
    seed: int
    weights: str | None = None
    nproc: int = 1
    classifiers: dict[str, nn.Module] = field(default_factory=dict)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def store(self) -> store.Store:
        """The run's results store: ``store/`` beside the chapter's output folder (``book/reference/store`` for
        ``make reference``), shared by every chapter of the run."""
        return store.Store(Path(self.run.output_dir).parent / "store")

    def steps(self) -> list[store.Step]:
        """This chapter's steps (:mod:`medsec_utils.steps`) with its data sets, settings and parameters."""
        made = steps.chapter_steps(self.run.chapter, self.sets, self.settings, self.run.params, self.device)
        if made is None:
            raise ValueError(f"{self.run.chapter} has no step table in medsec_utils.steps")
        return made

    def results(self, chosen: list[store.Step]) -> dict[str, store.StepResult]:
        """Each step's result by id: from the results store when current (no model is loaded for it), else
        computed now and stored. The run's provenance records when and at which commit each was computed."""
        found = self.store
        results, hits = store.get_all(found, chosen)
        self.run.add_steps({step_id: result.provenance for step_id, result in results.items()})
        print(f"{hits} of {len(chosen)} results from the store ({found.root}), {len(chosen) - hits} computed now")
        return results

    @property
    def device(self) -> torch.device:
        return self.run.device

    def load_classifiers(self) -> dict[str, nn.Module]:
        """The chapter-1 classifier of every data set, keyed by its label: from the artefact cache or trained now."""
        from .. import training

        for images in self.sets:
            name = data_label(images)
            if name not in self.classifiers:
                self.classifiers[name], self.histories[name], hit = training.classifier_for(
                    images, self.settings, seed=self.seed, device=self.device, weights=self.weights, nproc=self.nproc)
                print(f"{name}: classifier {'from the artefact cache' if hit else 'trained now'}")
        return self.classifiers

    def split(self, split: str, limit: int | None) -> dict[str, Tensors]:
        """Images in [0, 1] and labels of ``split`` per data set (a stratified subsample of ``limit`` if given)."""
        chosen = {data_label(images): images.tensors(split, limit, self.seed) for images in self.sets}
        print(", ".join(f"{name}: {len(y)} {split} images" for name, (_, y) in chosen.items()))
        return chosen

    def data_summary(self) -> pd.DataFrame:
        """Images and patients per data set, split and class, with each set's checksum."""
        return pd.concat({f"{data_label(images)} ({images.checksum[:23]}...)": images.summary() for images in self.sets},
                         names=["dataset"])


def open_chapter(chapter: str, *, profile: str, dataset: str | Iterable[str], seed: int, output_dir: str,
                 device: str | None = None, weights: str | None = None, overrides: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, classifiers: bool = False, nproc: int = 1,
                 size_setting: str = "image_size") -> Chapter:
    """Resolve the profile with ``overrides`` (profile keys; None keeps the profile's), load every DATASET spec
    once at the size the profile key ``size_setting`` gives (chapter 4: ``generator_size``; the chapter's
    ``image_size`` becomes that size, so its classifiers see the generators' images), start the run record
    (``params`` are the notebook's other parameters, recorded as given) and, with ``classifiers``, load or train each data set's classifier. ``nproc`` > 1 trains every model of the chapter on
    that many processes under torchrun (one per GPU, or CPU processes with gloo). Shows the study's citation and
    the data notice when run in a notebook.

    Raises:
        ValueError: unknown profile or setting; ``data.DataError``: a bad data set, in one line.
    """
    settings = profiles.resolve_profile(profile, **(overrides or {}))
    settings["image_size"] = settings[size_setting]
    specs = [dataset] if isinstance(dataset, str) else list(dataset)
    recorded = dict(profile=profile, dataset=specs, seed=seed, output_dir=output_dir, weights=weights, nproc=nproc,
                    **(params or {}))
    run = Run(chapter, output_dir, params=recorded, settings=settings, device=profiles.pick_device(device))
    print(f"{chapter}: profile {profile} on {run.device}")
    sets = [data.load_dataset(spec, size=settings.image_size, seed=seed, phantom_images=settings.phantom_images)
            for spec in specs]
    for images in sets:
        run.add_dataset(images)
    opened = Chapter(run, settings, sets, seed, weights, nproc)
    _show_markdown(f"**The study this book reproduces:** {paper.citation()}\n\n{data_notice(sets)}")
    if classifiers:
        opened.load_classifiers()
    return opened


SIZE_SETTINGS = {"04_synthetic_images": "generator_size"}  # a chapter whose notebook opens at another size setting


def open_from_params(chapter: str, params: dict[str, Any]) -> Chapter:
    """:func:`open_chapter` as chapter ``chapter``'s notebook opens it with ``params`` (its parameters as papermill
    gives them): parameters that are profile settings override the profile, the rest are recorded. What
    ``compendium.py`` uses to list and compute a chapter's steps outside its notebook."""
    known = profiles.resolve_profile(params.get("profile", "smoke"))
    own = ("profile", "dataset", "seed", "output_dir", "device", "nproc", "weights")
    size_setting = SIZE_SETTINGS.get(chapter, "image_size")
    overrides = {k: v for k, v in params.items() if k in known and k not in own}
    if size_setting != "image_size":  # the notebook's image_size parameter sets its size setting
        overrides[size_setting] = overrides.pop("image_size", None)
    return open_chapter(chapter, profile=params.get("profile", "smoke"), dataset=params["dataset"],
                        seed=params.get("seed", 0), output_dir=params["output_dir"], device=params.get("device"),
                        weights=params.get("weights"), nproc=params.get("nproc", 1), overrides=overrides,
                        params={k: v for k, v in params.items() if k not in known and k not in own},
                        size_setting=size_setting)


def _show_markdown(text: str) -> None:
    try:
        from IPython.display import Markdown, display
    except ImportError:
        print(text)
        return
    display(Markdown(text))
