"""Image and latent metrics that both the trainer (every epoch) and `vaelab evaluate` use.

Model layer: imports torch, numpy and the model layer's `vaelab.losses` only, so that
`vaelab.train` can use it without reaching up into `vaelab.experiments`. Nothing here draws
random numbers, so computing these during training cannot disturb an exact resume.

- `LatentStats`: streaming active units (Burda et al. 2016: dimension d is active when
  Cov_x(E_q[z_d]) > 0.01, the unbiased variance over images of the posterior mean, which needs
  2 images) and KL per latent dimension (nats, mean per image), over any number of batches.
- `ssim`, `box_ssim`: SSIM (Wang et al. 2004), 11x11 Gaussian window with sigma 1.5, and the
  same on each image's content box only (padding never enters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.losses import kl_divergence

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016


# --------------------------------------------------------------------------------------------
# latent statistics: cheap enough for every epoch
# --------------------------------------------------------------------------------------------


class LatentStats:
    """Streaming per-dimension mean and variance of mu, and mean KL, over any number of batches.

    The variance is merged batch by batch (Chan et al.) in float64, so it stays exact for a
    split of any size; memory is three vectors of the latent size.
    """

    def __init__(self, latent: int):
        self.count = 0
        self.mean = torch.zeros(latent, dtype=torch.float64)
        self.m2 = torch.zeros(latent, dtype=torch.float64)  # sum of squared deviations from the mean
        self.kl_sum = torch.zeros(latent, dtype=torch.float64)

    @torch.no_grad()
    def update(self, mu: Tensor, logvar: Tensor) -> "LatentStats":
        mu, logvar = mu.detach().double().cpu(), logvar.detach().double().cpu()
        n = mu.shape[0]
        if n == 0:
            return self
        batch_mean = mu.mean(0)
        batch_m2 = ((mu - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.kl_sum += kl_divergence(mu, logvar).sum(0)
        return self

    def result(self, threshold: float = ACTIVE_THRESHOLD) -> dict:
        """active_units (None under 2 images), kl_per_dim (nats, mean per image), mu_variance."""
        if self.count == 0:
            return {"active_units": None, "kl_per_dim": None, "mu_variance": None}
        variance = self.m2 / (self.count - 1) if self.count > 1 else None
        return {
            "active_units": None if variance is None else int((variance > threshold).sum()),
            "kl_per_dim": (self.kl_sum / self.count).tolist(),
            "mu_variance": None if variance is None else variance.tolist(),
        }


def cheap_metrics(mu: Tensor, logvar: Tensor, threshold: float = ACTIVE_THRESHOLD) -> dict:
    """Active units and KL per dimension of one batch of posteriors (see `LatentStats` to
    accumulate them over a whole validation pass, which is what the trainer logs)."""
    return LatentStats(mu.shape[1]).update(mu, logvar).result(threshold)


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
