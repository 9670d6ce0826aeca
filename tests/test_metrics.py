"""Metrics and their confidence intervals against hand-computed values."""

import inspect
import warnings

import numpy as np
import pytest
import torch

from medsec_utils import cache, metrics


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test computes what it asks for: a result memoised by an earlier test (or by an earlier mutant of a
    mutation run, whose code digest is the same file) cannot stand in for it."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))


def test_wilson_interval_matches_textbook_value():
    low, high = metrics.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert metrics.wilson_interval(10, 10)[1] == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 7, 181, 300, 879])
def test_wilson_interval_is_exact_at_zero_and_all(n):
    assert metrics.wilson_interval(0, n)[0] == 0.0 and metrics.wilson_interval(n, n)[1] == 1.0
    assert 0 < metrics.wilson_interval(0, n)[1] < 1 and 0 < metrics.wilson_interval(n, n)[0] < 1


def test_binary_report_hand_example():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.3, 0.9, 0.8, 0.4, 0.6, 0.95, 0.85])
    report = metrics.binary_report(y, p, n_boot=300, seed=1)
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["sensitivity"] == pytest.approx(5 / 6) and report["specificity"] == pytest.approx(3 / 4)
    assert report["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert report["confusion_matrix"] == [[3, 1], [1, 5]]
    assert report["auc"] == pytest.approx(22 / 24)
    low, high = report["auc_ci"]
    assert low <= report["auc"] <= high and high - low > 0


def test_binary_report_passes_threshold_resamples_and_seed_to_every_figure():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.7, 0.2])
    report = metrics.binary_report(y, p, threshold=0.65, n_boot=50, seed=3)
    pred = np.array([0, 0, 0, 1, 0])
    assert report["n"] == 5 and report["accuracy"] == 0.8 and report["confusion_matrix"] == [[3, 0], [1, 1]]
    assert report["sensitivity"] == 0.5 and report["specificity"] == 1.0 and report["balanced_accuracy"] == 0.75
    assert report["auc"] == pytest.approx(4 / 6)
    assert report["accuracy_ci"] == metrics.wilson_interval(4, 5)
    assert report["balanced_accuracy_ci"] == metrics.bootstrap_interval(
        metrics.balanced_accuracy_score, y, pred, n_boot=50, seed=3)
    assert report["auc_ci"] == metrics.bootstrap_interval(metrics.roc_auc_score, y, p, n_boot=50, seed=3)
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 60), rng.random(60)
    report = metrics.binary_report(y, p, n_boot=40, seed=3)
    for key, metric, score in (("auc_ci", metrics.roc_auc_score, p),
                               ("balanced_accuracy_ci", metrics.balanced_accuracy_score, (p >= 0.5).astype(int))):
        assert report[key] == metrics.bootstrap_interval(metric, y, score, n_boot=40, seed=3)
        assert report[key] != metrics.bootstrap_interval(metric, y, score, n_boot=40, seed=0)
        assert report[key] != metrics.bootstrap_interval(metric, y, score, n_boot=80, seed=3)
    y, p = np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.7, 0.2])
    at_half = metrics.binary_report(y, p, n_boot=50, seed=3)
    assert at_half["confusion_matrix"] == [[2, 1], [1, 1]] and at_half["accuracy"] == 0.6
    assert metrics.binary_report(y, np.full(5, 0.5), n_boot=10)["confusion_matrix"] == [[0, 3], [0, 2]]  # >= threshold


def test_binary_report_defaults_are_threshold_half_1000_resamples_and_seed_0():
    """Read from the signature (the test above shows each one is used): a default report computed twice cost
    2000 resamples of two sklearn metrics, about half a minute of CI."""
    parameters = inspect.signature(metrics.binary_report).parameters.values()
    assert {p.name: p.default for p in parameters if p.default is not p.empty} == {
        "threshold": 0.5, "n_boot": 1000, "seed": 0}


def test_kid_is_torchmetrics_kid_on_the_given_vectors_with_subsets_of_at_most_1000_and_no_warning():
    """1001 vectors per set: a subset size of 1000 differs from one of all of them."""
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(1001, 8, generator=g), torch.randn(1001, 8, generator=g) + 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the buffer warning fid_kid must not let through
        kid = KernelInceptionDistance(feature=metrics._Precomputed(8), subsets=7, subset_size=1000)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    torch.manual_seed(3)
    mean, std = kid.compute()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = metrics.fid_kid(real, fake, seed=3, subsets=7)
    assert (scores["kid"], scores["kid_std"]) == (float(mean), float(std))
    assert (scores["n_real"], scores["n_fake"]) == (1001, 1001)
    default = metrics.fid_kid(real[:50], fake[:40])
    assert default == metrics.fid_kid(real[:50], fake[:40], seed=0, subsets=100)
    with pytest.raises(ValueError, match="FID needs at least 2 feature vectors per set; got 1 real and 40 fake"):
        metrics.fid_kid(real[:1], fake[:40])


