"""`vaelab evaluate RUN --samples N`: how good the run's samples are, without downloaded weights.

N latents are drawn from the run's prior (`vaelab.experiments.prior.draw_latents`, the same as
`vaelab sample --seed train.seed`) and decoded; then, in `vaelab.experiments.sample_quality`:

- c2st: a small CNN trained from scratch (5-fold cross-validation) to tell the validation images
  from as many samples. Accuracy 0.5 is indistinguishable; with its exact 95% interval.
- c2st_decoded: the same test against the model's own reconstructions of the validation images
  instead of the images themselves. A small CNN tells any decoder's output from photos (its
  blur gives it away: on ccp-figures at 64 px even a vq model's reconstructions of real codes
  score 1.0), so c2st alone cannot rank priors that share a decoder's look; c2st_decoded asks
  only whether the prior's latents decode like real images' latents do.
- nn_sample_to_train / nn_val_to_train: the RMSE (pixels in [0, 1]) from each sample, and from
  each validation image, to its nearest training image. Samples much nearer the training set
  than held-out images are (nn_ratio = median of the first / median of the second, well below
  1) may be copies: memorisation, not generation. Blur lowers the ratio too (in RMSE a blurred
  average is near every image), so read it beside the grid and the C2ST.

Every image is compared on the region that every real image (training and validation) covers:
the intersection of their content boxes. Padding is no evidence either way (the loss never saw
it, so a model paints anything there), and neither is the aspect ratio of a letterbox.

The result is kept per prior (`samples.<prior>` in the evaluation file: normal, mixture or
pixelcnn), so N(0, I) and the learned prior of the same run can be compared; the grid of the
samples is RUN/samples-<prior>.png.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data.grid import image_grid, save_png
from vaelab.errors import VaelabError
from vaelab.experiments.sample_quality import (
    classifier_two_sample_test,
    common_box,
    crop,
    distance_summary,
    nearest_distances,
)
from vaelab.experiments.sampling import draw_latents
from vaelab.runs.loaded import LoadedRun

GRID_IMAGES = 64


def split_pixels(data: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 3) of a split, fitted as in training, and their content boxes (N, 4)."""
    from vaelab.experiments.evaluate import split_loader

    loader, _ = split_loader(data, split, 64)
    pixels, boxes = [], []
    for batch in loader.batches(0):
        pixels.append(batch.pixels.numpy().copy())
        boxes.append(batch.boxes.numpy().copy())
    if not pixels:
        raise VaelabError(f"{data.images}: none of the {split} images could be read; see 'vaelab data stats'")
    return np.concatenate(pixels), np.concatenate(boxes)


def evaluate_samples(run: LoadedRun, data: DataConfig, count: int, prior: str = "auto", seed: int = 0) -> dict:
    """Draw `count` samples from the run's prior, save their grid, and `judge` them."""
    from vaelab.experiments.use import decode_pixels

    started = time.monotonic()
    draw = draw_latents(run, count, seed, prior)
    samples = decode_pixels(run, draw.latents, codes=draw.codes)
    grid = save_png(image_grid(samples[:GRID_IMAGES], math.ceil(math.sqrt(min(count, GRID_IMAGES)))),
                    run.run_dir / f"samples-{draw.prior}.png")
    return {"prior": draw.prior, "prior_description": draw.description, "seed": seed, **judge(run, data, samples, seed),
            "grid": str(grid), "time_s": round(time.monotonic() - started, 3)}


def judge(run: LoadedRun, data: DataConfig, images: np.ndarray, seed: int = 0) -> dict:
    """The C2STs and nearest-neighbour distances of generated uint8 images (N, H, W, 3) (module doc)."""
    val, val_boxes = split_pixels(data, "val")
    train, train_boxes = split_pixels(data, "train")
    region = common_box(np.concatenate([train_boxes, val_boxes]))
    with torch.no_grad():
        to_train, _ = nearest_distances(crop(images, region), crop(train, region))
        val_to_train, _ = nearest_distances(crop(val, region), crop(train, region))
    c2st = classifier_two_sample_test(crop(val, region), crop(images, region), seed=seed, device=run.device)
    decoded = classifier_two_sample_test(crop(reconstructions(run, val, val_boxes), region), crop(images, region),
                                         seed=seed, device=run.device)
    sample_nn, val_nn = distance_summary(to_train), distance_summary(val_to_train)
    return {
        "samples": len(images),
        "region": {"top": region[0], "left": region[1], "height": region[2], "width": region[3]},
        "c2st": c2st, "c2st_decoded": decoded,
        "nn_sample_to_train": sample_nn, "nn_val_to_train": val_nn,
        "nn_ratio": sample_nn["median"] / val_nn["median"] if val_nn["median"] > 0 else None,
        "units": {
            "c2st": "accuracy of a CNN telling validation images from samples, 5-fold; 0.5 = indistinguishable",
            "c2st_decoded": "the same against the model's reconstructions of the validation images: the prior alone",
            "nn": "RMSE in [0, 1] pixels to the nearest training image, on the region every real image covers",
            "nn_ratio": "median sample-to-train / median validation-to-train distance; well below 1 = copies",
        },
    }


def reconstructions(run: LoadedRun, pixels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The model's reconstructions (posterior mode decoded) of uint8 images, as vaelab shows them."""
    from vaelab.experiments.use import CHUNK, decode_pixels, encode_pixels

    out = []
    for start in range(0, len(pixels), CHUNK):
        part = slice(start, start + CHUNK)
        encoded = encode_pixels(run, torch.from_numpy(pixels[part]), torch.from_numpy(boxes[part]))
        out.append(decode_pixels(run, encoded.mode, encoded.mean, encoded.std))
    return np.concatenate(out)


def merged_samples(previous: object, result: dict) -> dict:
    """The evaluation file's `samples` with this prior's result in it and the other priors' kept."""
    kept = dict(previous) if isinstance(previous, dict) else {}
    kept[result["prior"]] = result
    return kept


def print_samples(samples: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="samples (vaelab evaluate --samples)", title_justify="left")
    for column in ("prior", "samples", "C2ST accuracy [95% CI]", "vs reconstructions", "NN sample->train (median)",
                   "NN val->train (median)", "ratio"):
        table.add_column(column, justify="left" if column == "prior" else "right")
    for name, result in samples.items():
        c2st = result["c2st"]
        ratio = result.get("nn_ratio")
        decoded = result.get("c2st_decoded") or {}
        shown = lambda c: "-" if not c else f"{c['accuracy']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"  # noqa: E731
        table.add_row(escape(name), str(result["samples"]), shown(c2st), shown(decoded), f"{result['nn_sample_to_train']['median']:.4f}",
                      f"{result['nn_val_to_train']['median']:.4f}", "-" if ratio is None else f"{ratio:.2f}")
    Console().print(table)
    for result in samples.values():
        Console().print(escape(f"{result['prior']}: {result['prior_description']}; grid {Path(result['grid'])}"))
