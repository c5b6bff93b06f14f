import math

import pytest
import torch
import torch.nn.functional as F

from vaelab.config import ConvLayer, LossConfig, ModelConfig
from vaelab.errors import VaelabError
from vaelab.model import DiagonalGaussian, VAEOutput, build_model
from vaelab.train.losses import check_scaling, kl_weight_at, make_log_sigma, vae_loss

RECONSTRUCTIONS = [
    {"reconstruction": "mse_sum"},
    {"reconstruction": "l1"},
    {"reconstruction": "bce"},
    {"reconstruction": "gaussian", "sigma": "optimal"},
    {"reconstruction": "gaussian", "sigma": "learned"},
    {"reconstruction": "gaussian", "sigma": 0.3},
]


def output(logits, mu=None, logvar=None, activation=torch.sigmoid):
    n = logits.shape[0]
    mu = torch.zeros(n, 4) if mu is None else mu
    logvar = torch.zeros(n, 4) if logvar is None else logvar
    return VAEOutput(recon=activation(logits), posterior=DiagonalGaussian(mu, logvar), z=mu, logits=logits)


def linear(recon, mu=None, logvar=None):
    """An output with no output activation: recon == logits."""
    return output(recon, mu, logvar, activation=lambda t: t)


def test_mse_sum_matches_a_hand_computation():
    recon = torch.tensor([
        [[[0.0, 1.0]], [[0.5, 0.5]], [[1.0, 0.0]]],
        [[[0.2, 0.2]], [[0.2, 0.2]], [[0.2, 0.2]]],
    ])  # fmt: skip
    target = torch.zeros(2, 3, 1, 2)
    out = linear(recon)
    parts = vae_loss(out, target, None, LossConfig(reconstruction="mse_sum"), kl_weight=1.0)
    # sample 0: pixel 0 channel-mean (0 + .25 + 1)/3, pixel 1 the same -> 2.5/3; sample 1: 2 * .04
    want = (2.5 / 3 + 0.08) / 2
    assert parts["recon"].item() == pytest.approx(want)
    assert parts["mse"].item() == pytest.approx((2.5 + 6 * 0.04) / 12)  # per pixel and channel
    assert parts["kl"].item() == 0 and parts["loss"].item() == pytest.approx(want)


def test_mse_sum_scales_like_the_journal_for_640px():
    recon, target = torch.full((2, 3, 640, 640), 0.5), torch.full((2, 3, 640, 640), 0.1)
    parts = vae_loss(linear(recon), target, None, LossConfig(reconstruction="mse_sum"), 1.0)
    assert parts["recon"].item() == pytest.approx(0.16 * 640 * 640, rel=1e-5)  # 6.6e4, cf. 5.8e4


@pytest.mark.parametrize("settings", RECONSTRUCTIONS, ids=lambda s: "-".join(map(str, s.values())))
def test_padding_contributes_exactly_nothing(settings):
    config = LossConfig(**settings)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 8, 6, generator=gen)
    target = torch.rand(3, 3, 8, 6, generator=gen)
    mask = torch.ones(3, 1, 8, 6)
    mask[:, :, 5:] = 0  # letterbox bars at the bottom
    mask[1, :, :, :2] = 0  # and on the left of one image
    pad = mask.expand_as(target) == 0
    mu, logvar = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)

    def run(logits, target):
        logits = logits.clone().requires_grad_(True)
        log_sigma = make_log_sigma()
        parts = vae_loss(output(logits, mu, logvar), target, mask, config, 0.5, log_sigma=log_sigma)
        parts["loss"].backward()
        return parts, logits.grad, log_sigma.grad

    clean, clean_grad, clean_sigma_grad = run(logits, target)
    corrupted = run(logits.masked_fill(pad, 1e6), target.masked_fill(pad, -1e6))
    corrupt, corrupt_grad, corrupt_sigma_grad = corrupted
    for key in clean:
        assert torch.equal(clean[key], corrupt[key]), key
    assert torch.equal(clean_grad, corrupt_grad)
    assert clean_grad[pad].abs().sum() == 0 and clean_grad[~pad].abs().sum() > 0
    if settings.get("sigma") == "learned":
        assert torch.equal(clean_sigma_grad, corrupt_sigma_grad)
    inf = run(logits.masked_fill(pad, math.inf), target)[0]
    assert torch.isfinite(inf["loss"]) and torch.equal(inf["loss"], clean["loss"])


