"""Attacks: each kind of the table hurts a trained model, budgets hold, AutoAttack works on two logits, runs
repeat, and a new kind is one table entry."""

import math
from types import SimpleNamespace

import pytest
import torch
import torchattacks
import tqdm
from torchattacks.attack import Attack

from _toy import bright_centre_task, trained_tiny_cnn
from medsec_utils import attacks, cache, metrics, profiles

CPU = torch.device("cpu")
SETTINGS = profiles.resolve_profile("smoke", pgd_steps=10, apgd_steps=10, fab_steps=10, square_queries=50,
                                    cw_steps=50, cw_c=100.0, cw_lr=0.05)


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test attacks what it asks for: an outcome memoised by an earlier test (or by an earlier mutant of a
    mutation run, whose code digest is the same file) cannot stand in for it."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def bars(monkeypatch, capsys):
    """The progress bars a test's attacks print to stderr, without tqdm's monitor thread (a process forked while
    it holds tqdm's lock, as a mutation tester forks, would hang)."""
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    return capsys


@pytest.fixture(scope="module")
def model():
    return trained_tiny_cnn()


@pytest.fixture(scope="module")
def test_set(model):
    x, y = bright_centre_task(96, 2)
    assert float((attacks.predict_labels(model, x, CPU) == y).float().mean()) >= 0.9, "fixture model too weak"
    return x, y


@pytest.mark.parametrize("name", attacks.ATTACKS)
def test_each_attack_lowers_accuracy(model, test_set, name):
    x, y = test_set
    outcome = attacks.evaluate_attack(model, name, x, y, eps=16 / 255, settings=SETTINGS, progress=False)
    assert outcome.robust_accuracy <= outcome.clean_accuracy - 0.3, (name, outcome.robust_accuracy)
    assert outcome.seconds > 0 and outcome.seconds_per_image > 0


def test_fgsm_moves_every_pixel_by_eps_inside_the_box(model, test_set):
    x, y = test_set
    eps = 4 / 255
    adv = attacks.make_attack("fgsm", model, eps, SETTINGS)(x, y)
    delta = (adv - x).abs()
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert float(delta.flatten(1).amax(1).min()) == pytest.approx(eps, abs=1e-6)
    inside = (x > eps) & (x < 1 - eps)  # pixels the [0, 1] clip cannot touch
    torch.testing.assert_close(delta[inside], torch.full_like(delta[inside], eps), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", attacks.ATTACKS)
def test_every_attack_stays_in_the_box_and_its_budget_and_leaves_unattacked_images(model, test_set, name):
    x, y = test_set
    budgeted = attacks.ATTACKS[name].budgeted
    outcome = attacks.evaluate_attack(model, name, x, y, eps=3 / 255 if budgeted else None, settings=SETTINGS,
                                      progress=False)
    if budgeted:
        assert float((outcome.adversarial - x).abs().max()) <= 3 / 255 + 1e-6
    assert float(outcome.adversarial.min()) >= 0 and float(outcome.adversarial.max()) <= 1
    untouched = ~outcome.attacked
    assert torch.equal(outcome.adversarial[untouched], x[untouched])


@pytest.mark.parametrize("name", attacks.ATTACKS)
def test_every_attack_kind_is_complete(name):
    kind = attacks.ATTACKS[name]
    assert kind.name == name and len(kind.about) > 80, "the book shows the about paragraph"
    for profile in profiles.profile_names():
        assert set(kind.settings_keys) <= set(profiles.resolve_profile(profile)), (profile, name)
    recorded = attacks.attack_parameters(name, 2 / 255 if kind.budgeted else None, SETTINGS)
    assert ("eps" in recorded) == kind.budgeted
    assert (name in attacks.budgeted_attacks()) == kind.budgeted


def test_cw_stays_in_the_box_and_changes_only_attacked_images(model, test_set):
    x, y = test_set
    outcome = attacks.evaluate_attack(model, "cw", x, y, eps=None, settings=SETTINGS, progress=False)
    assert float(outcome.adversarial.min()) >= 0 and float(outcome.adversarial.max()) <= 1
    assert outcome.flipped.any()
    untouched = ~outcome.attacked
    assert torch.equal(outcome.adversarial[untouched], x[untouched])


def test_autoattack_completes_on_two_logits_when_images_survive_apgd(model, test_set):
    x, y = test_set
    eps = 1 / 255
    apgd = torchattacks.APGD(model, eps=eps, steps=10, loss="ce", seed=0)
    survivors = int((attacks.predict_labels(model, apgd(x, y), CPU) == y).sum())
    assert survivors >= len(y) // 4, "the test needs images that survive APGD-CE"
    with pytest.raises(IndexError):  # why the project does not use torchattacks.AutoAttack
        torchattacks.AutoAttack(model, eps=eps, n_classes=2, seed=0)(x, y)
    outcome = attacks.evaluate_attack(model, "autoattack", x, y, eps=eps, settings=SETTINGS, progress=False)
    assert 0 < outcome.robust_correct <= survivors


@pytest.mark.parametrize("name", ["pgd", "autoattack"])
def test_adversarial_images_repeat_for_a_fixed_seed(model, test_set, name):
    x, y = test_set
    runs = [attacks.evaluate_attack(model, name, x, y, eps=2 / 255, settings=SETTINGS, seed=seed, batch_size=32,
                                    progress=False) for seed in (0, 0, 1)]
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    assert not torch.equal(runs[0].adversarial, runs[2].adversarial)


def test_outcome_counts_clean_errors_as_errors_and_splits_flip_directions():
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    clean_pred = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0])  # one Pathology and one Normal already wrong
    adv_pred = torch.tensor([0, 0, 1, 0, 0, 1, 1, 0])
    x = torch.zeros(8, 1, 4, 4)
    outcome = attacks.AttackOutcome("fgsm", 0.01, labels, clean_pred, adv_pred, x, x, seconds=3.0)
    assert outcome.clean_accuracy == 6 / 8 and outcome.robust_accuracy == 3 / 8
    assert outcome.flip_rate(1) == pytest.approx(2 / 3) and outcome.flip_rate(0) == pytest.approx(1 / 3)
    assert outcome.seconds_per_image == 0.5


