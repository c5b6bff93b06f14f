"""`vaelab data ...`: build, index, inspect and preview image collections."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import click

from vaelab.cli.options import CONFIG_OPTION, SET_OPTION, config_from, echo_err
from vaelab.errors import VaelabError


@click.group()
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
        echo_err(f"skipped {len(result.skipped)} file(s), listed in {report}:")
        for reason, n in reasons.most_common(8):
            echo_err(f"  {n} x {reason}")


@data.command("stats")
@CONFIG_OPTION
@SET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (with total and selected).")
def data_stats(config_path: Optional[Path], overrides: tuple[str, ...], as_json: bool) -> None:
    """Counts per tag, orientation and source, before and after data.filter. The tables show the 20
    sources and 30 tags that keep the most images and sum the rest in one row; --json has them all."""
    import numpy as np

    from vaelab.data.collection import load_collection
    from vaelab.data.select import counts

    config = config_from(config_path, overrides)
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
    print_stats(result, metadata.origin)


STATS_ROWS = {"orientation": None, "sources": 20, "tags": 30}  # rows per table; the rest are summed in one row


def print_stats(result: dict, origin: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from vaelab.data.select import top_counts

    console = Console()
    console.print(
        f"[bold]{origin}[/]: {result['total']} images, {result['selected']} selected "
        f"({result['train']} train, {result['val']} val), {result['skipped']} skipped rows/files"
    )
    for group, limit in STATS_ROWS.items():
        table = Table(title=group, title_justify="left")
        table.add_column(group[:-1] if group.endswith("s") else group)
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        for name, before, after in top_counts(result["before"][group], result["after"][group], limit, group):
            table.add_row(escape(name), str(before), str(after))  # names are user data: "[x]" is no markup
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

    config = config_from(config_path, overrides)
    collection = load_collection(config.data, progress=sys.stderr.isatty())
    path, shown = preview(collection, config.data, out, count=count)
    click.echo(f"wrote {path}: {shown} images at {config.data.size[0]}x{config.data.size[1]}, fit={config.data.fit}")
    summary = describe_skips(collection.skipped)
    if summary:
        echo_err(summary)
