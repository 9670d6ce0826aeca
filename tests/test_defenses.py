"""Defences: each kind of the table trains, composes with the classifier into one differentiable module, round-trips
through the cache and does its job; a new kind is one table entry."""

import dataclasses

import pytest
import torch
from torch import nn

from _toy import bright_centre_task, tiny_cnn, trained_tiny_cnn
from medsec_utils import attacks, data, defenses, profiles

CPU = torch.device("cpu")
SETTINGS = profiles.resolve_profile("smoke", pgd_steps=10)


@pytest.fixture(scope="module")
def classifier():
    return trained_tiny_cnn()


@pytest.mark.parametrize("front", [defenses.Denoiser(1, width=8), defenses.AutoEncoder(1, width=8)])
def test_defended_pipeline_is_differentiable_to_the_input(classifier, front):
    pipeline = defenses.Defended(front, classifier).eval()
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    pipeline(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert pipeline(x).shape == (4, 2)


def test_untrained_denoiser_is_the_identity(classifier):
    x = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(defenses.Denoiser(1, width=8).eval()(x), x)


def test_adversarial_training_raises_robust_accuracy(classifier):
    x, y = bright_centre_task(96, 2)
    eps = 8 / 255
    before = attacks.evaluate_attack(classifier, "pgd", x, y, eps=eps, settings=SETTINGS, progress=False)
    robust = tiny_cnn()
    robust.load_state_dict(classifier.state_dict())
    history = defenses.adversarially_train(robust, bright_centre_task(256, 0), bright_centre_task(64, 1), method="pgd", eps=eps, steps=5,
                                           epochs=10, batch_size=32, lr=0.005, weight_decay=0.0, seed=0,
                                           device=CPU, progress=False)
    after = attacks.evaluate_attack(robust.eval(), "pgd", x, y, eps=eps, settings=SETTINGS, progress=False)
    assert len(history) == 10
    assert after.robust_accuracy >= before.robust_accuracy + 0.2, (before.robust_accuracy, after.robust_accuracy)


def test_unknown_adversarial_training_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown adversarial training method 'trades'"):
        defenses.adversarial_perturb("trades", 0.01, 3)


def test_hgd_helps_gray_box_and_an_adaptive_attack_takes_that_back(classifier):
    x, y = bright_centre_task(96, 2)
    eps = 16 / 255
    torch.manual_seed(0)
    denoiser = defenses.Denoiser(1, width=8)
    history = defenses.train_denoiser(denoiser, classifier, bright_centre_task(512, 0), eps=[8 / 255, 16 / 255], steps=5,
                                      epochs=10, batch_size=32, lr=1e-3, seed=0, device=CPU, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(p.requires_grad for p in classifier.parameters()), "the classifier is unfrozen afterwards"
    pipeline = defenses.Defended(denoiser, classifier).eval()
    gray = attacks.evaluate_attack(classifier, "pgd", x, y, eps=eps, settings=SETTINGS, progress=False)
    gray_accuracy = float((attacks.predict_labels(pipeline, gray.adversarial, CPU) == y).float().mean())
    adaptive = attacks.evaluate_attack(pipeline, "pgd", x, y, eps=eps, settings=SETTINGS, progress=False)
    assert gray_accuracy >= gray.robust_accuracy + 0.1, "HGD should undo part of a gray-box attack"
    assert adaptive.robust_accuracy < gray_accuracy


def test_magnet_detector_rejects_the_stated_share_of_clean_images(classifier):
    autoencoder = defenses.AutoEncoder(1, width=8)
    history = defenses.train_autoencoder(autoencoder, bright_centre_task(256, 0)[0], epochs=5, batch_size=32, lr=1e-2, seed=0,
                                         device=CPU, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    magnet = defenses.MagNet(autoencoder, classifier).eval()
    clean_val = bright_centre_task(200, 1)[0]
    magnet.calibrate(clean_val, false_positive_rate=0.1)
    assert float(magnet.rejects(clean_val).float().mean()) == pytest.approx(0.1, abs=0.01)
    noisy = (clean_val + 0.3 * torch.randn_like(clean_val)).clamp(0, 1)
    assert float(magnet.rejects(noisy).float().mean()) > 0.9  # far from the training images: flagged


def test_magnet_accuracy_counts_rejections_for_adversarial_and_against_clean_images(classifier):
    x, y = bright_centre_task(40, 3)
    magnet = defenses.MagNet(defenses.AutoEncoder(1, width=8), classifier).eval()
    magnet.calibrate(x, false_positive_rate=0.5)
    rejected = magnet.rejects(x)
    as_adversarial = defenses.magnet_accuracy(magnet, x, y, adversarial=True)
    as_clean = defenses.magnet_accuracy(magnet, x, y, adversarial=False)
    assert as_adversarial["rejected_share"] == pytest.approx(float(rejected.float().mean()))
    assert as_adversarial["accuracy"] >= as_adversarial["rejected_share"]
    assert as_clean["accuracy"] <= 1 - as_clean["rejected_share"]


@pytest.fixture(scope="module")
def phantoms():
    return data.load_dataset("phantom:ct?n=60", size=16, use_cache=False, progress=False)


TINY = profiles.resolve_profile("smoke", max_train_images=32, max_eval_images=16, batch_size=16, magnet_epochs=1)


@pytest.mark.parametrize("kind", defenses.DEFENSES)
def test_every_defense_kind_is_complete(kind, classifier):
    defense = defenses.DEFENSES[kind]
    assert defense.name == kind and len(defense.about) > 80, "the book shows the about paragraph"
    for profile in profiles.profile_names():
        assert set(defense.settings_keys) <= set(profiles.resolve_profile(profile)), (profile, kind)
    assert defense.build(1, classifier).eval()(torch.rand(3, 1, 16, 16)).shape == (3, 2)


@pytest.mark.parametrize("kind", defenses.DEFENSES)
def test_each_defense_trains_once_then_round_trips_through_the_cache(kind, classifier, phantoms, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    images, settings, defense, trained = phantoms, TINY, defenses.DEFENSES[kind], []

    def train_and_keep(*args):
        trained.append(defense.train(*args))
        return trained[-1]

    monkeypatch.setitem(defenses.DEFENSES, kind, dataclasses.replace(defense, train=train_and_keep))
    first, history, hit = defenses.defense_for(kind, images, classifier, settings, seed=0, device=CPU, progress=False)
    again, _, hit_again = defenses.defense_for(kind, images, classifier, settings, seed=0, device=CPU, progress=False)
    assert (hit, hit_again) == (False, True) and len(history) >= 1
    x = images.tensors("test")[0]
    with torch.no_grad():
        torch.testing.assert_close(first(x), again(x))
    kept = trained[0][0].state_dict()
    assert len(trained) == 1 and list(kept) == list(again.state_dict())
    assert all(torch.equal(kept[key].cpu(), value) for key, value in again.state_dict().items())
    if kind == "magnet":
        assert float(again.threshold) == float(first.threshold) < float("inf")
    if kind == "adversarial_training":
        assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), classifier.state_dict().values()))
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path / "elsewhere"))
    torch.manual_seed(12345)  # the process drew other random numbers first: the trained defence must not change
    retrained, _, hit_elsewhere = defenses.defense_for(kind, images, classifier, settings, seed=0, device=CPU,
                                                       progress=False)
    assert not hit_elsewhere
    assert all(torch.equal(a, b) for a, b in zip(retrained.state_dict().values(), again.state_dict().values()))
    labels = images.tensors("test")[1]
    scored = defenses.score_defense(again, x, labels, torch.zeros(len(x), dtype=torch.bool))
    right = attacks.predict_labels(again, x, CPU) == labels
    if isinstance(again, defenses.Rejecting):  # clean images: right only when let through and diagnosed right
        right &= ~again.rejects(x)
    assert scored["n_correct"] == int(right.sum())
    assert ("rejected_clean_share" in scored) == isinstance(again, defenses.Rejecting)


