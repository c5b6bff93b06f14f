"""kind: vq, a vector-quantized autoencoder on the spatial family's encoder and decoder blocks.

    x -> diffusers Encoder (as in `vaelab.model.spatial`, one output map, no variance)
      -> z_e (N, D, H/f, W/f) -> quantizer -> z_q, codes (N, H/f, W/f)
      -> diffusers Decoder -> logits -> output activation = recon

The quantizer is vector-quantize-pytorch's:
- `vq`: `VectorQuantize`, a codebook of `codebook_size` codes of `code_dim` floats, updated by an
  exponential moving average (`ema_decay`) rather than by gradients, initialised by k-means on the
  first batch (`kmeans_init`), with codes used less than `dead_code_threshold` times (EMA count)
  restarted from the batch's vectors, and optionally L2-normalised codes (`l2_codes`, cosine
  similarity). Under data-parallel training it sums the EMA statistics over the processes.
- `fsq`: `FSQ` (Mentzer et al. 2023), each of len(levels) channels rounded to its own number of
  levels: no codebook to learn, no commitment term, prod(levels) codes.

The commitment term ||z_e - sg(z_q)||^2 is computed here, summed over each image's latent
elements (the loss's unit, as the KL is) and weighted by `commitment_weight`; the library's own is
switched off because it returns nothing in eval mode, where validation wants it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.config import VQModelConfig
from vaelab.errors import VaelabError
from vaelab.model.contract import VAE, check_input
from vaelab.model.posterior import Quantized
from vaelab.model.spatial import check_divisible
from vaelab.model.vector import OUTPUT_ACTIVATIONS


class VQVAE(VAE):
    family = "vq"
    has_prior = False  # a prior over the codes comes with issue 7 (priors)
    noise_shape = None

    def __init__(self, config: VQModelConfig, image_size: tuple[int, int], channels: int = 3):
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder, Encoder
        from vector_quantize_pytorch import FSQ, VectorQuantize

        height, width = (int(s) for s in image_size)
        check_divisible(config, height, width)
        self.config, self.image_size, self.channels = config, (height, width), channels
        levels, dim = len(config.channels), config.latent_channels
        blocks = dict(block_out_channels=tuple(config.channels), layers_per_block=config.layers_per_block,
                      norm_num_groups=config.norm_groups, act_fn="silu", mid_block_add_attention=config.attention)
        self.encoder = Encoder(in_channels=channels, out_channels=dim, down_block_types=("DownEncoderBlock2D",) * levels,
                               double_z=False, **blocks)
        self.decoder = Decoder(in_channels=dim, out_channels=channels, up_block_types=("UpDecoderBlock2D",) * levels,
                               **blocks)
        if config.quantizer == "fsq":
            self.quantizer = FSQ(levels=list(config.levels), channel_first=True)
        else:
            self.quantizer = VectorQuantize(
                dim=dim, codebook_size=config.codebook_size, decay=config.ema_decay, kmeans_init=config.kmeans_init,
                threshold_ema_dead_code=config.dead_code_threshold, use_cosine_sim=config.l2_codes,
                commitment_weight=0.0, accept_image_fmap=True, channel_last=False)
        self.codebook_size = config.codes
        self.latent_shape = (dim, height // config.factor, width // config.factor)
        self.output_activation = OUTPUT_ACTIVATIONS[config.output_activation]()

    def encode(self, x: Tensor) -> Quantized:
        check_input(x, self.channels, self.image_size)
        z_e = self.encoder(x)
        if self.config.quantizer == "fsq":
            z_q, codes = self.quantizer(z_e)
            commitment = torch.zeros(len(x), device=x.device)
        else:
            z_q, codes, _ = self.quantizer(z_e)
            # With cosine similarity the library compares the normalised vectors; so does the term.
            target = F.normalize(z_e, dim=1) if self.config.l2_codes else z_e
            commitment = (target.float() - z_q.detach().float()).pow(2).flatten(1).sum(1) * self.config.commitment_weight
        return Quantized(z_q, codes.long(), self.codebook_size, commitment)

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.decoder(z)


    def decode_codes(self, codes: Tensor) -> Tensor:
        """Images for a map of codes (N, h, w)."""
        return self.decode(self.codes_to_latent(codes))

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """The quantized latent (N, D, h, w) of a map of codes (N, h, w)."""
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise VaelabError(f"codes must lie in 0..{self.codebook_size - 1}, got {int(codes.min())}..{int(codes.max())}")
        if self.config.quantizer == "fsq":
            return self.quantizer.indices_to_codes(codes)
        return self.quantizer.get_output_from_indices(codes)


    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        raise VaelabError("model.kind vq has no prior to sample from yet (a prior over its codes comes with the"
                          " priors issue); use reconstruct, interpolate or decode instead")
