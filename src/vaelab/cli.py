"""The `vaelab` command. Each command parses its options, calls the library, and prints.

Bad input reaches the user as one line, `error: <file or key>: <what is wrong>; <what to do>`,
with exit status 2; never as a traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional

import click

from vaelab.config import Config, load_config
from vaelab.errors import VaelabError

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="YAML config; without it, the embedded default (the built-in figure set at 64 px).",
)
SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config key, e.g. --set data.fit=stretch (value parsed as YAML). Repeatable.",
)


class RunDirType(click.ParamType):
    """A run folder, or its URL on object storage (s3://bucket/runs/NAME): fetched into the cache."""

    name = "run_dir"

    def convert(self, value, param, ctx) -> Path:
        from vaelab.remote.fetch import fetch_run, is_url

        if not is_url(value):
            return Path(value)
        return fetch_run(str(value), Config().data.resolved_cache_dir() / "remote-runs")


RUN_DIR = RunDirType()


def _run_dirs(ctx, param, values: tuple[str, ...]) -> tuple[Path, ...]:
    """Run folders; a URL of a folder of runs (s3://bucket/runs) stands for each run in it."""
    from vaelab.remote.fetch import is_url, run_urls

    return tuple(RUN_DIR.convert(url, param, ctx) for value in values
                 for url in (run_urls(value) if is_url(value) else [value]))


def _config(config_path: Optional[Path], overrides: tuple[str, ...]) -> Config:
    return load_config(config_path, overrides)


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vaelab")
def cli() -> None:
    """vaelab: from a folder of figure photos to trained, compared and sampled VAEs."""


# --------------------------------------------------------------------------------------------
# vaelab data ...
# --------------------------------------------------------------------------------------------


@cli.group()
def data() -> None:
    """Build, index, inspect and preview image collections."""


@data.command("demo")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--count", "-n", type=int, default=2000, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed and count, same files.")
def data_demo(out_dir: Path, count: int, seed: int) -> None:
    """Render the built-in figure set (JPEGs in source/set folders plus metadata.json) into OUT_DIR."""
    from vaelab.data.demo import render_demo_set

    summary = render_demo_set(out_dir, count=count, seed=seed)
    click.echo(
        f"wrote {summary['images']} images in {summary['sets']} sets from {summary['sources']} sources "
        f"to {out_dir} ({summary['seconds']:.1f} s); metadata: {out_dir / 'metadata.json'}"
    )


@data.command("index")
@click.argument("images_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Metadata file to write, .json or .jsonl [default: IMAGES_DIR/metadata.json].")
@click.option("--workers", type=int, default=None, help="Processes that verify images [default: all cores].")
@click.option("--force", is_flag=True, help="Overwrite an existing metadata file.")
def data_index(images_dir: Path, out: Optional[Path], workers: Optional[int], force: bool) -> None:
    """Walk IMAGES_DIR into a metadata file: tags from file and set-folder names, sizes from
    headers. Every image is decoded once; unreadable files are skipped and listed in a report
    file beside the metadata (NAME.report.json)."""
    from vaelab.data.index import index_folder, write_records, write_report

    out = out or images_dir / "metadata.json"
    if out.exists() and not force:
        raise VaelabError(f"{out}: already exists; pass --force to overwrite it or choose another --out")
    result = index_folder(images_dir, workers=workers, progress=sys.stderr.isatty())
    try:
        write_records(result.records, out)
        report = out.with_name(out.name.rsplit(".", 1)[0] + ".report.json")
        write_report(result.skipped, report)
    except OSError as error:
        raise VaelabError(f"{out}: cannot write metadata ({error.strerror}); choose another --out") from None
    tags = {tag for record in result.records for tag in record["tags"]}
    sources = {record["source"] for record in result.records if record["source"]}
    click.echo(f"indexed {len(result.records)} images ({len(tags)} tags, {len(sources)} sources) -> {out}")
    if result.skipped:
        reasons = Counter(s.reason.split(";")[0] for s in result.skipped)
        _echo_err(f"skipped {len(result.skipped)} file(s), listed in {report}:")
        for reason, n in reasons.most_common(8):
            _echo_err(f"  {n} x {reason}")


