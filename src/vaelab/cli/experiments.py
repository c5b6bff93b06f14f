"""The commands on run folders: compare, sweep and report read runs; evaluate and export read a
trained model. Each parses its options and calls its `vaelab.experiments` module, imported inside
the command so that `vaelab --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from vaelab.cli.options import (
    CHECKPOINT_OPTION,
    DATA_CONFIG_OPTION,
    DATA_SET_OPTION,
    DEVICE_OPTION,
    PRIOR_OPTION,
    RUN_DIR_ARGUMENT,
    expand_run_dirs,
)
from vaelab.errors import VaelabError


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, callback=expand_run_dirs)
@click.option("--threshold", "thresholds", multiple=True, metavar="KEY=VALUE",
              help="First epoch and wall time at which KEY crosses VALUE, e.g. val_recon=1e5 (losses: <=, "
                   "psnr/ssim: >=; write KEY<=VALUE or KEY>=VALUE to choose). Repeatable.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for PNG plots of the metrics by epoch and by wall time [default: no plots].")
@click.option("--metric", "metrics", multiple=True, metavar="KEY",
              help="Metric to plot and test between groups. Repeatable [default: val_loss, val_recon, val_psnr].")
@click.option("--at-epoch", type=int, default=None,
              help="Epoch at which groups are compared [default: the last epoch every run reached].")
@click.option("--log", "log_scale", is_flag=True, help="Log scale for the plots' y axis.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: runs, thresholds, groups, tests.")
def compare(run_dirs: tuple[Path, ...], thresholds: tuple[str, ...], out: Optional[Path], metrics: tuple[str, ...],
            at_epoch: Optional[int], log_scale: bool, as_json: bool) -> None:
    """Compare run folders: losses, PSNR, wall time; who crosses a threshold first; seeds.

    Each run is labelled by how its config differs from the others' (e.g. train.lr=1e-4).
    Runs that differ only by train.seed form a group, shown as mean and 95% CI, and each
    group is tested against the baseline group (Welch's t-test) at --at-epoch.

    A run folder may be a URL on object storage (s3://bucket/runs/NAME, as run.remote writes
    them; credentials and AWS_ENDPOINT_URL from the environment), fetched into the cache; the
    URL of a folder of runs (s3://bucket/runs) stands for every run in it.
    """
    from vaelab.experiments.compare import compare_command

    result = compare_command(list(run_dirs), list(thresholds), out, as_json, list(metrics), at_epoch, log_scale)
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))


@click.command("sweep")
@click.argument("plan_path", metavar="PLAN.yaml", type=click.Path(path_type=Path))
@click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pairs trained at once on this machine, each in its own process with cores/N torch threads. "
                   "On a CPU, --workers equal to the number of cores is usually fastest. Without --storage.")
@click.option("--journal-only", is_flag=True,
              help="Rebuild journal.md and journal.html from the existing runs (and the storage's search); "
                   "train nothing.")
@click.option("--storage", metavar="URL", default=None,
              help="Keep the job queue and results in this database (Optuna's RDB storage): "
                   "sqlite:///PATH/optuna.db for workers on one machine, postgresql://USER:PASSWORD@HOST:5432/DB "
                   "(pip install 'vaelab[postgres]') for several. [default with --worker or --search: "
                   "sqlite:///<sweep folder>/optuna.db]")
@click.option("--worker", is_flag=True,
              help="Only take jobs from the storage until none is left, then exit without the journal. Start any "
                   "number, on any machines that share the plan's sweep folder (root:) for the run folders.")
@click.option("--search", type=click.IntRange(min=1), default=None, metavar="N",
              help="A TPE hyperparameter search of N trials over the ranges in the plan's search: section, one "
                   "dotted key per line: train.lr: loguniform(1e-5, 1e-3), model.latent: int(16, 128), "
                   "model.activation: choice(lrelu, elu); also uniform(a, b) and logint(a, b). Seeded with the "
                   "plan's first seed, which every trial trains with.")
@click.option("--grace", type=click.IntRange(min=2), default=120, show_default=True, metavar="SECONDS",
              help="With --storage: a job whose worker sent no heartbeat for this long (beats every SECONDS/4) is "
                   "presumed lost and retried, resuming its run folder.")
def sweep(plan_path: Path, workers: int, journal_only: bool, storage: Optional[str], worker: bool,
          search: Optional[int], grace: int) -> None:
    """Run a sweep plan: a baseline config and one-change variants, each over several seeds.

    Every (variant, seed) pair is an ordinary run folder, named <variant>-s<seed>, in the plan's
    root (default runs/sweeps/<plan stem>). A restart skips finished pairs and resumes unfinished
    ones in their own folders, so a killed sweep continues where it stopped. Then journal.md and
    journal.html there measure each variant against the baseline at the final epoch: mean val
    loss and PSNR, their change with a 95% CI, p (Welch's t-test) and a verdict. The plan's
    baseline path is relative to the plan file's folder, else to the current directory.

    \b
    Across machines (--storage URL): the pairs are jobs in the database; this process and any
    `vaelab sweep PLAN.yaml --storage URL --worker` take jobs until none is left. A job whose
    worker dies is retried after --grace seconds and resumes its run folder; finished jobs are
    never rerun. Workers must see the same sweep folder (root:, e.g. on NFS): the run folders
    there decide what is finished. --search N runs a TPE search in the same storage instead,
    and the journal lists its best trials.
    """
    if storage is None and not worker and search is None:
        from vaelab.experiments.sweep.local import sweep_command

        sweep_command(plan_path, workers, journal_only)
        return
    if workers > 1:
        raise VaelabError(f"--workers {workers}: with --storage, start one `vaelab sweep {plan_path} --storage URL "
                          "--worker` per job to run at once instead")
    from vaelab.experiments.sweep.storage import storage_command

    storage_command(plan_path, storage, worker=worker, search=search, grace=grace, journal_only=journal_only)


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, callback=expand_run_dirs)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="HTML file to write [default: RUN_DIR/report.html for one run, ./report.html for several].")
def report(run_dirs: tuple[Path, ...], out: Optional[Path]) -> None:
    """One self-contained HTML page on a run or a comparison of runs, to open in a browser.

    It shows the config and each run's differences from the baseline, a metrics table, loss
    curves, reconstructions from the first to the last epoch, samples, and the latent
    diagnostics of `vaelab evaluate`. Plots and images are inline, so the file can be mailed
    or archived on its own. A run folder may be a URL on object storage, as for compare.
    """
    from vaelab.experiments.report import report_command

    click.echo(f"wrote {report_command(list(run_dirs), out)}")


@click.command("evaluate")
@RUN_DIR_ARGUMENT
@DATA_CONFIG_OPTION
@DATA_SET_OPTION
@click.option("--split", type=click.Choice(["val", "train", "all"]), default="val", show_default=True,
              help="Which images of the data to evaluate.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
@click.option("--samples", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Also draw N samples from the run's prior and judge them: a classifier two-sample test against"
                   " the validation images and nearest-neighbour distances to the training images.")
@PRIOR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def evaluate_cmd(run_dir: Path, config_path: Optional[Path], overrides: tuple[str, ...], split: str,
                 checkpoint: str, device: str, samples: int, prior: str, as_json: bool) -> None:
    """Recon, KL and ELBO; MSE, PSNR and SSIM on real pixels; bits/dim where the likelihood is
    calibrated; active units and KL per latent dimension (per channel for a spatial latent; for
    a vq run no KL but codebook usage, perplexity and commitment). On the validation split, or on other
    data with -c/--set. Written to RUN_DIR/evaluation.json (other data or split:
    RUN_DIR/evaluation-<hash>.json). With --samples N, also how the prior's samples compare with
    real images (kept per prior, grid in RUN_DIR/samples-<prior>.png)."""
    from vaelab.experiments.evaluate import evaluate_command

    result = evaluate_command(run_dir, config_path, overrides, checkpoint, split, device, as_json, samples, prior)
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))


@click.command("export")
@RUN_DIR_ARGUMENT
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["diffusers"]), default="diffusers", show_default=True,
              help="diffusers: an AutoencoderKL folder (config.json + safetensors) for spatial runs.")
@CHECKPOINT_OPTION
def export_cmd(run_dir: Path, out_dir: Path, fmt: str, checkpoint: str) -> None:
    """Write a spatial run's model as a diffusers AutoencoderKL folder, loadable with
    AutoencoderKL.from_pretrained(OUT_DIR); vaelab.json beside it records the pixel scaling."""
    from vaelab.experiments.export import export_run

    click.echo(f"wrote {export_run(run_dir, out_dir, fmt, checkpoint)} ({fmt} format)")

