import math

import pytest
import torch
from torch import nn

from vaelab.config import ConvLayer, ModelConfig
from vaelab.errors import VaelabError
from vaelab.model import ConvVAE, DiagonalGaussian, VAEOutput, build_model, count_parameters


def layers(*specs):
    """layers((8, 3, 2), (16, 3, 1)) -> [ConvLayer(filters=8, kernel=3, stride=2), ...]"""
    return [ConvLayer(filters=f, kernel=k, stride=s) for f, k, s in specs]


def tiny(conv=((4, 3, 2), (8, 3, 2)), **overrides) -> ModelConfig:
    return ModelConfig(conv=layers(*conv), dense=16, latent=5, **overrides)


@pytest.mark.parametrize(
    "size, conv",
    [
        ((16, 16), ((4, 3, 2),)),  # one layer
        ((32, 32), ((4, 3, 2), (8, 3, 2))),
        ((64, 48), ((4, 5, 2), (8, 5, 2), (8, 5, 2))),  # portrait, not square
        ((37, 53), ((4, 5, 2), (6, 3, 2), (8, 3, 2))),  # not divisible by the total stride
        ((20, 24), ((4, 3, 1), (6, 3, 2), (8, 3, 1))),  # stride-1 layers
        ((48, 40), ((4, 3, 2),) * 5),  # many layers, down to 2x2
        ((33, 31), ((4, 4, 2), (8, 4, 2), (8, 4, 1))),  # even kernels
        ((21, 18), ((4, 1, 2), (8, 2, 3))),  # kernel smaller than stride
    ],
)
def test_output_shapes_are_exact(size, conv):
    h, w = size
    model = build_model(tiny(conv), size)
    out = model(torch.randn(2, 3, h, w))
    assert isinstance(out, VAEOutput)
    assert out.recon.shape == out.logits.shape == (2, 3, h, w)
    assert out.posterior.mean.shape == out.posterior.logvar.shape == out.z.shape == (2, 5)
    # Each conv layer maps a side to ceil(side / stride), recorded for the decoder.
    expected = [(h, w)]
    for _, _, s in conv:
        expected.append((math.ceil(expected[-1][0] / s), math.ceil(expected[-1][1] / s)))
    assert model.feature_sizes == expected
    assert model.feature_shape == (conv[-1][0], *expected[-1])