@pytest.mark.parametrize("settings", RECONSTRUCTIONS, ids=lambda s: "-".join(map(str, s.values())))
def test_a_masked_image_scores_like_its_real_part_alone(settings):
    config = LossConfig(**settings)
    gen = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 3, 6, 8, generator=gen), torch.rand(2, 3, 6, 8, generator=gen)
    mask = torch.zeros(2, 1, 6, 8)
    mask[..., :5] = 1
    log_sigma = torch.tensor(-0.5)
    masked = vae_loss(output(logits), target, mask, config, 1.0, log_sigma=log_sigma)
    cropped = vae_loss(output(logits[..., :5]), target[..., :5], None, config, 1.0, log_sigma=log_sigma)
    for key in masked:
        torch.testing.assert_close(masked[key], cropped[key])


def test_bce_is_computed_on_logits():
    gen = torch.Generator().manual_seed(2)
    logits, target = torch.randn(2, 3, 4, 5, generator=gen) * 3, torch.rand(2, 3, 4, 5, generator=gen)
    config = LossConfig(reconstruction="bce")
    parts = vae_loss(output(logits), target, None, config, 1.0)
    on_probabilities = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none")
    want = on_probabilities.mean(1).sum((1, 2)).mean()  # channel mean, pixel sum, batch mean
    assert parts["recon"].item() == pytest.approx(want.item(), rel=1e-5)

    # Saturated logits: on probabilities BCE hits log(0) (PyTorch clamps it to -100), on logits
    # it stays exact: softplus(200) = 200 per pixel.
    huge = torch.full((1, 3, 2, 2), 200.0, requires_grad=True)
    parts = vae_loss(output(huge), torch.zeros(1, 3, 2, 2), None, config, 1.0)
    assert parts["recon"].item() == pytest.approx(200.0 * 4)
    parts["loss"].backward()
    assert torch.isfinite(huge.grad).all() and huge.grad.abs().sum() > 0
    both = torch.tensor([100.0, -100.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    right = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    parts = vae_loss(output(both), right, None, config, 1.0)
    assert torch.isfinite(parts["loss"]) and parts["recon"].item() < 1e-30


@pytest.mark.parametrize("scale", ["symmetric", "standardize"])
def test_bce_is_refused_unless_targets_are_in_unit_range(scale):
    with pytest.raises(VaelabError, match="data.scale: unit") as caught:
        check_scaling(LossConfig(reconstruction="bce"), scale, "sigmoid")
    assert "black" in str(caught.value) and "\n" not in str(caught.value)


def test_check_scaling_accepts_and_refuses_the_right_combinations():
    check_scaling(LossConfig(reconstruction="bce"), "unit", "sigmoid")  # BCE on logits: fine
    for reconstruction in ("mse_sum", "l1", "gaussian"):
        for scale, activation in [
            ("unit", "none"), ("unit", "sigmoid"), ("unit", "tanh"),
            ("symmetric", "tanh"), ("symmetric", "none"), ("standardize", "none"),
        ]:  # fmt: skip
            check_scaling(LossConfig(reconstruction=reconstruction), scale, activation)
    with pytest.raises(VaelabError, match="model.output_activation: sigmoid"):
        check_scaling(LossConfig(reconstruction="bce"), "unit", "none")
    with pytest.raises(VaelabError, match="data.scale: unit"):
        check_scaling(LossConfig(reconstruction="mse_sum"), "symmetric", "sigmoid")
    with pytest.raises(VaelabError, match="model.output_activation: none"):
        check_scaling(LossConfig(reconstruction="mse_sum"), "standardize", "tanh")


def test_gaussian_optimal_sigma_is_the_root_mse_soft_clipped():
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 8, 8, generator=gen)
    recon = target + 0.5 * torch.randn(2, 3, 8, 8, generator=gen)
    config = LossConfig(reconstruction="gaussian", sigma="optimal")
    parts = vae_loss(linear(recon), target, None, config, 1.0)
    mse = ((recon - target) ** 2).mean()
    assert parts["mse"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert parts["sigma"].item() == pytest.approx(mse.sqrt().item(), rel=1e-2)  # far above the clip
    # NLL at the optimum: per element mse / (2 sigma^2) + log sigma + log(2 pi)/2, summed over C*H*W.
    sigma = parts["sigma"].item()
    want = 3 * 64 * (mse.item() / (2 * sigma**2) + math.log(sigma) + 0.5 * math.log(2 * math.pi))
    assert parts["recon"].item() == pytest.approx(want, rel=1e-5)

    perfect = vae_loss(linear(target), target, None, config, 1.0)
    assert perfect["sigma"].item() == pytest.approx(config.sigma_min)
    assert torch.isfinite(perfect["loss"])


def test_gaussian_fixed_sigma_sums_over_channels():
    recon, target = torch.full((2, 3, 2, 2), 0.4), torch.zeros(2, 3, 2, 2)
    config = LossConfig(reconstruction="gaussian", sigma=0.5)
    parts = vae_loss(linear(recon), target, None, config, 1.0)
    per_element = 0.16 / (2 * 0.25) + math.log(0.5) + 0.5 * math.log(2 * math.pi)
    assert parts["recon"].item() == pytest.approx(12 * per_element)
    assert parts["sigma"].item() == pytest.approx(0.5)


def test_learned_sigma_gets_a_gradient():
    config = LossConfig(reconstruction="gaussian", sigma="learned")
    log_sigma = make_log_sigma()
    assert isinstance(log_sigma, torch.nn.Parameter) and log_sigma.item() == 0.0
    recon, target = torch.full((2, 3, 4, 4), 0.1), torch.zeros(2, 3, 4, 4)
    vae_loss(linear(recon), target, None, config, 1.0, log_sigma=log_sigma)["loss"].backward()
    # d/dlog_sigma of [e^2 / (2 sigma^2) + log sigma] = 1 - e^2 / sigma^2 > 0: sigma = 1 is too wide.
    assert log_sigma.grad is not None and log_sigma.grad.item() > 0
    with pytest.raises(ValueError, match="make_log_sigma"):
        vae_loss(linear(recon), target, None, config, 1.0)


def test_kl_matches_a_hand_computation():
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [math.log(0.5), 0.0]])
    out, target = output(torch.zeros(2, 3, 2, 2), mu, logvar), torch.full((2, 3, 2, 2), 0.5)
    parts = vae_loss(out, target, None, LossConfig(), 0.25)
    kl = lambda m, v: 0.5 * (m * m + v - 1 - math.log(v))  # noqa: E731  (v = variance)
    want = (kl(0, 1) + kl(1, 2) + kl(2, 0.5) + kl(-1, 1)) / 2
    assert parts["kl"].item() == pytest.approx(want)
    assert parts["kl_term"].item() == pytest.approx(want)
    assert parts["loss"].item() == pytest.approx(parts["recon"].item() + 0.25 * want)


