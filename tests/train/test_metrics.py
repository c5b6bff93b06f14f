"""`vaelab.train.metrics`: SSIM against an independent reference and streamed latent statistics.
(Which layers may import it is the import-linter contract, tests/test_layers.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from vaelab.model import DiagonalGaussian as G
from vaelab.train.metrics import LatentStats, box_ssim, cheap_metrics, ssim

# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. as skimage computes it (gaussian_weights=True, use_sample_covariance=False):
    scipy's gaussian filter with sigma 1.5 truncated at 3.5 sigma (11 taps), the 5-pixel border
    dropped, averaged over positions and channels. Written independently of vaelab."""
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for channel in range(x.shape[0]):
        a, b = x[channel].astype(np.float64), y[channel].astype(np.float64)
        f = lambda t: ndimage.gaussian_filter(t, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
        mu_a, mu_b = f(a), f(b)
        var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        values.append(s[5:-5, 5:-5].mean())
    return float(np.mean(values))


def test_ssim_of_identical_images_is_one():
    x = torch.rand(3, 3, 24, 17, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_ssim_of_two_flat_images_is_the_hand_value():
    # Flat images: every local variance and covariance is 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.6, 0.2
    got = ssim(torch.full((1, 3, 16, 16), a, dtype=torch.float64), torch.full((1, 3, 16, 16), b, dtype=torch.float64))
    c1 = 0.01**2
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    assert got.item() == pytest.approx(0.6001, abs=1e-4)  # 0.24 / 0.40 = 0.6, nudged by C1


def test_ssim_matches_an_independent_reference():
    rng = np.random.default_rng(1)
    x = rng.random((3, 40, 30))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)  # a noisy copy: SSIM well below 1
    expected = reference_ssim(x, y)
    got = ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None]).item()
    assert 0.2 < expected < 0.95
    assert got == pytest.approx(expected, abs=1e-10)


def test_box_ssim_sees_only_the_content_box():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    boxes = torch.tensor([[6, 0, 20, 32], [0, 4, 32, 24]])
    y[0, :, :6] = 0.0  # padding rows of image 0 differ wildly...
    y[1, :, :, :4] = 1.0  # ...and padding columns of image 1
    assert torch.allclose(box_ssim(x, y, boxes), torch.ones(2, dtype=torch.float64), atol=1e-12)
    y[0, :, 10, 10] = 1.0 - y[0, :, 10, 10]  # a change inside the box counts
    assert box_ssim(x, y, boxes)[0] < 0.999
    # and equals plain SSIM on the crop
    assert box_ssim(x, y, boxes)[0].item() == pytest.approx(ssim(x[:1, :, 6:26], y[:1, :, 6:26]).item())


# --------------------------------------------------------------------------------------------
# latent statistics
# --------------------------------------------------------------------------------------------


def test_latent_stats_streamed_over_batches_equal_the_whole_split():
    g = torch.Generator().manual_seed(3)
    # dim 0 varies (active), dim 1 barely (variance 1e-4 < 0.01), dim 2 varies around 5
    mu = torch.stack([torch.randn(50, generator=g), 0.01 * torch.randn(50, generator=g),
                      5 + torch.randn(50, generator=g)], 1)
    logvar = torch.randn(50, 3, generator=g) * 0.3
    streamed = LatentStats()
    for part in torch.split(torch.arange(50), 7):
        streamed.update(G(mu[part], logvar[part]))
    got = streamed.result()
    assert got["active_units"] == 2
    assert np.allclose(got["mu_variance"], mu.double().var(0).numpy(), rtol=1e-10)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)
    assert np.allclose(got["kl_per_dim"], kl.double().mean(0).numpy(), rtol=1e-6)
    whole = cheap_metrics(G(mu, logvar))
    assert whole["active_units"] == 2
    assert np.allclose(whole["kl_per_dim"], got["kl_per_dim"], rtol=1e-12)
    assert np.allclose(whole["mu_variance"], got["mu_variance"], rtol=1e-12)


