"""Index a folder of images into metadata: tags from names, sizes from headers, every file verified.

Layout understood: `ROOT/[source/]set-folder/tag-tag-tag_640v480.jpg`.
- The file name's dash-separated words are tags, underscores kept (`t_shirt`); a trailing size
  designator (`_640v480`, `_640x480`) is not, nor are words of digits alone (`0012`, `0012_2`).
- The folder holding the image becomes a tag too (`set-530` gives `set_530`).
- When the image is two or more folders deep, the top folder is its source.
Every image is decoded once (cheaply, at reduced JPEG scale) so that a corrupt or truncated
file is reported here and skipped, rather than found in the middle of training.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vaelab.data.images import ImageError, verify_image
from vaelab.data.metadata import Skip
from vaelab.errors import VaelabError
from vaelab.files import atomic_path, write_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_WORD = re.compile(r"[^a-z0-9]+")
# The size designator at the end of a stem: `_640v640` (the user's collections), `_640x480`, `_640X480`.
# Only this is a suffix: an underscore elsewhere belongs to a tag (`t_shirt`).
_SIZE_SUFFIX = re.compile(r"_\d+[vx]\d+$", re.IGNORECASE)


def folder_tag(name: str) -> str:
    return _WORD.sub("_", name.lower()).strip("_")


def parse_tags(relative_path: str) -> list[str]:
    """Tags of one image from its path relative to the collection root."""
    parts = relative_path.split("/")
    stem = _SIZE_SUFFIX.sub("", parts[-1].rsplit(".", 1)[0])
    tags = []
    for word in stem.lower().split("-"):
        word = word.strip().strip("_")
        if word and not word.replace("_", "").isdigit() and word not in tags:
            tags.append(word)
    if len(parts) >= 2:
        set_tag = folder_tag(parts[-2])
        if set_tag and set_tag not in tags:
            tags.append(set_tag)
    return tags


@dataclass
class IndexResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    reused: int = 0


def list_image_files(root: Path) -> list[str]:
    """Relative posix paths of candidate images, sorted, hidden files and folders left out."""
    if not root.is_dir():
        raise VaelabError(f"{root}: image folder not found; check the path (data.images)")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    found.sort()
    return found


def _verify(task: tuple[str, str]) -> tuple[str, Optional[tuple[int, int]], Optional[str]]:
    root, relative = task
    try:
        return relative, verify_image(Path(root) / relative), None
    except ImageError as error:
        return relative, None, str(error)


def index_folder(
    root: Path,
    workers: Optional[int] = None,
    reuse: Optional[dict[str, dict[str, Any]]] = None,
    progress: bool = False,
) -> IndexResult:
    """Walk `root`, verify every image and build one record per usable image.

    `reuse` maps a relative path to a previous record carrying `bytes` and `mtime_ns`; a file
    whose size and mtime are unchanged keeps that record without being decoded again.
    """
    root = Path(root)
    relatives = list_image_files(root)
    result = IndexResult()
    stats: dict[str, os.stat_result] = {}
    to_verify = []
    for relative in relatives:
        try:
            stats[relative] = os.stat(root / relative)
        except OSError as error:
            result.skipped.append(Skip(relative, f"cannot stat ({error.strerror})"))
            continue
        previous = (reuse or {}).get(relative)
        stat = stats[relative]
        if previous and previous.get("bytes") == stat.st_size and previous.get("mtime_ns") == stat.st_mtime_ns:
            # The tags are parsed again (it costs no decode): a cached index written by an older
            # parser must not keep its tags, e.g. the ones cut at the first `_`.
            result.records.append({**previous, "tags": parse_tags(relative)})
            result.reused += 1
        else:
            to_verify.append(relative)

    workers = workers if workers is not None else (os.cpu_count() or 1)
    tasks = [(str(root), relative) for relative in to_verify]
    if workers > 1 and len(tasks) > 32:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outcomes = pool.map(_verify, tasks, chunksize=16)
            outcomes = _with_progress(outcomes, len(tasks), progress)
            checked = list(outcomes)
    else:
        checked = list(_with_progress(map(_verify, tasks), len(tasks), progress))

    for relative, size, problem in checked:
        if problem is not None:
            result.skipped.append(Skip(relative, problem.split(": ", 1)[-1] if ": " in problem else problem))
            continue
        parts = relative.split("/")
        result.records.append(
            {
                "file": relative,
                "width": size[0],
                "height": size[1],
                "tags": parse_tags(relative),
                "source": parts[0] if len(parts) >= 3 else None,
                "bytes": stats[relative].st_size,
                "mtime_ns": stats[relative].st_mtime_ns,
            }
        )
    result.records.sort(key=lambda record: record["file"])
    return result


def _with_progress(items, total: int, enabled: bool):
    if not enabled or total == 0:
        return items
    from rich.progress import track

    return track(items, total=total, description="indexing", transient=True)


def write_records(records: list[dict[str, Any]], out: Path) -> None:
    """Write metadata as a JSON list (.json) or one record per line (.jsonl), atomically."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise VaelabError(f"{out}: write metadata as .json or .jsonl")
    with atomic_path(out) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        if suffix == ".jsonl":
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            handle.write("[\n")
            handle.write(",\n".join(json.dumps(record, ensure_ascii=False) for record in records))
            handle.write("\n]\n")


def write_report(skipped: list[Skip], out: Path) -> None:
    """The skip report beside the metadata: which files were left out and why."""
    report = {"skipped": len(skipped), "files": [{"file": s.item, "reason": s.reason} for s in skipped]}
    write_json(out, report)