def test_memoised_features_and_degradation_fids_are_keyed_by_size_seed_and_sentinels(monkeypatch):
    g = torch.Generator().manual_seed(0)
    reference, heldout, noise = (torch.rand(n, 1, 8, 8, generator=g) for n in (12, 10, 6))
    encoder, cpu = _MeanPool(), torch.device("cpu")
    metrics.image_features(encoder, reference, cpu, size=16)
    rows = metrics.degradation_fids(encoder, reference, heldout, cpu, sentinels={"noise": noise}, seed=2, size=16)

    def computed_again(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(metrics, "_embed", computed_again)
    monkeypatch.setattr(metrics, "fid_kid", computed_again)
    assert torch.equal(metrics.image_features(encoder, reference, cpu, size=16),
                       metrics.image_features(encoder, reference.clone(), cpu, size=16))
    assert metrics.degradation_fids(encoder, reference, heldout, cpu, sentinels={"noise": noise}, seed=2,
                                    size=16) == rows
    changed = {"size": dict(size=8), "seed": dict(seed=3), "sentinels": dict(sentinels={"other": noise})}
    for what, change in changed.items():
        with pytest.raises(AssertionError, match="computed again"):
            metrics.degradation_fids(encoder, reference, heldout, cpu, **{"sentinels": {"noise": noise}, "seed": 2,
                                                                         "size": 16, **change})
    with pytest.raises(AssertionError, match="computed again"):
        metrics.image_features(encoder, reference, cpu, size=8)


def test_binary_report_on_one_class_gives_what_it_can_and_nan_for_the_rest():
    report = metrics.binary_report(np.zeros(4), np.array([0.2, 0.7, 0.1, 0.3]), n_boot=10)
    assert report["accuracy"] == 0.75 and report["specificity"] == 0.75 and report["sensitivity"] == 0.0
    for key in ("balanced_accuracy", "auc"):
        assert np.isnan(report[key]) and all(np.isnan(report[f"{key}_ci"]))


def test_bootstrap_interval_resamples_within_each_class_at_the_level_asked():
    y = np.array([0] * 3 + [1] * 7)
    seen = []

    def share_of_ones(labels, score):
        seen.append(int(labels.sum()))
        return float(score.mean())

    score = np.arange(10.0)
    low, high = metrics.bootstrap_interval(share_of_ones, y, score, n_boot=200, seed=5)
    assert set(seen) == {7} and len(seen) == 200  # every resample keeps the seven Pathology cases
    narrow = metrics.bootstrap_interval(share_of_ones, y, score, n_boot=200, seed=5, level=0.5)
    assert low < narrow[0] < narrow[1] < high
    assert (low, high) == metrics.bootstrap_interval(share_of_ones, y, score, n_boot=200, seed=5)


def test_roc_points_are_sklearns_curve():
    fpr, tpr = metrics.roc_points(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_perturbation_sizes_are_exact_on_a_one_pixel_change():
    clean = torch.zeros(2, 1, 16, 16)
    adversarial = clean.clone()
    adversarial[1, 0, 3, 4] = 0.5
    sizes = metrics.perturbation_sizes(clean, adversarial)
    assert sizes["linf"].tolist() == [0.0, 0.5] and sizes["l2"].tolist() == [0.0, 0.5]
    assert sizes["psnr"][0] == np.inf and sizes["psnr"][1] == pytest.approx(10 * np.log10(256 / 0.25))
    assert sizes["ssim"][0] == pytest.approx(1.0) and sizes["ssim"][1] < 0.99
    two_pixels = adversarial.clone()
    two_pixels[1, 0, 9, 9] = -0.5
    assert metrics.perturbation_sizes(clean, two_pixels)["l2"][1] == pytest.approx(np.sqrt(0.5))
    empty = metrics.perturbation_sizes(clean[:0], clean[:0])
    assert sorted(empty) == ["l2", "linf", "psnr", "ssim"] and all(len(v) == 0 for v in empty.values())


def test_nearest_neighbours_in_chunks_are_the_brute_force_ones():
    queries, references = _features(7, 10), _features(9, 11)
    distances, indices = metrics.nearest_neighbours(queries, references, chunk=3)
    full = torch.cdist(queries, references)
    assert torch.equal(indices, full.argmin(1)) and torch.allclose(distances, full.min(1).values)


def test_the_memorisation_audit_counts_and_shares_on_a_hand_example():
    train = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    heldout = torch.tensor([[0.0, 2.0], [10.0, 3.0], [0.0, 4.0]])  # nearest-training distances 2, 3, 4
    synthetic = torch.tensor([[0.0, 1.0], [10.0, 2.5], [5.0, 0.0], [0.0, 0.5]])  # 1, 2.5, 5, 0.5
    audit = metrics.memorisation_audit(train, heldout, synthetic)
    assert audit["threshold"] == 2.0 and audit["near_copy"].tolist() == [True, False, False, True]
    assert audit["near_copy_share"] == 0.5 and audit["closer_than_median_share"] == 0.75  # below 3: 1, 2.5, 0.5
    assert audit["synthetic_distance"].tolist() == [1.0, 2.5, 5.0, 0.5]
    assert audit["nearest_train"].tolist() == [0, 1, 0, 0] and audit["heldout_distance"].tolist() == [2.0, 3.0, 4.0]
    assert (audit["n_synthetic"], audit["n_heldout"], audit["n_train"]) == (4, 3, 2)


class _MeanPool(torch.nn.Module):
    """A fixed encoder: per channel, the image mean and the mean of its left half."""

    identity = "mean-pool test encoder"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x[..., : x.shape[-1] // 2].mean((2, 3))], 1)


def test_degradation_fids_are_the_fids_of_each_degraded_copy_and_each_sentinel_against_the_reference():
    g = torch.Generator().manual_seed(0)
    reference, heldout = torch.rand(12, 1, 8, 8, generator=g), torch.rand(10, 1, 8, 8, generator=g)
    noise = torch.rand(6, 1, 8, 8, generator=g)
    encoder, cpu = _MeanPool(), torch.device("cpu")
    rows = metrics.degradation_fids(encoder, reference, heldout, cpu, sentinels={"noise": noise}, seed=2, size=16)
    levels = [(kind, level) for kind, values in metrics.DEGRADATIONS.items() for level in values]
    assert [(r["degradation"], r["level"], r["sentinel"]) for r in rows] == [(*d, None) for d in levels] + [
        (None, None, "noise")]
    ref = metrics.image_features(encoder, reference, cpu, size=16)
    for r, x in zip(rows, [metrics.degrade(heldout, kind, level, 2) for kind, level in levels] + [noise]):
        expected = metrics.fid_kid(ref, metrics.image_features(encoder, x, cpu, size=16), seed=2)
        assert (r["fid"], r["fid_relative"]) == (expected["fid"], expected["fid_relative"])
        assert (r["n_real"], r["n_fake"]) == (12, len(x))
    assert rows[0]["fid"] != metrics.degradation_fids(encoder, reference, heldout, cpu, seed=2)[0]["fid"]  # size


def test_image_features_resize_then_embed_in_batches():
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    encoder, cpu = _MeanPool(), torch.device("cpu")
    features = metrics.image_features(encoder, x, cpu, batch_size=2, size=4)
    resized = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False).clamp(0, 1)
    assert features.dtype == torch.float64 and torch.allclose(features, encoder(resized).double())
    assert torch.allclose(metrics.image_features(encoder, x, cpu, keep=False), encoder(x).double())
    assert metrics.image_features(encoder, x[:0], cpu, keep=False).shape == (0, 0)


def test_bootstrap_interval_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 2, n)
        score = y + rng.normal(0, 1, n)
        low, high = metrics.bootstrap_interval(metrics.roc_auc_score, y, score, n_boot=300)
        return high - low

    assert width(2000) < width(100)


def _features(n, seed, width=8):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise():
    real = _features(400, 0)
    assert metrics.fid_kid(real, real)["fid"] == pytest.approx(0, abs=1e-6)
    fids = [metrics.fid_kid(real, real + noise * _features(400, 1))["fid"] for noise in (0.1, 0.5, 1.0)]
    kids = [metrics.fid_kid(real, real + noise * _features(400, 1))["kid"] for noise in (0.1, 0.5, 1.0)]
    assert 0 < fids[0] < fids[1] < fids[2] and kids[0] < kids[1] < kids[2]
    shifted = metrics.fid_kid(real, real + 1.0)  # a mean shift of 1 in 8 dimensions adds |mu1 - mu2|^2 = 8
    assert shifted["fid"] == pytest.approx(8.0, rel=1e-3) and shifted["n_fake"] == 400
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid_kid(real[:1], real)


@pytest.mark.parametrize("n_real, n_fake, width", [(40, 60, 128), (300, 500, 16), (20, 400, 64)])
def test_frechet_distance_equals_torchmetrics_fid(n_real, n_fake, width):
    """Fewer vectors than features, more, and one set of each: the same value as torchmetrics' FID."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = _features(n_real, 2, width)
    fake = 0.7 * _features(n_fake, 3, width) @ torch.randn(width, width, generator=torch.Generator().manual_seed(4),
                                                            dtype=torch.float64) / width ** 0.5 + 0.2
    reference = FrechetInceptionDistance(feature=metrics._Precomputed(width))
    reference.update(real, real=True)
    reference.update(fake, real=False)
    assert metrics.frechet_distance(real, fake) == pytest.approx(float(reference.compute()), rel=1e-6)


def test_relative_fid_does_not_change_when_the_features_are_scaled():
    real, fake = _features(50, 5, 16), _features(60, 6, 16) + 0.5
    plain, scaled = metrics.fid_kid(real, fake), metrics.fid_kid(100 * real, 100 * fake)
    assert scaled["fid"] == pytest.approx(1e4 * plain["fid"], rel=1e-9)
    assert scaled["fid_relative"] == pytest.approx(plain["fid_relative"], rel=1e-9) and plain["fid_relative"] > 0


def test_precision_and_recall_separate_fidelity_from_coverage():
    real = _features(300, 0)
    same = metrics.precision_recall(real, _features(300, 1))  # one distribution: both high (finite-sample < 1)
    assert same["precision"] > 0.75 and same["recall"] > 0.75 and same["k"] == 3
    collapsed = real[:5].repeat(60, 1) + 1e-3 * _features(300, 2)  # faithful but covers a few modes
    result = metrics.precision_recall(real, collapsed)
    assert result["precision"] == 1.0 and result["recall"] < 0.1
    far = metrics.precision_recall(real, _features(300, 3) + 10)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_diversity_is_one_for_the_same_distribution_and_falls_with_collapse():
    real = _features(300, 0)
    assert metrics.diversity(real, _features(300, 1)) == pytest.approx(1.0, abs=0.05)
    collapsed = real[:5].repeat(60, 1) + 1e-3 * _features(300, 2)  # five images, each drawn 60 times
    assert metrics.diversity(real, collapsed) < 0.9  # pairs of copies are at distance 0: a fifth of all pairs
    assert metrics.diversity(real, real[:1].repeat(300, 1) + 1e-3 * _features(300, 3)) < 0.01
    assert metrics.diversity(real, 2 * _features(300, 4)) == pytest.approx(2.0, abs=0.1)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.diversity(real, real[:1])


def test_the_machine_reader_guesses_on_one_distribution_and_sees_a_shift():
    real = _features(200, 0)
    same = metrics.real_vs_synthetic_accuracy(real, _features(300, 1), seed=0)
    assert 0.35 < same < 0.65
    # every coordinate shifted by 0.5: the best possible accuracy is Phi(sqrt(8) * 0.5 / 2) = 0.760
    shifted = metrics.real_vs_synthetic_accuracy(real, _features(300, 2) + 0.5, seed=0)
    assert shifted == pytest.approx(0.760, abs=0.05)
    assert metrics.real_vs_synthetic_accuracy(real, _features(300, 2) + 0.5, seed=0) == shifted
    assert metrics.real_vs_synthetic_accuracy(real, _features(300, 2) + 2, seed=0) > 0.97
    with pytest.raises(ValueError, match="5-fold"):
        metrics.real_vs_synthetic_accuracy(real, real[:3], seed=0)


def test_the_memorisation_audit_finds_a_planted_copy_of_a_training_image():
    train, heldout = _features(200, 0), _features(50, 1)
    synthetic = 3 * _features(40, 2)  # wider than the real data: none is close to a training image ...
    synthetic[7] = train[123]  # ... but this one
    audit = metrics.memorisation_audit(train, heldout, synthetic)
    assert audit["near_copy"][7] and audit["nearest_train"][7] == 123 and audit["synthetic_distance"][7] == 0
    assert audit["near_copy_share"] == pytest.approx(1 / 40)
    assert audit["threshold"] == pytest.approx(float(audit["heldout_distance"].min()))


def test_classifier_features_are_what_the_last_layer_of_the_classifier_sees():
    from medsec_utils.models import build_classifier

    classifier = build_classifier(1, "resnet18").eval()
    x = torch.rand(3, 1, 32, 32)
    features = metrics.image_features(metrics.ClassifierFeatures(classifier), x, torch.device("cpu"), batch_size=2)
    assert features.shape == (3, 512) and features.dtype == torch.float64
    head = classifier.backbone.get_classifier()
    torch.testing.assert_close(head(features.float()), classifier(x), rtol=1e-4, atol=1e-4)
    encoder = metrics.ClassifierFeatures(classifier)
    assert encoder.num_features == 512
    assert encoder.identity == {"space": "classifier", "weights": cache.tensor_fingerprint(classifier.state_dict())}
    assert metrics.feature_space("classifier", classifier=classifier)[1] == (
        "penultimate features (512-d) of the chapter-1 classifier")


def test_inception_features_load_a_local_weights_file_and_never_download(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with pytest.raises(FileNotFoundError, match="missing.pth: Inception weights file not found"):
        metrics.InceptionFeatures(tmp_path / "missing.pth")
    with monkeypatch.context() as patch:  # a randomly initialised network stands in for the real weights
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        patch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
        stand_in = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(stand_in.state_dict(), tmp_path / "weights.pth")
    def no_download(*args, **kwargs):
        raise AssertionError("InceptionFeatures tried to download weights")

    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", no_download)
    encoder = metrics.InceptionFeatures(tmp_path / "weights.pth")
    grey = torch.rand(2, 1, 32, 32)
    features = metrics.image_features(encoder, grey, torch.device("cpu"))
    assert features.shape == (2, 2048) and encoder.num_features == 2048
    torch.testing.assert_close(features, metrics.image_features(encoder, grey.expand(-1, 3, -1, -1), torch.device("cpu")))
    as_8_bit = ((grey * 1.4).clamp(0, 1) * 255).round() / 255  # what the network sees: clamped, whole grey levels
    torch.testing.assert_close(metrics.image_features(encoder, grey * 1.4, torch.device("cpu")),
                               metrics.image_features(encoder, as_8_bit, torch.device("cpu")))
    assert not torch.allclose(features, metrics.image_features(encoder, grey * 1.4, torch.device("cpu")))
    assert encoder.identity == {"space": "inception", "weights": cache.file_fingerprint(tmp_path / "weights.pth")}
    assert metrics.feature_space("inception", inception_weights=tmp_path / "weights.pth")[1] == (
        "Inception-v3 pool (2048-d, standard FID)")


def test_random_vgg_features_are_seeded_and_treat_grey_as_rgb():
    grey = torch.rand(3, 1, 32, 32)
    first = metrics.image_features(metrics.RandomVGGFeatures(0), grey, torch.device("cpu"))
    again = metrics.image_features(metrics.RandomVGGFeatures(0), grey.expand(-1, 3, -1, -1), torch.device("cpu"))
    other = metrics.image_features(metrics.RandomVGGFeatures(1), grey, torch.device("cpu"))
    assert first.shape == (3, 4096) and first.dtype == torch.float64
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    state = torch.random.get_rng_state()
    metrics.RandomVGGFeatures(5)
    assert torch.equal(state, torch.random.get_rng_state()), "building the network must not move the global RNG"


def test_random_vgg_features_are_fc2_of_a_seeded_vgg16_on_imagenet_normalised_images():
    """An independent computation: torchvision's VGG-16 seeded alike, ImageNet statistics, the classifier's first
    five layers (fc1, ReLU, dropout, fc2, ReLU), eval mode."""
    import torchvision

    torch.manual_seed(4)
    vgg = torchvision.models.vgg16(weights=None).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = vgg.classifier[:5](vgg.avgpool(vgg.features((x - mean) / std)).flatten(1))
    encoder = metrics.RandomVGGFeatures(4)
    features = metrics.image_features(encoder, x, torch.device("cpu"))
    torch.testing.assert_close(features.float(), expected)
    assert encoder.num_features == expected.shape[1] == 4096
    assert encoder.identity == {"space": "random_vgg16", "seed": 4, "torch": torch.__version__,
                                "torchvision": torchvision.__version__}


def test_image_features_are_computed_once_per_encoder_and_images(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    cpu, x = torch.device("cpu"), torch.rand(3, 1, 32, 32)
    first = metrics.image_features(metrics.RandomVGGFeatures(0), x, cpu)

    def embed_again(*args, **kwargs):
        raise AssertionError("embedded again: the features were not taken from the cache")

    monkeypatch.setattr(metrics, "_embed", embed_again)
    assert torch.equal(metrics.image_features(metrics.RandomVGGFeatures(0), x.clone(), cpu), first)
    for encoder, images in ((metrics.RandomVGGFeatures(1), x), (metrics.RandomVGGFeatures(0), x.flip(0))):
        with pytest.raises(AssertionError, match="embedded again"):
            metrics.image_features(encoder, images, cpu)


def test_feature_space_names_its_space_and_says_what_is_missing():
    encoder, described = metrics.feature_space("random_vgg16", seed=3)
    assert isinstance(encoder, metrics.RandomVGGFeatures) and encoder.seed == 3
    assert described == "random-init VGG-16 fc2 (4096-d, seed 3; Naeem et al. 2020)"
    with pytest.raises(ValueError, match="needs the chapter-1 classifier"):
        metrics.feature_space("classifier")
    with pytest.raises(ValueError, match="needs inception_weights"):
        metrics.feature_space("inception")
    with pytest.raises(ValueError, match="choose from random_vgg16, classifier, inception"):
        metrics.feature_space("clip")


def test_degradations_start_from_the_images_themselves():
    x = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(metrics.degrade(x, "gaussian noise (std)", 0.0), x)
    torch.testing.assert_close(metrics.degrade(x, "box blur (px)", 1), x)
    flat = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(metrics.degrade(flat, "box blur (px)", 4), flat)  # even kernels keep the size too
    assert metrics.degrade(x, "box blur (px)", 5).std() < x.std()
    with pytest.raises(ValueError, match="unknown degradation"):
        metrics.degrade(x, "jpeg", 50)


def test_random_vgg_fid_grows_as_real_images_get_worse():
    """On the built-in CT phantoms: the check every chapter-4 run repeats on its own data."""
    from medsec_utils import data

    images = data.load_dataset("phantom:ct?n=96", size=32, use_cache=False, progress=False)
    x, _ = images.tensors("train")
    noise = torch.rand(48, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = metrics.degradation_fids(metrics.RandomVGGFeatures(0), x[:48], x[48:96], torch.device("cpu"),
                                    sentinels={"uniform noise": noise})
    for kind in metrics.DEGRADATIONS:
        curve = [r["fid_relative"] for r in rows if r["degradation"] == kind]
        assert curve == sorted(curve) and curve[-1] > 2 * curve[0], (kind, curve)
    sentinel = [r for r in rows if r["sentinel"] == "uniform noise"]
    assert len(sentinel) == 1 and sentinel[0]["degradation"] is None and sentinel[0]["fid"] > 2 * rows[0]["fid"]
    assert {r["n_real"] for r in rows} == {48} and len(rows) == 1 + sum(map(len, metrics.DEGRADATIONS.values()))


def test_noise_is_the_seeded_gaussian_added_and_clamped_and_a_2_px_blur_blurs():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    noisy = metrics.degrade(x, "gaussian noise (std)", 0.5, seed=4)
    torch.testing.assert_close(noisy, (x + 0.5 * noise).clamp(0, 1))
    assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0, "strong noise reaches both ends of [0, 1]"
    two = metrics.degrade(x, "box blur (px)", 2)
    assert two.shape == x.shape and not torch.allclose(two, x)
    with pytest.raises(ValueError, match=r"^unknown degradation 'jpeg'; choose from gaussian noise \(std\), "
                                         r"box blur \(px\)$"):
        metrics.degrade(x, "jpeg", 50)


def test_an_interval_of_no_image_is_nan_and_one_right_image_per_class_is_perfect():
    assert all(np.isnan(v) for v in metrics.wilson_interval(0, 0))
    both = metrics.binary_report(np.array([0, 1]), np.array([0.2, 0.9]), n_boot=5)
    assert (both["sensitivity"], both["specificity"], both["accuracy"]) == (1.0, 1.0, 1.0)
    normal_only = metrics.binary_report(np.zeros(4), np.full(4, 0.1), n_boot=5)
    assert normal_only["confusion_matrix"] == [[4, 0], [0, 0]] and normal_only["specificity"] == 1.0
