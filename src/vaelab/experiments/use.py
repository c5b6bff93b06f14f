"""Use a trained run: reconstruct, sample, interpolate and traverse (and the shared pieces of encode/decode).

Every model family works (`vaelab.model`): a latent is whatever shape the run's model has,
`run.model.latent_shape` ((latent,) for vector, (channels, h, w) for spatial and vq), and an
image's latent here is its posterior mode (the Gaussian's mean, the vq model's quantized map).
What has no meaning for a family is a one-line VaelabError: `sample` on a vq run before `vaelab
prior` trained a PixelCNN over its codes, and `traverse` on a quantized latent.

Image files are fitted exactly as in training (data.size, fit, pad_value, scale); bbox_crop
does not apply to a loose file, which has no metadata bbox. Every output is mapped back to
uint8 image pixels with `to_pixels` and written as PNG atomically (`save_png`). Reconstructions
and decoded latents are cropped to the content box, so a padded image comes back with its
own aspect ratio, not the model's.

`encode` and `decode` (the latents file) are in `vaelab.experiments.latents`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vaelab.config import DataConfig
from vaelab.data.grid import image_grid, save_png
from vaelab.data.images import load_fitted, read_size
from vaelab.data.loader import Batch
from vaelab.data.scaling import to_model_input, to_pixels
from vaelab.errors import VaelabError
from vaelab.model.posterior import DiagonalGaussian
from vaelab.runs.folder import RunFolder
from vaelab.runs.loaded import LoadedRun, load_run

CHUNK = 64  # images per forward pass: bounded memory for any number of inputs

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Posteriors of N images, on the CPU."""

    mode: Tensor  # (N, *latent_shape) float32: the Gaussian's mean, or the vq model's quantized map
    logvar: Optional[Tensor]  # the Gaussian's log-variance, the shape of mode; None for a quantized latent
    codes: Optional[Tensor]  # (N, h, w) int64: the code of every position of a quantized latent; else None
    mean: Optional[Tensor]  # (N, 1, 1, 1) pixel units, data.scale standardize only
    std: Optional[Tensor]

    def channel_kl(self) -> Optional[Tensor]:
        """KL of each image's latent channels (nats, summed over positions), (N, channels); None for vq."""
        return None if self.logvar is None else DiagonalGaussian(self.mode, self.logvar).channel_kl()


@torch.no_grad()
def encode_pixels(run: LoadedRun, pixels: Tensor, boxes: Tensor) -> Encoded:
    """uint8 images (N, H, W, 3) fitted to data.size, with their content boxes -> posteriors.

    The boxes matter for data.scale standardize, whose per-image statistics skip padding as in
    training."""
    batch = Batch(pixels, boxes, torch.arange(len(pixels)))
    inputs = to_model_input(batch, run.data.scale, run.device)
    posterior = run.model.encode(inputs.x)
    cpu = lambda t: None if t is None else t.float().cpu()  # noqa: E731
    logvar = getattr(posterior, "logvar", None)
    codes = getattr(posterior, "codes", None)
    return Encoded(posterior.mode().float().cpu(), cpu(logvar), None if codes is None else codes.long().cpu(),
                   cpu(inputs.mean), cpu(inputs.std))


@torch.no_grad()
def decode_pixels(run: LoadedRun, z: Tensor, mean: Optional[Tensor] = None,
                  std: Optional[Tensor] = None, codes: bool = False) -> np.ndarray:
    """Latents (N, *latent_shape) -> uint8 images (N, H, W, 3); with `codes`, z is a vq model's
    code maps (N, h, w), decoded by its `decode_codes`. mean/std: standardize's per-image
    statistics; without them `to_pixels` uses its dataset-typical fallback."""
    decode = run.model.decode_codes if codes else run.model.decode
    out = []
    for start in range(0, len(z), CHUNK):
        part = slice(start, start + CHUNK)
        m, s = (None, None) if mean is None or std is None else (mean[part].to(run.device), std[part].to(run.device))
        out.append(to_pixels(decode(z[part].to(run.device)), run.data.scale, m, s).numpy())
    return np.concatenate(out) if out else np.zeros((0, *run.data.size, 3), np.uint8)


