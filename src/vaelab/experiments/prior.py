"""`vaelab prior RUN`: fit a learned prior to a trained run's latents, kept in RUN/prior/.

    RUN/prior/
      config.yaml          the prior's config (`vaelab.config.prior`), kind resolved
      latents.safetensors  the training and validation images encoded once by the run's best
                           checkpoint (codes for vq, posterior means otherwise) and their tags;
                           reused while that checkpoint is unchanged (its sha256 is recorded)
      metrics.jsonl        pixelcnn: one line per epoch, bits per code on train and val
      checkpoints/         pixelcnn: last.pt, best.pt (weights, optimizer, progress)
      pixelcnn.safetensors the best epoch's weights (or mixture.safetensors for a mixture)
      summary.json         what was fitted, how well, and what `sample` needs (tags, code shape)

PixelCNN training resumes exactly: `vaelab prior RUN` again continues after the last finished
epoch (each epoch's shuffle, tag dropout and dropout come from seed and epoch alone, so a
resumed prior has the same weights as one trained straight through), and `--set
prior.epochs=N` extends a finished one. Other changed settings need `--fresh`, which keeps the
old folder as prior-replaced-<time>/ rather than deleting it.

Reading a fitted prior back and drawing latents from it is `vaelab.experiments.sampling`.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml
from torch import Tensor

from vaelab.config.prior import PriorConfig, prior_config
from vaelab.errors import VaelabError
from vaelab.files import append_json_line, save_safetensors, write_json, write_text
from vaelab.model.mixture import fit_mixture
from vaelab.model.pixelcnn import GatedPixelCNN
from vaelab.runs.checkpoints import BEST, LAST, CheckpointFolder
from vaelab.runs.folder import read_metrics, trim_metrics
from vaelab.runs.loaded import LoadedRun, load_run

PRIOR_DIR = "prior"
LATENTS_FILE, SUMMARY_FILE = "latents.safetensors", "summary.json"
PIXELCNN_FILE, MIXTURE_FILE = "pixelcnn.safetensors", "mixture.safetensors"


# --------------------------------------------------------------------------------------------
# the encoded training images
# --------------------------------------------------------------------------------------------


@dataclass
class Latents:
    train: Tensor  # vq: codes (N, h, w) int64; vector and spatial: posterior means (N, *latent_shape)
    val: Tensor
    train_tags: Tensor  # (N, tags) float32, multi-hot over tag_names
    val_tags: Tensor
    tag_names: list[str]
    skipped: int  # images that could not be read


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_split(run: LoadedRun, split: str) -> tuple[Tensor, list[list[str]], int]:
    """The posterior (codes for vq, means otherwise) of each image of the run's split, its tags, skips."""
    from vaelab.experiments.evaluate import split_loader
    from vaelab.experiments.use import encode_pixels

    shape = tuple(run.model.latent_shape)
    vq = run.model.family == "vq"
    empty = torch.zeros(0, *(shape[1:] if vq else shape), dtype=torch.long if vq else torch.float32)
    if split == "val" and run.config.data.val_fraction == 0:
        return empty, [], 0
    loader, _ = split_loader(run.data, split, 64)
    metadata, selected = loader.images.metadata, loader.images.selected
    parts, tags = [], []
    for batch in loader.batches(0):
        encoded = encode_pixels(run, batch.pixels, batch.boxes)
        parts.append(encoded.codes if vq else encoded.mode)
        tags += [metadata.tags(int(selected[p])) for p in batch.positions]
    return (torch.cat(parts) if parts else empty), tags, len(loader.skipped)


