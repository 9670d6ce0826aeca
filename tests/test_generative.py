"""Generators: each trains a step, samples the right shape and range, and is reproducible for a seed."""

import pytest
import torch

from medsec_utils import generative

CPU = torch.device("cpu")
SETTINGS = {"latent_dim": 16, "gan_width": 8, "progan_width": 16, "ddpm_width": 8}


def _images(n=8, channels=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g)


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_networks_map_latents_to_images_and_images_to_one_logit(size, channels):
    generator, discriminator = generative.build_generative("dcgan", channels, size, SETTINGS)
    fake = generator(torch.randn(4, 16))
    assert fake.shape == (4, channels, size, size) and fake.abs().max() <= 1
    assert discriminator(fake).shape == (4,)


def test_dcgan_starts_from_the_papers_initialisation():
    generator, discriminator = generative.build_generative("dcgan", 1, 64, {**SETTINGS, "gan_width": 32})
    for net in (generator, discriminator):
        convs = torch.cat([m.weight.detach().flatten() for m in net.modules()
                           if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))])
        scales = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
        assert abs(float(convs.mean())) < 1e-3 and float(convs.std()) == pytest.approx(0.02, rel=0.05)
        assert float(scales.mean()) == pytest.approx(1.0, abs=0.01) and float(scales.std()) < 0.03


def _augment(x, policy, seed=0):
    return generative.diff_augment(x, policy, torch.Generator().manual_seed(seed))


def test_diffaugment_translation_shifts_each_image_by_at_most_an_eighth_and_fills_zeros():
    x = torch.rand(6, 1, 16, 16) + 0.5  # no zeros of its own
    moved = _augment(x, "translation")
    for original, image in zip(x, moved):
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if torch.equal(image, _shifted(original, dy, dx))]
        assert len(shifts) == 1, "each image is its original moved by one shift of up to 2 px (1/8 of 16)"
    torch.testing.assert_close(moved, _augment(x, "translation"))  # the same generator seed, the same shifts
    assert not torch.equal(moved, _augment(x, "translation", seed=1))


def _shifted(image, dy, dx):
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = image[:, max(0, dy):h - max(0, -dy),
                                                                            max(0, dx):w - max(0, -dx)]
    return out


def test_diffaugment_cutout_zeroes_one_square_of_half_the_side():
    x = torch.ones(50, 3, 16, 16)
    cut = _augment(x, "cutout")
    zeros = (cut == 0).all(1)  # a cut pixel is zero in every channel
    assert ((cut == 0) == zeros.unsqueeze(1)).all()
    for mask in zeros:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 8 and mask.sum() == len(rows) * len(cols)
    assert (zeros.sum((1, 2)) == 64).any(), "a square inside the image has 8 x 8 pixels"


def test_diffaugment_is_differentiable_and_off_when_the_policy_is_empty():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    assert _augment(x, "") is x
    out = _augment(x, "color,translation,cutout")
    out.sum().backward()
    assert out.shape == x.shape and x.grad is not None and x.grad.abs().sum() > 0
    brighter = _augment(torch.zeros(200, 1, 4, 4), "color")  # brightness +-0.5; contrast keeps a flat image flat
    assert brighter.abs().max() <= 0.5 and brighter.std() > 0.2 and (brighter.std((1, 2, 3)) < 1e-6).all()
    with pytest.raises(ValueError, match="unknown transform.*flip"):
        _augment(x, "color,flip")


def test_unsupported_sizes_and_kinds_are_clear_errors():
    with pytest.raises(ValueError, match="power of two"):
        generative.DCGANGenerator(1, 48)
    with pytest.raises(ValueError, match="choose from dcgan, progan, ddpm"):
        generative.build_generative("vae", 1, 16, SETTINGS)


def test_progan_grows_from_4_px_and_fades_each_level_in():
    generator, discriminator = generative.build_generative("progan", 1, 32, SETTINGS)
    z = torch.randn(3, 16)
    for level, size in enumerate([4, 8, 16, 32]):
        image = generator(z, level)
        assert image.shape == (3, 1, size, size)
        assert discriminator(image, level).shape == (3,)
    # alpha 0 is the previous level upsampled; alpha 1 the new level alone
    faded_out = generator(z, 2, alpha=0.0)
    previous = generator(z, 1)
    torch.testing.assert_close(faded_out, torch.nn.functional.interpolate(previous, scale_factor=2))
    assert not torch.allclose(generator(z, 2, alpha=1.0), faded_out)


