"""`vaelab train` and `vaelab prior`: the commands that fit models (a VAE; a prior over a trained run's latents)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import click

from vaelab.cli.options import CONFIG_OPTION, DEVICE_OPTION, RUN_DIR_ARGUMENT, SET_OPTION, echo_err


@click.command("train")
@CONFIG_OPTION
@SET_OPTION
@click.option("--resume", default=None, metavar="RUN_DIR|URL|auto",
              help="Continue a stopped run in its own folder; a URL under run.remote (s3://bucket/runs/NAME) "
                   "is downloaded into run.root first. 'auto': the newest unfinished run with the same config "
                   "under run.root or run.remote, else a new run (for preemptible jobs).")
@click.option("--devices", type=click.IntRange(min=1), default=None, metavar="N",
              help="Data-parallel training in N processes on this machine (one per GPU; CPU processes without "
                   "GPUs), started through torchrun's launcher. train.batch_size is the global batch, split "
                   "evenly over the N processes. Several machines: torchrun --nnodes=M --nproc-per-node=N "
                   "-m vaelab train ...")
def train(config_path: Optional[Path], overrides: tuple[str, ...], resume: Optional[str],
          devices: Optional[int]) -> None:
    """Train a VAE. Without -c: the embedded default, the built-in figure set at 64 px.

    Every run gets its own folder under run.root (printed at start and end) with the resolved
    config, a source snapshot, env.json, metrics.jsonl, TensorBoard events, reconstruction and
    sample grids, and checkpoints. Ctrl-C stops after writing a checkpoint; --resume continues.

    Exit status: 0 only when the run finished; interrupted 128 + signal (130 Ctrl-C, 143
    SIGTERM), 75 stopped for lack of disk or run.remote unreachable (try later), 1 diverged or
    failed, 2 bad config or input.
    """
    if devices is not None and devices > 1 and "WORLD_SIZE" not in os.environ:
        from vaelab.train.distributed import launch

        args = ["train"] + (["-c", str(config_path)] if config_path is not None else [])
        args += [item for override in overrides for item in ("--set", override)]
        args += ["--resume", resume] if resume is not None else []
        status = launch(devices, args)
        if status:
            sys.exit(status)
        return
    from vaelab.runs.session import exit_status, train_command

    status = exit_status(train_command(config_path, overrides, resume))
    if status:  # not finished: a scheduler must see it (see docs/preemptible.md)
        sys.exit(status)


@click.command("prior")
@RUN_DIR_ARGUMENT
@click.option("--set", "overrides", multiple=True, metavar="prior.KEY=VALUE",
              help="Override a prior key, e.g. --set prior.epochs=20 or --set prior.tags=true. Repeatable.")
@click.option("--fresh", is_flag=True, help="Fit a new prior; the old RUN_DIR/prior is kept as prior-replaced-<time>.")
@DEVICE_OPTION
@click.option("--progress/--no-progress", default=None, help="The progress bar [default: on a terminal].")
def prior_cmd(run_dir: Path, overrides: tuple[str, ...], fresh: bool, device: str, progress: Optional[bool]) -> None:
    """Fit a learned prior to a trained run, in RUN_DIR/prior: a gated PixelCNN over a vq run's
    codes (resumable: run it again to continue), or a Gaussian mixture over the training images'
    latent means for a vector or spatial run. 'vaelab sample' uses it from then on."""
    from vaelab.experiments.prior import fit_prior

    summary = fit_prior(run_dir, overrides, fresh, device, progress, log=echo_err)
    if summary["kind"] == "pixelcnn":
        click.echo(f"prior: gated PixelCNN, best epoch {summary['best_epoch']}/{summary['epochs']},"
                   f" val {number(summary['val_bits_per_code'])} bits/code (uniform"
                   f" {summary['uniform_bits_per_code']:.2f}); in {run_dir / 'prior'}")
    else:
        judged = "val" if summary["val_images"] else "train"
        click.echo(f"prior: Gaussian mixture of {summary['components']} ({summary['covariance']} covariance), {judged}"
                   f" {summary[judged + '_nats_per_float']:.4f} nats per latent float (N(0, I):"
                   f" {summary[judged + '_nats_per_float_standard_normal']:.4f}); in {run_dir / 'prior'}")


def number(value) -> str:
    return "-" if value is None else f"{value:.4f}"
