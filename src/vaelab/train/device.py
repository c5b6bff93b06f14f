"""Where a run trains and in which precision: train.device and train.amp, checked against this machine."""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from vaelab.errors import VaelabError


def select_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu. An explicit device that is not there is an error."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaelabError(f"train.device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise VaelabError(f"train.device: {name} is not available here; use auto or cpu")
    if device.type == "mps" and not has_mps:
        raise VaelabError("train.device: mps is not available here; use auto or cpu")
    return device


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for float32. Mixed precision is for CUDA only."""
    if device.type != "cuda":
        if setting in ("bf16", "fp16"):
            warnings.warn(f"train.amp: {setting} is for CUDA GPUs; training on {device.type} in float32")
        return None
    if setting == "off":
        return None
    if setting == "fp16":
        return torch.float16
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if setting == "bf16":
        raise VaelabError("train.amp: this GPU has no bf16; set train.amp: fp16 or off")
    return None  # auto on an old GPU: float32 rather than fp16's overflow handling