class _MeanBrightness(torch.nn.Module):
    """Pathology when an image's mean grey level exceeds 100.2 (of 255): a model so sharp that a sub-grey-level
    change of every pixel moves its diagnosis."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1e4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.gain * (x.mean((1, 2, 3)) - 100.2 / 255)
        return torch.stack([torch.zeros_like(score), score], 1)


def test_quantizing_to_8_bit_can_undo_a_sub_grey_level_attack():
    """FGSM at 0.4/255 flips every diagnosis of a model this sharp; saved as 8-bit images, every pixel rounds back
    to its grey level and every diagnosis with it."""
    x = torch.full((8, 1, 8, 8), 100.0)
    x.view(8, -1)[:4, :1] += 1  # mean 100.02: Normal
    x.view(8, -1)[4:, :25] += 1  # mean 100.39: Pathology
    x, y, model = x / 255, torch.tensor([0] * 4 + [1] * 4), _MeanBrightness()
    outcome = attacks.evaluate_attack(model, "fgsm", x, y, eps=0.4 / 255, settings=SETTINGS, progress=False)
    assert outcome.clean_accuracy == 1.0 and outcome.robust_accuracy == 0.0
    assert attacks.quantized_accuracy(model, outcome) == 1.0


def test_bad_names_and_budgets_are_clear_errors(model):
    with pytest.raises(ValueError, match="unknown attack 'deepfool'"):
        attacks.make_attack("deepfool", model, 0.01, SETTINGS)
    with pytest.raises(ValueError, match="pixel units"):
        attacks.make_attack("fgsm", model, 8.0, SETTINGS)
    with pytest.raises(ValueError, match="unknown attack 'deepfool'"):
        attacks.attack_parameters("deepfool", 0.01, SETTINGS)
    with pytest.raises(ValueError, match="already registered"):
        attacks.register_attack("pgd", settings_keys=(), budgeted=True, about="")


def test_recorded_parameters_are_the_ones_that_ran(model):
    pgd = attacks.make_attack("pgd", model, 4 / 255, SETTINGS)
    recorded = attacks.attack_parameters("pgd", 4 / 255, SETTINGS)
    assert (pgd.eps, pgd.alpha, pgd.steps) == (recorded["eps"], recorded["step_size"], recorded["steps"])
    auto = attacks.make_attack("autoattack", model, 4 / 255, SETTINGS)
    apgd, fab, square = auto.attacks
    recorded = attacks.attack_parameters("autoattack", 4 / 255, SETTINGS)
    assert (apgd.steps, apgd.loss, fab.steps, fab.multi_targeted, square.n_queries) == (
        recorded["apgd_steps"], "ce", recorded["fab_steps"], False, recorded["square_queries"])
    cw = attacks.make_attack("cw", model, 0.0, SETTINGS)
    assert (cw.c, cw.steps, cw.lr) == tuple(attacks.attack_parameters("cw", None, SETTINGS)[k] for k in ("c", "steps", "lr"))


def test_recorded_parameters_keep_their_keys_and_order():
    """They are part of cache keys and metrics.json: a change here re-runs every cached attack."""
    eps = 4 / 255
    assert list(attacks.attack_parameters("fgsm", eps, SETTINGS).items()) == [("eps", eps)]
    assert list(attacks.attack_parameters("pgd", eps, SETTINGS).items()) == [
        ("eps", eps), ("steps", 10), ("step_size", 2.5 * eps / 10), ("random_start", True)]
    assert list(attacks.attack_parameters("autoattack", eps, SETTINGS).items()) == [
        ("eps", eps), ("sub_attacks", list(attacks.AUTOATTACK_PARTS)), ("apgd_steps", 10),
        ("apgd_restarts", SETTINGS["apgd_restarts"]), ("fab_steps", 10), ("square_queries", 50)]
    assert list(attacks.attack_parameters("cw", None, SETTINGS).items()) == [
        ("c", 100.0), ("kappa", 0), ("steps", 50), ("lr", 0.05)]


def test_changed_images_marks_only_images_an_attack_moved():
    clean = torch.zeros(3, 1, 4, 4)
    adversarial = clean.clone()
    adversarial[1, 0, 2, 2] = 1 / 255
    assert attacks.changed_images(clean, adversarial).tolist() == [False, True, False]


def test_perturbation_sizes_match_their_definitions():
    clean = torch.full((2, 1, 16, 16), 0.5)
    adversarial = clean.clone()
    adversarial[1] += 0.01
    sizes = metrics.perturbation_sizes(clean, adversarial)
    assert sizes["linf"].tolist() == pytest.approx([0, 0.01])
    assert sizes["l2"].tolist() == pytest.approx([0, 0.01 * 16])
    assert sizes["psnr"][0] == float("inf") and sizes["psnr"][1] == pytest.approx(40.0)
    assert sizes["ssim"][0] == pytest.approx(1.0) and sizes["ssim"][1] < 1.0


def test_cached_attack_is_computed_once_and_returns_the_same_images(model, test_set, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    x, y = test_set
    first, hit = attacks.evaluate_attack_cached(model, "pgd", x, y, eps=2 / 255, settings=SETTINGS, progress=False)
    again, hit_again = attacks.evaluate_attack_cached(model, "pgd", x, y, eps=2 / 255, settings=SETTINGS,
                                                      progress=False)
    assert (hit, hit_again) == (False, True)
    assert torch.equal(first.adversarial, again.adversarial) and torch.equal(first.adv_pred, again.adv_pred)
    assert again.seconds == first.seconds
    _, other_eps_hit = attacks.evaluate_attack_cached(model, "pgd", x, y, eps=3 / 255, settings=SETTINGS,
                                                      progress=False)
    assert not other_eps_hit


class RandomSign(Attack):
    """Toy attack: up to ``draws`` random-sign perturbations of size ``eps``, kept once one flips the diagnosis."""

    def __init__(self, model, eps, draws):
        super().__init__("RandomSign", model)
        self.eps, self.draws = eps, draws

    @torch.no_grad()
    def forward(self, images, labels):
        adversarial = images.clone()
        for _ in range(self.draws):
            still_right = self.get_logits(adversarial).argmax(1) == labels
            trial = (images + self.eps * torch.randn_like(images).sign()).clamp(0, 1)
            adversarial[still_right] = trial[still_right]
        return adversarial


def test_a_new_attack_is_one_table_entry(model, test_set, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    monkeypatch.setattr(attacks, "ATTACKS", dict(attacks.ATTACKS))  # the registration is undone after the test

    @attacks.register_attack("random_sign", settings_keys=("noise_draws",), budgeted=True,
                             about="Random-sign noise of size eps: a toy baseline, no gradient.")
    def random_sign(model, eps, settings, seed):
        return RandomSign(model, eps, settings["noise_draws"])

    x, y = test_set
    eps, settings = 8 / 255, {**SETTINGS, "noise_draws": 3}
    kind = attacks.ATTACKS["random_sign"]
    assert (kind.name, kind.build, kind.settings_keys, kind.budgeted, kind.describe) == (
        "random_sign", random_sign, ("noise_draws",), True, None)
    assert kind.about == "Random-sign noise of size eps: a toy baseline, no gradient."

    def described(eps, settings):
        return {"eps": eps, "draws": settings["noise_draws"]}

    attacks.register_attack("random_sign_described", settings_keys=("noise_draws",), budgeted=True, about="",
                            parameters=described)(random_sign)
    assert attacks.ATTACKS["random_sign_described"].describe is described
    assert attacks.attack_parameters("random_sign_described", eps, settings) == {"eps": eps, "draws": 3}
    assert attacks.attack_parameters("random_sign", eps, settings) == {"eps": eps, "noise_draws": 3}
    assert "random_sign" in attacks.budgeted_attacks()
    first, hit = attacks.evaluate_attack_cached(model, "random_sign", x, y, eps=eps, settings=settings, progress=False)
    again, hit_again = attacks.evaluate_attack_cached(model, "random_sign", x, y, eps=eps, settings=settings,
                                                      progress=False)
    assert (hit, hit_again) == (False, True) and torch.equal(first.adversarial, again.adversarial)
    delta = (first.adversarial - x).abs().flatten(1).amax(1)
    assert float(delta.max()) <= eps + 1e-6 and bool((delta[first.attacked] > 0).all())


def test_unknown_names_list_the_table_and_a_budget_may_be_anything_in_0_1(model):
    with pytest.raises(ValueError, match=r"choose from fgsm, pgd, autoattack, cw$"):
        attacks.make_attack("deepfool", model, 0.01, SETTINGS)
    attacks.make_attack("fgsm", model, 1.0, SETTINGS)
    attacks.make_attack("fgsm", model, 0.0, SETTINGS)
    for eps in (1.5, -0.01):
        with pytest.raises(ValueError, match=rf"eps={eps} is not in \[0, 1\]"):
            attacks.make_attack("fgsm", model, eps, SETTINGS)
        with pytest.raises(ValueError, match=rf"eps={eps} is not in \[0, 1\]"):
            attacks.attack_parameters("fgsm", eps, SETTINGS)


def test_an_attack_without_a_budget_records_none_and_one_with_a_budget_records_it():
    assert "eps" not in attacks.ATTACKS["cw"].parameters(None, SETTINGS)
    plain = attacks.AttackKind("plain_cw", attacks.ATTACKS["cw"].build, ("cw_steps",), False, "")
    assert plain.parameters(None, SETTINGS) == {"cw_steps": 50}
    assert attacks.AttackKind("plain", plain.build, (), True, "").parameters(0.5, SETTINGS) == {"eps": 0.5}


def test_the_defaults_are_seed_0_batches_of_32_and_a_progress_bar(model, test_set, bars):
    """PGD's random start is drawn per batch, so another default seed or batch size gives other images."""
    x, y = test_set
    default = attacks.evaluate_attack(model, "pgd", x, y, eps=2 / 255, settings=SETTINGS)
    bar = bars.readouterr().err
    explicit = attacks.evaluate_attack(model, "pgd", x, y, eps=2 / 255, settings=SETTINGS, seed=0, batch_size=32,
                                       progress=False)
    assert int(default.attacked.sum()) > 33 and torch.equal(default.adversarial, explicit.adversarial)
    assert "pgd eps=2/255" in bar and ("batch/s" in bar or "s/batch" in bar)
    assert bars.readouterr().err == ""
    torch.manual_seed(0)
    by_default = attacks.make_attack("autoattack", model, 2 / 255, SETTINGS)
    assert [part.seed for part in by_default.attacks] == [0, 0, 0]