@data.command("stats")
@CONFIG_OPTION
@SET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (with total and selected).")
def data_stats(config_path: Optional[Path], overrides: tuple[str, ...], as_json: bool) -> None:
    """Counts per tag, orientation and source, before and after data.filter."""
    import numpy as np

    from vaelab.data.collection import load_collection
    from vaelab.data.select import counts

    config = _config(config_path, overrides)
    collection = load_collection(config.data, progress=sys.stderr.isatty())
    metadata = collection.metadata
    everything = np.arange(len(metadata))
    result = {
        "total": len(metadata),
        "selected": int(len(collection.selected)),
        "train": int(len(collection.train)),
        "val": int(len(collection.val)),
        "skipped": len(collection.skipped),
        "before": counts(metadata, everything),
        "after": counts(metadata, collection.selected),
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    _print_stats(result, metadata.origin)


def _print_stats(result: dict, origin: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{origin}[/]: {result['total']} images, {result['selected']} selected "
        f"({result['train']} train, {result['val']} val), {result['skipped']} skipped rows/files"
    )
    for group, limit in (("orientation", None), ("sources", 20), ("tags", 30)):
        table = Table(title=group, title_justify="left")
        table.add_column(group[:-1] if group.endswith("s") else group)
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        before, after = result["before"][group], result["after"][group]
        for name in list(before)[:limit]:
            table.add_row(name, str(before[name]), str(after.get(name, 0)))
        if limit and len(before) > limit:
            table.add_row(f"... {len(before) - limit} more", "", "")
        console.print(table)


@data.command("preview")
@CONFIG_OPTION
@SET_OPTION
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@click.option("--count", "-n", type=int, default=32, show_default=True, help="Images in the grid.")
def data_preview(config_path: Optional[Path], overrides: tuple[str, ...], out: Path, count: int) -> None:
    """A grid of fitted training images, padding shown as a checkerboard."""
    from vaelab.data.collection import describe_skips, load_collection
    from vaelab.data.preview import preview

    config = _config(config_path, overrides)
    collection = load_collection(config.data, progress=sys.stderr.isatty())
    path, shown = preview(collection, config.data, out, count=count)
    click.echo(f"wrote {path}: {shown} images at {config.data.size[0]}x{config.data.size[1]}, fit={config.data.fit}")
    summary = describe_skips(collection.skipped)
    if summary:
        _echo_err(summary)


# --------------------------------------------------------------------------------------------
# vaelab train
# --------------------------------------------------------------------------------------------


@cli.command("train")
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
    import os

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


# --------------------------------------------------------------------------------------------
# vaelab compare
# --------------------------------------------------------------------------------------------


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, callback=_run_dirs)
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


# --------------------------------------------------------------------------------------------
# vaelab sweep
# --------------------------------------------------------------------------------------------


@cli.command("sweep")
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


# --------------------------------------------------------------------------------------------
# vaelab report
# --------------------------------------------------------------------------------------------


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, callback=_run_dirs)
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


# --------------------------------------------------------------------------------------------
# vaelab evaluate, and using a trained model
# --------------------------------------------------------------------------------------------

RUN_DIR_ARGUMENT = click.argument("run_dir", type=RUN_DIR)
CHECKPOINT_OPTION = click.option(
    "--checkpoint", default="best", show_default=True,
    help="Weights to use: best, last, or a file name in RUN_DIR/checkpoints (e.g. epoch-0016.pt).",
)
DEVICE_OPTION = click.option(
    "--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
)
DATA_CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="Use this config's data (images, metadata, filter, split) instead of the run's; images are "
         "still fitted and scaled as the run was trained.",
)
DATA_SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a data key of the run's config (or of -c), e.g. --set data.filter.include=[sitting]. Repeatable.",
)


PRIOR_OPTION = click.option(
    "--prior", type=click.Choice(["auto", "learned", "normal"]), default="auto", show_default=True,
    help="auto: the run's learned prior (vaelab prior) where there is one, else N(0, I); learned: require it; normal: N(0, I).",
)


@cli.command("evaluate")
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


@cli.command("reconstruct")
@RUN_DIR_ARGUMENT
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for one <image name>.png per image.")
@click.option("--full-size", is_flag=True, help="Show both halves at the original image's size, not the model's.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def reconstruct_cmd(run_dir: Path, images: tuple[Path, ...], out_dir: Path, full_size: bool, checkpoint: str,
                    device: str) -> None:
    """Each image as the model sees it (fitted like the training images) beside its reconstruction
    from the posterior mean, both cropped to the real content: a padded image keeps its aspect ratio."""
    from vaelab.experiments.use import reconstruct

    written = reconstruct(run_dir, images, out_dir, checkpoint, device, full_size)
    click.echo(f"wrote {len(written)} reconstruction(s) to {out_dir}")


