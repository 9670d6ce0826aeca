"""Models and training: two logits, normalisation inside, learning, resuming, caching."""

import numpy as np
import pytest
import torch
from torch import nn

from medsec_utils import cache, data, models, profiles, training

CPU = torch.device("cpu")


@pytest.mark.parametrize("channels", [1, 3])
def test_classifier_has_two_logits_and_takes_unit_range_images(channels):
    model = models.build_classifier(channels).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, channels, 64, 64))
    assert logits.shape == (2, 2)
    assert model.mean.shape == (1, channels, 1, 1) and float(model.std.min()) > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_classifier_gives_the_logits_and_gradients_of_the_default_layout(channels):
    torch.manual_seed(0)
    model = models.build_classifier(channels, "test_resnet").eval()
    default = models.build_classifier(channels, "test_resnet").to(memory_format=torch.contiguous_format).eval()
    default.load_state_dict(model.state_dict())
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, channels, 32, 32, requires_grad=True)
    logits = model(x)
    reference = default.backbone((x - default.mean) / default.std)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    grad, = torch.autograd.grad(logits[:, 1].sum(), x)
    reference_grad, = torch.autograd.grad(reference[:, 1].sum(), x)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-6)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        models.build_classifier(1, weights=tmp_path / "absent.safetensors")