class _Constant(nn.Module):
    """A two-logit model that diagnoses every image as ``label``."""

    def __init__(self, label):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0 - label, float(label)]))

    def forward(self, x):
        return self.logits.expand(len(x), 2)


def test_score_defense_scores_plain_models_and_counts_rejections_by_image_kind():
    y = torch.tensor([1, 1, 1, 0, 0, 0])
    x = torch.full((6, 1, 8, 8), 0.5)
    changed = torch.tensor([True, True, False, True, False, False])
    assert defenses.score_defense(_Constant(1), x, y, changed) == {"n_correct": 3}

    magnet = defenses.MagNet(nn.Identity(), _Constant(1)).eval()
    x[[0, 3, 5]] = 0.9  # these three are "far from the data": the detector rejects them
    magnet.reconstruction_error = lambda images: (images.flatten(1).mean(1) > 0.7).float()
    magnet.threshold.fill_(0.5)
    scored = defenses.score_defense(magnet, x, y, changed)
    # adversarial 0 (rejected, right), 1 (passed, Pathology right), 3 (rejected, right);
    # clean 2 (passed, right), 4 (passed, Normal called Pathology: wrong), 5 (rejected clean: wrong)
    assert scored["n_correct"] == 4 == defenses.magnet_accuracy(magnet, x, y, changed)["n_correct"]
    assert scored["rejected_adversarial_share"] == pytest.approx(2 / 3)
    assert scored["rejected_clean_share"] == pytest.approx(1 / 3)
    assert scored["accuracy_of_passed_adversarial"] == 1.0
    with pytest.MonkeyPatch.context() as patch:  # an unchanged rerun predicts nothing again
        patch.setattr(defenses, "_score", lambda *a, **k: pytest.fail("scored again"))
        assert defenses.score_defense(magnet, x, y, changed) == scored
        with pytest.raises(pytest.fail.Exception, match="scored again"):
            defenses.score_defense(_Constant(0), x, y, changed)  # another model is another entry


