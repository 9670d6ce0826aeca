"""Generators: every kind in the table builds, trains, caches, resumes and samples the right shape and range,
reproducibly for a seed; a new kind is one table entry."""

import math

import pytest
import torch
from torch import nn

from medsec_utils import cache, data, generative, profiles

CPU = torch.device("cpu")
KINDS = list(generative.GENERATORS)
SETTINGS = {"latent_dim": 16, "gan_width": 8, "progan_width": 16, "ddpm_width": 8,
            "gan_steps": 3, "gan_lr": 2e-4, "gan_augment": "color,translation,cutout",
            "progan_augment": "color,translation,cutout",
            "progan_steps_per_level": 1, "progan_lr": 1e-3, "ddpm_steps": 3, "ddpm_lr": 1e-3,
            "batch_size": 4, "max_train_images": 16, "mixed_precision": False}


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


def _period_two_power(generator: nn.Module, latent_dim: int, n: int = 32) -> float:
    """Spectral power of a generator's images at the 2 px period (the frequencies (1/2, 1/2), (1/2, 0) and
    (0, 1/2) cycles per pixel), relative to the mean power of every frequency: 3 for white noise, less for smooth
    images."""
    with torch.no_grad():
        x = generator(torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(0)))[:, 0]
    x = x - x.mean(dim=(1, 2), keepdim=True)
    power = (torch.fft.fft2(x).abs() ** 2).mean(0)
    half = x.shape[-1] // 2
    return float((power[half, half] + power[half, 0] + power[0, half]) / power.mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_dcgan_generator_upsamples_without_the_checkerboard_of_transposed_convolutions(seed):
    """A root cause of the DC-GAN's failure on CT slices: stride-2 transposed convolutions (the DC-GAN paper's
    generator) make each pixel of a 2x2 block with different weights, a 2 px checkerboard (Odena, Dumoulin &
    Olah, Distill 2016). On a CT slice's flat background it showed as a fine texture, and the checked feature
    space put no generated slice near a real one (bench_generator_quality: precision 0.00 after 1008 and 2007
    steps). Resize-convolution makes
    every pixel with the same weights: here from the first step, against a transposed-convolution generator of
    the same widths."""
    settings = {**SETTINGS, "gan_width": 8}
    torch.manual_seed(seed)
    generator, _ = generative.build_generative("dcgan", 1, 64, settings)
    torch.manual_seed(seed)
    transposed = _transposed_convolution_generator(generator)
    assert _period_two_power(generator, settings["latent_dim"]) < 5
    assert _period_two_power(transposed, settings["latent_dim"]) > 50


def _transposed_convolution_generator(generator: nn.Module) -> nn.Module:
    """The DC-GAN paper's generator with ``generator``'s widths: each resize-convolution becomes a stride-2 4x4
    transposed convolution, initialised N(0, 0.02) like the rest."""
    layers = list(generator.net)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            layers[i] = nn.ConvTranspose2d(layer.in_channels, layer.out_channels, 4, 2, 1, bias=False)
            nn.init.normal_(layers[i].weight, 0.0, 0.02)
    layers = [layer for layer in layers if not isinstance(layer, nn.Upsample)]
    return nn.Sequential(nn.Unflatten(1, (generator.latent_dim, 1, 1)), *layers)


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


def _spread_of_brightness(real, fake):
    """Spread of the generated images' mean intensity over that of the real images (1: as varied)."""
    return float(fake.mean((1, 2, 3)).std() / real.mean((1, 2, 3)).std())


def test_diffaugments_colour_transform_hides_a_generator_whose_images_share_one_exposure():
    """Root cause of the DC-GAN's low recall on chest X-ray Normal: with colour in the policy, the discriminator
    sees every image with its brightness and contrast redrawn, so a generator whose images all share one
    exposure looks as varied to it as real radiographs of many exposures do. Here real images vary in
    brightness by +-0.4 and generated ones not at all."""
    g = torch.Generator().manual_seed(0)
    real = torch.rand(400, 1, 16, 16, generator=g) * 0.4 - 0.2 + torch.rand(400, 1, 1, 1, generator=g) * 0.8 - 0.4
    fake = torch.rand(400, 1, 16, 16, generator=g) * 0.4 - 0.2
    assert _spread_of_brightness(real, fake) < 0.1
    assert _spread_of_brightness(_augment(real, "translation,cutout"), _augment(fake, "translation,cutout", 1)) < 0.1
    assert _spread_of_brightness(_augment(real, "color"), _augment(fake, "color", 1)) > 0.6


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
    with_std = generative.MinibatchStdDev()(x)  # 5 images: no groups of 4, so one group
    assert with_std.shape == (5, 7, 4, 4)
    assert torch.allclose(with_std[:, -1], x.std(0, unbiased=False).mean().expand(5, 4, 4))
    eight = torch.cat([torch.zeros(4, 6, 4, 4), torch.ones(4, 6, 4, 4)]) + torch.arange(8.).view(8, 1, 1, 1) * 0.1
    grouped = generative.MinibatchStdDev(group_size=4)(eight)[:, -1, 0, 0]
    for first in (0, 1):  # groups of 4: images 0, 2, 4, 6 and 1, 3, 5, 7, as the reference code groups them
        members = eight[first::2, 0, 0, 0]
        assert torch.allclose(grouped[first::2], members.std(unbiased=False).expand(4), atol=1e-4)
    conv = generative.EqualizedConv2d(6, 4, 3, padding=1)
    assert abs(float(conv.weight.detach().std()) - 1) < 0.2 and conv.scale == pytest.approx((2 / 54) ** 0.5)


def test_progan_output_and_input_layers_have_the_reference_codes_gains():
    generator, discriminator = generative.build_generative("progan", 1, 32, SETTINGS)
    width = generator.to_rgb[0].weight.shape[1]
    assert generator.to_rgb[0].scale == pytest.approx(1 / width**0.5)  # linear output: gain 1, not He's sqrt(2)
    assert generator.seed.scale == pytest.approx(2**0.5 / 4 / SETTINGS["latent_dim"] ** 0.5)
    assert discriminator.final[-1].scale == pytest.approx(1 / discriminator.final[-1].weight.shape[1] ** 0.5)
    hidden = generator.blocks[0][1]
    assert hidden.scale == pytest.approx((2 / (hidden.weight.shape[1] * 9)) ** 0.5)


def test_ddpm_samples_on_its_training_schedule_starting_from_pure_noise():
    from diffusers import DDPMScheduler

    from medsec_utils.generative.ddpm import DDPM_SCHEDULE, sampling_scheduler

    trained_on = DDPMScheduler(num_train_timesteps=generative.DDPM_TIMESTEPS, beta_schedule=DDPM_SCHEDULE)
    sampler = sampling_scheduler(25)
    torch.testing.assert_close(sampler.alphas_cumprod, trained_on.alphas_cumprod)
    assert int(sampler.timesteps[0]) == generative.DDPM_TIMESTEPS - 1 and len(sampler.timesteps) == 25
    assert float(trained_on.alphas_cumprod[-1]) < 1e-4  # the last level is noise: nothing of the image is left
    half = float(trained_on.alphas_cumprod[generative.DDPM_TIMESTEPS // 2])
    assert 0.3 < half < 0.7  # cosine: half the signal left halfway, where the linear schedule keeps 0.08


@torch.no_grad()
@pytest.mark.parametrize("steps", [5, 25])
def test_ddpm_sampler_adds_fresh_noise_at_every_step_reproducibly_and_without_nan(steps):
    """Deterministic DDIM (eta 0) made images that a machine reader told from real chest X-rays more easily than
    DDIM with eta 1 from the same weights: the sampler must not fall back to eta 0. DDIMScheduler's
    own eta 1 gave NaN images with 5 steps (a square root of a difference that rounds below zero)."""
    from diffusers import DDIMScheduler

    from medsec_utils.generative.ddpm import DDPM_SCHEDULE

    torch.manual_seed(0)
    unet = generative.build_generative("ddpm", 1, 16, SETTINGS)[0].eval()
    sampled = generative.sample(unet, 4, seed=3, device=CPU, ddim_steps=steps)
    assert torch.isfinite(sampled).all()
    torch.testing.assert_close(sampled, generative.sample(unet, 4, seed=3, device=CPU, ddim_steps=steps))

    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))  # the same starting noise
    deterministic = DDIMScheduler(num_train_timesteps=generative.DDPM_TIMESTEPS, beta_schedule=DDPM_SCHEDULE,
                                  timestep_spacing="trailing")
    deterministic.set_timesteps(steps)
    for t in deterministic.timesteps:
        x = deterministic.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    assert (sampled - ((x + 1) / 2).clamp(0, 1)).abs().mean() > 0.01


def _check_dcgan_history(history):
    assert {"loss_d", "loss_g", "seconds"} <= set(history[0])


def _check_progan_history(history):
    assert [h["resolution"] for h in history] == [4, 8, 16]
    assert history[1]["alpha"] < 1 and history[0]["alpha"] == 1


def _check_ddpm_history(history):
    assert history[0]["loss"] > 0


HISTORY_CHECKS = {"dcgan": _check_dcgan_history, "progan": _check_progan_history, "ddpm": _check_ddpm_history}


def _train(kind, images, epochs, checkpoint=None, curve=None):
    torch.manual_seed(0)
    generator, discriminator = generative.build_generative(kind, 1, 16, SETTINGS)
    history = generative.GENERATORS[kind].train(generator, discriminator, images, SETTINGS, epochs=epochs, batch_size=4,
                                                seed=0, device=CPU, progress=False, checkpoint=checkpoint, curve=curve)
    return generator, history


@pytest.mark.parametrize("kind", KINDS)
def test_each_generator_trains_and_samples_reproducibly_in_the_image_range(kind):
    images = _images(8, 1, 16)
    torch.manual_seed(0)
    before = [p.detach().clone() for p in generative.build_generative(kind, 1, 16, SETTINGS)[0].parameters()]
    generator, history = _train(kind, images, epochs=1)
    HISTORY_CHECKS.get(kind, lambda history: None)(history)
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters())), "a step must change weights"
    first = generative.sample(generator, 5, seed=1, device=CPU, batch_size=3, ddim_steps=3)
    again = generative.sample(generator, 5, seed=1, device=CPU, batch_size=3, ddim_steps=3)
    other = generative.sample(generator, 5, seed=2, device=CPU, batch_size=3, ddim_steps=3)
    assert first.shape == (5, 1, 16, 16) and 0 <= float(first.min()) and float(first.max()) <= 1
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert generative.sample(generator, 0, seed=1, device=CPU).numel() == 0


