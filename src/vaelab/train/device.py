"""Where a run trains and in which precision: train.device and train.amp, checked against this machine."""

from __future__ import annotations

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
    """The autocast dtype, or None for float32. Mixed precision is for CUDA only.

    An explicit bf16 or fp16 that this machine cannot run is an error, as an explicit train.device
    that is not there is: training in float32 instead would be a different run (other speed,
    memory and numbers) recorded under a config that says otherwise. `auto` is the setting that
    adapts: bf16 where the GPU has it, else float32."""
    if device.type != "cuda":
        if setting in ("bf16", "fp16"):
            raise VaelabError(f"train.amp: {setting} is mixed precision for CUDA GPUs and this run trains on "
                              f"{device.type}; set train.amp: auto (float32 here) or off")
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


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """What the log and env.json say ran: bfloat16, float16 or float32."""
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"
