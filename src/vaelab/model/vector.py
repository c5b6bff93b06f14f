"""kind: vector, the convolutional VAE with one latent vector per image, declared entirely by `ModelConfig`.

    x (N, C, H, W)
      -> conv blocks (filters, kernel, stride; 'same' padding, so each side becomes ceil(side / stride))
      -> flatten -> dense -> activation -> two linear heads: mu, logvar   (N, latent)
    z = mu + eps * exp(logvar / 2)
      -> dense -> activation -> dense to the last feature map -> activation
      -> transposed conv blocks, the encoder in reverse, each restoring the exact size it undid
      -> 3x3 conv to C channels = `logits` -> output activation = `recon`  (N, C, H, W)

Any height and width works, square or not, divisible by the total stride or not: the encoder
records every feature-map size, and each decoder block is built to produce exactly the size
its mirror consumed. `logits` (before the output activation) is exposed so that BCE can be
computed on logits, which is exact and never overflows.
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor, nn

from vaelab.config import ModelConfig
from vaelab.errors import VaelabError
from vaelab.model.contract import VAE, check_input
from vaelab.model.posterior import DiagonalGaussian

ACTIVATIONS = {
    "lrelu": lambda: nn.LeakyReLU(0.2),
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
OUTPUT_ACTIVATIONS = {"none": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # Groups of up to 32 channels that always divide the layer: 48 filters -> 16 groups.
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


def conv_out(side: int, stride: int) -> int:
    """Side after a 'same'-padded strided conv: ceil(side / stride), never below 1."""
    return -(-side // stride)


class DownConv(nn.Module):
    """Conv with 'same' padding: (k-1)//2 before and k//2 after, so the output is ceil(in/stride).

    Odd kernels pad symmetrically inside the conv. Even kernels need one more pixel after
    than before, added by an explicit pad (as Keras's padding='same' does).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1)) if kernel % 2 == 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pad(x))


class UpConv(nn.Module):
    """Transposed conv that undoes one DownConv's size change exactly: ceil(size/stride) -> size.

    With padding (k-1)//2 the transposed conv yields (in-1)*stride + 1 (odd k) or + 2 (even k)
    pixels; output_padding (always < stride) tops that up to `size`, and the one extra pixel
    an even kernel can produce is cropped, as the encoder's extra 'after' pad was.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, size: tuple[int, int]):
        super().__init__()
        padding = (kernel - 1) // 2
        natural = [(conv_out(side, stride) - 1) * stride + kernel - 2 * padding for side in size]
        extra = tuple(max(0, side - got) for side, got in zip(size, natural))
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel, stride, padding=padding, output_padding=extra
        )
        self.size = tuple(size)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)[..., : self.size[0], : self.size[1]]


class ConvVAE(VAE):
    family = "vector"
    has_prior = True  # N(0, I)

    def __init__(self, config: ModelConfig, image_size: tuple[int, int], channels: int = 3):
        super().__init__()
        layers = config.conv
        height, width = (int(s) for s in image_size)
        check_strides(config, height, width)
        self.config = config
        self.image_size = (height, width)
        self.channels = channels
        self.latent = config.latent
        self.latent_shape = (config.latent,)
        self.noise_shape: Optional[tuple[int, ...]] = self.latent_shape  # what forward's noise must be, per image
        act = ACTIVATIONS[config.activation]

        # Encoder. feature_sizes[i] is the input size of conv layer i; the last entry is the
        # size of the final feature map that gets flattened.
        self.feature_sizes = [(height, width)]
        blocks, in_ch = [], channels
        for layer in layers:
            down = DownConv(in_ch, layer.filters, layer.kernel, layer.stride)
            blocks += [down, make_norm(config.norm, layer.filters), act()]
            h, w = self.feature_sizes[-1]
            self.feature_sizes.append((conv_out(h, layer.stride), conv_out(w, layer.stride)))
            in_ch = layer.filters
        self.feature_shape = (in_ch, *self.feature_sizes[-1])
        flat = math.prod(self.feature_shape)
        self.encoder = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(flat, config.dense), act())
        self.mu = nn.Linear(config.dense, config.latent)
        self.logvar = nn.Linear(config.dense, config.latent)

        # Decoder: the encoder mirrored. Block i undoes conv layer i, going from
        # feature_sizes[i+1] back to feature_sizes[i], and returns to that layer's input
        # channel count (the first layer returns to its own filters; a final 3x3 conv then maps
        # to image channels, so the last block still has room to compute).
        blocks = [
            nn.Linear(config.latent, config.dense), act(),
            nn.Linear(config.dense, flat), act(),
            nn.Unflatten(1, self.feature_shape),
        ]
        for i in reversed(range(len(layers))):
            out_ch = layers[i - 1].filters if i > 0 else layers[0].filters
            up = UpConv(layers[i].filters, out_ch, layers[i].kernel, layers[i].stride, self.feature_sizes[i])
            blocks += [up, make_norm(config.norm, out_ch), act()]
        blocks.append(nn.Conv2d(layers[0].filters, channels, 3, padding=1))
        self.decoder = nn.Sequential(*blocks)
        self.output_activation = OUTPUT_ACTIVATIONS[config.output_activation]()

        init_weights(self, config.init, config.activation)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z|x): mean and log-variance, each (N, latent)."""
        check_input(x, self.channels, self.image_size)
        h = self.encoder(x)
        return DiagonalGaussian(self.mu(h), self.logvar(h))

    def decode_logits(self, z: Tensor) -> Tensor:
        """Decoder output before the output activation, (N, C, H, W)."""
        return self.decoder(z)


def check_strides(config: ModelConfig, height: int, width: int) -> None:
    """Refuse a conv stack that has nothing left to stride over: total stride > smaller side."""
    if not config.conv:
        raise VaelabError(
            "model.conv is empty; declare at least one layer, e.g. [{filters: 32, kernel: 5, stride: 2}]"
        )
    strides = [layer.stride for layer in config.conv]
    total = math.prod(strides)
    if total > min(height, width):
        shown = " x ".join(str(s) for s in strides)
        raise VaelabError(
            f"model.conv: the strides ({shown} = {total}) shrink a {height}x{width} image below 1 pixel;"
            " set stride: 1 on some layers, remove a strided layer, or raise data.size"
        )


def init_weights(model: nn.Module, scheme: str, activation: str) -> None:
    """Initialise every conv, transposed conv and linear weight by `scheme`; biases to zero.

    'he_*' uses the activation's gain: leaky_relu with slope 0.2 for lrelu, relu's sqrt(2)
    for the others (PyTorch has no gain for elu/gelu/silu; relu's is the usual stand-in).
    Fan-in is PyTorch's: for a transposed conv that is out_channels * k * k, as in Keras.
    'glorot_*' uses gain 1, as Keras does. 'default' keeps PyTorch's own init untouched.
    """
    if scheme == "default":
        return
    nonlinearity, slope = ("leaky_relu", 0.2) if activation == "lrelu" else ("relu", 0.0)
    for module in model.modules():
        if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            continue
        if scheme == "he_normal":
            nn.init.kaiming_normal_(module.weight, a=slope, mode="fan_in", nonlinearity=nonlinearity)
        elif scheme == "he_uniform":
            nn.init.kaiming_uniform_(module.weight, a=slope, mode="fan_in", nonlinearity=nonlinearity)
        elif scheme == "glorot_normal":
            nn.init.xavier_normal_(module.weight)
        elif scheme == "glorot_uniform":
            nn.init.xavier_uniform_(module.weight)
        else:
            raise VaelabError(f"model.init: unknown scheme {scheme!r}")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