def test_latent_stats_edge_cases():
    empty = LatentStats()
    assert empty.result() == {"active_units": None, "kl_per_dim": None, "mu_variance": None, "codebook_usage": None,
                              "perplexity": None}
    empty.update(G(torch.zeros(0, 4), torch.zeros(0, 4)))  # an empty batch changes nothing
    assert empty.count == 0
    one = LatentStats().update(G(torch.ones(1, 4), torch.zeros(1, 4)))
    got = one.result()
    assert got["active_units"] is None and got["mu_variance"] is None  # a variance needs 2 images
    assert got["kl_per_dim"] == pytest.approx([0.5] * 4)  # KL(N(1, 1) || N(0, 1)) = 1/2
    # Posteriors equal to the prior: no KL, and a mu that never varies is no active unit.
    prior = LatentStats().update(G(torch.zeros(10, 3), torch.zeros(10, 3))).result()
    assert prior["active_units"] == 0 and prior["kl_per_dim"] == [0.0, 0.0, 0.0]


def test_latent_stats_of_a_spatial_latent_are_per_channel():
    """A latent map (N, C, h, w): a channel's variance is the mean over its positions of the
    variance over images, its KL the sum over positions; streaming equals the whole split."""
    g = torch.Generator().manual_seed(6)
    mu = torch.randn(30, 3, 4, 5, generator=g)
    mu[:, 1] = 0.05 * mu[:, 1] + 2.0  # channel 1 hardly varies: inactive
    logvar = 0.2 * torch.randn(30, 3, 4, 5, generator=g)
    streamed = LatentStats()
    for part in torch.split(torch.arange(30), 8):
        streamed.update(G(mu[part], logvar[part]))
    got = streamed.result()
    variance = mu.double().var(0).flatten(1).mean(1)
    assert np.allclose(got["mu_variance"], variance.numpy(), rtol=1e-10)
    assert got["active_units"] == 2
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).double().flatten(2).sum(2).mean(0)
    assert np.allclose(got["kl_per_dim"], kl.numpy(), rtol=1e-6) and len(got["kl_per_dim"]) == 3


def test_latent_stats_of_codes_give_usage_and_perplexity():
    from vaelab.model import Quantized

    def codes(values):
        c = torch.tensor(values).view(len(values), 1, 1)
        return Quantized(torch.zeros(len(values), 2, 1, 1), c, 8, torch.zeros(len(values)))

    stats = LatentStats().update(codes([0, 1, 2, 3])).update(codes([0, 1, 2, 3]))
    got = stats.result()
    assert got["codebook_usage"] == 0.5  # 4 of 8 codes
    assert got["perplexity"] == pytest.approx(4.0)  # uniform over 4 codes
    assert got["active_units"] is None and got["kl_per_dim"] is None
    assert LatentStats().update(codes([5] * 6)).result()["perplexity"] == pytest.approx(1.0)


def test_metrics_draw_no_random_numbers():
    # The trainer computes them during training; an exact resume needs every RNG untouched.
    g = torch.Generator().manual_seed(4)
    mu, logvar = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    x, y = torch.rand(3, 3, 20, 20, generator=g), torch.rand(3, 3, 20, 20, generator=g)
    boxes = torch.tensor([[0, 0, 20, 20], [2, 0, 16, 20], [0, 3, 20, 14]])
    torch.manual_seed(5)
    np.random.seed(5)
    before_torch, before_numpy = torch.get_rng_state(), np.random.get_state()[1].copy()
    LatentStats().update(G(mu[:4], logvar[:4])).update(G(mu[4:], logvar[4:])).result()
    box_ssim(x, y, boxes)
    assert torch.equal(torch.get_rng_state(), before_torch)
    assert np.array_equal(np.random.get_state()[1], before_numpy)