@cli.command("sample")
@RUN_DIR_ARGUMENT
@click.option("-n", "--count", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same samples.")
@click.option("--columns", type=int, default=None, help="Grid columns [default: about the square root of N].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@PRIOR_OPTION
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Below 1: likelier latents, less variety (scales the logits of a PixelCNN, the spread otherwise).")
@click.option("--top-k", type=int, default=None, help="PixelCNN prior: draw each code from the k likeliest only.")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="A tag-conditioned PixelCNN prior: draw images with this tag. Repeatable.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def sample_cmd(run_dir: Path, count: int, seed: int, columns: Optional[int], out: Path, prior: str,
               temperature: float, top_k: Optional[int], tags: tuple[str, ...], checkpoint: str, device: str) -> None:
    """A grid of images decoded from draws of the run's prior: the one 'vaelab prior' fitted (a
    PixelCNN over a vq run's codes, a Gaussian mixture over a vector or spatial run's latents),
    else N(0, I). Says which prior it used."""
    from vaelab.experiments.use import sample

    path, description = sample(run_dir, out, count, seed, columns, checkpoint, device, prior, temperature, top_k, tags)
    click.echo(f"wrote {path}: {count} samples; prior: {description}")


@cli.command("prior")
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

    summary = fit_prior(run_dir, overrides, fresh, device, progress, log=_echo_err)
    if summary["kind"] == "pixelcnn":
        click.echo(f"prior: gated PixelCNN, best epoch {summary['best_epoch']}/{summary['epochs']},"
                   f" val {_number(summary['val_bits_per_code'])} bits/code (uniform"
                   f" {summary['uniform_bits_per_code']:.2f}); in {run_dir / 'prior'}")
    else:
        judged = "val" if summary["val_images"] else "train"
        click.echo(f"prior: Gaussian mixture of {summary['components']} ({summary['covariance']} covariance), {judged}"
                   f" {summary[judged + '_nats_per_float']:.4f} nats per latent float (N(0, I):"
                   f" {summary[judged + '_nats_per_float_standard_normal']:.4f}); in {run_dir / 'prior'}")


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@cli.command("interpolate")
@RUN_DIR_ARGUMENT
@click.argument("image_a", type=click.Path(path_type=Path))
@click.argument("image_b", type=click.Path(path_type=Path))
@click.option("--steps", type=int, default=8, show_default=True, help="Decoded images between and including the ends.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def interpolate_cmd(run_dir: Path, image_a: Path, image_b: Path, steps: int, out: Path, checkpoint: str,
                    device: str) -> None:
    """A strip: IMAGE_A, then decodings along the straight line between the two posterior means (a vq
    run's two quantized maps, decoded without quantizing again), then IMAGE_B."""
    from vaelab.experiments.use import interpolate

    click.echo(f"wrote {interpolate(run_dir, image_a, image_b, out, steps, checkpoint, device)}")


@cli.command("traverse")
@RUN_DIR_ARGUMENT
@click.option("--dims", type=int, default=8, show_default=True,
              help="Rows: the latent dimensions (channels of a spatial latent) with the most KL (from "
                   "evaluation.json when there is one).")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="Vary around this image's posterior mean [default: around 0].")
@click.option("--range", "span", type=float, default=3.0, show_default=True, help="Each row goes from -R to +R.")
@click.option("--steps", type=int, default=7, show_default=True, help="Columns.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def traverse_cmd(run_dir: Path, dims: int, image: Optional[Path], span: float, steps: int, out: Path,
                 checkpoint: str, device: str) -> None:
    """A grid with one row per latent dimension, varied alone while the others stay fixed; a spatial
    latent by channel (the channel's whole map shifted). Not for a vq run: its codes have no axis."""
    from vaelab.experiments.use import traverse

    result = traverse(run_dir, out, dims, image, span, steps, checkpoint, device)
    click.echo(f"wrote {result['file']}: {result.get('unit', 'dimension')}s {', '.join(map(str, result['dims']))} "
               f"(ranked by {result['ranked_by']})")


@cli.command("encode")
@RUN_DIR_ARGUMENT
@DATA_CONFIG_OPTION
@DATA_SET_OPTION
@click.option("--split", type=click.Choice(["all", "val", "train"]), default="all", show_default=True,
              help="Which images of the data to encode.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Latents file to write (.npz: mu, logvar, codes, ids, boxes, sizes; loads without pickle).")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def encode_cmd(run_dir: Path, config_path: Optional[Path], overrides: tuple[str, ...], split: str, out: Path,
               checkpoint: str, device: str) -> None:
    """Encode the run's images (or another config's) into a latents file with their ids."""
    from vaelab.experiments.latents import encode

    result = encode(run_dir, out, config_path, overrides, split, checkpoint, device)
    shape = "x".join(map(str, result["latent_shape"]))
    click.echo(f"wrote {result['file']}: {result['images']} images x latent {shape} ({result['family']})")
    if result["skipped"]:
        _echo_err(f"skipped {result['skipped']} unreadable image(s)")


@cli.command("decode")
@RUN_DIR_ARGUMENT
@click.argument("latents", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder for one PNG per id.")
@click.option("--model-size", is_flag=True, help="Keep the model's resolution (cropped to the content box).")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def decode_cmd(run_dir: Path, latents: Path, out_dir: Path, model_size: bool, checkpoint: str, device: str) -> None:
    """Decode a latents file (from 'vaelab encode') into images, cropped back to each image's
    aspect ratio and resized to its original size."""
    from vaelab.experiments.latents import decode

    written = decode(run_dir, latents, out_dir, checkpoint, device, full_size=not model_size)
    click.echo(f"wrote {len(written)} image(s) to {out_dir}")


@cli.command("export")
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


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main(argv: Optional[list[str]] = None) -> None:
    warnings.showwarning = _one_line_warnings
    try:
        status = cli.main(args=argv, prog_name="vaelab", standalone_mode=False)
    except VaelabError as error:
        import os

        if os.environ.get("RANK", "0") == "0":  # data-parallel: rank 0 alone reports what every rank found
            click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_status)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if isinstance(status, int) and status:
        sys.exit(status)