def test_free_bits_clamp_each_dimension_but_raw_kl_is_reported():
    mu = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]], requires_grad=True)
    logvar = torch.zeros(2, 3)
    config = LossConfig(free_bits=0.5)
    out, target = output(torch.zeros(2, 3, 2, 2), mu, logvar), torch.full((2, 3, 2, 2), 0.5)
    parts = vae_loss(out, target, None, config, 2.0)
    # Per-dim KL: 0, 0, 2. Free bits lift the two empty dimensions to 0.5 each.
    assert parts["kl"].item() == pytest.approx(2.0)
    assert parts["kl_term"].item() == pytest.approx(3.0)
    assert parts["loss"].item() == pytest.approx(parts["recon"].item() + 2.0 * 3.0)
    parts["loss"].backward()
    assert mu.grad[:, :2].abs().sum() == 0 and mu.grad[:, 2].abs().sum() > 0  # only above free bits


def test_kl_weight_warm_up():
    assert kl_weight_at(LossConfig(beta=2.0), 0.0) == 2.0
    config = LossConfig(beta=2.0, kl_warmup_epochs=4)
    epochs = (0.0, 1.0, 2.5, 4.0, 10.0, -1.0)
    assert [kl_weight_at(config, e) for e in epochs] == [0.0, 0.5, 1.25, 2.0, 2.0, 0.0]


