"""Benchmark: candidate speed-ups of classifier training, attack gradients and inference, as ratios of one run.

    python benchmarks/bench_speedups.py [--size 64] [--batch 32] [--repeats 3] [--infer-batch 128]
                                        [--compile-budget 120] [--quick]

Every candidate change is timed against the float32, default-layout baseline in the same process on an
EfficientNet-B3 (``models.build_classifier(1)``, random init, random 1-channel images). Repeats are
interleaved (each round runs every variant once, in a rotated order) and the best of N is kept, so drift in
machine load hits all variants alike.

1. Training, forward + backward + AdamW: the project's ``training.train_classifier`` (one epoch of
   ``TRAIN_BATCHES`` batches after a one-batch warm-up) in float32, with model and inputs in
   ``channels_last``, and with the forward pass under ``torch.autocast("cpu", dtype=torch.bfloat16)``
   (``Bf16Forward``: an autocast context around the loop fails in its evaluation); both are applied from outside
   the loop, no library edit. ``torch.compile`` (inductor, default mode) cannot be timed that
   way: its compile time would mix with the steps, and the loop's evaluation compiles a second graph. It is
   timed on bare steps built like the loop (same model builder, augmentation, class-weighted loss, AdamW,
   clipping, schedule), eager against compiled, in a child process with a fresh inductor cache and one
   compile thread, stopped after ``--compile-budget`` seconds.
2. The attack inner step: ``attacks.make_attack("fgsm")``, one input gradient in eval mode (PGD repeats it).
3. Inference: ``training.predict_proba`` (eval forward, no grad) on one batch of ``--infer-batch``.

Prints torch version, threads and CPU model, then a table of seconds per image, images/s, the ratio
baseline / variant (> 1 means faster) and a verdict ("adopt" only if the ratio is above ``ADOPT``), then how far
channels_last and bf16 change the attack's perturbation and the logits. ``--quick`` is a
smoke check: fewer batches, no torch.compile (a cold compile takes minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medsec_utils import attacks, models, plan, training

CPU = torch.device("cpu")
ADOPT = 1.1  # a change is worth adopting only if it is more than 10 % faster in this run
TRAIN_BATCHES = 4  # batches per training timing (quick: 2)
EPS = 2 / 255
Timer = Callable[[], float]


class Bf16Forward(nn.Module):
    """``model`` with its forward pass under CPU bfloat16 autocast and float32 logits out.

    An autocast context around ``train_classifier`` or ``predict_proba`` fails (``predict_proba`` turns bfloat16
    probabilities into NumPy); wrapping the forward pass is the recipe torch documents (backward outside autocast)
    and keeps the loss, the attack's gradient step and everything after the logits in float32.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()


@dataclass(frozen=True)
class Variant:
    """One way to run the same arithmetic: memory layout of model and inputs, and bfloat16 autocast."""

    name: str
    channels_last: bool = False
    bf16: bool = False

    def model(self, model: nn.Module) -> nn.Module:
        """``model`` in this variant's layout (in place), its forward pass under autocast for bf16."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return Bf16Forward(model) if self.bf16 else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this variant's layout (with one channel both layouts hold the same bytes)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


BASELINE = Variant("float32")
VARIANTS = (BASELINE, Variant("channels_last", channels_last=True), Variant("bf16_autocast", bf16=True))


@dataclass
class Row:
    """One line of the result table: best seconds for ``images`` images of ``variant`` against ``baseline``."""

    section: str
    variant: str
    seconds: float
    images: int
    baseline: float
    verdict: str = ""

    @property
    def ratio(self) -> float:
        return self.baseline / self.seconds


def interleaved_best(timers: dict[str, Timer], repeats: int) -> dict[str, float]:
    """Best seconds of every timer over ``repeats`` rounds; each round runs all timers once, starting one later."""
    names = list(timers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            times[name].append(timers[name]())
    return {name: min(values) for name, values in times.items()}


def fresh_classifier(variant: Variant) -> nn.Module:
    """``models.build_classifier(1)`` seeded identically for every variant, in the variant's layout."""
    torch.manual_seed(0)
    return variant.model(models.build_classifier(1))


