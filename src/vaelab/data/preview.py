"""`vaelab data preview`: a grid of fitted training images, with padding shown as a checkerboard,
so that a person sees exactly what the model will see and where the losses will not look."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.collection import Collection
from vaelab.data.grid import checkerboard, image_grid, save_png
from vaelab.data.loader import FittedImages, collate


def preview(collection: Collection, data: DataConfig, out: Path, count: int = 32, seed: int = 0) -> tuple[Path, int]:
    """Write the preview grid; returns (path, number of images shown)."""
    images = FittedImages(collection, data, use_cache=False)
    train_positions = images.positions_of(collection.train)
    chosen = np.random.default_rng(seed).permutation(train_positions)[:count]
    batch, _failed = collate([images[int(p)] for p in chosen])
    height, width = data.size
    board = checkerboard(height, width)
    shown = batch.pixels.numpy().copy()
    for image, (top, left, box_h, box_w) in zip(shown, batch.boxes.tolist()):
        real = np.zeros((height, width), bool)
        real[top : top + box_h, left : left + box_w] = True
        image[~real] = board[~real]
    columns = int(np.ceil(np.sqrt(len(shown) * width / height)))
    save_png(image_grid(shown, columns), out)
    return Path(out), len(shown)
