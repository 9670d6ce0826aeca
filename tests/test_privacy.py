"""Chapter 6's privacy audits: every membership attack succeeds on a model that memorised its members and fails on
one that never saw them; bad splits and budgets are refused in one line; DP-SGD's accounting equals an independent
computation and its training spends the budget it was given."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from torch import nn

from medsec_utils.privacy import MEMBERSHIP_ATTACKS, check_membership_split, evaluate_scores, tpr_at_fpr
from medsec_utils.privacy import dp
from medsec_utils.privacy.attacks import balanced_shadows, true_class_confidence

N = 200  # members and non-members each: enough to resolve a TPR at 1 % FPR


def population(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with random labels: a model can only learn them by heart."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 2, (n,), generator=g)


class RadialBasisNet(nn.Module):
    """A model that memorises by design: Gaussian bumps centred on its training images, weighted per class. Far
    from every training image its logits fall to 0, so it does not extrapolate to confident guesses (an MLP on noise
    images does, which hides its members from a loss threshold at low FPR, as Carlini et al. observe)."""

    def __init__(self, centres: torch.Tensor, width: float = 1.0) -> None:
        super().__init__()
        self.centres, self.width = centres.flatten(1), width
        self.weight = nn.Parameter(torch.zeros(len(centres), 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bumps = torch.exp(-torch.cdist(x.flatten(1), self.centres) ** 2 / (2 * self.width ** 2))
        return bumps @ self.weight


def memorised(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Module:
    """A :class:`RadialBasisNet` trained to near-zero loss on ``(x, y)``."""
    model = RadialBasisNet(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def split() -> dict[str, torch.Tensor]:
    members, member_labels = population(N, 1)
    outsiders, outsider_labels = population(N, 2)
    other, other_labels = population(N, 3)
    return dict(members=members, member_labels=member_labels, outsiders=outsiders, outsider_labels=outsider_labels,
                other=other, other_labels=other_labels)


def loss_report(model: nn.Module, s: dict[str, torch.Tensor]):
    score = MEMBERSHIP_ATTACKS["loss"].score
    with torch.no_grad():
        return evaluate_scores("loss", score(model(s["members"]), s["member_labels"]),
                               score(model(s["outsiders"]), s["outsider_labels"]), n_boot=200)


def test_the_loss_attack_finds_the_members_of_a_model_that_memorised_them(split):
    report = loss_report(memorised(split["members"], split["member_labels"]), split)
    assert report.tpr[0.01] > 0.9 and report.auc > 0.95
    assert report.resolved == {0.001: False, 0.01: True}  # 200 non-members resolve 1 % FPR, not 0.1 %
    low, high = report.tpr_ci[0.01]
    assert low <= report.tpr[0.01] <= high


def test_the_loss_attack_learns_nothing_from_a_model_that_never_saw_the_members(split):
    report = loss_report(memorised(split["other"], split["other_labels"]), split)
    assert report.tpr[0.01] < 0.06 and 0.4 < report.auc < 0.6  # at the FPR, as chance gives
    assert report.auc_ci[0] < 0.5 < report.auc_ci[1]


def shadow_models(pool_x: torch.Tensor, pool_y: torch.Tensor, count: int) -> tuple[torch.Tensor, np.ndarray]:
    """``count`` memorising shadow models, each image in a random half of them (Carlini et al.): their logits on
    the pool and who trained on what."""
    rng = np.random.default_rng(0)
    inside = np.argsort(rng.random((count, len(pool_x))), axis=0) < count // 2  # each image in half of them
    logits = []
    for k in range(count):
        model = memorised(pool_x[inside[k]], pool_y[inside[k]])
        with torch.no_grad():
            logits.append(model(pool_x))
    return torch.stack(logits), inside


@pytest.mark.parametrize("online", [False, True])
def test_lira_finds_the_members_of_a_memorising_model_and_not_of_an_unrelated_one(split, online):
    pool_x = torch.cat([split["members"], split["outsiders"]])
    pool_y = torch.cat([split["member_labels"], split["outsider_labels"]])
    shadows, inside = shadow_models(pool_x, pool_y, 4)
    for target, expect_found in ((memorised(split["members"], split["member_labels"]), True),
                                 (memorised(split["other"], split["other_labels"]), False)):
        with torch.no_grad():
            scores = MEMBERSHIP_ATTACKS["lira"].score(target(pool_x), pool_y, shadows, inside, online=online)
        report = evaluate_scores("lira", scores[:N], scores[N:], n_boot=100)
        if expect_found:
            assert report.tpr[0.01] > 0.5, report.tpr
        else:
            assert report.tpr[0.01] < 0.08 and 0.4 < report.auc < 0.6, (report.tpr, report.auc)


@pytest.mark.parametrize("online", [False, True])
def test_lira_on_as_many_in_as_out_shadow_models_finds_nothing_where_there_is_nothing(split, online):
    """Four models with no membership signal (each its own confidence per class, as untrained models that each
    predict one class, and noise), each the others' target in turn. An image then has 1 IN and 2 OUT shadow models
    when it is a member, 2 and 1 when not: unbalanced, LiRA reads the count as signal; balanced, it finds nothing."""
    pool_y = torch.cat([split["member_labels"], split["outsider_labels"]])
    rng = np.random.default_rng(3)
    inside = np.argsort(rng.random((4, 2 * N)), axis=0) < 2
    logits = torch.from_numpy(rng.normal(0, 3, (4, 1, 2)) + rng.normal(0, 0.1, (4, 2 * N, 2)))
    reports = {}
    for balanced in (True, False):
        members, outsiders = [], []
        for k in range(4):
            others = [j for j in range(4) if j != k]
            used = balanced_shadows(inside[others], 1, k) if balanced else None
            scores = MEMBERSHIP_ATTACKS["lira"].score(logits[k], pool_y, logits[others], inside[others],
                                                      online=online, used=used)
            members.append(scores[inside[k]])
            outsiders.append(scores[~inside[k]])
        reports[balanced] = evaluate_scores("lira", np.concatenate(members), np.concatenate(outsiders), n_boot=100)
    assert reports[True].auc_ci[0] < 0.5 < reports[True].auc_ci[1] and reports[True].tpr[0.01] < 0.03
    assert reports[False].advantage > reports[True].advantage + 0.05, (reports[False].advantage, reports[True].advantage)


def test_balanced_shadows_take_as_many_in_as_out_models_per_image():
    shadow_in = np.array([[1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 0, 1]], bool)
    used = balanced_shadows(shadow_in, 1, seed=0)
    assert (used & shadow_in).sum(0).tolist() == [1, 1, 1, 0] and (used & ~shadow_in).sum(0).tolist() == [1, 1, 1, 0]


def test_lira_refuses_images_that_every_shadow_model_trained_on(split):
    logits = torch.zeros(2, 20, 2)
    with pytest.raises(ValueError, match="3 image\\(s\\) have no shadow model that left it out"):
        MEMBERSHIP_ATTACKS["lira"].score(torch.zeros(20, 2), torch.zeros(20, dtype=torch.long), logits,
                                         np.eye(2, 20, dtype=bool) | (np.arange(20) < 3))


def test_the_confidence_lira_scales_is_log_odds_of_the_true_class_and_finite_where_it_rounds_to_one():
    logits = torch.tensor([[0.0, 2.0], [3.0, -1.0], [100.0, -100.0]])
    labels = torch.tensor([1, 0, 0])
    p = torch.softmax(logits.double(), 1)[torch.arange(3), labels]
    assert np.allclose(true_class_confidence(logits, labels)[:2], torch.log(p / (1 - p))[:2].numpy())
    assert true_class_confidence(logits, labels)[2] == pytest.approx(200.0)


def test_gan_leaks_finds_the_members_a_generator_copies_and_not_those_of_an_independent_one(split):
    g = torch.Generator().manual_seed(5)
    copies = split["members"] + 0.02 * torch.randn(split["members"].shape, generator=g)
    independent = population(N, 6)[0]
    score = MEMBERSHIP_ATTACKS["gan_leaks"].score
    found = evaluate_scores("gan_leaks", score(split["members"], copies), score(split["outsiders"], copies), n_boot=100)
    assert found.tpr[0.01] > 0.9
    calibrated = evaluate_scores("gan_leaks", score(split["members"], copies, split["other"]),
                                 score(split["outsiders"], copies, split["other"]), n_boot=100)
    assert calibrated.tpr[0.01] > 0.9
    missed = evaluate_scores("gan_leaks", score(split["members"], independent),
                             score(split["outsiders"], independent), n_boot=100)
    assert missed.tpr[0.01] < 0.08 and 0.4 < missed.auc < 0.6


def mixed_typicality(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half typical images (close to the mean image, so close to anything a generator makes) and half atypical
    ones; and each image's spread."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.where(torch.arange(n) % 2 == 0, 0.1, 1.0)[:, None, None, None]
    return 0.5 + spread * (torch.rand(n, 1, 8, 8, generator=g) - 0.5), spread


def test_calibrating_gan_leaks_cancels_how_typical_an_image_is():
    members, outsiders, reference = (mixed_typicality(N, seed)[0] for seed in (11, 12, 13))
    g = torch.Generator().manual_seed(14)
    copies = members + 0.05 * torch.randn(members.shape, generator=g)
    generated = torch.cat([copies, mixed_typicality(2 * N, 15)[0]])  # and new images, typical ones among them
    score = MEMBERSHIP_ATTACKS["gan_leaks"].score
    plain = evaluate_scores("gan_leaks", score(members, generated), score(outsiders, generated), n_boot=100)
    calibrated = evaluate_scores("gan_leaks", score(members, generated, reference),
                                 score(outsiders, generated, reference), n_boot=100)
    # uncalibrated, every typical image looks copied; calibrated, the copied atypical half of the members stands out
    assert plain.tpr[0.01] < 0.1 and calibrated.tpr[0.01] > 0.4, (plain.tpr, calibrated.tpr)


class MemorisingDenoiser(nn.Module):
    """The ideal noise predictor of a finite training set: it takes the noisy image back to the nearest training
    image and returns the noise that separates them. A DDPM that memorised its training images does this."""

    def __init__(self, images: torch.Tensor) -> None:
        from diffusers import DDPMScheduler

        from medsec_utils.generative.ddpm import DDPM_SCHEDULE, DDPM_TIMESTEPS

        super().__init__()
        self.clean = images * 2 - 1
        self.alphas = DDPMScheduler(num_train_timesteps=DDPM_TIMESTEPS, beta_schedule=DDPM_SCHEDULE).alphas_cumprod

    def forward(self, noisy: torch.Tensor, t: torch.Tensor):
        a = self.alphas[t].view(-1, 1, 1, 1)
        nearest = torch.cdist((noisy / a.sqrt()).flatten(1), self.clean.flatten(1)).argmin(1)
        noise = (noisy - a.sqrt() * self.clean[nearest]) / (1 - a).sqrt()
        return type("Output", (), {"sample": noise})()


def test_the_denoising_error_attack_finds_a_memorising_ddpms_members_and_not_an_unrelated_ones(split):
    score = MEMBERSHIP_ATTACKS["denoising_error"].score
    for model, expect_found in ((MemorisingDenoiser(split["members"]), True), (MemorisingDenoiser(split["other"]), False)):
        members = score(model, split["members"], [100, 300], draws=2, batch_size=64)
        report = evaluate_scores("denoising_error", members, score(model, split["outsiders"], [100, 300], draws=2),
                                 n_boot=100)
        if expect_found:  # the error is that of its training loss: none where the noise is predicted exactly
            assert report.tpr[0.01] > 0.9 and np.abs(members).max() < 1e-6
        else:
            assert report.tpr[0.01] < 0.08 and 0.4 < report.auc < 0.6, (report.tpr, report.auc)
    with pytest.raises(ValueError, match=r"timesteps \[1000\]: give noise levels in 0..999"):
        score(MemorisingDenoiser(split["members"]), split["members"], [1000])


def test_tpr_at_fpr_is_the_best_tpr_whose_fpr_stays_under_it():
    member = np.r_[np.ones(4, int), np.zeros(100, int)]
    scores = np.r_[[10.0, 9.0, 0.5, 0.2], np.linspace(1.0, 0.0, 100)]
    assert tpr_at_fpr(member, scores, 0.0) == 0.5  # two members above every non-member
    assert tpr_at_fpr(member, scores, 0.01) == 0.5  # one non-member (1 %) outranks the third member's 0.5
    assert tpr_at_fpr(member, scores, 0.5) == 0.75


def test_a_split_sharing_an_image_or_a_patient_or_too_small_is_refused_in_one_line():
    members, outsiders = [f"m{i}" for i in range(20)], [f"n{i}" for i in range(100)]
    with pytest.raises(ValueError, match="share 1 image\\(s\\) \\(first: 'm3'\\)"):
        check_membership_split(members, outsiders + ["m3"])
    with pytest.raises(ValueError, match="share 1 patient\\(s\\) \\(first: 'p7'\\)"):
        check_membership_split(members, outsiders, member_patients=["p7"] * 20,
                               nonmember_patients=["p7"] + ["q"] * 99)
    with pytest.raises(ValueError, match="patients: give them for both"):
        check_membership_split(members, outsiders, member_patients=["p"] * 20)
    with pytest.raises(ValueError, match="non-members: 99 images cannot resolve a TPR at 1.0% FPR; give at least 100"):
        check_membership_split(members, outsiders[:99])
    with pytest.raises(ValueError, match="members: 9 images; a membership attack needs at least 10"):
        check_membership_split(members[:9], outsiders)
    check_membership_split(members, outsiders)
    with pytest.raises(ValueError, match="2 non-member scores are not finite"):
        evaluate_scores("loss", np.zeros(20), np.r_[np.zeros(98), np.nan, np.inf], fprs=(0.01,))


@pytest.mark.parametrize(("epsilon", "delta", "message"), [
    (0, 1e-5, "epsilon 0: give a positive finite privacy budget"),
    (-1.0, 1e-5, "epsilon -1.0: give a positive"),
    (math.inf, 1e-5, "epsilon inf: give a positive finite"),
    (3.0, 0.0, r"delta 0.0: give a probability in \(0, 1\)"),
    (3.0, 1.0, r"delta 1.0: give a probability in \(0, 1\)"),
    (3.0, 1e-3, r"delta 0.001: must be below 1 / n = 0.0005 for 2000 training images \(for example 1e-05\)"),
])
def test_a_privacy_budget_that_cannot_be_meant_is_refused_in_one_line(epsilon, delta, message):
    with pytest.raises(ValueError, match=message):
        dp.check_privacy_budget(epsilon, delta, 2000)


def independent_epsilon(sigma: float, q: float, steps: int, delta: float, orders: list[int]) -> float:
    """The subsampled Gaussian's RDP at integer orders (Mironov, Talwar & Zhang 2019, section 3.3), composed over
    ``steps`` and converted to (epsilon, delta) by Balle et al. 2020, theorem 21: written here from the papers."""
    best = math.inf
    for a in orders:
        i = np.arange(a + 1)
        log_terms = ([math.log(math.comb(a, k)) for k in i] + i * math.log(q) + (a - i) * math.log(1 - q)
                     + (i * i - i) / (2 * sigma ** 2))
        rdp = steps * logsumexp(log_terms) / (a - 1)
        best = min(best, rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return best


def test_the_privacy_accounting_equals_an_independent_computation():
    from opacus.accountants import RDPAccountant

    sigma, q, steps, delta = 0.9, 0.02, 900, 1e-5
    orders = list(range(2, 64))
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    assert accountant.get_epsilon(delta, alphas=orders) == pytest.approx(independent_epsilon(sigma, q, steps, delta,
                                                                                             orders), rel=1e-9)
    everything = dp.privacy_spent(sigma, q, steps, delta)  # fractional orders too: never worse, barely better
    assert independent_epsilon(sigma, q, steps, delta, orders) * 0.97 < everything <= independent_epsilon(
        sigma, q, steps, delta, orders)


def test_a_dc_gan_with_a_private_discriminator_is_trained_to_its_budget():
    """The discriminator's batch norms become group norms, the budget is spent to Opacus' accountant over the
    steps asked for (Poisson batches of 8 of 64 images: 8 a epoch), the generator learns, and a budget that
    cannot be meant is refused before anything is trained."""
    from medsec_utils import generative, profiles

    settings = profiles.resolve_profile("smoke")
    torch.manual_seed(0)
    generator, discriminator = generative.GENERATORS["dcgan"].build(1, 32, settings)
    before = [p.detach().clone() for p in generator.parameters()]
    images = torch.rand(64, 1, 32, 32)
    history, spent = dp.train_dp_dcgan(generator, discriminator, images, epsilon=8.0, delta=1e-3, steps=16,
                                       batch_size=8, lr=2e-4, max_grad_norm=1.0, seed=0, device=torch.device("cpu"),
                                       progress=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in discriminator.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in discriminator.modules())
    assert spent.steps == 16 and spent.sample_rate == 0.125 and len(history) == 2
    assert 7.8 <= spent.epsilon <= 8.0
    assert spent.epsilon == pytest.approx(dp.privacy_spent(spent.noise_multiplier, 0.125, 16, 1e-3))
    assert all(math.isfinite(h["loss_d"]) and math.isfinite(h["loss_g"]) for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters()))
    history, spent = dp.train_dp_dcgan(generator, discriminator, images, epsilon=8.0, delta=1e-3, steps=16,
                                       batch_size=1, lr=2e-4, max_grad_norm=1.0, seed=0, device=torch.device("cpu"),
                                       progress=False)  # Poisson batches of 1 in 64 images: some draw none
    assert spent.steps == 64 and all(math.isfinite(h["loss_d"]) for h in history)
    with pytest.raises(ValueError, match="epsilon 0: give a positive finite privacy budget"):
        dp.train_dp_dcgan(generator, discriminator, images, epsilon=0, delta=1e-3, steps=16, batch_size=8, lr=2e-4,
                          max_grad_norm=1.0, seed=0, device=torch.device("cpu"), progress=False)


def test_dp_sgd_trains_the_classifier_to_the_budget_it_was_given():
    from medsec_utils.models import build_classifier

    model, changes = dp.dp_compatible(build_classifier(1))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert changes[0].startswith("78 BatchNormAct2d -> GroupNorm")
    x, y = population(64, 7)[0].repeat(1, 1, 4, 4), population(64, 7)[1]
    history, spent = dp.train_dp_classifier(model, (x, y), epsilon=3.0, delta=1e-3, epochs=1, batch_size=32, lr=0.05,
                                            max_grad_norm=1.0, seed=0, device=torch.device("cpu"), progress=False)
    assert 2.9 <= spent.epsilon <= 3.0 and spent.steps == 2 and spent.sample_rate == 0.5
    assert spent.epsilon == pytest.approx(dp.privacy_spent(spent.noise_multiplier, 0.5, 2, 1e-3))
    assert math.isfinite(history[0]["train_loss"])
    assert model(x[:3]).shape == (3, 2)
