"""The latents file: `vaelab encode` writes it, `vaelab decode` reads it.

An uncompressed NumPy .npz that loads without pickle, `np.load(path, allow_pickle=False)`:
    mu                     float32 (N, *latent_shape)  the posterior mode: the Gaussian's mean
                                                (vector (N, latent), spatial (N, z_channels, h, w)),
                                                the quantized map for vq (N, code_dim, h, w)
    logvar                 float32              the Gaussian's log-variance, the shape of mu;
                                                (N, 0) for vq, whose latent has no variance
    codes                  int32                vq: the code of every latent position, (N, h, w),
                                                what decode decodes; (N, 0) for the other families
    ids                    str (N,)             image paths relative to data.images (posix)
    boxes                  int32 (N, 4)         top, left, height, width of the real pixels in the
                                                model-size image: what decode crops to
    sizes                  int32 (N, 2)         height, width that decode resizes back to: the
                                                original image (its bbox with bbox_crop; with fit
                                                crop, the part of it the model saw); -1 = unknown
    pixel_mean, pixel_std  float32 (N,)         per-image mean and std in pixel units, needed to
                                                map back with data.scale standardize; NaN otherwise
    meta                   str ()               JSON: format "vaelab-latents", version, run,
                                                checkpoint, epoch, family (model.kind),
                                                latent_shape, latent (floats per image: the vector
                                                family's model.latent), size, fit, scale, split

Version 1 (before the spatial and vq families) had no codes and no family or latent_shape in
meta; `read_latents` still reads it, as a vector family's (N, latent) latents.
A file is decoded only by a run of the same family and latent shape (a one-line error otherwise).

One format, NumPy's, on purpose: it needs no extra package, and `allow_pickle=False` makes
loading a file from anywhere safe. ids are a fixed-width unicode array, not objects.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data.grid import save_png
from vaelab.data.images import read_size
from vaelab.errors import VaelabError
from vaelab.experiments.use import (
    CHUNK,
    PathLike,
    decode_pixels,
    encode_pixels,
    restore,
    safe_name,
    unique,
    visible_region,
)
from vaelab.files import atomic_path
from vaelab.runs.loaded import load_run

LATENTS_FORMAT = "vaelab-latents"
LATENTS_VERSION = 2
LATENTS_KEYS = ("mu", "logvar", "codes", "ids", "boxes", "sizes", "pixel_mean", "pixel_std", "meta")
V1_KEYS = tuple(k for k in LATENTS_KEYS if k != "codes")  # version 1: the vector family only
FAMILIES = ("vector", "spatial", "vq")




def encode(run_dir: PathLike, out: PathLike, config_path: Optional[Path] = None,
           overrides: Sequence[str] = (), split: str = "all", checkpoint: str = "best",
           device: str = "auto", batch_size: Optional[int] = None) -> dict:
    """Encode a split of the run's data (or of another data config) into a latents file.

    Returns {"file", "images", "skipped", "latent" (floats per image), "latent_shape", "family"}.
    Unreadable images are left out and counted.
    """
    from vaelab.experiments.evaluate import evaluation_data, split_loader

    run_dir = Path(run_dir)
    run = load_run(run_dir, checkpoint, device)
    data = evaluation_data(run_dir, run.config, config_path, tuple(overrides))
    loader, _ = split_loader(data, split, batch_size or run.config.train.batch_size, run.config.train.seed)
    metadata, selected = loader.images.metadata, loader.images.selected
    mus, logvars, codes, means, stds, ids, boxes, sizes = [], [], [], [], [], [], [], []
    for batch in loader.batches(0):
        encoded = encode_pixels(run, batch.pixels, batch.boxes)
        n = len(encoded.mode)
        mus.append(encoded.mode.numpy())
        logvars.append(np.zeros((n, 0), np.float32) if encoded.logvar is None else encoded.logvar.numpy())
        codes.append(np.zeros((n, 0), np.int32) if encoded.codes is None else encoded.codes.numpy().astype(np.int32))
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
    shape = [int(s) for s in run.model.latent_shape]
    meta = {"format": LATENTS_FORMAT, "version": LATENTS_VERSION, "run": str(run_dir.absolute()),
            "checkpoint": run.checkpoint.name, "epoch": run.epoch, "family": run.model.family,
            "latent_shape": shape, "latent": math.prod(shape),
            "size": list(run.data.size), "fit": run.data.fit, "scale": run.data.scale, "split": split}
    write_latents(Path(out), {
        "mu": np.concatenate(mus).astype(np.float32), "logvar": np.concatenate(logvars).astype(np.float32),
        "codes": np.concatenate(codes), "ids": np.array(ids, dtype=str),
        "boxes": np.concatenate(boxes).astype(np.int32), "sizes": np.array(sizes, dtype=np.int32).reshape(n, 2),
        "pixel_mean": torch.cat(means).numpy() if means else nan, "pixel_std": torch.cat(stds).numpy() if stds else nan,
        "meta": np.array(json.dumps(meta)),
    })
    return {"file": Path(out), "images": n, "skipped": len(loader.skipped), "latent": math.prod(shape),
            "latent_shape": shape, "family": run.model.family}


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


def shown_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(v)) for v in shape) + ("," if len(shape) == 1 else "") + ")"


def read_latents(path: PathLike, latent_shape: Optional[Sequence[int]] = None, family: Optional[str] = None) -> dict:
    """Load and check a latents file (see the module doc), of version 1 or 2. `latent_shape` and
    `family`: what the decoding run's model has (`model.latent_shape`, `model.family`); a file of
    another shape or family is a one-line error naming both and the run that encoded it.

    The arrays come back as version 2 has them: a version-1 file gets empty (N, 0) codes and
    meta family "vector" and latent_shape [latent]."""
    path = Path(path)
    how = "write one with 'vaelab encode RUN_DIR --out LATENTS'"
    if not path.is_file():
        raise VaelabError(f"{path}: latents file not found; {how}")
    try:
        with np.load(path, allow_pickle=False) as file:
            missing = [k for k in V1_KEYS if k not in file.files]
            if missing:
                raise VaelabError(f"{path}: not a vaelab latents file (no {', '.join(missing)}); {how}")
            arrays = {k: file[k] for k in LATENTS_KEYS if k in file.files}
            meta = json.loads(str(arrays["meta"]))
    except VaelabError:
        raise
    except Exception as error:  # not a zip, a pickled array, damaged data, bad JSON
        raise VaelabError(f"{path}: not a readable vaelab latents file ({type(error).__name__}); {how}") from None
    version = meta.get("version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != LATENTS_FORMAT or version not in (1, LATENTS_VERSION):
        raise VaelabError(f"{path}: not a {LATENTS_FORMAT} file of version 1 or {LATENTS_VERSION}; {how}")
    mu, n = arrays["mu"], len(arrays["ids"])
    if version == 1:  # the vector family, (N, latent)
        meta = {**meta, "family": "vector", "latent_shape": list(mu.shape[1:]) if mu.ndim == 2 else None}
        arrays["codes"] = np.zeros((n, 0), np.int32)
    elif "codes" not in arrays:
        raise VaelabError(f"{path}: not a vaelab latents file (no codes); {how}")
    stored = meta.get("latent_shape")
    if (not isinstance(stored, list) or not stored or not all(isinstance(v, int) and v > 0 for v in stored)
            or meta.get("family") not in FAMILIES):
        raise VaelabError(f"{path}: meta has no valid family and latent_shape; the file is damaged")
    quantized = meta.get("family") == "vq"
    shapes = {"mu": (n, *stored), "logvar": (n, 0) if quantized else (n, *stored),
              "codes": (n, *stored[1:]) if quantized else (n, 0),
              "boxes": (n, 4), "sizes": (n, 2), "pixel_mean": (n,), "pixel_std": (n,)}
    for key, shape in shapes.items():
        got = arrays[key].shape
        if tuple(got) != tuple(shape):
            raise VaelabError(f"{path}: '{key}' has shape {got}, expected {shape} for {n} ids; the file is damaged")
    if latent_shape is not None:
        wanted = tuple(int(v) for v in latent_shape)
        wanted_family = family or meta["family"]
        if tuple(stored) != wanted or meta["family"] != wanted_family:
            raise VaelabError(
                f"{path}: latents of shape {shown_shape(stored)} from a model.kind {meta['family']} model, but this"
                f" run's model takes {shown_shape(wanted)} (model.kind {wanted_family});"
                f" decode with the run that encoded them ({meta.get('run')})")
    arrays["meta"] = meta
    return arrays


def decode(run_dir: PathLike, latents: PathLike, out_dir: PathLike, checkpoint: str = "best",
           device: str = "auto", full_size: bool = True) -> list[Path]:
    """One PNG per id in OUT_DIR (name from `safe_name`), decoded from the posterior mode (mu;
    a vq run's codes, by its `decode_codes`), cropped to the content box and resized to the
    original size when it is known."""
    run = load_run(run_dir, checkpoint, device)
    arrays = read_latents(latents, run.model.latent_shape, run.model.family)
    mean = std = None
    if run.data.scale == "standardize" and np.isfinite(arrays["pixel_mean"]).all():
        mean = torch.from_numpy(arrays["pixel_mean"]).float().view(-1, 1, 1, 1)
        std = torch.from_numpy(arrays["pixel_std"]).float().view(-1, 1, 1, 1)
    out_dir = Path(out_dir)
    names = unique([safe_name(str(i)) for i in arrays["ids"]])
    from_codes = run.model.family == "vq"
    z = torch.from_numpy(arrays["codes"]).long() if from_codes else torch.from_numpy(arrays["mu"]).float()
    if from_codes and len(z) and (z.min() < 0 or z.max() >= run.model.codebook_size):
        raise VaelabError(f"{latents}: codes {int(z.min())}..{int(z.max())} outside this run's codebook of"
                          f" {run.model.codebook_size}; decode with the run that encoded them ({arrays['meta'].get('run')})")
    written = []
    for start in range(0, len(z), CHUNK):
        part = slice(start, start + CHUNK)
        images = decode_pixels(run, z[part], None if mean is None else mean[part], None if std is None else std[part],
                               codes=from_codes)
        for image, box, size, name in zip(images, arrays["boxes"][part], arrays["sizes"][part], names[part]):
            target = tuple(int(v) for v in size) if full_size and min(size) > 0 else None
            written.append(save_png(restore(image, box, target), out_dir / name))
    return written
