"""From `config.data` to the chosen images: built-in set or folder or metadata file, filtered, split."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.images import ImageError, read_size
from vaelab.data.index import index_folder, write_records
from vaelab.data.metadata import Metadata, Skip, from_records
from vaelab.data.readers import load_metadata
from vaelab.data.select import select, split
from vaelab.errors import VaelabError

DEMO_VERSION = 1


@dataclass
class Collection:
    metadata: Metadata
    selected: np.ndarray  # indices into metadata, after filtering
    train: np.ndarray
    val: np.ndarray
    file_stats: np.ndarray  # int64 (len(selected), 2): size and mtime_ns of each selected file

    @property
    def skipped(self) -> list[Skip]:
        return self.metadata.skipped


def builtin_images_dir(data: DataConfig) -> Path:
    return data.resolved_cache_dir() / f"figures-v{DEMO_VERSION}-{data.demo_count}"


def ensure_builtin(data: DataConfig) -> tuple[Path, Path]:
    """The built-in figure set, rendered on first use. Returns (images folder, metadata file)."""
    from vaelab.data.demo import render_demo_set

    folder = builtin_images_dir(data)
    render_demo_set(folder, count=data.demo_count, seed=0)
    return folder, folder / "metadata.json"


def load_collection(data: DataConfig, progress: bool = False) -> Collection:
    images, metadata_file = data.images, data.metadata
    if images is None:
        images, metadata_file = ensure_builtin(data)
    if not Path(images).is_dir():
        raise VaelabError(f"{images}: image folder not found; set data.images to the folder of your photos")
    if metadata_file is not None:
        metadata = load_metadata(Path(metadata_file), Path(images), data.fields, data.resolved_cache_dir())
    else:
        metadata = index_with_cache(Path(images), data.resolved_cache_dir(), progress=progress)
    if data.filter.orientation != "any":
        fill_unknown_sizes(metadata)
    selected = select(metadata, data.filter)
    selected, file_stats = drop_missing(metadata, selected)
    if len(selected) == 0:
        raise VaelabError(
            f"data.filter keeps none of the {len(metadata)} images in {metadata.origin}; "
            "loosen the filter (see 'vaelab data stats')"
        )
    train, val = split(metadata, selected, data.val_fraction)
    if len(train) == 0:
        raise VaelabError(f"data.val_fraction {data.val_fraction} leaves no training images; lower it")
    return Collection(metadata=metadata, selected=selected, train=train, val=val, file_stats=file_stats)


def index_with_cache(images: Path, cache_dir: Path, progress: bool = False) -> Metadata:
    """Index a folder that has no metadata file, re-verifying only new or changed files."""
    key = hashlib.sha256(str(images.resolve()).encode()).hexdigest()[:16]
    cache_file = cache_dir / f"index-{key}.jsonl"
    previous = {}
    if cache_file.is_file():
        try:
            for line in cache_file.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                previous[record["file"]] = record
        except (OSError, ValueError, KeyError):
            previous = {}
    result = index_folder(images, reuse=previous, progress=progress)
    if not result.records:
        raise VaelabError(f"{images}: no readable images found; check data.images")
    try:
        write_records(result.records, cache_file)
    except OSError:
        pass  # only costs a re-index next time
    metadata = from_records(result.records, images, origin=str(images))
    metadata.skipped.extend(result.skipped)
    return metadata


def drop_missing(metadata: Metadata, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave out (and report) listed files that are not there; return the rest with their stats."""
    stats = np.zeros((len(selected), 2), dtype=np.int64)
    present = np.ones(len(selected), dtype=bool)
    for row, index in enumerate(selected):
        try:
            stat = os.stat(metadata.file(index))
            stats[row] = (stat.st_size, stat.st_mtime_ns)
        except OSError as error:
            present[row] = False
            reason = "missing" if isinstance(error, FileNotFoundError) else f"cannot open ({error.strerror})"
            metadata.skipped.append(Skip(metadata.path(index), f"{reason}: listed in {metadata.origin} but not "
                                                               "readable in the image folder; restore it or remove the row"))
    return selected[present], stats[present]


def fill_unknown_sizes(metadata: Metadata) -> None:
    """Read width and height from the image headers where the metadata did not give them."""
    for i in np.flatnonzero((metadata.width <= 0) | (metadata.height <= 0)):
        try:
            metadata.width[i], metadata.height[i] = read_size(metadata.file(i))
        except ImageError:
            pass  # stays unknown; the loader reports the file when it is decoded


def describe_skips(skipped: list[Skip], limit: int = 5) -> Optional[str]:
    """A short, human summary of what was skipped."""
    if not skipped:
        return None
    lines = [f"skipped {len(skipped)} item(s):"] + [f"  {s}" for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)
