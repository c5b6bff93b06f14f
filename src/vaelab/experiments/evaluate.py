"""`vaelab evaluate`: how good a trained run is, on its validation split or on other data.

Every number is a mean per image over the evaluated split unless said otherwise.

- recon, kl, elbo: one z drawn per image from q(z|x) with the seed `train.seed`, exactly as the
  trainer draws it for val_recon, so the ELBO is an honest one-sample estimate. `recon` is in
  the loss's own unit (see `UNITS`), `kl` in nats summed over latent dimensions, elbo =
  -(recon + kl) with beta = 1, and loss = recon + beta * kl (the trainer's val_loss).
  For `gaussian` with sigma 'optimal' the sigma is the one that maximises the likelihood of the
  whole split (not of each batch, as in training), so recon can differ slightly from val_recon.
- mse, psnr, ssim: the posterior mean is decoded (decode(mu), no sampling), mapped back to
  uint8 image pixels as they are shown, and compared with the input pixels in [0, 1]
  (pixel / 255). Real pixels only: mse and psnr count the pixels inside each image's content
  box, ssim is computed on the content box alone. psnr = 10 log10(1 / mse) over the whole
  split (capped at 100 dB for a perfect match, as in training).
- bits_per_dim: -ELBO in bits per real subpixel (pixel x channel), summed over the split and
  divided by its real subpixels. Only where the decoder is a normalised density of the pixels:
    gaussian: -ELBO is a density of the model-scale values y = a * pixel + b; as a density of
      8-bit pixel values (bins of width 1) that adds log2(1/a) per subpixel:
      bits/dim = -ELBO / (D ln 2) + log2(255) for data.scale unit, + log2(127.5) for symmetric.
      standardize divides each image by its own std: no fixed change of variables, so null.
    bce: Bernoulli cross-entropy in bits per subpixel, no correction. Exact for binary images;
      for 8-bit photos it is not a likelihood of the pixels, so it does not compare with a
      gaussian run's bits/dim (the note in the result says so).
    mse_sum, l1: not a calibrated likelihood, null.
- active_units: Burda et al. (2016): dimension d is active when Cov_x(E_q[z_d]) > 0.01, the
  variance over the split's images of the posterior mean (unbiased, needs 2 images).
- kl_per_dim: the KL of each latent dimension in nats, mean per image (sums to `kl`).
- latent: the vector family's model.latent (an int, as before the other families existed).

The other families (`vaelab.model`):
- spatial: the same numbers, per latent *channel*: active_units counts channels (a channel's
  variance is the mean over its positions), kl_per_dim has one entry per channel, summed over
  its positions (still sums to `kl`). latent is the latent shape [z_channels, h, w], and the
  result says "family".
- vq: a quantized latent has no density, so kl, elbo and bits_per_dim are null (kl_note and
  bits_per_dim_note say why), as are active_units and kl_per_dim; instead codebook_usage (the
  fraction of the codes used on the split, in (0, 1]), perplexity (exp of the entropy of the code
  frequencies, in codes: 1 .. codebook size) and commitment (the loss's commitment term, mean
  per image). loss = recon + commitment, the trainer's val_loss. latent is [code_dim, h, w].

`LatentStats`, `ssim` and `box_ssim` live in `vaelab.train.metrics` (importable from here too); the
trainer logs the cheap ones every epoch as val_active_units and val_kl_per_dim (SSIM only here).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from vaelab.config import Config, DataConfig, load_config
from vaelab.config.keys import (
    MODEL_INPUT_KEYS,  # the model's input contract: evaluation data is fitted and scaled as the run was trained
)
from vaelab.data.collection import load_collection
from vaelab.data.loader import FittedImages, ImageLoader
from vaelab.data.scaling import box_masks, to_model_input, to_pixels
from vaelab.errors import VaelabError
from vaelab.train.losses import HALF_LOG_2PI, gaussian_log_sigma, masked_sum, vae_loss

# Moved to the model layer so that the trainer can log them every epoch; re-exported here.
from vaelab.train.metrics import ACTIVE_THRESHOLD, LatentStats, box_ssim, cheap_metrics, gaussian_window, ssim  # noqa: F401

EVALUATION_FILE = "evaluation.json"
NO_DENSITY = "not defined: a quantized latent (model.kind vq) has no density, so no KL and no ELBO"
PSNR_CAP = 100.0  # dB for mse == 0, as the trainer's val_psnr
SPLITS = ("val", "train", "all")

UNITS = {
    "mse_sum": "squared error in the model's pixel scale, averaged over channels, summed over real pixels",
    "l1": "absolute error in the model's pixel scale, averaged over channels, summed over real pixels",
    "bce": "binary cross-entropy (nats), averaged over channels, summed over real pixels",
    "gaussian": "Gaussian negative log-likelihood (nats), summed over channels and real pixels",
}


# --------------------------------------------------------------------------------------------
# data for an evaluation (shared with `vaelab encode`)
# --------------------------------------------------------------------------------------------


def evaluation_data(run_dir: Path, run_config: Config, config_path: Optional[Path] = None,
                    overrides: tuple[str, ...] | list[str] = ()) -> DataConfig:
    """The run's data, or another config's data (-c, and/or --set applied to the run's config).

    Whatever the source, the images are fitted and scaled as the model was trained
    (MODEL_INPUT_KEYS come from the run), since the model accepts nothing else.
    """
    if config_path is None and not overrides:
        return run_config.data
    other = load_config(config_path if config_path is not None else run_dir / "config.yaml", overrides)
    return other.data.model_copy(update={k: getattr(run_config.data, k) for k in MODEL_INPUT_KEYS})


def split_loader(data: DataConfig, split: str, batch_size: int, seed: int = 0) -> tuple[ImageLoader, np.ndarray]:
    """A loader over one split in a fixed order, and the metadata indices it covers."""
    if split not in SPLITS:
        raise VaelabError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    collection = load_collection(data)
    indices = {"val": collection.val, "train": collection.train, "all": collection.selected}[split]
    if len(indices) == 0:
        raise VaelabError(f"{collection.metadata.origin}: the {split} split is empty (data.val_fraction "
                          f"{data.val_fraction}); use --split train or all")
    images = FittedImages(collection, data)
    loader = ImageLoader(images, images.positions_of(indices), batch_size, seed, shuffle=False,
                         workers=data.worker_count())
    return loader, indices


# --------------------------------------------------------------------------------------------
# evaluate a run
# --------------------------------------------------------------------------------------------


def evaluate_run(run_dir: Union[str, Path], config_path: Optional[Path] = None,
                 overrides: tuple[str, ...] | list[str] = (), checkpoint: str = "best", split: str = "val",
                 device: str = "auto", batch_size: Optional[int] = None, samples: int = 0, prior: str = "auto") -> dict:
    """Evaluate a run folder (see the module doc); writes the result into the run folder.

    With `samples` N, also N draws from the run's prior (`prior`: auto, learned or normal) judged
    against the data (`vaelab.experiments.evaluate_samples`), kept per prior under "samples".

    The result goes to evaluation.json for the run's own validation split with the best
    checkpoint, else to evaluation-<hash>.json, so that evaluating on other data never replaces
    the run's own numbers. result["file"] says which. A run with no best.pt yet is evaluated with
    last.pt: `checkpoint` names the file used, and `checkpoint_note` (null otherwise) and a warning
    on stderr say so.
    """
    from vaelab.files import read_json, write_json
    from vaelab.runs.checkpoints import load_state
    from vaelab.runs.loaded import load_run
    from vaelab.train.rng import isolated

    started = time.monotonic()
    run_dir = Path(run_dir)
    run = load_run(run_dir, checkpoint, device)
    config = run.config
    data = evaluation_data(run_dir, config, config_path, overrides)
    loader, _ = split_loader(data, split, batch_size or config.train.batch_size, config.train.seed)
    log_sigma = None
    if config.loss.reconstruction == "gaussian" and config.loss.sigma == "learned":
        log_sigma = load_state(run.checkpoint)["log_sigma"]
        log_sigma = None if log_sigma is None else log_sigma.to(run.device)

    totals = Totals(run.model.latent_shape, run.model.family)
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.train.seed)  # the same z draws as the trainer's validation pass
        for batch in isolated(loader.batches(0)):
            totals.add(run.model, batch, config, log_sigma)
    if totals.images == 0:
        raise VaelabError(f"{data.images}: none of the {split} images could be read; see 'vaelab data stats'")

    # A diverged model gives nan or inf: null in the JSON (which allows neither), not a crash.
    result = {key: finite_or_none(value) for key, value in totals.result(config, log_sigma).items()}
    own = data == config.data and split == "val" and checkpoint == "best"
    described = {"images": str(data.images) if data.images else "built-in figure set",
                 "metadata": str(data.metadata) if data.metadata else None,
                 "filter": data.filter.model_dump(mode="json")}
    name = EVALUATION_FILE if own else "evaluation-" + hashlib.sha256(
        json.dumps([described, data.val_fraction, split, checkpoint], sort_keys=True).encode()).hexdigest()[:8] + ".json"
    result = {
        # checkpoint: the file evaluated; checkpoint_requested: what was asked for; checkpoint_note: why
        # they differ (a run with no best.pt yet), else null.
        "run": str(run_dir), "checkpoint": run.checkpoint.name, "checkpoint_requested": checkpoint,
        "checkpoint_note": run.note, "epoch": run.epoch, "split": split,
        "data": described, "images": totals.images, "skipped": len(loader.skipped),
        **result, "seed": config.train.seed, "time_s": round(time.monotonic() - started, 3),
        "file": str(run_dir / name),
    }
    previous = read_json(run_dir / name)
    previous_samples = previous.get("samples") if isinstance(previous, dict) else None
    if samples:
        from vaelab.experiments.evaluate_samples import evaluate_samples, merged_samples

        result["samples"] = merged_samples(previous_samples, evaluate_samples(run, data, samples, prior, config.train.seed))
    elif previous_samples:
        result["samples"] = previous_samples  # the samples were not evaluated again: keep what was
    write_json(run_dir / name, result)  # atomic: a temp file and os.replace
    return result


def finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


class Totals:
    """Sums over the split, per image where a ratio is taken at the end."""

    def __init__(self, latent_shape: Union[int, Sequence[int]] = (), family: str = "vector", *,
                 latent: Optional[int] = None):
        if latent is not None:  # the vector family's model.latent
            latent_shape = (latent,)
        self.latent_shape = (latent_shape,) if isinstance(latent_shape, int) else tuple(int(v) for v in latent_shape)
        self.family = family
        self.images = 0
        self.recon = 0.0  # sum over images of the loss's recon term (mse_sum, l1, bce)
        self.kl = 0.0
        self.commitment = 0.0  # vq
        self.sse = 0.0  # model scale, sampled z, real subpixels: for the gaussian likelihood
        self.subpixels = 0.0  # real pixels x channels
        self.channels = 3
        self.pixel_sse = 0.0  # image pixels / 255, decode(mu), real subpixels
        self.ssim = 0.0
        self.latents = LatentStats()

    def add(self, model, batch, config: Config, log_sigma: Optional[Tensor]) -> None:
        scale = config.data.scale
        device = next(model.parameters()).device
        inputs = to_model_input(batch, scale, device)
        out = model(inputs.x)  # samples z from the global RNG the caller seeded
        n = len(batch)
        # The gaussian term is recomputed at the end with one sigma for the split (see module doc).
        parts = vae_loss(out, inputs.x, inputs.mask, config.loss, config.loss.beta, log_sigma)
        self.recon += parts["recon"].item() * n
        self.kl += parts["kl"].item() * n
        self.commitment += parts["commitment"].item() * n
        real = inputs.mask > 0.5
        self.sse += masked_sum((out.recon.float() - inputs.x) ** 2, real).sum().item()
        self.channels = inputs.x.shape[1]
        self.subpixels += real.sum().item() * self.channels
        self.latents.update(out.posterior)

        shown = to_pixels(model.decode(out.posterior.mode()), scale, inputs.mean, inputs.std).float() / 255.0
        original = batch.pixels.float() / 255.0
        mask = box_masks(batch.boxes, *batch.pixels.shape[1:3]).permute(0, 2, 3, 1)
        self.pixel_sse += (((shown - original) ** 2) * mask).sum().item()
        nchw = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
        self.ssim += box_ssim(nchw(shown), nchw(original), batch.boxes).sum().item()
        self.images += n

    def result(self, config: Config, log_sigma: Optional[Tensor]) -> dict:
        n, loss = self.images, config.loss
        quantized = self.family == "vq"
        latents = self.latents.result()
        recon = self.recon / n
        bits, note = None, None
        if loss.reconstruction == "gaussian":
            mse = torch.tensor(self.sse / max(self.subpixels, 1.0), dtype=torch.float64)
            log_s = float(gaussian_log_sigma(loss, mse, log_sigma))
            nll = self.sse / (2 * math.exp(2 * log_s)) + self.subpixels * (log_s + HALF_LOG_2PI)
            recon = nll / n
            jacobian = {"unit": math.log2(255.0), "symmetric": math.log2(127.5)}.get(config.data.scale)
            if quantized:
                note = NO_DENSITY
            elif jacobian is None:
                note = "not calibrated: data.scale standardize rescales each image by its own std"
            else:
                bits = (nll + self.kl) / (self.subpixels * math.log(2)) + jacobian
                note = (f"gaussian, sigma {math.exp(log_s):.4g} ({loss.sigma}); -ELBO/(D ln 2) + "
                        f"log2({255.0 if config.data.scale == 'unit' else 127.5}) for 8-bit pixels")
        elif quantized:
            note = NO_DENSITY
        elif loss.reconstruction == "bce":
            # recon averages BCE over channels; the likelihood sums it.
            nll = recon * n * self.channels
            bits = (nll + self.kl) / (self.subpixels * math.log(2))
            note = "bernoulli (bce): exact for binary images only; not comparable with a gaussian run's bits/dim"
        else:
            note = f"not calibrated: {loss.reconstruction} is not a normalised likelihood"
        mse = self.pixel_sse / max(self.subpixels, 1.0)
        kl = self.kl / n
        commitment = self.commitment / n
        units = {
            "recon": f"{UNITS[loss.reconstruction]}; mean per image, one z sample per image",
            "kl": "nats, summed over latent dimensions; mean per image",
            "elbo": "-(recon + kl), beta = 1", "loss": f"recon + beta * kl (beta {loss.beta})",
            "mse": "per real pixel and channel, pixels in [0, 1], posterior mean decoded",
            "psnr": "dB, 10 log10(1 / mse)", "ssim": "mean per image on the content box, 11x11 gaussian sigma 1.5",
            "bits_per_dim": "bits per real subpixel", "kl_per_dim": "nats, mean per image",
        }
        result = {
            "recon": recon, "kl": kl, "elbo": -(recon + kl), "loss": recon + loss.beta * kl,
            "mse": mse, "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else PSNR_CAP,
            "ssim": self.ssim / n, "bits_per_dim": bits, "bits_per_dim_note": note,
            "real_subpixels": int(self.subpixels),
            "active_units": latents["active_units"], "latent": self.latent_shape[0],
            "kl_per_dim": latents["kl_per_dim"],
            "units": units,
        }
        if self.family == "vector":
            return result  # exactly the keys and values of the vector family before the others came
        result.update({"family": self.family, "latent": list(self.latent_shape)})
        if not quantized:  # spatial: per latent channel
            units.update({"kl": "nats, summed over latent channels and positions; mean per image",
                          "kl_per_dim": "nats per latent channel, summed over its positions; mean per image",
                          "active_units": "latent channels with Cov_x(E_q[z]) > 0.01, averaged over positions"})
            return result
        result.update({
            "kl": None, "kl_note": NO_DENSITY, "elbo": None, "loss": recon + commitment,
            "commitment": commitment, "codebook_usage": latents["codebook_usage"], "perplexity": latents["perplexity"],
        })
        units.update({
            "elbo": "not defined without a KL", "loss": "recon + commitment (the trainer's val_loss)",
            "mse": "per real pixel and channel, pixels in [0, 1], quantized latent decoded",
            "commitment": "model.commitment_weight * ||z_e - sg(z_q)||^2 summed over latent elements; mean per image",
            "codebook_usage": "fraction of the codes used at least once on the split",
            "perplexity": "exp(entropy of the code frequencies), in codes: 1 .. codebook size",
        })
        return result


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def evaluate_command(run_dir: Path, config_path: Optional[Path] = None, overrides: tuple[str, ...] = (),
                     checkpoint: str = "best", split: str = "val", device: str = "auto",
                     as_json: bool = False, samples: int = 0, prior: str = "auto") -> dict:
    """Run `evaluate_run`; print a table (the caller prints the JSON when as_json)."""
    result = evaluate_run(run_dir, config_path, overrides, checkpoint, split, device, samples=samples, prior=prior)
    if not as_json:
        print_table(result)
        if result.get("samples"):
            from vaelab.experiments.evaluate_samples import print_samples

            print_samples(result["samples"])
    return result


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=escape(f"{result['run']} ({result['checkpoint']}, epoch {result['epoch']}): "
                        f"{result['images']} images, split {result['split']}"), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit / note")
    units = result["units"]
    shown = lambda value, form: "-" if value is None else format(value, form)  # noqa: E731
    for key in ("recon", "kl", "elbo", "loss", "mse", "psnr", "ssim"):
        table.add_row(key, shown(result[key], ".6g"), escape(result.get(f"{key}_note") or units[key]))
    table.add_row("bits/dim", shown(result["bits_per_dim"], ".4f"), escape(result["bits_per_dim_note"]))
    latent = result["latent"]
    if result.get("family") == "vq":
        for key, form in (("commitment", ".6g"), ("codebook_usage", ".4f"), ("perplexity", ".4g")):
            table.add_row(key.replace("_", " "), shown(result.get(key), form), escape(units.get(key, "")))
    else:
        channels = latent if isinstance(latent, int) else latent[0]
        unit = "" if isinstance(latent, int) else " channels"
        active = result["active_units"]
        table.add_row("active units", "-" if active is None else f"{active} / {channels}{unit}",
                      escape("Cov_x(E_q[z_d]) > 0.01 (Burda et al. 2016)"))
        kl = result["kl_per_dim"] or []
        top = sorted(range(len(kl)), key=lambda d: -kl[d])[:8]
        name = "z" if isinstance(latent, int) else "channel "
        table.add_row(f"KL per {'dim' if isinstance(latent, int) else 'channel'} (top)", "",
                      ", ".join(f"{name}{d}: {kl[d]:.3g}" for d in top if kl[d] is not None))
    if not isinstance(latent, int):
        table.add_row("latent", escape(f"{result.get('family')} {'x'.join(map(str, latent))}"), "")
    console.print(table)
    if result["skipped"]:
        console.print(f"skipped {result['skipped']} unreadable image(s)")
    console.print(escape(f"written to {result['file']}"))