@pytest.mark.parametrize(("kind", "steps"), [("dcgan", 600), ("progan", 60)])
def test_a_gan_learns_what_its_images_look_like(kind, steps):
    """Trained on bright, nearly uniform images (mean 0.85), a GAN's samples move from its untrained mid-grey to their
    brightness: more than weights changing, the losses push the right way (a generator loss of the wrong sign
    fails). The DDPM's part of this is its falling denoising loss, below."""
    settings = {**SETTINGS, "gan_steps": steps, "progan_steps_per_level": steps, "gan_augment": "translation,cutout",
                "progan_augment": "", "batch_size": 16}
    images = (0.85 + 0.03 * torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    torch.manual_seed(0)
    generator, discriminator = generative.build_generative(kind, 1, 16, settings)
    untrained = float(generative.sample(generator, 32, seed=1, device=CPU).mean())
    entry = generative.GENERATORS[kind]
    entry.train(generator, discriminator, images, settings, epochs=generative.epochs_for(steps, 64, 16),
                batch_size=16, seed=0, device=CPU, progress=False, checkpoint=None)
    trained = float(generative.sample(generator, 32, seed=1, device=CPU).mean())
    assert abs(untrained - 0.85) > 0.3 and abs(trained - 0.85) < 0.05, (untrained, trained)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the float16 + GradScaler branch runs on a GPU machine"))])
def test_ddpm_trains_under_mixed_precision_with_float32_weights_and_low_precision_activations(device):
    """The gpu profile's autocast in DDPM training (bfloat16 on the CPU, float16 with gradient scaling on CUDA):
    the U-Net's convolutions run in low precision, its weights, loss and moving average stay float32, and training
    still lowers the loss."""
    device = torch.device(device)
    images, seen = _images(32, 1, 16), []
    torch.manual_seed(0)
    unet, _ = generative.build_generative("ddpm", 1, 16, SETTINGS)
    unet.conv_in.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    history = generative.GENERATORS["ddpm"].train(unet, None, images, {**SETTINGS, "mixed_precision": True},
                                                  epochs=6, batch_size=8, seed=0, device=device, progress=False,
                                                  checkpoint=None)
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    assert low in seen and all(p.dtype == torch.float32 for p in unet.parameters())
    losses = [record["loss"] for record in history]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]


