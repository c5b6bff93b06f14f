"""The model families, each declared entirely by its `model:` config section (`model.kind`).

- `vector` (`vaelab.model.vector`): the convolutional VAE with one latent vector per image.
- `spatial` (`vaelab.model.spatial`): diffusers' AutoencoderKL, a Gaussian latent map.
- `vq` (`vaelab.model.vq`): the same blocks with a quantized latent map (VQ or FSQ).

They keep one contract (`vaelab.model.contract`) and return a posterior from `encode`
(`vaelab.model.posterior`), so nothing downstream needs to know which family it holds.
"""

from __future__ import annotations

import math
from typing import Union

from torch import nn

from vaelab.config import ModelConfig, SpatialModelConfig, VQModelConfig
from vaelab.model.contract import VAEOutput
from vaelab.model.posterior import DiagonalGaussian, Quantized
from vaelab.model.spatial import SpatialVAE, check_divisible
from vaelab.model.vector import ConvVAE, check_strides
from vaelab.model.vq import VQVAE

AnyModel = Union[ConvVAE, SpatialVAE, VQVAE]
__all__ = ["AnyModel", "ConvVAE", "DiagonalGaussian", "Quantized", "SpatialVAE", "VAEOutput", "VQVAE",
           "build_model", "check_model_fits", "count_parameters", "latent_floats"]


def build_model(config: Union[ModelConfig, SpatialModelConfig, VQModelConfig], image_size, channels: int = 3) -> AnyModel:
    """The model of `config`'s family for images of `image_size` = (height, width), i.e. data.size."""
    size = tuple(int(s) for s in image_size)
    if config.kind == "spatial":
        return SpatialVAE(config, size, channels)
    if config.kind == "vq":
        return VQVAE(config, size, channels)
    return ConvVAE(config, size, channels=channels)


def check_model_fits(config, height: int, width: int) -> None:
    """A one-line error, before a run folder exists, when the family cannot take data.size."""
    if config.kind == "vector":
        check_strides(config, height, width)
    else:
        check_divisible(config, height, width)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def latent_floats(model: nn.Module) -> int:
    """Floats of one image's latent (for a vq model: positions x code_dim before quantization)."""
    return math.prod(model.latent_shape)
