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


@data.command("watermarks")
@CONFIG_OPTION
@SET_OPTION
@click.option("--out", type=click.Path(path_type=Path), default=Path("watermarks"), show_default=True,
              help="Folder for a PNG of each flagged source's estimated mark.")
@click.option("--per-source", type=int, default=64, show_default=True,
              help="Images sampled per source (spread over its set folders); time and memory grow with it, "
                   "not with the collection.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (groups, flagged, paste lines).")
def data_watermarks(config_path: Optional[Path], overrides: tuple[str, ...], out: Path, per_source: int,
                    as_json: bool) -> None:
    """Find the sources that stamp a fixed mark on every image, show each mark, and print the
    data.filter lines that exclude them. Sources are judged on the images data.filter keeps;
    images without a source are judged per set folder. Each group's images are cut into squares
    anchored at the frame's corners, edges and centre; a mark fixed to the frame shows as
    high-pass structure whose per-pixel median over the group stands far above its spread.
    Sources with fewer than 16 distinct images (copies of a photo count once) are reported as
    "too few to tell". Results are cached per source in data.cache_dir."""
    from vaelab.data import watermark_report, watermarks
    from vaelab.data.collection import describe_skips, load_collection

    if per_source < watermarks.MIN_IMAGES:
        raise VaelabError(f"--per-source {per_source}: a mark cannot be told from noise in fewer than "
                          f"{watermarks.MIN_IMAGES} images; pass --per-source {watermarks.MIN_IMAGES} or more")
    if out.exists() and not out.is_dir():
        raise VaelabError(f"--out {out}: is a file, not a folder; choose a folder for the mark PNGs")
    config = config_from(config_path, overrides)
    progress = sys.stderr.isatty() and not as_json
    collection = load_collection(config.data, progress=progress)
    result = watermarks.audit(collection, config.data.resolved_cache_dir(), watermarks.Method(per_group=per_source),
                              workers=config.data.worker_count(), progress=progress)
    try:
        marks = watermark_report.write_marks(result, out)
    except OSError as error:
        raise VaelabError(f"--out {out}: cannot write the mark PNGs ({error.strerror}); choose another folder") from None
    paste = watermark_report.exclusion_lines(result, config.data.filter)
    if as_json:
        click.echo(json.dumps({
            "groups": [group.as_json() for group in result.groups],
            "flagged": [group.name for group in result.flagged()],
            "paste": paste,
            "set": [line.replace(": ", "=", 1) for line in paste],
            "unexcludable_sets": watermark_report.untaggable(result),
            "marks": [str(path) for path in marks],
            "per_source": per_source,
            "thresholds": {"watermark": watermarks.WATERMARK_SCORE, "unclear": watermarks.UNCLEAR_SCORE,
                           "min_images": watermarks.MIN_IMAGES},
            "cached_groups": result.cached,
            "skipped": len(result.skipped) + len(collection.skipped),
        }))
        return
    print_watermarks(result, metadata_origin=collection.metadata.origin, paste=paste, per_source=per_source)
    summary = describe_skips(collection.skipped + result.skipped)
    if summary:
        echo_err(summary)


def print_watermarks(result, metadata_origin: str, paste: list[str], per_source: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from vaelab.data.watermark_report import untaggable
    from vaelab.data.watermarks import UNCLEAR_SCORE, WATERMARK_SCORE

    console = Console(highlight=False)
    table = Table(title=f"watermark audit of {metadata_origin}", title_justify="left",
                  caption=f"score >= {WATERMARK_SCORE:g}: watermark, >= {UNCLEAR_SCORE:g}: unclear; "
                          f"up to {per_source} images sampled per source, copies of a photo left out",
                  caption_justify="left")
    # no_wrap: names and verdicts stay whole in a narrow terminal (they are what the user reads and pastes)
    with_sets = any(group.kind == "set" for group in result.groups)
    table.add_column("source / set" if with_sets else "source", no_wrap=True)
    for column in ("images", "used", "copies", "score"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("where", no_wrap=True)
    for group in result.groups:
        score = "-" if group.score is None else f"{group.score:.1f}"
        style = {"watermark": "bold red", "unclear": "yellow"}.get(group.verdict, "")
        name = f"{group.name} (set)" if with_sets and group.kind == "set" else group.name
        table.add_row(name, str(group.images), str(group.sampled), str(group.duplicates), score,
                      f"[{style}]{group.verdict}[/]" if style else group.verdict, group.where or "")
    console.print(table)
    flagged = result.flagged()
    if not flagged:
        console.print("no source stamps a mark on its images; nothing to exclude")
        return
    for group in flagged:
        if group.png:
            console.print(f"mark of {group.name}: {group.png}")
    if paste:
        console.print("to exclude them, put in your config (the key under data: filter:):")
        for line in paste:
            console.print(f"  {line}", markup=False)
        console.print("or pass: " + " ".join(f"--set '{line.replace(': ', '=', 1)}'" for line in paste), markup=False)
    for folder in untaggable(result):
        console.print(f"  {folder}: its images carry no folder tag; move the folder out of data.images to drop it")