def _phantom_ct():
    return data.load_dataset("phantom:ct?n=40", size=16, use_cache=False, progress=False)


@pytest.mark.parametrize("kind", KINDS)
def test_generator_for_trains_one_class_once_then_loads_it_from_the_cache(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    images = _phantom_ct()
    first, history, hit, _ = generative.generator_for(kind, images, 1, SETTINGS, seed=0, device=CPU, progress=False)
    if kind != "progan":  # a step budget of 3 is met by whole epochs of this class's images (ProGAN's is per level)
        assert history[-1]["step"] >= 3 and (len(history) == 1 or history[-2]["step"] < 3)
    again, _, hit_again, _ = generative.generator_for(kind, images, 1, SETTINGS, seed=0, device=CPU, progress=False)
    other_class, _, hit_other, _ = generative.generator_for(kind, images, 0, SETTINGS, seed=0, device=CPU,
                                                            progress=False)
    assert (hit, hit_again, hit_other) == (False, True, False) and history
    torch.testing.assert_close(generative.sample(first, 3, seed=0, device=CPU, ddim_steps=2),
                               generative.sample(again, 3, seed=0, device=CPU, ddim_steps=2))
    with pytest.raises(ValueError, match="unknown generative model"):
        generative.generator_for("vae", images, 1, SETTINGS, seed=0, device=CPU)


def test_step_budgets_round_up_to_whole_epochs_so_small_classes_train_as_long():
    assert generative.epochs_for(2000, 2000, 32) == 33  # 62 steps per epoch
    assert generative.epochs_for(2000, 300, 32) == 223  # 9 steps per epoch: the same budget, more epochs
    assert generative.epochs_for(5, 3, 32) == 5  # fewer images than a batch: one step per epoch
    assert generative.epochs_for(0, 100, 32) == 1


class Interrupted(Exception):
    """Stands for a run killed right after a checkpoint."""


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupted_training_resumes_to_the_same_weights(kind, tmp_path, monkeypatch):
    images = _images(4, 1, 16)  # one batch: one step per epoch
    straight, straight_history = _train(kind, images, epochs=2)
    save, saved = cache.torch_save_atomic, []

    def save_then_stop(obj, path):
        save(obj, path)
        saved.append(obj["history"][-1])
        raise Interrupted

    monkeypatch.setattr(cache, "torch_save_atomic", save_then_stop)
    with pytest.raises(Interrupted):  # stopped after the first epoch's checkpoint
        _train(kind, images, epochs=2, checkpoint=tmp_path / "checkpoint.pt")
    monkeypatch.undo()
    resumed, history = _train(kind, images, epochs=2, checkpoint=tmp_path / "checkpoint.pt")
    assert [h["epoch"] for h in history] == list(range(1, len(straight_history) + 1))
    assert history[0] == saved[0], "the first epoch comes from the checkpoint, its seconds included, not trained again"
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in straight_history]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_described_and_sized_in_every_profile(kind):
    entry = generative.GENERATORS[kind]
    assert entry.name == kind and "arXiv:" in entry.about and entry.steps_key in entry.settings_keys
    for profile in profiles.profile_names():
        missing = set(entry.settings_keys) - set(profiles.resolve_profile(profile))
        assert not missing, f"profile {profile} has no {', '.join(sorted(missing))} for {kind}"