@pytest.mark.parametrize("eps, shown", [(4 / 255, "4/255"), (1 / 3 / 255, "0.33/255"), (None, "none")])
def test_the_progress_bar_names_the_attack_and_its_budget_in_grey_levels(model, test_set, eps, shown, bars):
    x, y = test_set
    name = "fgsm" if eps is not None else "cw"
    attacks.evaluate_attack(model, name, x[:4], y[:4], eps=eps, settings={**SETTINGS, "cw_steps": 2})
    assert f"{name} eps={shown}:" in bars.readouterr().err


def test_each_batch_is_seeded_with_the_seed_and_its_index(model, test_set):
    """The documented contract that makes a run repeatable with the same batch size."""
    x, y = test_set
    outcome = attacks.evaluate_attack(model, "pgd", x, y, eps=2 / 255, settings=SETTINGS, seed=3, batch_size=16,
                                      progress=False)
    todo = torch.nonzero(outcome.attacked).flatten()
    attack = attacks.make_attack("pgd", model, 2 / 255, SETTINGS, 3)
    for number, start in enumerate(range(0, len(todo), 16)):
        index = todo[start:start + 16]
        torch.manual_seed(3 * 100_003 + number)
        assert torch.equal(attack(x[index], y[index]), outcome.adversarial[index]), number