@dataclass
class FileImage:
    path: Path
    pixels: np.ndarray  # uint8 (H, W, 3) at data.size
    box: tuple[int, int, int, int]  # top, left, height, width of the real pixels
    region: tuple[int, int]  # (height, width) in original pixels of what the box shows


def fit_file(path: PathLike, data: DataConfig) -> FileImage:
    """Fit an image file like the training images. A missing file or a non-image raises a
    VaelabError naming the file (from `load_fitted`)."""
    path = Path(path)
    fitted = load_fitted(path, data.size, data.fit, data.pad_rgb)
    width, height = read_size(path)
    return FileImage(path, fitted.pixels, fitted.box, visible_region(height, width, data))


def visible_region(height: float, width: float, data: DataConfig) -> tuple[int, int]:
    """(height, width) in original pixels of the part of an image that a fitted image shows:
    all of it for pad and stretch, the centred part with the model's aspect ratio for crop."""
    if data.fit == "crop":
        out_h, out_w = data.size
        scale = max(out_w / width, out_h / height)
        height, width = min(height, out_h / scale), min(width, out_w / scale)
    return max(1, round(height)), max(1, round(width))


def within(region: tuple[int, int], size: Sequence[int]) -> tuple[int, int]:
    """The largest (height, width) with the region's aspect ratio that fits in `size`: the
    model-resolution view of an image (its content box for pad)."""
    scale = min(size[0] / region[0], size[1] / region[1])
    return max(1, min(size[0], round(region[0] * scale))), max(1, min(size[1], round(region[1] * scale)))


def restore(pixels: np.ndarray, box: Sequence[int], size: Optional[Sequence[int]] = None) -> np.ndarray:
    """Crop a model-size image (H, W, 3) to its content box, then resize to (height, width)."""
    top, left, height, width = (int(v) for v in box)
    crop = pixels[top:top + height, left:left + width]
    if size is None or tuple(int(v) for v in size) == crop.shape[:2] or min(size) < 1:
        return np.ascontiguousarray(crop)
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((int(size[1]), int(size[0])), Image.Resampling.LANCZOS)
    return np.asarray(resized)


