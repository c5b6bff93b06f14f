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
# vaelab compare
# --------------------------------------------------------------------------------------------


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
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
    """
    from vaelab.experiments.compare import compare_command

    result = compare_command(list(run_dirs), list(thresholds), out, as_json, list(metrics), at_epoch, log_scale)
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))


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
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
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
