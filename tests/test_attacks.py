"""Attacks: each kind of the table hurts a trained model, budgets hold, AutoAttack works on two logits, runs
repeat, and a new kind is one table entry."""

import pytest
import torch
import torchattacks
from torchattacks.attack import Attack

from _toy import bright_centre_task, trained_tiny_cnn
from medsec_utils import attacks, metrics, profiles

CPU = torch.device("cpu")
SETTINGS = profiles.resolve_profile("smoke", pgd_steps=10, apgd_steps=10, fab_steps=10, square_queries=50,
                                    cw_steps=50, cw_c=100.0, cw_lr=0.05)


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
    assert attacks.attack_parameters("random_sign", eps, settings) == {"eps": eps, "noise_draws": 3}
    assert "random_sign" in attacks.budgeted_attacks()
    first, hit = attacks.evaluate_attack_cached(model, "random_sign", x, y, eps=eps, settings=settings, progress=False)
    again, hit_again = attacks.evaluate_attack_cached(model, "random_sign", x, y, eps=eps, settings=settings,
                                                      progress=False)
    assert (hit, hit_again) == (False, True) and torch.equal(first.adversarial, again.adversarial)
    delta = (first.adversarial - x).abs().flatten(1).amax(1)
    assert float(delta.max()) <= eps + 1e-6 and bool((delta[first.attacked] > 0).all())
