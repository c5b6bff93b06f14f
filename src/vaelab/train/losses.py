"""VAE losses, and the one place that fixes how every term is reduced.

Conventions (N = batch, C = channels, "real pixels" = pixels where the mask is 1):

- Per-pixel terms (`mse_sum`, `bce`, `l1`): the error is averaged over channels, summed over
  real pixels, and averaged over the batch. This is the journal's unit (Keras's
  `mse(flatten(x), flatten(x')) * H * W`): a 640x640 image scores in the 1e4..1e5 range,
  a 64x64 one about 100x less, and a padded image is charged only for its real pixels.
- `gaussian`: a proper negative log-likelihood, so it is summed over channels too (as well as
  over real pixels) and averaged over the batch. It is C times larger in scale than the above
  and can be negative once sigma is small.
- KL: analytic KL(q(z|x) || N(0, I)), summed over latent elements (the vector family's
  dimensions, the spatial family's channels x positions), averaged over the batch (the
  journal's ~400 for 128 dimensions). A quantized posterior (vq family) has none: its KL is 0.
- commitment (vq family): the posterior's ||z_e - sg(z_q)||^2 per image (`vaelab.model.vq`),
  averaged over the batch.
- loss = recon + kl_weight * kl_term + commitment, where kl_term is the KL after free bits (each
  element's batch-mean KL clamped below at `free_bits` nats) and kl_weight = `kl_weight_at(config, epoch)`.

Padding never counts: every reconstruction term selects real pixels with `torch.where`, so a
padding pixel contributes exactly zero to the value and to the gradient however large its
error is (and an inf or nan there still leaves the value finite).

`mse_sum`, `l1` and `gaussian` compare the post-activation `recon` with the target. `bce` is
computed on `logits` with `binary_cross_entropy_with_logits`: with a sigmoid output that is the
same BCE as on `recon`, but exact and finite for any logit, where BCE on a saturated sigmoid
is log(0).

`vae_loss` returns scalar tensors. Only "loss" carries the autograd graph; the rest are
detached, so that logging them cannot keep graphs (and memory) alive across steps.

Data-parallel training (`vaelab.train.distributed`) splits each global batch over several processes.
Given their `GlobalBatch`, `vae_loss` returns this process's *share* of the global-batch loss:
its per-image sums times size / (images in the global batch), so the shares summed over the
processes and divided by their number are the global values, and DDP's gradient average is the
full-batch gradient. The two statistics that are not sums over images are first summed over
the processes, so they are the global batch's too: the MSE that sets the optimal sigma
(sigma-VAE), and each latent dimension's batch-mean KL that free bits clamps (the clamp then
lets a dimension's gradient through exactly where the global mean is at or above `free_bits`).
"""

from __future__ import annotations

import math
from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.config import LossConfig
from vaelab.errors import VaelabError
from vaelab.model.contract import VAEOutput
from vaelab.model.posterior import Quantized

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class GlobalBatch(Protocol):
    """The processes that share one global batch under data-parallel training."""

    size: int

    def sum(self, values: Tensor) -> Tensor:
        """The elementwise sum of `values` over the processes (no gradient)."""
        ...


class OneProcess:
    """The whole batch in this process: `vae_loss`'s group outside data-parallel training."""

    size = 1

    @staticmethod
    def sum(values: Tensor) -> Tensor:
        return values


ONE_PROCESS = OneProcess()


def vae_loss(
    out: VAEOutput,
    target: Tensor,
    mask: Optional[Tensor],
    config: LossConfig,
    kl_weight: float,
    log_sigma: Optional[Tensor] = None,
    group: Optional[GlobalBatch] = None,
) -> dict[str, Tensor]:
    """Loss and its parts for one batch.

    target: (N, C, H, W) in the data's scaled units. mask: (N, 1, H, W), 1 = real pixel,
    0 = padding; None = every pixel is real. log_sigma: the trainer's `make_log_sigma()`
    parameter, required when config.sigma is 'learned'.
    Returns "loss", "recon", "kl" (raw), "kl_term" (after free bits), "commitment" (0 without a
    quantized posterior), "mse" (per real pixel and channel) and, for `gaussian`, "sigma". group: under data-parallel training, the
    processes sharing the global batch; then loss, recon, kl and kl_term are this process's
    shares and mse and sigma are the global batch's (see the module doc). None: one process.
    """
    # Losses in float32 even under autocast: sums over 400k pixels lose too much in half.
    recon, logits, target = out.recon.float(), out.logits.float(), target.float()
    real = torch.ones_like(target[:, :1], dtype=torch.bool) if mask is None else mask > 0.5
    sq_err = (recon - target) ** 2
    group = group or ONE_PROCESS
    # The batch's sums, summed over the processes sharing the global batch (one process: as they are).
    posterior = out.posterior
    kl_elements = posterior.kl()  # (N, latent elements), or None for a quantized latent
    kl_sums = (kl_elements.float().sum(0) if kl_elements is not None  # (elements,), this batch's sum
               else torch.zeros(0, device=target.device))
    local = torch.cat([torch.stack([masked_sum(sq_err, real).sum(), real.sum().float(),
                                    torch.tensor(float(len(target)), device=target.device)]), kl_sums])
    totals = group.sum(local.detach())
    mse = totals[0] / (totals[1].clamp(min=1) * target.shape[1])
    share = group.size / totals[2]  # this batch's weight in the global-batch mean
    kl_means = totals[3:] / totals[2]  # each dimension's KL, mean over the global batch

    parts: dict[str, Tensor] = {}
    kind = config.reconstruction
    if kind == "mse_sum":
        per_sample = masked_sum(sq_err.mean(1, keepdim=True), real)
    elif kind == "l1":
        per_sample = masked_sum((recon - target).abs().mean(1, keepdim=True), real)
    elif kind == "bce":
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        per_sample = masked_sum(bce.mean(1, keepdim=True), real)
    elif kind == "gaussian":
        log_s = gaussian_log_sigma(config, mse, log_sigma)
        nll = sq_err / (2 * torch.exp(2 * log_s)) + log_s + HALF_LOG_2PI
        per_sample = masked_sum(nll, real)
        parts["sigma"] = torch.exp(log_s).detach()
    else:  # the config's Literal makes this unreachable from YAML
        raise VaelabError(f"loss.reconstruction: unknown {kind!r}; use mse_sum, bce, gaussian or l1")
    # This process's shares: summed over the processes and divided by their number, they are the
    # global batch's means (one process: the batch means).
    recon_term = per_sample.sum() * share
    kl_shares = kl_sums * share
    kl = kl_shares.sum()
    # Free bits: a dimension whose mean KL is already under `free_bits` nats is not pushed further
    # down (it contributes its share of the floor, with no gradient), which keeps the KL term from
    # collapsing every latent dimension early in training.
    floor = torch.full_like(kl_shares, config.free_bits)  # each process adds the floor; / size: the floor
    kl_term = torch.where(kl_means >= config.free_bits, kl_shares, floor).sum()

    commitment = (posterior.commitment.float().sum() * share if isinstance(posterior, Quantized)
                  else torch.zeros((), device=target.device))

    loss = recon_term + kl_weight * kl_term + commitment
    return {
        "loss": loss,
        "recon": recon_term.detach(),
        "kl": kl.detach(),
        "kl_term": kl_term.detach(),
        "commitment": commitment.detach(),
        "mse": mse.detach(),
        **parts,
    }