def encoded_latents(run: LoadedRun, folder: Path, max_tags: int, log: Callable[[str], None]) -> Latents:
    from safetensors.torch import load_file

    path = folder / LATENTS_FILE
    key = json.dumps({"checkpoint": file_sha256(run.checkpoint), "max_tags": max_tags})
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as file:
                meta = file.metadata() or {}
            if meta.get("key") == key:
                t = load_file(str(path))
                return Latents(t["train"], t["val"], t["train_tags"], t["val_tags"], json.loads(meta["tag_names"]),
                               int(meta["skipped"]))
        except Exception:  # unreadable (safetensors has its own error type) or stale: encode again
            pass
    log(f"encoding the training and validation images with {run.checkpoint.name} ...")
    train, train_tags, skipped_train = encode_split(run, "train")
    val, val_tags, skipped_val = encode_split(run, "val")
    if len(train) == 0:
        raise VaelabError(f"{run.run_dir}: none of the training images could be read; see 'vaelab data stats'")
    counts = Counter(name for names in train_tags for name in set(names))
    tag_names = sorted(counts, key=lambda name: (-counts[name], name))[:max_tags]
    latents = Latents(train, val, multi_hot(train_tags, tag_names), multi_hot(val_tags, tag_names), tag_names,
                      skipped_train + skipped_val)
    tensors = {"train": latents.train, "val": latents.val, "train_tags": latents.train_tags, "val_tags": latents.val_tags}
    save_safetensors(tensors, path, {"key": key, "tag_names": json.dumps(tag_names), "skipped": str(latents.skipped)})
    return latents


def multi_hot(tags: Sequence[Sequence[str]], names: Sequence[str]) -> Tensor:
    column = {name: i for i, name in enumerate(names)}
    out = torch.zeros(len(tags), len(names))
    for row, image_tags in enumerate(tags):
        for name in image_tags:
            if name in column:
                out[row, column[name]] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def resolved_kind(config: PriorConfig, family: str, run_dir: Path) -> str:
    kind = config.kind
    if kind == "auto":
        kind = "pixelcnn" if family == "vq" else "mixture"
    if kind == "pixelcnn" and family != "vq":
        raise VaelabError(f"prior.kind pixelcnn: {run_dir} is a model.kind {family} run, whose latent is continuous;"
                          " a PixelCNN models codes (vq runs). Use prior.kind mixture")
    if kind == "mixture" and family == "vq":
        raise VaelabError(f"prior.kind mixture: {run_dir} is a model.kind vq run, whose latent is a map of codes;"
                          " use prior.kind pixelcnn")
    return kind


def fit_prior(run_dir: Path, overrides: Sequence[str] = (), fresh: bool = False, device: str = "auto",
              progress: Optional[bool] = None, log: Callable[[str], None] = print) -> dict:
    """Fit (or resume fitting) the prior of a run; returns the summary (also in summary.json)."""
    from vaelab.runs.folder import RunFolder

    run_dir = Path(run_dir)
    run = load_run(run_dir, "best", device)
    folder = run_dir / PRIOR_DIR
    saved = folder / "config.yaml"
    try:
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        previous = "unreadable"
    if previous is not None and not isinstance(previous, dict) and not fresh:
        raise VaelabError(f"{saved}: not a prior config; add --fresh to fit a new prior (the old folder is kept)")
    config = prior_config(None if fresh else previous, overrides)
    kind = resolved_kind(config, run.model.family, run_dir)
    config = config.model_copy(update={"kind": kind})
    if previous is not None and not fresh:
        changed = [k for k, v in config.model_dump(mode="json").items() if k != "epochs" and previous.get(k) != v]
        if changed:
            raise VaelabError(f"{folder} holds a prior with other settings ({', '.join(changed)}); add --fresh to"
                              " replace it (the old folder is kept as prior-replaced-<time>)")
    lock = RunFolder(run_dir).lock()
    try:
        if fresh and folder.exists():
            kept = run_dir / f"prior-replaced-{time.strftime('%Y-%m-%d_%Hh%Mm%Ss')}"
            shutil.move(str(folder), str(kept))
            log(f"the previous prior is kept in {kept}")
        folder.mkdir(parents=True, exist_ok=True)
        write_text(saved, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        latents = encoded_latents(run, folder, config.max_tags, log)
        fit = train_pixelcnn if kind == "pixelcnn" else fit_gaussian_mixture
        summary = fit(run, config, latents, folder, progress, log)
    finally:
        if lock is not None:
            lock.close()
    summary.update({"kind": kind, "family": run.model.family, "run_checkpoint": run.checkpoint.name,
                    "run_epoch": run.epoch, "train_images": len(latents.train), "val_images": len(latents.val),
                    "skipped_images": latents.skipped})
    write_json(folder / SUMMARY_FILE, summary)
    return summary


# --------------------------------------------------------------------------------------------
# a gated PixelCNN over a vq run's codes
# --------------------------------------------------------------------------------------------


def build_pixelcnn(config: PriorConfig, codes: int, tags: int) -> GatedPixelCNN:
    return GatedPixelCNN(codes, config.channels, config.layers, config.kernel, tags if config.tags else 0, config.dropout)


def epoch_seed(config: PriorConfig, epoch: int) -> int:
    return config.seed * 1_000_003 + epoch


def bits_per_code(network: GatedPixelCNN, codes: Tensor, tags: Optional[Tensor], batch_size: int,
                  device: torch.device) -> Optional[float]:
    if len(codes) == 0:
        return None
    network.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(codes), batch_size):
            part = slice(start, start + batch_size)
            total += network.nll(codes[part].to(device), None if tags is None else tags[part].to(device)).sum().item()
    return total / (codes.numel() * math.log(2))