def safe_name(identifier: str, suffix: str = ".png") -> str:
    """A file name for an image id that cannot leave the output folder: folders become '__',
    '.' and '..' are dropped, anything but letters, digits, '.', '_' and '-' becomes '_'."""
    parts = [p for p in identifier.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if parts and "." in parts[-1].strip("."):
        parts[-1] = parts[-1].rsplit(".", 1)[0]  # the image's own extension
    name = re.sub(r"[^\w.-]", "_", "__".join(parts)).lstrip(".")[:150] or "image"
    return name + suffix


def unique(names: list[str]) -> list[str]:
    """Names made unique by -2, -3 ... before the suffix, in order."""
    seen: set[str] = set()
    out = []
    for name in names:
        stem, dot, ext = name.rpartition(".")
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{stem}-{n}{dot}{ext}" if dot else f"{name}-{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def fit_files(run: LoadedRun, paths: Sequence[PathLike]) -> list[FileImage]:
    if not paths:
        raise VaelabError("no image given; pass one or more image files")
    return [fit_file(p, run.data) for p in paths]  # every file is checked before any work


def encode_files(run: LoadedRun, files: list[FileImage]) -> Encoded:
    parts = []
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        pixels = torch.from_numpy(np.stack([f.pixels for f in chunk]))
        parts.append(encode_pixels(run, pixels, torch.tensor([f.box for f in chunk], dtype=torch.int64)))
    cat = lambda key: None if getattr(parts[0], key) is None else torch.cat([getattr(p, key) for p in parts])  # noqa: E731
    return Encoded(cat("mode"), cat("logvar"), cat("codes"), cat("mean"), cat("std"))


def family_error(run: LoadedRun, command: str, why: str, instead: str) -> VaelabError:
    return VaelabError(f"{command}: {run.run_dir} is a model.kind {run.model.family} run, {why}; {instead}")


# --------------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------------


def reconstruct(run_dir: PathLike, images: Sequence[PathLike], out_dir: PathLike, checkpoint: str = "best",
                device: str = "auto", full_size: bool = False) -> list[Path]:
    """For each image, OUT_DIR/<name>.png: the fitted original | its reconstruction from the
    posterior mode (the mean; the quantized map for vq), side by side, each cropped to the
    content box (the original aspect ratio).

    Both halves are at the model's resolution (a stretched image is resized back to its aspect
    ratio), or at the original image's size with full_size.
    """
    run = load_run(run_dir, checkpoint, device)
    files = fit_files(run, images)
    out_dir = Path(out_dir)
    names = unique([safe_name(f.path.name) for f in files])
    inputs = {f.path.resolve() for f in files}
    for name in names:
        if (out_dir / name).resolve() in inputs:
            raise VaelabError(f"{out_dir / name}: writing there would overwrite an input image; choose another --out")
    encoded = encode_files(run, files)
    shown = decode_pixels(run, encoded.mode, encoded.mean, encoded.std)
    written = []
    for f, recon, name in zip(files, shown, names):
        size = f.region if full_size else within(f.region, run.data.size)
        pair = np.concatenate([restore(f.pixels, f.box, size), restore(recon, f.box, size)], axis=1)
        written.append(save_png(pair, out_dir / name))
    return written


def sample(run_dir: PathLike, out: PathLike, count: int = 16, seed: int = 0, columns: Optional[int] = None,
           checkpoint: str = "best", device: str = "auto", prior: str = "auto", temperature: float = 1.0,
           top_k: Optional[int] = None, tags: Sequence[str] = ()) -> tuple[Path, str]:
    """A grid of `count` images decoded from the run's prior (`vaelab.experiments.prior.draw_latents`:
    the learned prior where `vaelab prior` fitted one, else N(0, I)); the same seed gives the same
    grid. Returns the file and which prior drew the latents."""
    from vaelab.experiments.sampling import draw_latents

    run = load_run(run_dir, checkpoint, device)
    draw = draw_latents(run, count, seed, prior, temperature, top_k, tags)
    images = decode_pixels(run, draw.latents, codes=draw.codes)
    return save_png(image_grid(images, columns or math.ceil(math.sqrt(count))), Path(out)), draw.description


def interpolate(run_dir: PathLike, image_a: PathLike, image_b: PathLike, out: PathLike, steps: int = 8,
                checkpoint: str = "best", device: str = "auto") -> Path:
    """A strip: fitted A | `steps` decodings along the straight line between the posterior modes
    of A and B | fitted B.

    The decodings are model-size frames (they blend two content boxes, so none is cropped).
    Vector and spatial: the line between the two means. vq: the line between the two quantized
    maps, each frame decoded as it is, not quantized again: the frames between the ends lie off
    the codebook, so they show how the decoder treats a blend of codes (the ends are exactly the
    images' reconstructions).
    """
    if steps < 2:
        raise VaelabError(f"--steps {steps}: an interpolation needs at least 2 steps")
    run = load_run(run_dir, checkpoint, device)
    a, b = fit_files(run, [image_a, image_b])
    encoded = encode_files(run, [a, b])
    t = torch.linspace(0, 1, steps)
    z = lerp(encoded.mode, t)
    mean, std = (None, None) if encoded.mean is None else (lerp(encoded.mean, t), lerp(encoded.std, t))
    frames = decode_pixels(run, z, mean, std)
    strip = np.concatenate([a.pixels[None], frames, b.pixels[None]])
    return save_png(image_grid(strip, columns=len(strip)), Path(out))


def lerp(pair: Tensor, t: Tensor) -> Tensor:
    """(1 - t) * pair[0] + t * pair[1] for each t: (len(t), *pair.shape[1:])."""
    w = t.view(-1, *[1] * (pair.dim() - 1))
    return (1 - w) * pair[0] + w * pair[1]


def traverse(run_dir: PathLike, out: PathLike, dims: int = 8, image: Optional[PathLike] = None,
             span: float = 3.0, steps: int = 7, checkpoint: str = "best", device: str = "auto") -> dict:
    """A grid with one row per latent dimension: that dimension set to base + v for v evenly from
    -span to span, the others held at the base (the image's posterior mean, or 0).

    A spatial latent is traversed by channel: a row shifts that channel's whole map by v
    (base + v at every position), the other channels held. A quantized latent (vq) cannot be
    traversed (its codes are categories, with no direction to move along): a one-line error.

    Rows are the `dims` dimensions (channels) with the most KL (from evaluation.json, else the
    last metrics.jsonl record with val_kl_per_dim, else the image's own KL; all per channel),
    else dimensions 0, 1, ...
    Returns {"file", "dims", "ranked_by", "unit"}; unit is "dimension" or "channel".
    """
    if dims < 1 or steps < 2 or not span > 0:
        raise VaelabError("traverse: --dims must be >= 1, --steps >= 2 and --range > 0")
    run = load_run(run_dir, checkpoint, device)
    if run.model.family == "vq":
        raise family_error(run, "traverse", "whose latent is quantized: a code is a category, not a point on an"
                           " axis, so moving one latent channel from -R to +R has no meaning",
                           "use interpolate to go from one image to another")
    shape = tuple(run.model.latent_shape)
    channels = shape[0]
    base, mean, std, own_kl = torch.zeros(shape), None, None, None
    if image is not None:
        encoded = encode_files(run, fit_files(run, [image]))
        base, mean, std = encoded.mode[0], encoded.mean, encoded.std
        own_kl = encoded.channel_kl()[0].tolist()
    order, ranked_by = dims_by_kl(Path(run_dir), channels, own_kl)
    chosen = order[:min(dims, channels)]
    values = torch.linspace(-span, span, steps).view(-1, *[1] * (len(shape) - 1))
    z = base.repeat(len(chosen) * steps, *[1] * len(shape))
    for row, d in enumerate(chosen):
        z[row * steps:(row + 1) * steps, d] = base[d] + values
    if mean is not None:
        mean, std = mean.expand(len(z), -1, -1, -1), std.expand(len(z), -1, -1, -1)
    grid = image_grid(decode_pixels(run, z, mean, std), columns=steps)
    return {"file": save_png(grid, Path(out)), "dims": chosen, "ranked_by": ranked_by,
            "unit": "dimension" if len(shape) == 1 else "channel"}


def dims_by_kl(run_dir: Path, latent: int, own_kl: Optional[list[float]] = None) -> tuple[list[int], str]:
    """Latent dimensions (the channels of a spatial latent: `latent` of them) ordered by KL, most
    informative first, and where the KL came from. A KL list of another length (a run evaluated
    before its KL was per channel) is not used."""
    from vaelab.experiments.evaluate import EVALUATION_FILE

    def valid(values) -> bool:
        return isinstance(values, list) and len(values) == latent and all(isinstance(v, (int, float)) for v in values)

    kl, source = None, None
    try:
        kl = json.loads((run_dir / EVALUATION_FILE).read_text(encoding="utf-8")).get("kl_per_dim")
        source = EVALUATION_FILE
    except (OSError, ValueError, AttributeError):
        kl = None
    if not valid(kl):
        kl = None
        try:
            records, _ = RunFolder(run_dir).read_metrics()
        except VaelabError:  # no metrics.jsonl, or an unreadable one: no KL from there
            records = []
        for record in records:
            if valid(record.get("val_kl_per_dim")):
                kl, source = record["val_kl_per_dim"], "metrics.jsonl (last epoch)"
    if kl is None and own_kl is not None:
        kl, source = own_kl, "the image's own KL"
    if kl is None:
        return list(range(latent)), "dimension order (no KL known; run 'vaelab evaluate' first)"
    return sorted(range(latent), key=lambda d: -kl[d]), source
