"""The pixel scaling contract: uint8 image pixels <-> the floats the model sees, and back.

`data.scale` is the single setting, saved with every run, so outputs map back to images:
- unit:        x / 255, in [0, 1]. The only scaling BCE accepts.
- symmetric:   x / 127.5 - 1, in [-1, 1].
- standardize: per image, (x - mean) / std over its real pixels and channels (the seed's
  Keras samplewise_center + samplewise_std_normalization, minus the padding, which would
  otherwise pull the mean towards the pad colour). Mapping back needs that image's mean and
  std; for prior samples, which have none, the dataset-typical 0.5 / 0.25 (x 255) are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vaelab.data.loader import Batch

STANDARDIZE_FALLBACK = (127.5, 63.75)  # mean, std in pixel units, for images with no stats
_EPS = 1e-3


@dataclass
class ModelInput:
    x: torch.Tensor  # float (N, 3, H, W), scaled
    mask: torch.Tensor  # float (N, 1, H, W), 1 = real pixel, 0 = padding
    mean: Optional[torch.Tensor] = None  # (N, 1, 1, 1) pixel units, standardize only
    std: Optional[torch.Tensor] = None


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 1, H, W) float masks from (top, left, height, width) boxes, built on the boxes' device."""
    rows = torch.arange(height, device=boxes.device).view(1, height, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, width)
    top, left, box_h, box_w = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    return inside.unsqueeze(1).float()


def to_model_input(batch: Batch, scale: str, device: torch.device | str = "cpu", channels_last: bool = False) -> ModelInput:
    """Move a uint8 batch to `device` and only there turn it into scaled floats.

    The copy is non-blocking (the loader pins its buffers on CUDA), and a quarter the bytes of
    floats. The batch is already NHWC, so channels_last is the same bytes, only not permuted back.
    """
    pixels = batch.pixels.to(device, non_blocking=True)
    height, width = pixels.shape[1:3]
    mask = box_masks(batch.boxes.to(device, non_blocking=True), height, width)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = pixels.permute(0, 3, 1, 2).float().contiguous(memory_format=layout)
    return scale_pixels(x, mask, scale)


def scale_pixels(x: torch.Tensor, mask: torch.Tensor, scale: str) -> ModelInput:
    """Float pixels in 0..255 (N, 3, H, W) to the model's scale."""
    if scale == "unit":
        return ModelInput(x / 255.0, mask)
    if scale == "symmetric":
        return ModelInput(x / 127.5 - 1.0, mask)
    if scale == "standardize":
        real = mask.expand_as(x)
        count = real.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
        mean = (x * real).sum(dim=(1, 2, 3), keepdim=True) / count
        var = (((x - mean) * real) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count
        std = var.sqrt().clamp_min(_EPS)
        return ModelInput((x - mean) / std, mask, mean, std)
    raise ValueError(f"unknown scale {scale!r}")


def to_pixels(
    y: torch.Tensor, scale: str, mean: Optional[torch.Tensor] = None, std: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Model-scale floats (N, 3, H, W) back to uint8 image pixels (N, H, W, 3) on the CPU."""
    y = y.detach().float()
    if scale == "unit":
        x = y * 255.0
    elif scale == "symmetric":
        x = (y + 1.0) * 127.5
    elif scale == "standardize":
        if mean is None or std is None:
            mean, std = (torch.tensor(v, device=y.device) for v in STANDARDIZE_FALLBACK)
        x = y * std + mean
    else:
        raise ValueError(f"unknown scale {scale!r}")
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()