def train_pixelcnn(run: LoadedRun, config: PriorConfig, latents: Latents, folder: Path, progress: Optional[bool],
                   log: Callable[[str], None]) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    device = run.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the initial weights depend on the seed alone
        network = build_pixelcnn(config, run.model.codebook_size, len(latents.tag_names)).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    checkpoints = CheckpointFolder(folder / "checkpoints", keep=1, min_free_gb=run.config.run.min_free_gb)
    metrics_file = folder / "metrics.jsonl"
    conditioned = network.tags > 0
    start, best, best_epoch, elapsed = 0, math.inf, 0, 0.0
    state = checkpoints.load(LAST)
    if state is not None:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, best_epoch = state["progress"]["epoch"], state["progress"]["best"], state["progress"]["best_epoch"]
        elapsed = state["progress"]["time_s"]
        log(f"resuming the prior after epoch {start}")
    trim_metrics(metrics_file, start)
    train_codes, train_tags = latents.train, latents.train_tags if conditioned else None
    val_tags = latents.val_tags if conditioned else None
    steps = math.ceil(len(train_codes) / config.batch_size)
    console = Console(stderr=True)
    bar = Progress(TextColumn("prior epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[bits]}"), TimeRemainingColumn(), console=console,
                   disable=not (console.is_terminal if progress is None else progress))
    with bar:
        task = bar.add_task("", total=max(config.epochs - start, 0) * steps, epoch=start + 1, bits="")
        for epoch in range(start, config.epochs):
            began = time.monotonic()
            network.train()
            order = torch.randperm(len(train_codes), generator=torch.Generator().manual_seed(epoch_seed(config, epoch)))
            total = 0.0
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(epoch_seed(config, epoch))  # dropout and tag dropout: the same on a resume
                for step in range(steps):
                    rows = order[step * config.batch_size:(step + 1) * config.batch_size]
                    codes = train_codes[rows].to(device)
                    tags = None
                    if train_tags is not None:
                        shown = train_tags[rows]
                        keep_rate = torch.rand(len(rows), 1)
                        tags = (shown * (torch.rand(shown.shape) < keep_rate)).to(device)
                    loss = network.nll(codes, tags).mean() / codes[0].numel()  # nats per code
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(rows)
                    bar.update(task, advance=1, epoch=f"{epoch + 1}/{config.epochs}", bits=f"{loss.item() / math.log(2):.3f} bits/code")
            train_bits = total / (len(train_codes) * math.log(2))
            val_bits = bits_per_code(network, latents.val, val_tags, 64, device)
            judged = val_bits if val_bits is not None else train_bits
            improved = judged < best
            if improved:
                best, best_epoch = judged, epoch + 1
            elapsed += time.monotonic() - began
            record = {"epoch": epoch + 1, "train_bits_per_code": train_bits, "val_bits_per_code": val_bits,
                      "time_s": round(elapsed, 3)}
            append_json_line(metrics_file, record)
            state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                     "progress": {"epoch": epoch + 1, "best": best, "best_epoch": best_epoch, "time_s": elapsed}}
            checkpoints.save_epoch_end(state, epoch + 1, numbered=False, best=improved)
            val_text = "-" if val_bits is None else f"{val_bits:.4f}"
            log(f"prior epoch {epoch + 1}/{config.epochs}  train {train_bits:.4f}  val {val_text} bits/code"
                f"{'  *best' if improved else ''}")
    best_state = checkpoints.load(BEST) or checkpoints.load(LAST)
    if best_state is None:
        raise VaelabError(f"{folder}: prior.epochs {config.epochs} trained nothing; raise prior.epochs")
    save_safetensors(best_state["network"], folder / PIXELCNN_FILE)
    records, _ = read_metrics(metrics_file, finite=False)  # NaN stays NaN in summary.json, as the records have it
    best_record = next((r for r in records if r["epoch"] == best_epoch), records[-1])
    return {"epochs": config.epochs, "best_epoch": best_epoch, "val_bits_per_code": best_record["val_bits_per_code"],
            "train_bits_per_code": best_record["train_bits_per_code"],
            "uniform_bits_per_code": math.log2(run.model.codebook_size), "codes": run.model.codebook_size,
            "code_shape": list(latents.train.shape[1:]), "tags": latents.tag_names if conditioned else [],
            "parameters": sum(p.numel() for p in network.parameters()), "time_s": round(elapsed, 3)}