def test_only_the_loss_carries_a_graph_and_every_value_is_a_scalar():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    mu, logvar = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    config = LossConfig(reconstruction="gaussian")
    parts = vae_loss(output(logits, mu, logvar), torch.rand(2, 3, 4, 4), None, config, 1.0)
    assert set(parts) == {"loss", "recon", "kl", "kl_term", "commitment", "mse", "sigma"}
    assert all(value.shape == () for value in parts.values())
    assert [key for key, value in parts.items() if value.requires_grad] == ["loss"]


@pytest.mark.parametrize("reconstruction", ["mse_sum", "bce"])
def test_a_tiny_model_overfits_one_batch(reconstruction):
    torch.manual_seed(0)
    config = ModelConfig(
        conv=[ConvLayer(filters=8, kernel=3, stride=2), ConvLayer(filters=16, kernel=3, stride=2)],
        dense=32, latent=8, output_activation="sigmoid",
    )  # fmt: skip
    model = build_model(config, (16, 16))
    # Four smooth, distinct colour gradients: a batch a small VAE can memorise in 50 steps.
    y, x = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    images = torch.stack([
        torch.stack([x, y, 1 - x]) * 0.8,
        torch.stack([y, 1 - y, x * y]),
        torch.stack([1 - x, x * y, y]) * 0.5 + 0.2,
        torch.stack([0.5 + 0 * x, y, x]),
    ])  # fmt: skip
    mask = torch.ones(4, 1, 16, 16)
    mask[..., 12:] = 0
    loss_config = LossConfig(reconstruction=reconstruction)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        parts = vae_loss(model(images), images, mask, loss_config, kl_weight=0.01)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        losses.append(parts["loss"].item())
    # BCE has a floor (the targets' own entropy), so measure its drop above that floor.
    floor = 0.0
    if reconstruction == "bce":
        entropy = F.binary_cross_entropy(images, images, reduction="none").mean(1, keepdim=True)
        floor = (entropy * mask).sum((1, 2, 3)).mean().item()
    assert losses[-1] - floor < 0.5 * (losses[0] - floor)


def test_a_quantized_posterior_has_no_kl_and_adds_its_commitment():
    from vaelab.model import Quantized

    logits = torch.randn(3, 3, 4, 4, requires_grad=True)
    z_e = torch.randn(3, 2, 2, 2, requires_grad=True)
    commitment = 0.25 * z_e.pow(2).flatten(1).sum(1)  # as if every code were the zero vector
    out = VAEOutput(recon=logits, posterior=Quantized(z_e, torch.zeros(3, 2, 2, dtype=torch.long), 4, commitment),
                    z=z_e, logits=logits)
    target = torch.rand(3, 3, 4, 4)
    parts = vae_loss(out, target, None, LossConfig(reconstruction="mse_sum", free_bits=0.5), 1.0)
    assert parts["kl"] == 0 and parts["kl_term"] == 0  # free bits has nothing to hold up
    assert torch.allclose(parts["commitment"], commitment.mean())
    assert torch.allclose(parts["loss"], parts["recon"] + commitment.mean())
    parts["loss"].backward()
    assert z_e.grad.abs().sum() > 0  # the commitment pulls the encoder output towards the codes
