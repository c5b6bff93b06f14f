"""Image and latent metrics that both the trainer (every epoch) and `vaelab evaluate` use.

Model layer: imports torch and the model layer's posteriors only, so that
`vaelab.train.trainer` can use it without reaching up into `vaelab.experiments`. Nothing here draws
random numbers, so computing these during training cannot disturb an exact resume.

- `LatentStats`: streaming active units (Burda et al. 2016: dimension d is active when
  Cov_x(E_q[z_d]) > 0.01, the unbiased variance over images of the posterior mean, which needs
  2 images) and KL per latent channel (nats, mean per image), or codebook usage and perplexity
  for a quantized latent, over any number of batches.
- `ssim`, `box_ssim`: SSIM (Wang et al. 2004), 11x11 Gaussian window with sigma 1.5, and the
  same on each image's content box only (padding never enters).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.model.posterior import DiagonalGaussian, Quantized

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016


# --------------------------------------------------------------------------------------------
# latent statistics: cheap enough for every epoch
# --------------------------------------------------------------------------------------------


class LatentStats:
    """Streaming statistics of a split's posteriors, per latent channel, over any number of batches.

    Gaussian posteriors (vector, spatial): the per-element mean and variance of the posterior mean
    over images, merged batch by batch (Chan et al.) in float64 so they stay exact for a split of
    any size, and the KL per element. A channel's variance is the mean over its positions (a vector
    latent has one position per channel), so a spatial channel is active when its posterior mean
    varies from image to image at all positions on average. Quantized posteriors (vq): how often
    each code is used, for codebook usage and perplexity. Memory: a few latent-sized vectors.
    """

    def __init__(self):
        self.count = 0
        self.mean: Optional[Tensor] = None  # (channels, positions)
        self.m2: Optional[Tensor] = None  # sum of squared deviations from the mean
        self.kl_sum: Optional[Tensor] = None  # (channels,)
        self.code_counts: Optional[Tensor] = None  # (codebook_size,)

    @torch.no_grad()
    def update(self, posterior: Union[DiagonalGaussian, Quantized]) -> "LatentStats":
        if isinstance(posterior, Quantized):
            codes = posterior.codes.detach().flatten().cpu()
            counts = torch.bincount(codes, minlength=posterior.codebook_size).double()
            self.code_counts = counts if self.code_counts is None else self.code_counts + counts
            self.count += posterior.codes.shape[0]
            return self
        mu = posterior.channel_means().detach().double().cpu()
        n = mu.shape[0]
        if n == 0:
            return self
        if self.mean is None:
            self.mean, self.m2 = torch.zeros(mu.shape[1:], dtype=torch.float64), torch.zeros(mu.shape[1:], dtype=torch.float64)
            self.kl_sum = torch.zeros(mu.shape[1], dtype=torch.float64)
        batch_mean = mu.mean(0)
        batch_m2 = ((mu - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.kl_sum += DiagonalGaussian(posterior.mean.detach().double().cpu(),
                                        posterior.logvar.detach().double().cpu()).channel_kl().sum(0)
        return self

    def result(self, threshold: float = ACTIVE_THRESHOLD) -> dict:
        """active_units (None under 2 images), kl_per_dim (nats per channel, mean per image),
        mu_variance (per channel); codebook_usage (fraction of codes used) and perplexity (exp of
        the code entropy, in codes) for a quantized latent. Keys that do not apply are None."""
        empty = {"active_units": None, "kl_per_dim": None, "mu_variance": None, "codebook_usage": None,
                 "perplexity": None}
        if self.count == 0:
            return empty
        if self.code_counts is not None:
            p = self.code_counts / self.code_counts.sum()
            entropy = -(p[p > 0] * p[p > 0].log()).sum()
            return {**empty, "codebook_usage": float((self.code_counts > 0).double().mean()),
                    "perplexity": float(entropy.exp())}
        variance = (self.m2 / (self.count - 1)).mean(1) if self.count > 1 else None
        return {
            **empty,
            "active_units": None if variance is None else int((variance > threshold).sum()),
            "kl_per_dim": (self.kl_sum / self.count).tolist(),
            "mu_variance": None if variance is None else variance.tolist(),
        }


def cheap_metrics(posterior: Union[DiagonalGaussian, Quantized], threshold: float = ACTIVE_THRESHOLD) -> dict:
    """The `LatentStats` of one batch of posteriors (see `LatentStats` to accumulate them over a
    whole validation pass, which is what the trainer logs)."""
    return LatentStats().update(posterior).result(threshold)


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """The normalised 1-D Gaussian of `size` taps (float64)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """SSIM (Wang et al. 2004) of same-sized images (N, C, H, W) -> (N,).

    The Gaussian-weighted local means, variances and covariance are taken over windows that lie
    entirely inside the image ('valid'), and the SSIM map is averaged over positions and
    channels: the reference definition (skimage's with gaussian_weights=True and
    use_sample_covariance=False). A side shorter than the window gets the window cut to that side, renormalised.
    """
    x, y = x.double(), y.double()
    channels, height, width = x.shape[1:]
    g_h, g_w = gaussian_window(min(window, height), sigma), gaussian_window(min(window, width), sigma)
    kernel = (g_h[:, None] * g_w[None, :]).expand(channels, 1, -1, -1).contiguous()

    def local(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = local(x), local(y)
    var_x = local(x * x) - mu_x**2
    var_y = local(y * y) - mu_y**2
    cov = local(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def box_ssim(x: Tensor, y: Tensor, boxes: Tensor, data_range: float = 1.0) -> Tensor:
    """SSIM of each image pair on its content box only (boxes: (N, 4) top, left, height, width).

    Images whose boxes have the same shape are computed together; padding never enters.
    """
    result = torch.zeros(x.shape[0], dtype=torch.float64)
    shapes = boxes[:, 2:].tolist()
    for shape in sorted({tuple(s) for s in shapes}):
        rows = [i for i, s in enumerate(shapes) if tuple(s) == shape]
        h, w = shape
        crops = [(x[i, :, t:t + h, l:l + w], y[i, :, t:t + h, l:l + w])
                 for i in rows for t, l in [boxes[i, :2].tolist()]]
        result[rows] = ssim(torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops]),
                            data_range).cpu()
    return result