# --------------------------------------------------------------------------------------------
# a Gaussian mixture over a Gaussian family's posterior means
# --------------------------------------------------------------------------------------------


def fit_gaussian_mixture(run: LoadedRun, config: PriorConfig, latents: Latents, folder: Path,
                         progress: Optional[bool], log: Callable[[str], None]) -> dict:
    started = time.monotonic()
    train = latents.train.flatten(1).double()
    val = latents.val.flatten(1).double()
    judged_on = "val" if len(val) else "train"
    covariances = ["full", "diag"] if config.covariance == "auto" else [config.covariance]
    candidates, best, best_score = [], None, -math.inf
    for covariance in covariances:
        for components in config.components:
            if components > len(train):
                candidates.append({"components": components, "covariance": covariance, "skipped": "more components than images"})
                continue
            mixture = fit_mixture(train.numpy(), components, covariance, config.seed)
            score = mixture.log_likelihood(val if len(val) else train).mean().item() / train.shape[1]
            candidates.append({"components": components, "covariance": covariance, f"{judged_on}_nats_per_float": score})
            log(f"mixture {components} x {covariance}: {judged_on} log-likelihood {score:.4f} nats per latent float")
            if score > best_score:
                best, best_score = mixture, score
    if best is None:
        raise VaelabError(f"prior.components {config.components}: every count exceeds the {len(train)} training images; use fewer")
    best.save(folder / MIXTURE_FILE)
    normal = torch.distributions.Normal(0.0, 1.0)
    reference = val if len(val) else train
    normal_score = normal.log_prob(reference).sum(1).mean().item() / train.shape[1]
    return {"components": best.components, "covariance": best.covariance,
            f"{judged_on}_nats_per_float": best_score, f"{judged_on}_nats_per_float_standard_normal": normal_score,
            "candidates": candidates, "latent_shape": list(latents.train.shape[1:]),
            "time_s": round(time.monotonic() - started, 3)}
