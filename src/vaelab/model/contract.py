"""The contract every model family keeps, and the pieces of it that the families share.

A model is an `nn.Module` with
    family               "vector", "spatial" or "vq"
    image_size, channels what it takes: (height, width) = data.size, 3
    latent_shape         the latent of one image: (latent,) or (channels, h, w)
    noise_shape          what forward's `noise` must be per image; None for a deterministic latent
    has_prior            whether `sample` can draw images from a prior
    encode(x)            -> the posterior (`vaelab.model.posterior`)
    decode_logits(z)     -> (N, C, H, W) before the output activation; decode(z) after it
    forward(x, noise)    -> VAEOutput; noise None draws from the global RNG
    sample(n, generator) -> n images from the prior (a VaelabError where there is none)
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from vaelab.errors import VaelabError
from vaelab.model.posterior import DiagonalGaussian, Quantized


class VAEOutput(NamedTuple):
    """What every family's forward returns."""

    recon: Tensor  # (N, C, H, W), after the output activation: what the images show
    posterior: Union[DiagonalGaussian, Quantized]  # q(z|x)
    z: Tensor  # (N, *latent_shape), the latent that was decoded
    logits: Tensor  # (N, C, H, W), before the output activation


def check_input(x: Tensor, channels: int, image_size: tuple[int, int]) -> None:
    """Refuse images of another size than the model was built for, which would otherwise fail deep
    inside with a bare shape error."""
    if tuple(x.shape[-2:]) != tuple(image_size) or x.shape[-3] != channels:
        h, w = image_size
        raise VaelabError(
            f"the model takes {channels}x{h}x{w} images (data.size: [{h}, {w}]),"
            f" got {'x'.join(map(str, x.shape[-3:]))}; fit the images to data.size first"
        )


class VAE(nn.Module):
    """The part of the contract every family shares: decode, forward and sampling N(0, I).

    A family sets `family`, `image_size`, `channels`, `latent_shape`, `noise_shape` and
    `output_activation`, and implements `encode` and `decode_logits`."""

    family = "?"
    has_prior = True

    def decode(self, z: Tensor) -> Tensor:
        """Images for latents z (N, *latent_shape), after the output activation, (N, C, H, W)."""
        return self.output_activation(self.decode_logits(z))

    def forward(self, x: Tensor, noise: Optional[Tensor] = None) -> VAEOutput:
        """noise: the standard-normal draw for z, (N, *noise_shape); None draws it from the global
        RNG (data-parallel ranks pass their rows of the global batch's draw)."""
        posterior = self.encode(x)
        z = posterior.sample(noise)
        logits = self.decode_logits(z)
        return VAEOutput(recon=self.output_activation(logits), posterior=posterior, z=z, logits=logits)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Decode n draws from the prior N(0, I). Same generator state -> same images.

        The noise is drawn on the generator's device (so a CPU generator gives the same images on
        any device) and then moved to the model. Call model.eval() first when norm is 'batch'."""
        device = next(self.parameters()).device
        noise_device = generator.device if generator is not None else device
        z = torch.randn(n, *self.latent_shape, generator=generator, device=noise_device)
        return self.decode(z.to(device))