def test_progan_layers_keep_their_defining_properties():
    x = torch.randn(5, 6, 4, 4) * 3
    assert torch.allclose(generative.PixelNorm()(x).pow(2).mean(1), torch.ones(5, 4, 4), atol=1e-4)
    with_std = generative.MinibatchStdDev()(x)
    assert with_std.shape == (5, 7, 4, 4)
    assert torch.allclose(with_std[:, -1], x.std(0, unbiased=False).mean().expand(5, 4, 4))
    conv = generative.EqualizedConv2d(6, 4, 3, padding=1)
    assert abs(float(conv.weight.detach().std()) - 1) < 0.2 and conv.scale == pytest.approx((2 / 54) ** 0.5)


@pytest.mark.parametrize("kind", generative.GENERATORS)
def test_each_generator_trains_and_samples_reproducibly_in_the_image_range(kind):
    images = _images(8, 1, 16)
    generator, discriminator = generative.build_generative(kind, 1, 16, SETTINGS)
    before = [p.detach().clone() for p in generator.parameters()]
    if kind == "dcgan":
        history = generative.train_dcgan(generator, discriminator, images, epochs=1, batch_size=4, lr=2e-4, seed=0,
                                         device=CPU, augment="color,translation,cutout", progress=False)
        assert {"loss_d", "loss_g", "seconds"} <= set(history[0])
    elif kind == "progan":
        history = generative.train_progan(generator, discriminator, images, epochs_per_level=1, batch_size=4, lr=1e-3,
                                          seed=0, device=CPU, augment="color,translation,cutout", progress=False)
        assert [h["resolution"] for h in history] == [4, 8, 16]
        assert history[1]["alpha"] < 1 and history[0]["alpha"] == 1
    else:
        history = generative.train_ddpm(generator, images, epochs=2, batch_size=4, lr=1e-3, seed=0, device=CPU,
                                        progress=False)
        assert history[0]["loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters())), "a step must change weights"
    first = generative.sample(generator, 5, seed=1, device=CPU, batch_size=3, ddim_steps=3)
    again = generative.sample(generator, 5, seed=1, device=CPU, batch_size=3, ddim_steps=3)
    other = generative.sample(generator, 5, seed=2, device=CPU, batch_size=3, ddim_steps=3)
    assert first.shape == (5, 1, 16, 16) and 0 <= float(first.min()) and float(first.max()) <= 1
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("kind", generative.GENERATORS)
def test_generator_for_trains_one_class_once_then_loads_it_from_the_cache(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    from medsec_utils import data

    images = data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)
    settings = {**SETTINGS, "gan_steps": 3, "gan_lr": 2e-4, "gan_augment": "color,translation,cutout",
                "progan_steps_per_level": 1, "progan_lr": 1e-3,
                "ddpm_steps": 3, "ddpm_lr": 1e-3, "batch_size": 4, "max_train_images": 16}
    first, history, hit = generative.generator_for(kind, images, 1, settings, seed=0, device=CPU, progress=False)
    if kind != "progan":  # a step budget of 3 is met by whole epochs of this class's images
        assert history[-1]["step"] >= 3 and (len(history) == 1 or history[-2]["step"] < 3)
    again, _, hit_again = generative.generator_for(kind, images, 1, settings, seed=0, device=CPU, progress=False)
    other_class, _, hit_other = generative.generator_for(kind, images, 0, settings, seed=0, device=CPU, progress=False)
    assert (hit, hit_again, hit_other) == (False, True, False) and history
    torch.testing.assert_close(generative.sample(first, 3, seed=0, device=CPU, ddim_steps=2),
                               generative.sample(again, 3, seed=0, device=CPU, ddim_steps=2))
    with pytest.raises(ValueError, match="unknown generative model"):
        generative.generator_for("vae", images, 1, settings, seed=0, device=CPU)


def test_step_budgets_round_up_to_whole_epochs_so_small_classes_train_as_long():
    assert generative.epochs_for(2000, 2000, 32) == 33  # 62 steps per epoch
    assert generative.epochs_for(2000, 300, 32) == 223  # 9 steps per epoch: the same budget, more epochs
    assert generative.epochs_for(5, 3, 32) == 5  # fewer images than a batch: one step per epoch
    assert generative.epochs_for(0, 100, 32) == 1


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path):
    images = _images(8, 1, 16)

    def train(epochs, checkpoint):
        torch.manual_seed(0)
        generator, discriminator = generative.build_generative("dcgan", 1, 16, SETTINGS)
        history = generative.train_dcgan(generator, discriminator, images, epochs=epochs, batch_size=4, lr=2e-4,
                                         seed=0, device=CPU, progress=False, checkpoint=checkpoint)
        return generator, history

    straight, _ = train(2, None)
    train(1, tmp_path / "checkpoint.pt")  # "interrupted" after the first epoch
    resumed, history = train(2, tmp_path / "checkpoint.pt")
    assert [h["epoch"] for h in history] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
