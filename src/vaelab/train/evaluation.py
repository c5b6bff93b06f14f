"""What the trainer measures at each epoch end: the validation metrics (val_*) and the two image
grids, all from `Trainer.eval_model` (the EMA of the weights with train.ema, else the model).

train.val_batches caps validation at that many batches of a fixed random subset of the validation
split (`validation_subset`): a pure function of train.seed and the split, so it is the same every
epoch, after a resume and on every data-parallel rank, and val_loss (so best.pt) is judged on
images drawn from the whole split, not the first ones in metadata order (often one set or tag).

Nothing here moves the training RNG, so measuring cannot disturb an exact resume
(`vaelab.train.trainer`): validation samples z with its own fixed seed inside `fork_rng` and
fetches its batches `isolated`, and the sample grid decodes the same fixed noise every epoch.
Data-parallel runs validate on rank 0 only, on the unwrapped model.

Metric conventions (the per-batch ones are defined in `vaelab.train.losses`, the train_* ones in
`vaelab.train.trainer`):
- val_loss = val_recon + beta * val_kl, with the raw KL: no warm-up, no free bits, so epochs compare.
- val_mse: squared error per real (unpadded) pixel and channel between the image pixels and the
  reconstruction as it is shown (mapped back to 0..255, clamped, rounded), both divided by 255;
  val_psnr = 10 log10(1 / val_mse). Both are in image pixels, so runs with different
  `data.scale` compare.
- val_active_units: latent dimensions whose posterior mean varies over the validation images
  (variance > 0.01, Burda et al.); None with fewer than 2 validation images.
- val_kl_per_dim: the raw KL of each latent dimension (each channel of a spatial latent, summed
  over its positions) in nats, mean per image (sums to val_kl up to rounding), rounded to 4
  significant digits to keep metrics.jsonl small.
- A vq model has no KL: val_kl is None, and its records add val_commitment (in val_loss),
  val_codebook_usage (fraction of codes used on the validation split) and val_perplexity (exp of
  the code entropy).
- With train.ema, every val_* metric and both image grids come from the averaged weights.
  Both are `vaelab evaluate`'s cheap metrics (`vaelab.train.metrics.LatentStats`), streamed over the
  validation batches; they draw no random numbers. SSIM is left to `vaelab evaluate`: in float64
  on the CPU it cost about as much per batch as a training step at 64 px (6-16% of a ccp-64 epoch
  on a CPU, far more next to a GPU's steps).
All val_* keys are None when there is no validation split.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from vaelab.data.grid import image_grid
from vaelab.data.loader import Batch, ImageLoader
from vaelab.data.scaling import box_masks, to_model_input, to_pixels
from vaelab.train.losses import vae_loss
from vaelab.train.metrics import LatentStats
from vaelab.train.rng import isolated

if TYPE_CHECKING:  # the trainer imports this module
    from vaelab.train.trainer import Trainer


def significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (nan and inf pass through)."""
    return float(f"{value:.{digits}g}")


def keep_padding(shown: torch.Tensor, batch: Batch) -> torch.Tensor:
    """uint8 images (N, H, W, 3) with each image's padding replaced by the original's pixels there."""
    real = box_masks(batch.boxes, *batch.pixels.shape[1:3]).permute(0, 2, 3, 1) > 0.5
    return torch.where(real, shown, batch.pixels)


VAL_SUBSET_STREAM = 0x76616C  # "val": the subset's RNG stream, apart from the epochs' [seed, epoch] orders


def validation_subset(positions: np.ndarray, count: Optional[int], seed: int) -> np.ndarray:
    """`count` of the split's `positions` drawn at random with `seed`, kept in split order (the cache
    file is read front to back); all of them when count is None or not smaller."""
    if count is None or count >= len(positions):
        return positions
    chosen = np.random.default_rng([seed, VAL_SUBSET_STREAM]).choice(len(positions), size=count, replace=False)
    return positions[np.sort(chosen)]


@torch.no_grad()
def validation_metrics(trainer: Trainer, loader: ImageLoader) -> dict:
    """Validation metrics (see the module doc), deterministic: z is sampled with a fixed seed."""
    model = trainer.eval_model.eval()
    config, device = trainer.config, trainer.device
    beta, scale = config.loss.beta, config.data.scale
    count, recon, kl, commitment, sq_err, real = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    latents = LatentStats()
    cap = config.train.val_batches
    if cap is not None:  # a fixed random subset (see the module doc), not the first `cap` batches
        loader = replace(loader, positions=validation_subset(loader.positions, cap * loader.batch_size,
                                                             config.train.seed))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.train.seed)
        for batch in isolated(loader.batches(0)):
            inputs = to_model_input(batch, scale, device, trainer.channels_last)
            with trainer.autocast():
                out = model(inputs.x)
            parts = vae_loss(out, inputs.x, inputs.mask, config.loss, beta, trainer.log_sigma)
            n = len(batch)
            count += n
            recon += parts["recon"].item() * n
            kl += parts["kl"].item() * n
            commitment += parts["commitment"].item() * n
            shown = to_pixels(out.recon, scale, inputs.mean, inputs.std).float()
            mask = box_masks(batch.boxes, *batch.pixels.shape[1:3]).permute(0, 2, 3, 1)
            sq_err += (((shown - batch.pixels.float()) / 255.0) ** 2 * mask).sum().item()
            real += mask.sum().item() * batch.pixels.shape[3]
            latents.update(out.posterior)
    trainer.model.train()
    if count == 0:
        return {}
    mse = sq_err / max(real, 1.0)
    stats = latents.result()
    record = {"val_loss": (recon + beta * kl + commitment) / count, "val_recon": recon / count,
              "val_kl": kl / count if trainer.has_kl else None,
              "val_mse": mse, "val_psnr": 10 * math.log10(1.0 / mse) if mse > 0 else 100.0,
              "val_active_units": stats["active_units"],
              "val_kl_per_dim": None if stats["kl_per_dim"] is None else [significant(v) for v in stats["kl_per_dim"]]}
    if not trainer.has_kl:
        record.update({"val_commitment": commitment / count, "val_codebook_usage": stats["codebook_usage"],
                       "val_perplexity": stats["perplexity"]})
    return record


@torch.no_grad()
def reconstruction_grid(trainer: Trainer, batch: Batch) -> np.ndarray:
    """Originals (top row) above their reconstructions from the posterior mode, in image pixels.
    Padding shows as padding (the original's pad colour), not as what the model paints where
    the loss never looked."""
    model = trainer.eval_model.eval()
    scale = trainer.config.data.scale
    inputs = to_model_input(batch, scale, trainer.device)
    decoded = model.decode(model.encode(inputs.x).mode())
    shown = keep_padding(to_pixels(decoded, scale, inputs.mean, inputs.std), batch)
    trainer.model.train()
    return image_grid(torch.cat([batch.pixels, shown]).numpy(), columns=len(batch))


@torch.no_grad()
def sample_grid(trainer: Trainer, count: int, columns: int = 8) -> Optional[np.ndarray]:
    """Decoded prior samples; the same noise every epoch, so the grids show training progress.
    None for a family without a prior (vq)."""
    if not trainer.model.has_prior:
        return None
    model = trainer.eval_model.eval()
    generator = torch.Generator().manual_seed(trainer.config.train.seed)
    samples = to_pixels(model.sample(count, generator=generator), trainer.config.data.scale)
    trainer.model.train()
    return image_grid(samples.numpy(), columns=columns)
