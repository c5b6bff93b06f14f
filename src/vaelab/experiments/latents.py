"""The latents file: `vaelab encode` writes it, `vaelab decode` reads it.

An uncompressed NumPy .npz that loads without pickle, `np.load(path, allow_pickle=False)`:
    mu, logvar             float32 (N, latent)  the posterior mean and log-variance
    ids                    str (N,)             image paths relative to data.images (posix)
    boxes                  int32 (N, 4)         top, left, height, width of the real pixels in the
                                                model-size image: what decode crops to
    sizes                  int32 (N, 2)         height, width that decode resizes back to: the
                                                original image (its bbox with bbox_crop; with fit
                                                crop, the part of it the model saw); -1 = unknown
    pixel_mean, pixel_std  float32 (N,)         per-image mean and std in pixel units, needed to
                                                map back with data.scale standardize; NaN otherwise
    meta                   str ()               JSON: format "vaelab-latents", version, run,
                                                checkpoint, epoch, latent, size, fit, scale, split

One format, NumPy's, on purpose: it needs no extra package, and `allow_pickle=False` makes
loading a file from anywhere safe. ids are a fixed-width unicode array, not objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data.grid import save_png
from vaelab.data.images import read_size
from vaelab.files import atomic_path
from vaelab.errors import VaelabError
from vaelab.experiments.use import CHUNK, PathLike, decode_pixels, encode_pixels, restore, safe_name, unique, visible_region
from vaelab.runs import load_run

LATENTS_FORMAT = "vaelab-latents"
LATENTS_VERSION = 1
LATENTS_KEYS = ("mu", "logvar", "ids", "boxes", "sizes", "pixel_mean", "pixel_std", "meta")




def encode(run_dir: PathLike, out: PathLike, config_path: Optional[Path] = None,
           overrides: Sequence[str] = (), split: str = "all", checkpoint: str = "best",
           device: str = "auto", batch_size: Optional[int] = None) -> dict:
    """Encode a split of the run's data (or of another data config) into a latents file.

    Returns {"file", "images", "skipped", "latent"}. Unreadable images are left out and counted.
    """
    from vaelab.experiments.evaluate import evaluation_data, split_loader

    run_dir = Path(run_dir)
    run = load_run(run_dir, checkpoint, device)
    data = evaluation_data(run_dir, run.config, config_path, tuple(overrides))
    loader, _ = split_loader(data, split, batch_size or run.config.train.batch_size, run.config.train.seed)
    metadata, selected = loader.images.metadata, loader.images.selected
    mus, logvars, means, stds, ids, boxes, sizes = [], [], [], [], [], [], []
    for batch in loader.batches(0):
        encoded = encode_pixels(run, batch.pixels, batch.boxes)
        mus.append(encoded.mu)
        logvars.append(encoded.logvar)
        if encoded.mean is not None:
            means.append(encoded.mean.flatten())
            stds.append(encoded.std.flatten())
        boxes.append(batch.boxes.numpy())
        for index in selected[batch.positions.numpy()]:
            ids.append(metadata.path(index))
            sizes.append(original_region(metadata, int(index), data))
    if not ids:
        raise VaelabError(f"{data.images}: none of the {split} images could be read; see 'vaelab data stats'")
    n = len(ids)
    nan = np.full(n, np.nan, np.float32)
    meta = {"format": LATENTS_FORMAT, "version": LATENTS_VERSION, "run": str(run_dir.absolute()),
            "checkpoint": run.checkpoint.name, "epoch": run.epoch, "latent": run.config.model.latent,
            "size": list(run.data.size), "fit": run.data.fit, "scale": run.data.scale, "split": split}
    write_latents(Path(out), {
        "mu": torch.cat(mus).numpy(), "logvar": torch.cat(logvars).numpy(), "ids": np.array(ids, dtype=str),
        "boxes": np.concatenate(boxes).astype(np.int32), "sizes": np.array(sizes, dtype=np.int32).reshape(n, 2),
        "pixel_mean": torch.cat(means).numpy() if means else nan, "pixel_std": torch.cat(stds).numpy() if stds else nan,
        "meta": np.array(json.dumps(meta)),
    })
    return {"file": Path(out), "images": n, "skipped": len(loader.skipped), "latent": run.config.model.latent}


def original_region(metadata, index: int, data: DataConfig) -> tuple[int, int]:
    """(height, width) to restore a collection image to, or (-1, -1) when its size is unknown."""
    width, height = int(metadata.width[index]), int(metadata.height[index])
    if width <= 0 or height <= 0:
        try:
            width, height = read_size(metadata.file(index))
        except VaelabError:
            return -1, -1
    box = metadata.bbox[index]
    if data.bbox_crop and not np.isnan(box).any():
        x0, y0, x1, y1 = (float(v) for v in box)
        width, height = min(x1, width) - max(x0, 0.0), min(y1, height) - max(y0, 0.0)
    return visible_region(height, width, data)


def write_latents(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic: np.savez into a temporary file beside `path`, then a rename."""
    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as file:
            np.savez(file, **arrays)  # a file object: savez adds no '.npz' to the name
    except OSError as error:
        raise VaelabError(f"{path}: cannot write the latents file ({error.strerror}); choose another --out") from None


