"""Using a trained run from Python:

    from vaelab import load_run
    vae = load_run("runs/2026-11-26_21h33m47s")   # model, config and data settings
    z = vae.encode(pixels); images = vae.decode(z)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from vaelab.config import Config
from vaelab.data.scaling import box_masks, scale_pixels, to_pixels
from vaelab.errors import VaelabError
from vaelab.model import AnyModel, build_model
from vaelab.remote.fetch import fetch_checkpoints
from vaelab.runs.checkpoints import LAST, load_state
from vaelab.runs.folder import RunFolder, resume_config
from vaelab.train.device import select_device
from vaelab.train.trainer import inference_weights


@dataclass
class LoadedRun:
    """A trained model (eval mode) with the config it was trained with.

    `data` holds the settings inputs must follow: size, fit, scale.
    """

    run_dir: Path
    config: Config
    model: AnyModel
    checkpoint: Path
    epoch: int
    device: torch.device
    note: Optional[str] = None  # why `checkpoint` is not the one asked for (a run without best.pt)

    @property
    def data(self):
        return self.config.data

    @torch.no_grad()
    def encode(self, pixels: Union[np.ndarray, torch.Tensor], boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 images (N, H, W, 3), already fitted to data.size -> posterior modes (N, *latent_shape):
        the mean of a Gaussian latent, the quantized map of a vq one.
        `boxes` (N, 4: top, left, height, width of the real pixels) keeps padding out of
        `standardize` statistics, as in training; without them every pixel counts as real."""
        x = torch.as_tensor(pixels).to(self.device).permute(0, 3, 1, 2).float()
        height, width = x.shape[2:]
        mask = torch.ones_like(x[:, :1]) if boxes is None else box_masks(torch.as_tensor(boxes).to(self.device), height, width)
        inputs = scale_pixels(x, mask, self.config.data.scale)
        return self.model.encode(inputs.x).mode()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, *latent_shape) -> uint8 images (N, H, W, 3)."""
        return to_pixels(self.model.decode(z.to(self.device)), self.config.data.scale)


def load_run(run_dir: Union[str, Path], checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    """`vae = load_run("runs/...")`: the best weights (or `checkpoint="last"`), ready to use.

    A run with no best.pt yet (no epoch has ended with a finite loss) gives last.pt instead, and
    says so: a warning, and `note` on the result, which `vaelab evaluate` records."""
    run_dir = Path(run_dir)
    config = resume_config(run_dir, None)
    folder = RunFolder(run_dir).checkpoints
    names = [f"{checkpoint}.pt", LAST] if checkpoint in ("best", "last") else [checkpoint]
    fetch_checkpoints(run_dir, names)  # a run fetched from object storage (vaelab.remote.fetch) has none yet
    path = next((folder / n for n in names if (folder / n).is_file()), None)
    if path is None:
        raise VaelabError(f"{run_dir}: no checkpoint ({' or '.join(names)}) in {folder}; train the run first")
    state = load_state(path)
    target = select_device(device)
    model = build_model(config.model, config.data.size)
    model.load_state_dict(inference_weights(state))
    model.to(target).eval()
    epoch = state["progress"]["epoch"]
    note = None
    if path.name != names[0]:
        note = (f"{run_dir}: no {names[0]} (no epoch has ended with a finite loss yet), so {path.name} is used, "
                f"after {epoch} completed epoch(s)")
        warnings.warn(note, stacklevel=2)
    return LoadedRun(run_dir, config, model, path, epoch, target, note)
