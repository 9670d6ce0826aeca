"""Compute, inspect and spot-check a chapter's steps in the results store, outside its notebook.

``compendium.py run`` computes the missing steps of each chapter in plan order (:func:`compute_missing`), stopping
cleanly between steps before a time budget runs out, then executes the chapter's notebook, which reads every
result from the store. ``status`` counts steps per state (:func:`chapter_status`) and ``verify`` recomputes stored
steps from scratch and compares them (:func:`verify_step`).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import cache
from ..plan import duration
from ..store import Step, Store, compare

HEARTBEAT_SECONDS = 60.0  # between progress lines while a step computes
MIN_SCALE = 0.5  # the budget never counts a step at less than this share of its planned seconds


@dataclass
class Budget:
    """Seconds a run may still spend, from ``--stop-after``; None: no limit. ``scale`` corrects the plan's
    estimates by how this chapter's finished steps compared with theirs (another chapter's work is of other kinds:
    chapter 1's classifiers, planned at several times their time, once let a chapter-2 AutoAttack start with 8 of
    its 17 minutes left). It never shrinks an estimate below :data:`MIN_SCALE` of the plan's."""

    deadline: float | None = None
    planned: float = 0.0
    spent: float = 0.0

    @classmethod
    def of(cls, seconds: float | None) -> Budget:
        return cls(None if seconds is None else time.monotonic() + seconds)

    @property
    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    @property
    def scale(self) -> float:
        return max(MIN_SCALE, self.spent / self.planned) if self.planned > 60 else 1.0

    def fits(self, seconds: float) -> bool:
        return seconds * self.scale <= self.left

    def count(self, planned: float, spent: float) -> None:
        self.planned += planned
        self.spent += spent

    def new_chapter(self) -> None:
        """Forget the finished steps' timings: the next chapter's work is of other kinds."""
        self.planned = self.spent = 0.0


class BudgetReached(Exception):
    """The next unit of work does not fit in what is left of the run's budget."""


@dataclass
class Estimator:
    """The plan's seconds for a step on this machine: its own units, plus the upstream artefacts it would rebuild
    (each counted once per run) when neither the artefact cache nor ``store`` (its kept shared models) has them."""

    costs: Mapping[str, float]
    store: Store | None = None
    counted: set[str] = field(default_factory=set)

    def seconds(self, step: Step, claim: bool = False) -> float:
        total = self.units_seconds(step.units)
        for kind, parts, units in step.needs:
            key = f"{kind}/{cache.artefact_key(parts)}"
            kept = self.store is not None and self.store.keeps(kind, parts)
            if key not in self.counted and not kept and not cache.is_cached(kind, parts):
                total += self.units_seconds(units)
                if claim:
                    self.counted.add(key)
        return total

    def units_seconds(self, units: Mapping[str, float]) -> float:
        return sum(count * self.costs.get(unit, 0.0) for unit, count in units.items())


def compute_missing(steps: list[Step], store: Store, estimator: Estimator, budget: Budget,
                    every: float = HEARTBEAT_SECONDS) -> tuple[int, int]:
    """Compute every step of ``steps`` that is not current in ``store``, in order, each stored as it finishes.
    Before each, check that its planned seconds fit in ``budget``; if not, print one line and raise
    :class:`BudgetReached` (every finished step stays stored). Returns ``(taken from the store, computed)``."""
    store.clean()
    budget.new_chapter()
    todo = [step for step in steps if store.state(step)[0] != "current"]
    stored = len(steps) - len(todo)
    total = f" (plan: {duration(sum(estimator.seconds(s) for s in todo))})" if estimator.costs else ""
    print(f"   {len(steps)} steps: {stored} current in the store, {len(todo)} to compute{total}", flush=True)
    for number, step in enumerate(todo, 1):
        planned = estimator.seconds(step)
        if not budget.fits(planned):
            raise BudgetReached(f"next step {step.id} needs about {duration(planned * budget.scale)} by the plan, "
                                f"{duration(max(0.0, budget.left))} of the budget is left: stopping before it "
                                f"({number - 1} of {len(todo)} computed in this chapter)")
        estimator.seconds(step, claim=True)
        state, why = store.state(step)
        plan_text = f"; plan {duration(planned)}" if estimator.costs else ""
        print(f"   [{number}/{len(todo)}] {step.id} ({state}{': ' + why if why else ''}{plan_text})", flush=True)
        started = time.monotonic()
        with _heartbeat(step.id, planned if estimator.costs else None, every):
            store.get(step)
        spent = time.monotonic() - started
        budget.count(planned, spent)
        left = f"; {duration(max(0.0, budget.left))} of the budget left" if budget.deadline is not None else ""
        print(f"       stored in {duration(spent)}{left}", flush=True)
    return stored, len(todo)