def read_latents(path: PathLike, latent: Optional[int] = None) -> dict:
    """Load and check a latents file (see the module doc); `latent`: the size it must have."""
    path = Path(path)
    how = "write one with 'vaelab encode RUN_DIR --out LATENTS'"
    if not path.is_file():
        raise VaelabError(f"{path}: latents file not found; {how}")
    try:
        with np.load(path, allow_pickle=False) as file:
            missing = [k for k in LATENTS_KEYS if k not in file.files]
            if missing:
                raise VaelabError(f"{path}: not a vaelab latents file (no {', '.join(missing)}); {how}")
            arrays = {k: file[k] for k in LATENTS_KEYS}
            meta = json.loads(str(arrays["meta"]))
    except VaelabError:
        raise
    except Exception as error:  # not a zip, a pickled array, damaged data, bad JSON
        raise VaelabError(f"{path}: not a readable vaelab latents file ({type(error).__name__}); {how}") from None
    if not isinstance(meta, dict) or meta.get("format") != LATENTS_FORMAT or meta.get("version") != LATENTS_VERSION:
        raise VaelabError(f"{path}: not a {LATENTS_FORMAT} file of version {LATENTS_VERSION}; {how}")
    mu, n = arrays["mu"], len(arrays["ids"])
    shapes = {"mu": (n, None), "logvar": mu.shape, "boxes": (n, 4), "sizes": (n, 2), "pixel_mean": (n,), "pixel_std": (n,)}
    for key, shape in shapes.items():
        got = arrays[key].shape
        if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
            raise VaelabError(f"{path}: '{key}' has shape {got}, expected {shape} for {n} ids; the file is damaged")
    if latent is not None and mu.shape[1] != latent:
        raise VaelabError(f"{path}: latents of size {mu.shape[1]}, but this run's model has model.latent {latent};"
                          f" decode with the run that encoded them ({meta.get('run')})")
    arrays["meta"] = meta
    return arrays


def decode(run_dir: PathLike, latents: PathLike, out_dir: PathLike, checkpoint: str = "best",
           device: str = "auto", full_size: bool = True) -> list[Path]:
    """One PNG per id in OUT_DIR (name from `safe_name`), decoded from the posterior mean,
    cropped to the content box and resized to the original size when it is known."""
    run = load_run(run_dir, checkpoint, device)
    arrays = read_latents(latents, run.config.model.latent)
    mean = std = None
    if run.data.scale == "standardize" and np.isfinite(arrays["pixel_mean"]).all():
        mean = torch.from_numpy(arrays["pixel_mean"]).float().view(-1, 1, 1, 1)
        std = torch.from_numpy(arrays["pixel_std"]).float().view(-1, 1, 1, 1)
    out_dir = Path(out_dir)
    names = unique([safe_name(str(i)) for i in arrays["ids"]])
    mu = torch.from_numpy(arrays["mu"]).float()
    written = []
    for start in range(0, len(mu), CHUNK):
        part = slice(start, start + CHUNK)
        images = decode_pixels(run, mu[part], None if mean is None else mean[part], None if std is None else std[part])
        for image, box, size, name in zip(images, arrays["boxes"][part], arrays["sizes"][part], names[part]):
            target = tuple(int(v) for v in size) if full_size and min(size) > 0 else None
            written.append(save_png(restore(image, box, target), out_dir / name))
    return written