class ConstantImage(nn.Module):
    """A toy generator: one learned image, plus seeded noise when sampled."""

    def __init__(self, channels, size):
        super().__init__()
        self.image = nn.Parameter(torch.zeros(channels, size, size))


def _train_toy(generator, discriminator, images, settings, *, epochs, batch_size, seed, device, progress, checkpoint,
               curve):
    optimizer = torch.optim.SGD(generator.parameters(), lr=settings["toy_lr"])
    history = []
    for epoch in range(epochs):
        loss = (generator.image - generative.to_model_range(images).mean(0)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"epoch": epoch + 1, "loss": loss.item()})
    return history


def _sample_toy(model, n, rng, *, device, batch_size, ddim_steps, progress):
    return model.image.cpu() + 0.1 * torch.randn(n, *model.image.shape, generator=rng)


TOY = generative.GeneratorKind(
    name="toy", build=lambda channels, size, settings: (ConstantImage(channels, size), None), train=_train_toy,
    sample=_sample_toy, model=ConstantImage, steps_key="toy_steps",
    settings_keys=("toy_steps", "toy_lr", "batch_size", "max_train_images"),
    about="A constant image (a test's toy, arXiv:0000.00000).")


def test_a_new_kind_is_one_table_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    monkeypatch.setitem(generative.GENERATORS, "toy", TOY)  # removed again after the test
    images = _phantom_ct()
    settings = {"toy_steps": 5, "toy_lr": 0.5, "batch_size": 4, "max_train_images": 16}
    assert generative.build_generative("toy", 1, 16, settings)[1] is None
    model, history, hit, _ = generative.generator_for("toy", images, 1, settings, seed=0, device=CPU, progress=False)
    again, _, hit_again, _ = generative.generator_for("toy", images, 1, settings, seed=0, device=CPU, progress=False)
    x, y = images.tensors("train", 16, 0)
    assert (hit, hit_again) == (False, True) and len(history) == generative.epochs_for(5, int((y == 1).sum()), 4)
    assert history[-1]["loss"] < history[0]["loss"]
    torch.testing.assert_close(again.image, model.image)
    first = generative.sample(model, 3, seed=0, device=CPU)
    assert first.shape == (3, 1, 16, 16) and 0 <= float(first.min()) and float(first.max()) <= 1
    torch.testing.assert_close(first, generative.sample(again, 3, seed=0, device=CPU))
    images_by_label, labels = generative.sample_labelled({0: model, 1: again}, {0: 2, 1: 3}, seed=0, device=CPU)
    assert images_by_label.shape == (5, 1, 16, 16) and labels.tolist() == [0, 0, 1, 1, 1]
    torch.testing.assert_close(images_by_label[2:], generative.sample(model, 3, seed=1, device=CPU))