def test_detector_aware_attack_changes_only_images_magnet_gets_right_and_lets_through(classifier):
    x, y = bright_centre_task(40, 3)
    magnet = defenses.MagNet(defenses.AutoEncoder(1, width=8), classifier).eval()
    magnet.calibrate(x, false_positive_rate=0.3)
    ok = (attacks.predict_labels(magnet, x, CPU) == y) & ~magnet.rejects(x)
    batched = defenses.detector_aware_attack(magnet, x, y, eps=8 / 255, steps=3, batch_size=7, seed=1, device=CPU)
    whole = defenses.detector_aware_attack(magnet, x, y, eps=8 / 255, steps=3, batch_size=len(x), seed=1, device=CPU)
    torch.manual_seed(1)
    assert torch.equal(whole[ok], defenses.detector_aware_pgd(magnet, x[ok], y[ok], eps=8 / 255, steps=3))
    assert torch.equal(batched[~ok], x[~ok]) and float((batched - x).abs().max()) <= 8 / 255 + 1e-6
    assert 0 < int(ok.sum()) < len(x)


def test_detector_aware_attack_evades_the_magnet_detector_more_often(classifier):
    x, y = bright_centre_task(96, 2)
    torch.manual_seed(0)
    autoencoder = defenses.AutoEncoder(1, width=16)
    defenses.train_autoencoder(autoencoder, bright_centre_task(512, 0)[0], epochs=30, batch_size=32, lr=3e-3, seed=0, device=CPU,
                               progress=False)
    magnet = defenses.MagNet(autoencoder, classifier).eval()
    magnet.calibrate(bright_centre_task(200, 1)[0], false_positive_rate=0.05)
    assert defenses.magnet_accuracy(magnet, x, y, adversarial=False)["accuracy"] >= 0.8, "reformer must keep accuracy"
    eps = 16 / 255
    torch.manual_seed(0)
    plain = attacks.make_attack("pgd", magnet, eps, SETTINGS)(x, y)
    torch.manual_seed(0)
    aware = defenses.detector_aware_pgd(magnet, x, y, eps=eps, steps=20)
    assert float((aware - x).abs().max()) <= eps + 1e-6
    plain_score = defenses.magnet_accuracy(magnet, plain, y, adversarial=True)
    aware_score = defenses.magnet_accuracy(magnet, aware, y, adversarial=True)
    assert plain_score["rejected_share"] >= 0.1, "the plain attack must trip the detector for this test to mean anything"
    assert aware_score["rejected_share"] < plain_score["rejected_share"] / 2
    assert aware_score["accuracy"] <= plain_score["accuracy"], (plain_score, aware_score)


class BlurDetector(defenses.Defended):
    """Toy defence: a fixed 3x3 box blur in front of the classifier that rejects images the blur changes by more
    than ``limit`` (a buffer, so the cache keeps it)."""

    def __init__(self, classifier):
        super().__init__(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), classifier)
        self.register_buffer("limit", torch.tensor(float("inf")))

    def change(self, x):
        return (x - self.front(x)).abs().flatten(1).mean(1)

    @torch.no_grad()
    def rejects(self, x):
        return self.change(x) > self.limit


def test_a_new_defense_is_one_table_entry(classifier, phantoms, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    monkeypatch.setattr(defenses, "DEFENSES", dict(defenses.DEFENSES))  # the registration is undone after the test

    @defenses.register_defense("blur", settings_keys=("max_train_images",),
                               build=lambda channels, classifier: BlurDetector(classifier),
                               about="A fixed box blur that rejects the images it changes most: a toy.")
    def blur(images, classifier, train, settings, seed, device, progress, checkpoint):
        defended = BlurDetector(classifier)
        defended.limit.fill_(float(defended.change(train[0]).median()))
        return defended, [{"epoch": 1, "train_loss": 0.0, "seconds": 0.0}]

    first, history, hit = defenses.defense_for("blur", phantoms, classifier, TINY, seed=0, device=CPU, progress=False)
    again, _, hit_again = defenses.defense_for("blur", phantoms, classifier, TINY, seed=0, device=CPU, progress=False)
    assert (hit, hit_again) == (False, True) and history[0]["epoch"] == 1
    assert float(again.limit) == float(first.limit) < float("inf")
    x, y = phantoms.tensors("test")
    adversarial = attacks.make_attack("fgsm", again, 8 / 255, SETTINGS)(x, y)
    scored = defenses.score_defense(again, adversarial, y, attacks.changed_images(x, adversarial))
    assert set(scored) == {"n_correct", "rejected_adversarial_share", "rejected_clean_share",
                           "accuracy_of_passed_adversarial"}
