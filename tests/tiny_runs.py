"""Tiny training runs for the tests of every package: 16 px JPEGs with some structure, a config
of 3 epochs of 6 batches (any model family), and readers for what a run folder holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.runs.checkpoints import load_state

METRIC_KEYS = {"epoch", "step", "time_s", "train_loss", "train_recon", "train_kl", "val_loss", "val_recon",
               "val_kl", "val_mse", "val_psnr", "lr", "skipped_steps", "rss_mb"}
UNTIMED = lambda record: {k: v for k, v in record.items() if k not in ("time_s", "rss_mb")}  # noqa: E731


def make_images(folder: Path, count: int = 30) -> Path:
    """Small JPEGs with some structure (a bright box on a gradient), mixed shapes so padding happens."""
    rng = np.random.default_rng(0)
    for i in range(count):
        width, height = [(20, 16), (16, 20), (18, 18)][i % 3]
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(60, 200, 3)[None, None, :]
        pixels = np.broadcast_to(ramp, (height, width, 3)).copy()
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top: top + height // 3, left: left + width // 3] = rng.integers(0, 255, 3)
        path = folder / f"set-{i // 10}" / f"{['standing', 'sitting'][i % 2]}-{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    return folder


VECTOR_MODEL = "{conv: [{filters: 4, kernel: 3, stride: 2}, {filters: 8, kernel: 3, stride: 2}], dense: 16, latent: 4}"
# The other families at test size: two levels (16 px -> an 8x8 latent map), 8 channels per group.
FAMILY_MODELS = {
    "spatial": "{kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 2}",
    "vq": "{kind: vq, channels: [8, 16], norm_groups: 8, code_dim: 4, codebook_size: 16}",
    "fsq": "{kind: vq, quantizer: fsq, levels: [5, 4, 3], channels: [8, 16], norm_groups: 8}",
}


def write_config(folder: Path, images: Path, root: Path, **extra: str) -> Path:
    """A 3-epoch run of 6 batches per epoch, a checkpoint every 3 steps."""
    text = textwrap.dedent(f"""\
        data: {{images: {images}, size: [16, 16], val_fraction: 0.2, workers: {extra.pop('workers', 0)}}}
        model: {extra.pop('model', VECTOR_MODEL)}
        train: {{epochs: 3, batch_size: 4, lr: 0.003, seed: 1{extra.pop('train', '')}}}
        run: {{root: {root}, checkpoint_steps: 3, checkpoint_minutes: null, tensorboard: false, images: 4}}
        """)
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path, name: str = "last.pt") -> dict:
    return load_state(run_dir / "checkpoints" / name)["model"]


def only_run(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


# --------------------------------------------------------------------------------------------
# a run in-process: its folder
# --------------------------------------------------------------------------------------------


DRIVER = textwrap.dedent("""\
    import os, signal, sys
    from pathlib import Path
    import torch
    from vaelab.runs import checkpoints
    from vaelab.train import trainer as train
    torch.set_num_threads(int(os.environ["THREADS"]))  # the test process's: float sums depend on it
    from vaelab.config import load_config
    from vaelab.runs.session import train_run

    mode, at = os.environ.get("DIE", "none:0").split(":")
    at = int(at)
    if mode in ("kill", "sigint"):  # after the weights of step `at` changed, before the trainer counted it
        step = train.Trainer.train_step
        def dying_step(self, batch):
            result = step(self, batch)
            if self.step + 1 == at:
                os.kill(os.getpid(), signal.SIGKILL if mode == "kill" else signal.SIGINT)
            return result
        train.Trainer.train_step = dying_step
    if mode == "link":  # epoch `at` end: last.pt written, killed before last-epoch/best/numbered links
        save = checkpoints.CheckpointFolder.save_epoch_end
        def dying_save(self, state, epoch, numbered, best):
            if epoch == at:
                self.save_last(state)
                os.kill(os.getpid(), signal.SIGKILL)
            return save(self, state, epoch, numbered, best)
        checkpoints.CheckpointFolder.save_epoch_end = dying_save

    config_path, resume = sys.argv[1], sys.argv[2]
    if resume == "new":
        train_run(load_config(Path(config_path)))
    elif resume == "auto":
        train_run(load_config(Path(config_path)), resume="auto")
    else:
        train_run(None, resume=Path(resume))
    """)


def drive(tmp_path: Path, config: Path, resume: str, die: str = "none:0") -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, DIE=die, THREADS=str(torch.get_num_threads()))
    return subprocess.run([sys.executable, str(script), str(config), resume], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, in a subprocess like the interrupted ones."""
    tmp_path = tmp_path_factory.mktemp("reference")
    images = make_images(tmp_path / "images")
    config = write_config(tmp_path, images, tmp_path / "runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAELAB_CACHE_DIR", str(tmp_path / "cache"))
        done = drive(tmp_path, config, "new")
    assert done.returncode == 0, done.stderr
    return images, only_run(tmp_path / "runs")
