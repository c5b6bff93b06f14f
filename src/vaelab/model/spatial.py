"""kind: spatial, an AutoencoderKL: diffusers' own class, so a trained model is a diffusers VAE.

    x (N, C, H, W) -> diffusers Encoder (a ResNet level per `channels` entry, GroupNorm + SiLU,
      a stride-2 downsample after every level but the last, a middle block with optional attention)
      -> quant_conv -> mean, logvar   (N, z_channels, H/f, W/f), f = 2^(levels - 1)
    z = mean + eps * sigma -> post_quant_conv -> diffusers Decoder -> logits (N, C, H, W)
      -> output activation = recon

The module holds a `diffusers.AutoencoderKL` as `vae`, so `export_diffusers` is its
`save_pretrained` and `AutoencoderKL.from_pretrained` of that folder computes the same logits.
The encode and decode paths are the class's own submodules, called as its `encode`/`decode` call
them (without tiling or slicing, which only split large inputs). Its latent scaling factor
(0.18215) is for latent-diffusion models trained on top and does not enter here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from torch import Tensor

from vaelab.config import ResNetStack, SpatialModelConfig
from vaelab.errors import VaelabError
from vaelab.files import atomic_folder
from vaelab.model.contract import VAE, check_input
from vaelab.model.posterior import DiagonalGaussian
from vaelab.model.vector import OUTPUT_ACTIVATIONS

# diffusers clamps the log-variance to this range in its DiagonalGaussianDistribution
LOGVAR_RANGE = (-30.0, 20.0)


def check_divisible(config: ResNetStack, height: int, width: int) -> None:
    """Each level but the last halves the image exactly, so both sides must divide by the factor."""
    f = config.factor
    if height % f == 0 and width % f == 0:
        return
    nearest = [max(f, round(side / f) * f) for side in (height, width)]
    raise VaelabError(
        f"data.size [{height}, {width}]: model.channels has {len(config.channels)} levels, which halve the image"
        f" {len(config.channels) - 1} times, so each side must be a multiple of {f}; use data.size {nearest}"
        " or change the number of levels"
    )


class SpatialVAE(VAE):
    family = "spatial"
    has_prior = True  # N(0, I) over the whole latent map

    def __init__(self, config: SpatialModelConfig, image_size: tuple[int, int], channels: int = 3):
        super().__init__()
        from diffusers import AutoencoderKL

        height, width = (int(s) for s in image_size)
        check_divisible(config, height, width)
        self.config, self.image_size, self.channels = config, (height, width), channels
        levels = len(config.channels)
        self.vae = AutoencoderKL(
            in_channels=channels, out_channels=channels,
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(config.channels), layers_per_block=config.layers_per_block, act_fn="silu",
            latent_channels=config.z_channels, norm_num_groups=config.norm_groups, sample_size=max(height, width),
            mid_block_add_attention=config.attention,
        )
        self.latent_shape = (config.z_channels, height // config.factor, width // config.factor)
        self.noise_shape: Optional[tuple[int, ...]] = self.latent_shape
        self.output_activation = OUTPUT_ACTIVATIONS[config.output_activation]()

    def encode(self, x: Tensor) -> DiagonalGaussian:
        check_input(x, self.channels, self.image_size)
        moments = self.vae.quant_conv(self.vae.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.vae.decoder(self.vae.post_quant_conv(z))


# --------------------------------------------------------------------------------------------
# the diffusers format
# --------------------------------------------------------------------------------------------


def export_diffusers(model: SpatialVAE, out_dir: Path) -> Path:
    """Write `model` as a diffusers AutoencoderKL folder (config.json + safetensors), atomically:
    into a temporary folder beside `out_dir`, renamed into place when complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise VaelabError(f"{out_dir}: the folder exists and is not empty; choose a new OUT folder")
    with atomic_folder(out_dir) as temporary:
        model.vae.save_pretrained(temporary, safe_serialization=True)
    return out_dir


def load_diffusers_weights(model: SpatialVAE, folder: Union[str, Path]) -> None:
    """model.init_from: copy the weights of a diffusers AutoencoderKL folder into `model`."""
    from safetensors.torch import load_file

    files = check_diffusers_folder(model, folder)
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    ours = model.vae.state_dict()
    model.vae.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()})


def check_diffusers_folder(model: SpatialVAE, folder: Union[str, Path]) -> list[Path]:
    """The weight files of a diffusers AutoencoderKL folder whose every weight fits `model`, read
    from the safetensors headers alone. A folder that does not fit gets one line naming the first
    mismatched weight and the folder's own settings to put in the config."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file() or not files:
        raise VaelabError(f"model.init_from: {folder} is not a diffusers AutoencoderKL folder"
                          " (config.json and a .safetensors file); point it at one, e.g. from 'vaelab export'")
    try:
        theirs = json.loads(config_file.read_text(encoding="utf-8"))
        shapes = {}
        for file in files:
            with safe_open(str(file), framework="pt") as weights:
                shapes.update({key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()})
    except (OSError, ValueError, RuntimeError) as error:
        raise VaelabError(f"model.init_from: cannot read {folder} ({error}); check the folder") from None
    theirs = theirs if isinstance(theirs, dict) else {}
    settings = (f"its config.json has block_out_channels {theirs.get('block_out_channels')}, latent_channels"
                f" {theirs.get('latent_channels')}, layers_per_block {theirs.get('layers_per_block')},"
                f" mid_block_add_attention {theirs.get('mid_block_add_attention', True)}, norm_num_groups"
                f" {theirs.get('norm_num_groups')}; set model.channels, z_channels, layers_per_block, attention"
                " and norm_groups to match")
    ours = model.vae.state_dict()
    for key, value in ours.items():
        if key not in shapes:
            raise VaelabError(f"model.init_from: {folder} has no weight {key!r}; {settings}")
        if shapes[key] != tuple(value.shape):
            raise VaelabError(f"model.init_from: {folder}: {key!r} is {shapes[key]}, this model's is"
                              f" {tuple(value.shape)}; {settings}")
    extra = sorted(set(shapes) - set(ours))
    if extra:
        raise VaelabError(f"model.init_from: {folder} has weights this model lacks ({extra[0]!r}, {len(extra)} in all);"
                          f" {settings}")
    return files