def _easy_task(n=96, seed=0):
    """Bright-centre images are Pathology: a tiny CNN must learn this."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.5
    y = torch.arange(n) % 2
    x[y == 1, :, 6:10, 6:10] += 0.5
    return x, y


def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 2))


def test_training_learns_an_easy_task():
    model = _tiny_cnn()
    train, val = _easy_task(seed=0), _easy_task(seed=1)
    before = training.evaluate(model, val, CPU)["accuracy"]
    history = training.train_classifier(model, train, val, epochs=15, batch_size=16, lr=0.01, weight_decay=0.0,
                                        seed=0, device=CPU, progress=False)
    assert len(history) == 15 and history[-1]["train_loss"] < history[0]["train_loss"]
    after = training.evaluate(model, val, CPU)
    assert after["auc"] >= 0.95 and after["accuracy"] >= max(0.8, before + 0.2)


ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the float16 + GradScaler branch "
                             "runs on a GPU machine")
DEVICES = ["cpu", pytest.param("cuda", marks=ON_CUDA)]


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_precision_learns_the_easy_task_with_float32_weights_and_low_precision_activations(device):
    """The gpu profile's autocast: bfloat16 on the CPU, float16 with gradient scaling on CUDA. Same recipe, same
    result, weights stay float32."""
    device = torch.device(device)
    model = _tiny_cnn()
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    train, val = _easy_task(seed=0), _easy_task(seed=1)
    training.train_classifier(model, train, val, epochs=15, batch_size=16, lr=0.01, weight_decay=0.0, seed=0,
                              device=device, progress=False, mixed_precision=True)
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    assert low in seen and all(p.dtype == torch.float32 for p in model.parameters())
    after = training.evaluate(model, val, device)
    assert after["auc"] >= 0.95 and after["accuracy"] >= 0.8


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    train, val = _easy_task(seed=0), _easy_task(seed=1)
    kwargs = dict(epochs=3, batch_size=16, lr=0.01, weight_decay=0.0, seed=0, device=CPU, progress=False)
    reference = _tiny_cnn()
    training.train_classifier(reference, train, val, **kwargs)

    real_epoch, calls = training._train_epoch, []

    def crash_on_second_epoch(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kw)

    monkeypatch.setattr(training, "_train_epoch", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train_classifier(_tiny_cnn(), train, val, checkpoint=tmp_path / "ckpt.pt", **kwargs)
    monkeypatch.setattr(training, "_train_epoch", real_epoch)
    resumed = _tiny_cnn()
    history = training.train_classifier(resumed, train, val, checkpoint=tmp_path / "ckpt.pt", **kwargs)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_perturb_hook_sees_every_training_batch_in_train_mode():
    train, val = _easy_task(seed=0), _easy_task(seed=1)
    kwargs = dict(epochs=2, batch_size=16, lr=0.01, weight_decay=0.0, seed=0, device=CPU, progress=False)
    modes = []

    def identity_in_eval_mode(model, x, y):
        modes.append((model.training, len(x), len(y)))
        model.eval()  # as attacks do; training must switch back before its own forward pass
        return x

    plain, hooked = _tiny_cnn(), _tiny_cnn()
    training.train_classifier(plain, train, val, **kwargs)
    training.train_classifier(hooked, train, val, perturb=identity_in_eval_mode, **kwargs)
    assert modes == [(True, 16, 16)] * 12
    for a, b in zip(plain.state_dict().values(), hooked.state_dict().values()):
        assert torch.equal(a, b)
    blanked = _tiny_cnn()
    training.train_classifier(blanked, train, val, perturb=lambda m, x, y: torch.zeros_like(x), **kwargs)
    assert not torch.equal(blanked[0].weight, plain[0].weight)


def _how_augmented(x: torch.Tensor, out: torch.Tensor, pad: int) -> tuple[tuple[int, int], list[bool]]:
    """The batch's shift (as the crop offset into the reflect-padded images) and whether each image was flipped:
    the one combination that turns ``x`` into ``out`` exactly (fails when none does)."""
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
            plain = [torch.equal(o, c) for o, c in zip(out, crop)]
            flipped = [torch.equal(o, c.flip(-1)) for o, c in zip(out, crop)]
            if all(p or f for p, f in zip(plain, flipped)):
                return (dy, dx), [f and not p for p, f in zip(plain, flipped)]
    raise AssertionError("the output is no shift (with flips) of the input")


def test_augment_shifts_the_batch_within_a_sixteenth_and_flips_about_half_the_images():
    x = torch.rand(8, 3, 32, 32)
    shifts, flips = set(), []
    for seed in range(12):
        out = training.augment(x, torch.Generator().manual_seed(seed), flip=True)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        shift, flipped = _how_augmented(x, out, pad=2)  # 32 px: up to 2 px
        shifts.add(shift)
        flips += flipped
    assert len(shifts) >= 4 and shifts != {(2, 2)}  # shifts vary, and are not all none
    assert 0.3 <= sum(flips) / len(flips) <= 0.7
    for seed in range(4):
        assert not any(_how_augmented(x, training.augment(x, torch.Generator().manual_seed(seed), flip=False), 2)[1])


def test_class_weights_balance_the_classes():
    weights = training.class_weights(torch.tensor([0] * 25 + [1] * 75))
    assert weights[0] == pytest.approx(2.0) and weights[1] == pytest.approx(2 / 3)


def test_classifier_for_trains_once_then_hits_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    images = data.load_dataset("phantom:ct?n=80", size=32, use_cache=False, progress=False)
    settings = profiles.resolve_profile("smoke", epochs=1, max_train_images=32, max_eval_images=16, batch_size=16)
    model, history, hit = training.classifier_for(images, settings, seed=0, device=CPU, arch="resnet10t",
                                                  progress=False)
    again, _, hit_again = training.classifier_for(images, settings, seed=0, device=CPU, arch="resnet10t",
                                                  progress=False)
    assert (hit, hit_again) == (False, True) and len(history) == 1
    x, _ = images.tensors("test")
    np.testing.assert_allclose(training.predict_proba(model, x, CPU), training.predict_proba(again, x, CPU))
    _, _, other_seed_hit = training.classifier_for(images, settings, seed=1, device=CPU, arch="resnet10t",
                                                   progress=False)
    assert not other_seed_hit


def test_local_pretrained_weights_are_loaded_and_adapted_to_one_channel(tmp_path):
    import timm

    imagenet_like = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t_imagenet.pth"
    torch.save(imagenet_like.state_dict(), path)
    model = models.build_classifier(1, arch="resnet10t", weights=path)
    stem = next(name for name, p in imagenet_like.named_parameters() if p.ndim == 4)
    loaded = dict(model.backbone.named_parameters())[stem]
    expected = dict(imagenet_like.named_parameters())[stem].sum(dim=1, keepdim=True)
    torch.testing.assert_close(loaded, expected)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_classifier_for_gives_the_same_weights_whatever_the_process_drew_before(tmp_path, monkeypatch):
    """The initial weights depend on the seed only: a notebook that drew other random numbers first (a figure,
    another data set) must train the same model. Before this was fixed, chapter 1 trained a different first
    classifier than chapter 4 did on the same data and seed."""
    images = data.load_dataset("phantom:ct?n=80", size=32, use_cache=False, progress=False)
    settings = profiles.resolve_profile("smoke", epochs=1, max_train_images=32, max_eval_images=16, batch_size=16)
    weights = []
    for earlier_draws in (1, 2):
        monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path / str(earlier_draws)))
        torch.manual_seed(earlier_draws)
        model, _, hit = training.classifier_for(images, settings, seed=0, device=CPU, arch="resnet10t", progress=False)
        assert not hit
        weights.append(cache.tensor_fingerprint(model.state_dict()))
    assert weights[0] == weights[1]