@pytest.mark.parametrize("activation", ["lrelu", "relu", "elu", "gelu", "silu"])
@pytest.mark.parametrize("norm", ["none", "batch", "group"])
def test_every_activation_and_norm_runs_and_trains(activation, norm):
    model = build_model(tiny(((6, 3, 2), (12, 3, 2)), activation=activation, norm=norm), (16, 20))
    out = model(torch.rand(3, 3, 16, 20))
    assert torch.isfinite(out.recon).all()
    (out.recon.square().mean() + out.posterior.mean.square().mean() + out.posterior.logvar.square().mean()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == (0 if norm == "none" else 4)  # 2 encoder + 2 decoder blocks
    if norm == "group":
        assert {(m.num_groups, m.num_channels) for m in norms} == {(2, 6), (4, 12)}  # gcd(32, filters)


def test_group_norm_groups_divide_filters():
    model = build_model(tiny(((48, 3, 2), (64, 3, 2)), norm="group"), (16, 16))
    groups = {m.num_channels: m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {48: 16, 64: 32}


@pytest.mark.parametrize("init", ["he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "default"])
def test_every_init_builds_and_runs(init):
    model = build_model(tiny(init=init), (16, 16))
    assert torch.isfinite(model(torch.rand(2, 3, 16, 16)).recon).all()


def dense_weight(init, activation="relu"):
    # The encoder's dense layer: fan_in = 8 * 8 * 8 = 512, 256 outputs -> 131k weights.
    torch.manual_seed(0)
    config = ModelConfig(conv=layers((8, 3, 2)), dense=256, latent=4, init=init, activation=activation)
    model = build_model(config, (16, 16))
    linear = model.encoder[-2]
    assert isinstance(linear, nn.Linear) and linear.in_features == 512
    return linear


def test_init_sets_the_expected_weight_std():
    fan_in, fan_out = 512, 256
    close = lambda got, want: abs(got / want - 1) < 0.01  # noqa: E731  (131k weights: ~0.2% noise)

    he = dense_weight("he_normal")
    assert close(he.weight.std().item(), math.sqrt(2 / fan_in))
    assert he.bias.abs().sum() == 0
    lrelu = dense_weight("he_normal", activation="lrelu")  # leaky_relu gain with slope 0.2
    assert close(lrelu.weight.std().item(), math.sqrt(2 / (1 + 0.2**2) / fan_in))
    he_uniform = dense_weight("he_uniform").weight
    bound = math.sqrt(6 / fan_in)
    assert he_uniform.abs().max() <= bound and he_uniform.abs().max() > 0.99 * bound
    assert close(dense_weight("glorot_normal").weight.std().item(), math.sqrt(2 / (fan_in + fan_out)))
    glorot_uniform = dense_weight("glorot_uniform").weight
    assert close(glorot_uniform.abs().max().item(), math.sqrt(6 / (fan_in + fan_out)))
    # PyTorch's own Linear init (kaiming_uniform with a=sqrt(5)): std 1/sqrt(3 * fan_in).
    default = dense_weight("default")
    assert close(default.weight.std().item(), 1 / math.sqrt(3 * fan_in))
    assert default.bias.abs().sum() > 0


def test_too_many_strides_for_the_image_is_refused():
    with pytest.raises(VaelabError, match=r"model\.conv.*16x16.*stride: 1") as caught:
        build_model(tiny(((4, 3, 2),) * 5), (16, 16))  # total stride 32 > 16
    assert "\n" not in str(caught.value)
    build_model(tiny(((4, 3, 2),) * 4), (16, 16))  # total stride 16: a 1x1 map is fine
    with pytest.raises(VaelabError, match=r"model\.conv"):
        build_model(tiny(((4, 3, 2),) * 4), (16, 12))  # the smaller side decides
    with pytest.raises(VaelabError, match=r"model\.conv is empty"):
        build_model(ModelConfig(conv=[]), (16, 16))


def test_wrong_image_size_is_a_clear_error():
    model = build_model(tiny(), (24, 16))
    with pytest.raises(VaelabError, match=r"3x24x16 images \(data.size: \[24, 16\]\), got 3x16x24"):
        model(torch.rand(1, 3, 16, 24))


def test_encode_decode_and_recon_agree():
    model = build_model(tiny(output_activation="sigmoid"), (24, 16)).eval()
    x = torch.rand(3, 3, 24, 16)
    posterior = model.encode(x)
    mu, logvar = posterior.mean, posterior.logvar
    assert mu.shape == logvar.shape == (3, 5)
    assert torch.equal(posterior.mode(), mu)
    images = model.decode(mu)
    assert images.shape == (3, 3, 24, 16)
    assert images.min() >= 0 and images.max() <= 1
    out = model(x)
    torch.testing.assert_close(out.posterior.mean, mu)
    torch.testing.assert_close(out.recon, torch.sigmoid(out.logits))
    torch.testing.assert_close(model.decode(out.z), out.recon)


@pytest.mark.parametrize(
    "activation, low, high", [("none", -math.inf, math.inf), ("sigmoid", 0, 1), ("tanh", -1, 1)]
)
def test_output_activation(activation, low, high):
    model = build_model(tiny(output_activation=activation), (16, 16))
    out = model(torch.rand(2, 3, 16, 16) * 50)
    assert out.recon.min() >= low and out.recon.max() <= high
    if activation == "none":
        assert torch.equal(out.recon, out.logits)


def test_reparameterize_samples_with_the_right_moments_and_gradients():
    model = build_model(tiny(), (16, 16))
    mu = torch.full((20000, 5), 2.0, requires_grad=True)
    logvar = torch.full((20000, 5), math.log(9.0), requires_grad=True)
    torch.manual_seed(0)
    z = DiagonalGaussian(mu, logvar).sample()
    assert abs(z.mean().item() - 2.0) < 0.05 and abs(z.std().item() - 3.0) < 0.05
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_sample_is_deterministic_given_a_generator():
    model = build_model(tiny(), (24, 20)).eval()
    first = model.sample(4, generator=torch.Generator().manual_seed(7))
    again = model.sample(4, generator=torch.Generator().manual_seed(7))
    other = model.sample(4, generator=torch.Generator().manual_seed(8))
    assert first.shape == (4, 3, 24, 20)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not first.requires_grad


def test_journal_640_config_builds_with_the_expected_parameter_count():
    config = ModelConfig(
        conv=layers((32, 5, 2), (32, 5, 1), (48, 5, 2), (64, 5, 2)),
        activation="lrelu", init="he_normal", dense=128, latent=128, output_activation="none",
    )  # fmt: skip
    with torch.device("meta"):  # shapes and counts without allocating ~400 MB
        model = build_model(config, (640, 640))
    assert isinstance(model, ConvVAE)
    assert model.feature_shape == (64, 80, 80)
    flat = 64 * 80 * 80
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731  (weights + bias; same for transposed)
    linear = lambda i, o: i * o + o  # noqa: E731
    encoder = conv(3, 32, 5) + conv(32, 32, 5) + conv(32, 48, 5) + conv(48, 64, 5) + linear(flat, 128)
    heads = 2 * linear(128, 128)
    decoder = linear(128, 128) + linear(128, flat)
    decoder += conv(64, 48, 5) + conv(48, 32, 5) + conv(32, 32, 5) + conv(32, 32, 5) + conv(32, 3, 3)
    assert count_parameters(model) == encoder + heads + decoder
    assert 100e6 < count_parameters(model) < 110e6  # two 52M dense layers dominate


def test_count_parameters_skips_frozen():
    model = build_model(tiny(), (16, 16))
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    model.mu.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.mu.weight.numel()