def test_the_outcome_names_what_ran_and_times_only_the_attack_calls(model, test_set, monkeypatch):
    """A clock that ticks once per reading: each batch's attack call spans exactly one tick."""
    x, y = test_set
    ticks = iter(range(1000, 2000))
    monkeypatch.setattr(attacks, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    outcome = attacks.evaluate_attack(model, "fgsm", x, y, eps=2 / 255, settings=SETTINGS, batch_size=16,
                                      progress=False)
    batches = -(-int(outcome.attacked.sum()) // 16)
    assert outcome.seconds == batches
    assert (outcome.attack, outcome.epsilon) == ("fgsm", 2 / 255)
    assert outcome.clean is x and torch.equal(outcome.labels, y)


def test_the_cached_outcome_is_the_outcome_of_every_argument(model, test_set, bars):
    x, y = test_set
    args = {"eps": 2 / 255, "settings": SETTINGS, "seed": 1, "batch_size": 16}
    cached, hit = attacks.evaluate_attack_cached(model, "pgd", x, y, progress=False, **args)
    assert not hit and bars.readouterr().err == ""
    direct = attacks.evaluate_attack(model, "pgd", x, y, progress=False, **args)
    for field in ("adversarial", "clean_pred", "adv_pred", "labels"):
        assert torch.equal(getattr(cached, field), getattr(direct, field)), field
    assert (cached.attack, cached.epsilon, cached.clean is x) == ("pgd", 2 / 255, True)
    assert isinstance(cached.seconds, float) and cached.seconds > 0
    other_image = x.clone()
    other_image[0, 0, 0, 0] = 1 - other_image[0, 0, 0, 0]
    changed = {"images": (other_image, y, args), "labels": (x, 1 - y, args), "seed": (x, y, {**args, "seed": 2}),
               "batch size": (x, y, {**args, "batch_size": 8})}
    for what, (images, labels, kwargs) in changed.items():
        assert not attacks.evaluate_attack_cached(model, "pgd", images, labels, progress=False, **kwargs)[1], what
    attacks.evaluate_attack_cached(model, "pgd", x, y, eps=2 / 255, settings=SETTINGS, seed=0, batch_size=32,
                                   progress=False)
    assert attacks.evaluate_attack_cached(model, "pgd", x, y, eps=2 / 255, settings=SETTINGS, progress=False)[1]


def test_quantizing_keeps_an_attack_that_moves_whole_grey_levels_and_clean_errors_stay_errors():
    """FGSM at 2/255 moves every pixel two grey levels: rounding keeps every flip. One image the model already
    got wrong counts as wrong either way."""
    x = torch.full((8, 1, 8, 8), 100.0)
    x.view(8, -1)[:4, :1] += 1
    x.view(8, -1)[4:, :25] += 1
    x, y, model = x / 255, torch.tensor([0] * 4 + [1] * 4), _MeanBrightness()
    y[0] = 1  # a Normal image labelled Pathology: a clean error
    outcome = attacks.evaluate_attack(model, "fgsm", x, y, eps=2 / 255, settings=SETTINGS, progress=False)
    assert outcome.clean_accuracy == 7 / 8 and outcome.robust_accuracy == 0.0
    assert attacks.quantized_accuracy(model, outcome) == 0.0


def test_a_class_with_no_correctly_classified_image_has_no_flip_rate():
    labels, x = torch.zeros(4, dtype=torch.long), torch.zeros(4, 1, 2, 2)
    outcome = attacks.AttackOutcome("fgsm", 0.01, labels, labels, labels, x, x, seconds=1.0)
    assert math.isnan(outcome.flip_rate(1)) and outcome.flip_rate(0) == 0.0


def test_an_outcome_written_before_a_kill_is_read_back_not_attacked_again(model, test_set, tmp_path, monkeypatch):
    """A run killed after ``outcome.pt`` was written but before the entry's marker: the next run finds the
    outcome whole (written atomically) in the entry's folder under the kind ``attack``, and attacks nothing."""
    x, y = test_set
    first, _ = attacks.evaluate_attack_cached(model, "fgsm", x, y, eps=2 / 255, settings=SETTINGS, progress=False)
    (folder,) = [path.parent for path in (tmp_path / "cache" / "attack").glob(f"*/{cache.MARKER}")]
    (folder / cache.MARKER).unlink()

    def attacked_again(*args, **kwargs):
        raise AssertionError("attacked again although outcome.pt was whole")

    monkeypatch.setattr(attacks, "evaluate_attack", attacked_again)
    again, hit = attacks.evaluate_attack_cached(model, "fgsm", x, y, eps=2 / 255, settings=SETTINGS,
                                                progress=False)
    assert not hit and torch.equal(again.adversarial, first.adversarial) and again.seconds == first.seconds