def training_timers(size: int, batch: int, batches: int) -> tuple[dict[str, Timer], set[str]]:
    """Per variant, a timer of one ``train_classifier`` epoch over ``batches`` batches from the same initial
    weights every time (warmed up here), and the variants whose training left non-finite weights.

    bf16 autocast training now and then diverges to NaN weights on kernels without native bfloat16 (a CI machine;
    here under ``ONEDNN_MAX_CPU_ISA=AVX512_CORE ATEN_CPU_CAPABILITY=default``, in some runs of the same seed, not
    all); the loop's evaluation then refuses the NaN probabilities. Such a variant is still timed, and reported as
    diverged instead of crashing the table.
    """
    x = torch.rand(batches * batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(len(x)) % 2
    timers, diverged = {}, set()
    for variant in VARIANTS:
        model, xv = fresh_classifier(variant), variant.inputs(x)
        initial = {k: v.clone() for k, v in model.state_dict().items()}

        def epoch(n: int, model: nn.Module = model, xv: torch.Tensor = xv, initial: dict = initial,
                  name: str = variant.name) -> float:
            model.load_state_dict(initial)
            started = time.perf_counter()
            try:
                training.train_classifier(model, (xv[:n], y[:n]), (xv[:2], y[:2]), epochs=1, batch_size=batch,
                                          lr=1e-3, weight_decay=1e-4, seed=0, device=CPU, progress=False)
            except ValueError:
                if all(torch.isfinite(p).all() for p in model.parameters()):
                    raise
                diverged.add(name)
            return time.perf_counter() - started

        epoch(batch)
        timers[variant.name] = lambda epoch=epoch: epoch(len(x))
    return timers, diverged


def attack_timers(size: int, batch: int) -> tuple[dict[str, Timer], dict[str, float]]:
    """Per variant, a timer of one FGSM call (one input gradient in eval mode) on ``batch`` images, and the share
    of pixels whose perturbation equals the float32 one (from the warm-up call)."""
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % 2
    timers, perturbations = {}, {}
    for variant in VARIANTS:
        attack = attacks.make_attack("fgsm", fresh_classifier(variant).eval(), EPS, {})
        xv = variant.inputs(x)

        def step(attack: Callable = attack, xv: torch.Tensor = xv, name: str = variant.name) -> float:
            started = time.perf_counter()
            perturbations[name] = (attack(xv, y) - xv).sign()
            return time.perf_counter() - started

        step()
        timers[variant.name] = step
    reference = perturbations[BASELINE.name]
    return timers, {name: float((p == reference).float().mean()) for name, p in perturbations.items()}


def inference_timers(size: int, batch: int) -> tuple[dict[str, Timer], dict[str, float]]:
    """Per variant, a timer of ``predict_proba`` on one batch of ``batch`` images (warmed up here), and the
    relative difference of its logits from the float32 ones (a random-init model's logits are near 0, so their
    probabilities all sit near 0.5 and would hide the difference)."""
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    timers, logits = {}, {}
    for variant in VARIANTS:
        model, xv = fresh_classifier(variant).eval(), variant.inputs(x)

        def forward(model: nn.Module = model, xv: torch.Tensor = xv) -> float:
            started = time.perf_counter()
            training.predict_proba(model, xv, CPU, batch_size=batch)
            return time.perf_counter() - started

        forward()
        with torch.no_grad():
            logits[variant.name] = model(xv)
        timers[variant.name] = forward
    reference = logits[BASELINE.name]
    return timers, {name: float((z - reference).norm() / reference.norm()) for name, z in logits.items()}


def emit(record: dict[str, float | str]) -> None:
    """One JSON line on stdout: how the compile child reports to the benchmark."""
    print(json.dumps(record), flush=True)


def compile_measure(size: int, batch: int, batches: int, repeats: int) -> dict[str, float]:
    """Compile seconds and best seconds per step of eager and ``torch.compile`` bare training steps.

    The steps are ``train_classifier``'s (augmentation, class-weighted cross-entropy, AdamW, clipping,
    schedule) on one model; the compiled module shares its weights. Before compiling it emits an eager step
    time and the wall-clock start of the compile, so a stopped child still bounds the payback. The first two
    compiled steps hold the compile; what they took beyond two steady compiled steps is the compile time.
    """
    model = fresh_classifier(BASELINE)
    x = torch.rand(batches * batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(len(x)) % 2
    weights = training.class_weights(y)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = training.warmup_cosine(optimizer, total=10**6, warmup=1)
    generator = torch.Generator().manual_seed(0)

    def steps(net: nn.Module, n: int) -> float:
        net.train()
        started = time.perf_counter()
        for i in range(n):
            inputs = training.augment(x[i * batch:(i + 1) * batch], generator, flip=False)
            loss = F.cross_entropy(net(inputs), y[i * batch:(i + 1) * batch], weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=training.GRAD_CLIP)
            optimizer.step()
            scheduler.step()
        return time.perf_counter() - started

    steps(model, 1)
    emit({"eager_step": steps(model, 1), "compile_started": time.time()})
    compiled = torch.compile(model)
    first_two = steps(compiled, 2)
    best = interleaved_best({"eager": lambda: steps(model, batches), "compiled": lambda: steps(compiled, batches)},
                            repeats)
    eager_step, compiled_step = best["eager"] / batches, best["compiled"] / batches
    return {"eager_step": eager_step, "compiled_step": compiled_step,
            "compile_seconds": max(0.0, first_two - 2 * compiled_step)}


def run_compile_child(size: int, batch: int, repeats: int, budget: float) -> dict[str, float] | str:
    """``compile_measure`` in a child process with a fresh inductor cache (a cold compile, as on a first run) and
    one compile thread; the result, or one line on why there is none (with a payback bound if it ran out of time)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        command = [sys.executable, __file__, "--compile-child", "--size", str(size), "--batch", str(batch),
                   "--repeats", str(repeats)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                 start_new_session=True)
        try:
            out, err = child.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            out, err = child.communicate()
            return out_of_time(out, budget)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not records:
        reason = [line for line in err.strip().splitlines() if line.strip()] or [f"exit code {child.returncode}"]
        return f"child failed: {reason[-1][:200]}"
    result = records[-1]
    return result if "error" not in result else f"torch.compile failed: {result['error']}"


def out_of_time(out: str, budget: float) -> str:
    """Why a stopped compile child has no result: how long it compiled, and the fewest steps that could pay that
    back (if compiled steps took no time at all)."""
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if not records:
        return f"stopped after --compile-budget {budget:g} s before it began compiling"
    compiling = time.time() - records[0]["compile_started"]
    eager = records[0]["eager_step"]
    return (f"cold compile not finished after {compiling:.0f} s (--compile-budget {budget:g} s), stopped; "
            f"with an eager step of {eager:.1f} s it pays back after more than {compiling / eager:.0f} steps even "
            f"if compiled steps took no time")


def compile_child(size: int, batch: int, repeats: int) -> None:
    """Entry point of the child: emit ``compile_measure`` (or the error in one line)."""
    try:
        emit(compile_measure(size, batch, TRAIN_BATCHES, repeats))
    except Exception as error:  # any compiler failure is a result to report, not a crash of the benchmark
        emit({"error": f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"})


def verdict(section: str, variant: str, ratio: float) -> str:
    """One-line verdict of a change by its ratio in this run (float32 attack gradients unless shown otherwise)."""
    if ratio <= ADOPT:
        return f"keep float32 default (not > {ADOPT}x faster)"
    if section == "attack" and variant == "bf16_autocast":
        return "faster, but keep float32: attacks need full-precision gradients unless shown otherwise"
    if variant == "bf16_autocast":
        return "adopt (on speed; check AUC against float32 before switching)"
    return "adopt"


def section_rows(section: str, best: dict[str, float], images: int, diverged: set[str] = frozenset()) -> list[Row]:
    """Table rows of one section, ratios against its float32 baseline; a diverged variant is never adopted."""
    base = best[BASELINE.name]

    def says(name: str, seconds: float) -> str:
        if name in diverged:
            return "diverged: NaN weights after training, never adopt"
        return "baseline" if name == BASELINE.name else verdict(section, name, base / seconds)

    return [Row(section, name, seconds, images, base, says(name, seconds)) for name, seconds in best.items()]


def compile_rows(result: dict[str, float], batch: int) -> list[Row]:
    """Rows of the eager and compiled bare steps; the verdict holds compile time and payback."""
    eager, compiled, compile_s = result["eager_step"], result["compiled_step"], result["compile_seconds"]
    saved = eager - compiled
    payback = f"pays back after {math.ceil(compile_s / saved)} steps" if saved > 0 else "never pays back"
    ratio = eager / compiled
    decision = "adopt" if ratio > ADOPT else f"keep eager (not > {ADOPT}x faster)"
    return [Row("training", "eager_bare", eager, batch, eager, "baseline of torch.compile (bare steps)"),
            Row("training", "compiled_bare", compiled, batch, eager,
                f"{decision}; compile {compile_s:.0f} s, {payback}")]


def print_table(rows: list[Row]) -> None:
    print(f"{'section':<10}{'variant':<15}{'s/img':>9}{'img/s':>9}{'ratio':>8}  verdict")
    for row in rows:
        print(f"{row.section:<10}{row.variant:<15}{row.seconds / row.images:>9.3g}{row.images / row.seconds:>9.3g}"
              f"{row.ratio:>8.3f}  {row.verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="training and attack batch")
    parser.add_argument("--infer-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-budget", type=float, default=120,
                        help="seconds the torch.compile child may take (0: skip torch.compile)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 2 training batches, no torch.compile")
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile_child:
        compile_child(args.size, args.batch, args.repeats)
        return
    batches = 2 if args.quick else TRAIN_BATCHES
    started = time.perf_counter()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {plan.machine()['cpu']} "
          f"({torch.backends.cpu.get_cpu_capability()}), load average {os.getloadavg()[0]:.2f} at start")
    print(f"EfficientNet-B3, 1 channel, {args.size} px, random init and data; best of {args.repeats} interleaved "
          f"repeats; ratio = float32 / variant (> 1 faster); adopt only above {ADOPT}")
    print(f"training: train_classifier, {batches} batches of {args.batch} per timing; channels_last and bf16 "
          f"applied from outside the loop: model and inputs converted (1 channel: channels_last acts through the "
          f"weights), bf16 autocast around the model's forward only (around the whole loop it fails: predict_proba "
          f"cannot turn bfloat16 into NumPy)", flush=True)
    timers, diverged = training_timers(args.size, args.batch, batches)
    rows = section_rows("training", interleaved_best(timers, args.repeats), batches * args.batch, diverged)
    timers, agreement = attack_timers(args.size, args.batch)
    rows += section_rows("attack", interleaved_best(timers, args.repeats), args.batch)
    timers, difference = inference_timers(args.size, args.infer_batch)
    rows += section_rows("inference", interleaved_best(timers, args.repeats), args.infer_batch)
    if args.quick or args.compile_budget <= 0:
        compiled: dict[str, float] | str = "skipped (--quick or --compile-budget 0: a cold compile takes minutes)"
    else:
        compiled = run_compile_child(args.size, args.batch, args.repeats, args.compile_budget)
    if isinstance(compiled, dict):
        rows += compile_rows(compiled, args.batch)
    print_table(rows)
    if isinstance(compiled, str):
        print(f"torch.compile: {compiled}")
    else:
        print(f"torch.compile: bare steps built like train_classifier (given a compiled model, its compile would mix "
              f"into the timed epoch and its evaluation would compile a second graph), {TRAIN_BATCHES} batches per "
              f"timing, cold inductor cache, 1 compile thread")
    print("attack: FGSM perturbation signs equal to float32 on "
          + ", ".join(f"{name} {share:.1%}" for name, share in agreement.items() if name != BASELINE.name)
          + " of pixels; attacks keep float32 gradients unless a change is shown not to alter the attack")
    print("inference: logits differ from float32 by (relative L2) "
          + ", ".join(f"{name} {gap:.1e}" for name, gap in difference.items() if name != BASELINE.name))
    if not args.quick:
        whole_run_estimate(rows)
    print(f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f} at end")


GOAL_SECONDS = 3 * 3600  # the performance issue's goal for the whole cpu reference run on 2 cores
UNIT_SECTIONS = {"classifier_train": "training", "input_gradient": "attack", "predict": "inference"}


def whole_run_estimate(rows: list[Row]) -> None:
    """The plan of the ``cpu`` run on ../shared/data (``medsec_utils.plan``: per-step costs measured here) as the
    library runs today, and with this run's channels_last ratios applied to the classifier units they time."""
    from medsec_utils import data, profiles

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    specs = [str(shared / name) for name in ("chest_xray", "ct", "histology")]
    if not all(Path(spec).is_dir() for spec in specs):
        print(f"whole-run estimate: skipped (no real data at {shared})")
        return
    settings = profiles.resolve_profile("cpu")
    sizes = [plan.SetSize.of(data.load_dataset(spec, size=settings.image_size, progress=False), settings)
             for spec in specs]
    frame = plan.estimate(settings, sizes, plan.unit_costs(settings)[0])
    ratio = {row.section: row.ratio for row in rows if row.variant == "channels_last"}
    faster = frame["seconds"] / frame["unit"].map(lambda unit: ratio.get(UNIT_SECTIONS.get(unit), 1.0))
    for label, seconds in (("as the library runs", frame["seconds"]), ("with channels_last", faster)):
        total = float(seconds.sum())
        print(f"whole cpu run on ../shared/data, {label}: {plan.duration(total)} = {total / GOAL_SECONDS:.2f} x the "
              f"3-hour goal ({', '.join(f'{c[:2]} {plan.duration(v)}' for c, v in seconds.groupby(frame['chapter']).sum().items())})")


if __name__ == "__main__":
    main()