def masked_sum(values: Tensor, real: Tensor) -> Tensor:
    """Sum of `values` (N, c, H, W) over real pixels, per sample -> (N,).

    torch.where (not a multiply) so that inf or nan in padding still gives exactly 0.
    """
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(real, values, zero).flatten(1).sum(1)


def gaussian_log_sigma(config: LossConfig, mse: Tensor, log_sigma: Optional[Tensor]) -> Tensor:
    """log sigma of the shared Gaussian decoder variance, soft-clipped from below.

    'optimal' (sigma-VAE, Rybkin et al. 2021): the sigma that maximises the likelihood for the
    current batch, sigma^2 = MSE over real pixels, detached so it acts as a per-batch constant.
    'learned': the trainer's parameter. A number: that fixed sigma.
    The soft clip keeps sigma above sigma_min, where 1/sigma^2 would blow up the gradients.
    """
    floor = math.log(config.sigma_min)
    if config.sigma == "optimal":
        return softclip(0.5 * torch.log(mse.detach()), floor)
    if config.sigma == "learned":
        if log_sigma is None:
            raise ValueError("loss.sigma is 'learned': pass log_sigma=make_log_sigma() (and optimise it)")
        return softclip(log_sigma.float(), floor)
    return torch.tensor(math.log(float(config.sigma)), device=mse.device)


def softclip(x: Tensor, minimum: float) -> Tensor:
    """A smooth max(x, minimum): minimum + softplus(x - minimum); about x well above it."""
    return minimum + F.softplus(x - minimum)


def make_log_sigma() -> nn.Parameter:
    """The learned shared log sigma for `sigma: learned`, starting at sigma = 1. The trainer owns
    it: add it to the optimiser and to checkpoints next to the model."""
    return nn.Parameter(torch.zeros(()))


def kl_weight_at(config: LossConfig, epoch: float) -> float:
    """beta, ramped linearly from 0 over the first kl_warmup_epochs.

    `epoch` is the (fractional) number of epochs completed: 0.0 at the first step, 1.5 halfway
    through the second epoch. With no warm-up the weight is beta from the start.
    """
    if config.kl_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, max(0.0, epoch) / config.kl_warmup_epochs)


def check_scaling(config: LossConfig, scale: str, output_activation: str) -> None:
    """Refuse a loss / pixel scale / output activation combination that cannot fit the targets.

    scale is data.scale: 'unit' targets lie in [0, 1], 'symmetric' in [-1, 1], 'standardize'
    roughly in [-2, 2] (per-channel mean 0, std 1).
    """
    if config.reconstruction == "bce":
        if scale != "unit":
            raise VaelabError(
                f"loss.reconstruction: bce needs targets in [0, 1], but data.scale: {scale} puts them"
                " outside it, which is what turned reconstructions black; set data.scale: unit"
                " (or use loss.reconstruction: mse_sum)"
            )
        if output_activation != "sigmoid":
            # BCE trains sigmoid(logits) towards the target; any other output would show images
            # that are not what the loss fitted. (With sigmoid, BCE is still taken on logits.)
            raise VaelabError(
                f"loss.reconstruction: bce models each pixel as sigmoid(logits), but"
                f" model.output_activation is {output_activation}; set model.output_activation: sigmoid"
            )
    if output_activation == "sigmoid" and scale != "unit":
        raise VaelabError(
            f"model.output_activation: sigmoid outputs [0, 1], but data.scale: {scale} targets go"
            " below 0, so dark pixels can never be reached; set data.scale: unit or"
            " model.output_activation: none"
        )
    if output_activation == "tanh" and scale == "standardize":
        raise VaelabError(
            "model.output_activation: tanh outputs [-1, 1], but data.scale: standardize targets go"
            " beyond it; set data.scale: symmetric or model.output_activation: none"
        )
