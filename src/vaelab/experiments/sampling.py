"""Latents from a run's prior: what `vaelab sample` and `evaluate --samples` decode.

`draw_latents(run, n, seed, prior)` with prior
    auto     the learned prior in RUN/prior where `vaelab prior` fitted one, else N(0, I)
             (a vq run has no N(0, I): its latent is a map of codes, so it needs the PixelCNN)
    learned  the learned prior, or a one-line error saying how to fit it
    normal   N(0, I), the prior the KL pulls towards (vector and spatial runs)
The same seed gives the same latents; temperature scales a PixelCNN's logits or a Gaussian's
spread, top-k and tags apply to a PixelCNN only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml
from torch import Tensor

from vaelab.config.prior import prior_config
from vaelab.errors import VaelabError, did_you_mean
from vaelab.experiments.prior import MIXTURE_FILE, PIXELCNN_FILE, PRIOR_DIR, SUMMARY_FILE, build_pixelcnn, multi_hot
from vaelab.files import read_json
from vaelab.model.mixture import GaussianMixture
from vaelab.model.pixelcnn import GatedPixelCNN
from vaelab.runs.loaded import LoadedRun

# --------------------------------------------------------------------------------------------
# reading a fitted prior back
# --------------------------------------------------------------------------------------------


@dataclass
class FittedPrior:
    kind: str  # pixelcnn or mixture
    folder: Path
    summary: dict
    network: Optional[GatedPixelCNN] = None
    mixture: Optional[GaussianMixture] = None


def load_prior(run: LoadedRun) -> Optional[FittedPrior]:
    """The run's fitted prior, or None when `vaelab prior` has not finished one."""
    from safetensors.torch import load_file

    folder = run.run_dir / PRIOR_DIR
    summary = read_json(folder / SUMMARY_FILE)
    if not isinstance(summary, dict):
        return None
    if summary.get("kind") == "mixture":
        return FittedPrior("mixture", folder, summary, mixture=GaussianMixture.load(folder / MIXTURE_FILE))
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        config = prior_config(saved if isinstance(saved, dict) else None)
    except (OSError, yaml.YAMLError, VaelabError) as error:
        raise VaelabError(f"{folder / 'config.yaml'}: not a readable prior config ({str(error).splitlines()[0]});"
                          " refit with 'vaelab prior RUN --fresh'") from None
    network = build_pixelcnn(config, run.model.codebook_size, len(summary.get("tags") or []))
    try:
        network.load_state_dict(load_file(str(folder / PIXELCNN_FILE)))
    except Exception as error:  # safetensors raises its own error type for a damaged file
        raise VaelabError(f"{folder / PIXELCNN_FILE}: not readable ({str(error).splitlines()[0]}); "
                          "refit with 'vaelab prior RUN --fresh'") from None
    return FittedPrior("pixelcnn", folder, summary, network=network.to(run.device).eval())


# --------------------------------------------------------------------------------------------
# drawing latents (what `vaelab sample` and `evaluate --samples` decode)
# --------------------------------------------------------------------------------------------

PRIOR_CHOICES = ("auto", "learned", "normal")


@dataclass
class Draw:
    latents: Tensor  # (n, *latent_shape), or code maps (n, h, w) where `codes`
    codes: bool
    prior: str  # "normal", "mixture" or "pixelcnn": the name evaluation results are kept under
    description: str


def draw_latents(run: LoadedRun, count: int, seed: int = 0, prior: str = "auto", temperature: float = 1.0,
                 top_k: Optional[int] = None, tags: Sequence[str] = ()) -> Draw:
    """`count` latents from the run's prior: `auto` is the learned one where `vaelab prior` fitted
    one, else N(0, I); `learned` requires it; `normal` is N(0, I). Same seed, same latents."""
    if prior not in PRIOR_CHOICES:
        raise VaelabError(f"--prior {prior!r}: use one of {', '.join(PRIOR_CHOICES)}")
    if count < 1:
        raise VaelabError(f"-n {count}: the number of samples must be at least 1")
    if not temperature > 0:
        raise VaelabError(f"--temperature {temperature}: must be above 0")
    if prior == "normal" and run.model.family == "vq":
        raise VaelabError("--prior normal: a vq run's latent is a map of codes, where N(0, I) has no meaning;"
                          " use --prior auto (its PixelCNN)")
    fitted = None if prior == "normal" else load_prior(run)
    where = run.run_dir / PRIOR_DIR
    if fitted is None and (prior == "learned" or run.model.family == "vq"):
        what = "a PixelCNN over its codes" if run.model.family == "vq" else "a Gaussian mixture over its latents"
        raise VaelabError(f"{run.run_dir}: no learned prior in {where}; 'vaelab prior {run.run_dir}' fits {what}"
                          + ("" if run.model.family == "vq" else ", or use --prior normal for N(0, I)"))
    kind = "normal" if fitted is None else fitted.kind
    fitted_to = None if fitted is None else fitted.summary.get("run_checkpoint")
    if fitted_to and fitted_to != run.checkpoint.name:
        import warnings

        warnings.warn(f"{where} was fitted to the latents of {fitted_to}, these weights are {run.checkpoint.name};"
                      f" refit with 'vaelab prior {run.run_dir} --fresh' if the two differ much")
    if tags and not (kind == "pixelcnn" and fitted.summary.get("tags")):
        raise VaelabError("--tag: this prior is not conditioned on tags; fit one with 'vaelab prior RUN --fresh"
                          " --set prior.tags=true' (a vq run)")
    if top_k is not None and kind != "pixelcnn":
        raise VaelabError("--top-k: only an autoregressive prior (a vq run's PixelCNN) draws codes; leave it out")
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(run.model.latent_shape)
    if kind == "normal":
        z = torch.randn(count, *shape, generator=generator) * temperature
        note = "" if prior == "normal" else f" (no learned prior in {where}; 'vaelab prior' fits a mixture)"
        return Draw(z, False, "normal", f"N(0, I){note}")
    if kind == "mixture":
        mixture = fitted.mixture
        if mixture.means.shape[1] != math.prod(shape):
            raise VaelabError(f"{where}: the mixture has {mixture.means.shape[1]} dims, the model's latent"
                              f" {math.prod(shape)}; refit it with 'vaelab prior RUN --fresh'")
        z = mixture.sample(count, generator, temperature).view(count, *shape)
        return Draw(z, False, "mixture", f"a Gaussian mixture of {mixture.components} ({mixture.covariance}"
                    f" covariance) fitted to the training images' latents ({where})")
    condition = tag_condition(fitted.summary.get("tags") or [], tags, count) if fitted.summary.get("tags") else None
    codes = fitted.network.sample(count, tuple(shape[1:]), generator, temperature, top_k, condition)
    bits = fitted.summary.get("val_bits_per_code")
    said = f", val {bits:.3f} bits/code" if isinstance(bits, (int, float)) else ""
    on = f", tags {', '.join(tags)}" if tags else ""
    return Draw(codes, True, "pixelcnn", f"the gated PixelCNN over the codes ({where}{said}{on})")


def tag_condition(names: Sequence[str], wanted: Sequence[str], count: int) -> Tensor:
    for tag in wanted:
        if tag not in names:
            hint = did_you_mean(tag, names, cutoff=0.6, n=3) or f"known tags: {', '.join(list(names)[:20])}"
            raise VaelabError(f"--tag {tag!r}: not a tag the prior was trained with; {hint}")
    return multi_hot([list(wanted)] * count, names)