def test_the_table_refuses_a_taken_name_and_sample_an_unknown_model():
    with pytest.raises(ValueError, match="registered already"):
        generative.register_generator("dcgan", model=ConstantImage, train=_train_toy, sample=_sample_toy,
                                      steps_key="toy_steps", settings_keys=("toy_steps",), about="")
    assert list(generative.GENERATORS) == KINDS, "the toy kind of the test before is gone again"
    with pytest.raises(TypeError, match="no generator kind samples a ConstantImage"):
        generative.sample(ConstantImage(1, 16), 2, seed=0, device=CPU)


@pytest.mark.parametrize("kind", KINDS)
def test_each_generator_samples_with_the_moving_average_of_its_weights(kind, tmp_path):
    generator, _ = _train(kind, _images(8, 1, 16), epochs=2, checkpoint=tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["state"]
    raw = state["unet" if kind == "ddpm" else "generator"]
    averaged = state["average"]["average"]["shadow_params"]
    names = [name for name, _ in generator.named_parameters()]
    assert len(averaged) == len(names)
    for name, parameter, mean in zip(names, generator.parameters(), averaged):
        torch.testing.assert_close(parameter.detach(), mean)
    assert any(not torch.equal(parameter.detach(), raw[name]) for name, parameter in generator.named_parameters()), \
        "the averaged weights differ from the last optimiser step's"


def test_the_weight_average_smooths_noisy_weights_and_starts_from_the_first_step():
    model = nn.Linear(1, 1, bias=False)
    average = generative.WeightAverage(model)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.weight.fill_(5.0)
        average.update()  # the warm-up's first decay is 0: the average starts at the first weights
        assert float(average.average.shadow_params[0]) == 5.0
        for _ in range(3000):
            model.weight.copy_(1.0 + torch.randn(1, 1, generator=noise))  # the optimiser jitters around 1
            average.update()
    last = float(model.weight.detach())
    average.copy_to_model()
    averaged = float(model.weight.detach())
    assert abs(averaged - 1.0) < 0.15 and averaged != last  # single weights scatter by 1


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_progans_critic_sees_images_unaugmented_in_every_profile_and_the_dc_gans_augmented(profile, monkeypatch):
    """Root cause of ProGAN's worst samples: DiffAugment on its critic's inputs (the chest X-ray benchmark at the
    cpu budget, Pathology: precision 0.02, recall 0.00 with it, 0.23 and 0.22 without). Karras et al. augment
    nothing; the DC-GAN, whose discriminator otherwise wins at once on the CT slices, keeps translation and
    cutout but not colour, which hid the images' intensity from it (chest X-ray Normal at the cpu budget:
    recall 0.05 with colour, 0.38 without)."""
    from medsec_utils.generative import dcgan, progan

    settings = {**profiles.resolve_profile(profile), **{k: SETTINGS[k] for k in ("latent_dim", "gan_width",
                                                                                  "progan_width")}}
    seen: dict[str, set[str]] = {"dcgan": set(), "progan": set()}
    for kind, module in (("dcgan", dcgan), ("progan", progan)):
        real = module.diff_augment
        monkeypatch.setattr(module, "diff_augment", lambda x, policy, rng, kind=kind, real=real: (
            seen[kind].add(policy), real(x, policy, rng))[1])
        generator, discriminator = generative.build_generative(kind, 1, 8, settings)
        generative.GENERATORS[kind].train(generator, discriminator, _images(4, 1, 8), settings, epochs=1,
                                          batch_size=4, seed=0, device=CPU, progress=False, checkpoint=None)
    assert seen == {"dcgan": {"translation,cutout"}, "progan": {""}}


def test_progan_averages_only_the_weights_of_each_finished_level(tmp_path):
    """16 px, 2 epochs of 2 steps per level, the first epoch fading in: the last level (16 px) is stable for its
    last 2 steps only, so the average sampled from holds those 2 steps and nothing of the 8 px network."""
    _train("progan", _images(8, 1, 16), epochs=2, checkpoint=tmp_path / "checkpoint.pt")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    stable = [r for r in saved["history"] if r["level"] == 2 and r["alpha"] == 1.0]
    average = saved["state"]["average"]
    assert average["since"] == 2 and len(stable) == 1
    assert average["average"]["optimization_step"] == 2


def test_a_restarted_weight_average_starts_again_from_the_current_weights_once_per_tag():
    model = nn.Linear(1, 1, bias=False)
    average = generative.WeightAverage(model)
    with torch.no_grad():
        for value in (5.0, 7.0):
            model.weight.fill_(value)
            average.update()
        model.weight.fill_(1.0)
        average.restart(since="level 1")
        average.update()
        model.weight.fill_(3.0)
        average.restart(since="level 1")  # the same tag again: nothing restarts
    assert average.average.optimization_step == 1
    average.copy_to_model()
    assert float(model.weight.detach()) == 1.0


def test_batch_norm_statistics_are_re_estimated_for_the_averaged_weights():
    torch.manual_seed(0)
    generator, discriminator = generative.build_generative("dcgan", 1, 16, SETTINGS)
    generative.GENERATORS["dcgan"].train(generator, discriminator, _images(8, 1, 16), SETTINGS, epochs=3, batch_size=4,
                                         seed=0, device=CPU, progress=False, checkpoint=None)
    norm = next(m for m in generator.modules() if isinstance(m, nn.BatchNorm2d))
    statistics = torch.Generator().manual_seed(0)  # the latents train_dcgan re-estimates with (seed 0)
    batches = [generative.latent(4, SETTINGS["latent_dim"], statistics) for _ in range(generative.BATCH_NORM_BATCHES)]
    first = generator.net[0]  # the transposed convolution before that batch norm
    with torch.no_grad():
        means = torch.stack([first(z.view(4, -1, 1, 1)).mean((0, 2, 3)) for z in batches]).mean(0)
    torch.testing.assert_close(norm.running_mean, means, rtol=1e-4, atol=1e-6)


def test_curve_points_split_the_epochs_into_quarters_without_the_ends():
    assert generative.curve_epochs(0, 8) == {2, 4, 6}
    assert generative.curve_epochs(0, 3) == {1, 2}
    assert generative.curve_epochs(0, 1) == set()  # a one-epoch run: the trained generator is the only point
    assert generative.curve_epochs(21, 24) == {22, 23}  # after ProGAN's fade-in: 3 stable epochs left


@pytest.mark.parametrize("kind", ["dcgan", "ddpm"])
def test_a_curve_snapshot_is_the_generator_training_would_have_left_there_and_changes_nothing(kind, tmp_path):
    images = _images(8, 1, 16)  # 2 steps per epoch
    final, history = _train(kind, images, epochs=8, curve=tmp_path / "curve")
    assert sorted(p.name for p in (tmp_path / "curve").iterdir()) == ["step_0000004.pt", "step_0000008.pt",
                                                                        "step_0000012.pt"]
    stopped_early, early_history = _train(kind, images, epochs=2)
    assert early_history[-1]["step"] == 4
    snapshot = torch.load(tmp_path / "curve" / "step_0000004.pt")
    for name, value in stopped_early.state_dict().items():
        torch.testing.assert_close(snapshot[name], value, msg=f"{kind} {name}")
    without_curve, _ = _train(kind, images, epochs=8)
    for a, b in zip(final.state_dict().values(), without_curve.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_progans_curve_follows_its_last_level_after_the_fade_in(tmp_path):
    """16 px: levels 4, 8, 16 px of 8 epochs each; the 16 px level fades in over epochs 17-20 and is stable
    from epoch 21, so its snapshots come after epochs 22 and 23 (2 steps per epoch)."""
    _train("progan", _images(8, 1, 16), epochs=8, curve=tmp_path / "curve")
    assert sorted(p.name for p in (tmp_path / "curve").iterdir()) == ["step_0000044.pt", "step_0000046.pt"]


def test_generator_for_gives_the_curve_snapshots_in_order_of_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEC_CACHE", str(tmp_path))
    images = _phantom_ct()
    settings = {**SETTINGS, "gan_steps": 16}
    found = generative.generator_for("dcgan", images, 1, settings, seed=0, device=CPU, progress=False)
    steps = [step for step, _ in found.curve]
    assert len(steps) == generative.CURVE_POINTS - 1 and steps == sorted(steps)
    assert steps[-1] < found.history[-1]["step"]
    snapshot = generative.load_generator("dcgan", 1, 16, settings, found.curve[0][1], CPU)
    assert isinstance(snapshot, generative.DCGANGenerator) and not snapshot.training
    assert generative.generator_for("dcgan", images, 1, settings, seed=0, device=CPU).curve == found.curve
