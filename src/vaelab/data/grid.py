"""Image grids and atomic PNG writes: the small helpers torchvision would give us."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vaelab.files import atomic_path


def image_grid(images: np.ndarray, columns: int, gap: int = 2, background: tuple[int, int, int] = (24, 24, 24)) -> np.ndarray:
    """Tile uint8 images (N, H, W, 3) row by row into one (rows*H + gaps, columns*W + gaps, 3) image."""
    count, height, width = images.shape[:3]
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    grid = np.empty((rows * height + (rows + 1) * gap, columns * width + (columns + 1) * gap, 3), np.uint8)
    grid[:] = background
    for i in range(count):
        top = gap + (i // columns) * (height + gap)
        left = gap + (i % columns) * (width + gap)
        grid[top : top + height, left : left + width] = images[i]
    return grid


def checkerboard(height: int, width: int, square: int = 4) -> np.ndarray:
    """A grey checkerboard (H, W, 3), the usual way to show 'no image here'."""
    rows = (np.arange(height) // square)[:, None]
    cols = (np.arange(width) // square)[None, :]
    light = ((rows + cols) % 2 == 0)[..., None]
    return np.where(light, np.uint8(200), np.uint8(120)).repeat(3, axis=2)


def save_png(image: np.ndarray, path: Path) -> Path:
    """Write a uint8 (H, W, 3) array as PNG via a temporary file and a rename."""
    with atomic_path(path) as temporary:
        Image.fromarray(np.ascontiguousarray(image)).save(temporary, format="PNG")
    return Path(path)
