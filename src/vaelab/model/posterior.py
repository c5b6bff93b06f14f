"""What an encoder returns: the posterior q(z|x) of one batch, for every model family.

- `DiagonalGaussian` (vector and spatial families): a mean and log-variance of any shape,
  (N, latent) or (N, z_channels, h, w). `sample(noise)` is the reparameterised draw, `mode()` the
  mean, `kl()` the analytic KL to N(0, I) of every latent element.
- `Quantized` (vq family): the straight-through quantized map the decoder takes, the code of
  every position, and the commitment term. There is no KL; its prior (issue 7) is over codes.

The losses (`vaelab.train.losses`), the latent statistics (`vaelab.train.metrics`) and the commands that use
a model read a posterior through these methods only, so none of them assumes a vector latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class DiagonalGaussian:
    mean: Tensor  # (N, *latent_shape)
    logvar: Tensor

    has_kl = True

    def sample(self, noise: Optional[Tensor] = None) -> Tensor:
        """mean + noise * sigma, differentiable in mean and logvar. The noise is standard normal,
        drawn here from the global RNG (in float32, so a given seed gives the same numbers under
        any autocast dtype) unless given: data-parallel ranks pass their rows of the global batch's."""
        if noise is None:
            noise = torch.randn(self.mean.shape, device=self.mean.device)
        return self.mean + noise.to(self.mean.dtype) * torch.exp(0.5 * self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) of every latent element, flattened per image: (N, latent elements)."""
        return kl_divergence(self.mean, self.logvar).flatten(1)

    def channel_means(self) -> Tensor:
        """The mean as (N, channels, positions): a vector latent has one position per channel."""
        return self.mean.flatten(2) if self.mean.dim() > 2 else self.mean.unsqueeze(-1)

    def channel_kl(self) -> Tensor:
        """KL per image and latent channel, summed over positions: (N, channels)."""
        kl = kl_divergence(self.mean, self.logvar)
        return kl.flatten(2).sum(2) if kl.dim() > 2 else kl


@dataclass
class Quantized:
    quantized: Tensor  # (N, C, h, w): the codes' vectors, straight-through to the encoder output
    codes: Tensor  # (N, h, w) int64: the code of every latent position
    codebook_size: int
    commitment: Tensor  # (N,): weight * sum over the image's latent elements of ||z_e - sg(z_q)||^2

    has_kl = False

    def sample(self, noise: Optional[Tensor] = None) -> Tensor:
        return self.quantized  # deterministic: the decoder always sees the codes

    def mode(self) -> Tensor:
        return self.quantized

    def kl(self) -> None:
        return None


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) elementwise, the shape of mu."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