class _heartbeat:
    """Prints, every ``every`` seconds while a step computes, the time spent and the plan's time left (``planned``
    None: no plan measured on this machine, the time spent only)."""

    def __init__(self, name: str, planned: float | None, every: float) -> None:
        self.name, self.planned, self.every = name, planned, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> None:
        self.started = time.monotonic()
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _beat(self) -> None:
        while not self.stop.wait(self.every):
            print(f"       {self.name}: {self.line(time.monotonic() - self.started)}", flush=True)

    def line(self, spent: float) -> str:
        """``3 min 00 s in, about 2 min 00 s left by the plan``; past the plan, by how much it is over instead
        (not "0 s left" for the rest of a step that takes twice its plan); with no plan, not "over the plan of 0 s"."""
        if self.planned is None:
            return f"{duration(spent)} in (no plan measured on this machine)"
        if spent <= self.planned:
            return f"{duration(spent)} in, about {duration(self.planned - spent)} left by the plan"
        return f"{duration(spent)} in, {duration(spent - self.planned)} over the plan of {duration(self.planned)}"


def chapter_status(steps: list[Step], store: Store, estimator: Estimator) -> dict[str, object]:
    """Counts per state, the reasons of the stale and damaged ones, the plan's seconds for what is left and the
    measured seconds that computed the current steps (each step's provenance, summed over the runs that made it)."""
    counts = {"current": 0, "stale": 0, "damaged": 0, "missing": 0}
    reasons: dict[str, int] = {}
    left = computed = 0.0
    for step in steps:
        state, why = store.state(step)
        counts[state] += 1
        if state == "current":
            computed += store.seconds(step)
        else:
            left += estimator.seconds(step, claim=True)
        if why:
            reasons[why] = reasons.get(why, 0) + 1
    return {"counts": counts, "reasons": reasons, "seconds_left": left, "seconds_computed": computed}


def verify_step(step: Step, store: Store) -> tuple[str, list[str]]:
    """Recompute a stored step from scratch (an empty artefact cache of its own, so its model is trained again)
    and compare with the stored result (:func:`medsec_utils.store.compare`). A step that reads other steps'
    results (``Step.after``) reads their stored ones: each step is verified on its own."""
    state, why = store.state(step)
    if state != "current":
        return f"not verified: {state}{' (' + why + ')' if why else ''}", []
    stored = store.load(step)
    upstream = {before.id: store.get(before)[0] for before in step.after}
    with tempfile.TemporaryDirectory(prefix="medsec-verify-") as scratch, _cache_at(Path(scratch)):
        fresh = step.compute(upstream)
    return compare(stored, fresh)


class _cache_at:
    """Point the artefact cache at ``root`` for the duration (``MEDSEC_CACHE``)."""

    def __init__(self, root: Path) -> None:
        self.root, self.before = root, os.environ.get(cache.CACHE_ENV)

    def __enter__(self) -> None:
        os.environ[cache.CACHE_ENV] = str(self.root)

    def __exit__(self, *exc: object) -> None:
        if self.before is None:
            os.environ.pop(cache.CACHE_ENV, None)
        else:
            os.environ[cache.CACHE_ENV] = self.before


def pick(steps: Iterable[Step], wanted: list[str]) -> list[Step]:
    """The steps named in ``wanted`` (ids, or id prefixes such as ``02_attacks/ct``), in table order."""
    return [step for step in steps if any(step.id == w or step.id.startswith(w.rstrip("/") + "/") for w in wanted)]
