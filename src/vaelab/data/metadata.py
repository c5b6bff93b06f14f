"""Image metadata held as columns: one numpy array per field, never a Python dict per image.

A collection of 500,000 images must load in seconds and stay small, and DataLoader workers
must not copy it: numpy buffers are shared copy-on-write pages that nobody writes to, while
a list of dicts is touched (refcounts) and so copied into every worker.

`ColumnBuilder` checks rows one at a time and appends them to the columns; a malformed row
is skipped and reported, never fatal. The columns save to and load from an `.npz` (no
pickle), which is the columnar cache that `readers.load_metadata` keeps.
"""

from __future__ import annotations

import math
import os
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from vaelab.config import FieldNames
from vaelab.files import atomic_path

_NO_BOX = (math.nan,) * 4


@dataclass
class Skip:
    """One input that was left out, and why. `item` names a file or a metadata row."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass
class Metadata:
    root: Path  # folder that every path is relative to
    paths: np.ndarray  # bytes (S), utf-8, posix, relative to root
    width: np.ndarray  # int32, -1 when unknown
    height: np.ndarray  # int32, -1 when unknown
    tag_names: np.ndarray  # str (U), the tag vocabulary
    tag_ids: np.ndarray  # int32, every image's tag ids, concatenated
    tag_offsets: np.ndarray  # int64, len n+1: image i's tags are tag_ids[offsets[i]:offsets[i+1]]
    source_names: np.ndarray  # str (U)
    source_ids: np.ndarray  # int32, -1 when the image has no source
    bbox: np.ndarray  # float32 (n, 4) x0, y0, x1, y1; NaN when absent
    origin: str = ""  # where the metadata came from, for messages
    skipped: list[Skip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        return self.paths[i].decode("utf-8")

    def file(self, i: int) -> Path:
        return self.root / self.path(i)

    def tags(self, i: int) -> list[str]:
        return [str(self.tag_names[t]) for t in self.tag_ids[self.tag_offsets[i] : self.tag_offsets[i + 1]]]

    def source(self, i: int) -> Optional[str]:
        return None if self.source_ids[i] < 0 else str(self.source_names[self.source_ids[i]])

    def has_bbox(self) -> np.ndarray:
        return ~np.isnan(self.bbox).any(axis=1)

    def record(self, i: int) -> dict[str, Any]:
        box = None if np.isnan(self.bbox[i]).any() else [float(v) for v in self.bbox[i]]
        return {
            "file": self.path(i),
            "width": int(self.width[i]),
            "height": int(self.height[i]),
            "tags": self.tags(i),
            "source": self.source(i),
            "bbox": box,
        }


# --------------------------------------------------------------------------------------------
# Building columns from rows
# --------------------------------------------------------------------------------------------


class ColumnBuilder:
    """Checks rows one at a time and appends them to compact columns."""

    def __init__(self, root: Path, fields: FieldNames, origin: str):
        self.root = root
        self.root_text = os.path.normpath(str(root))
        self.fields = fields
        self.origin = origin
        self.first_row_of: dict[bytes, int] = {}  # path -> row; its keys, in order, are the paths
        self.width = array("i")
        self.height = array("i")
        self.tag_index: dict[str, int] = {}
        self.tag_ids = array("i")
        self.tag_offsets = array("q", [0])
        self.source_index: dict[str, int] = {}
        self.source_ids = array("i")
        self.bbox = array("f")
        self.skipped: list[Skip] = []
        self.file_key: Optional[str] = None

    def add(self, row: Any, row_number: int) -> None:
        # This runs once per record (500,000 times for a large collection), so it reads the
        # field names from plain attributes and formats messages only when something is wrong.
        fields = self.fields
        if not isinstance(row, dict):
            self._skip(row_number, f"expected an object with a '{fields.file}' field")
            return
        try:
            path = self._path(row)
            width = _size(row.get(fields.width), fields.width)
            height = _size(row.get(fields.height), fields.height)
            tags = self._tags(row.get(fields.tags))
            source = row.get(fields.source) if fields.source else None
            box = _bbox(row.get(fields.bbox), fields.bbox) if fields.bbox else None
        except ValueError as error:
            self._skip(row_number, str(error))
            return
        key = path.encode("utf-8")
        first = self.first_row_of.setdefault(key, row_number)
        if first != row_number:
            self._skip(row_number, f"duplicate of row {first} ({path})")
            return
        self.width.append(width)
        self.height.append(height)
        tag_index = self.tag_index
        self.tag_ids.extend([tag_index.setdefault(tag, len(tag_index)) for tag in tags])
        self.tag_offsets.append(len(self.tag_ids))
        if source is None or source == "":
            self.source_ids.append(-1)
        else:
            self.source_ids.append(self.source_index.setdefault(str(source), len(self.source_index)))
        self.bbox.extend(box if box is not None else _NO_BOX)

    def _skip(self, row_number: int, reason: str) -> None:
        self.skipped.append(Skip(f"{self.origin} row {row_number}", reason))

    def _path(self, row: dict) -> str:
        if self.file_key is None:
            # `file` is the default name; collections written by other tools often say `filename`.
            fallback = self.fields.file == "file" and "file" not in row and "filename" in row
            self.file_key = "filename" if fallback else self.fields.file
        value = row.get(self.file_key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"missing or empty '{self.file_key}' field")
        return safe_relative_path(self.root_text, value.strip())

    def _tags(self, value: Any) -> list[str]:
        if value is None:
            return []
        if type(value) is list:
            try:  # the common case: a list of strings
                return [tag for tag in dict.fromkeys(item.strip() for item in value) if tag]
            except AttributeError:
                pass  # some items are not strings
        if isinstance(value, str):
            items: Iterable[Any] = value.split(self.fields.tag_separator)
        elif isinstance(value, (list, tuple, np.ndarray)):
            items = value
        else:
            raise ValueError(f"'{self.fields.tags}' must be a list or a delimited string, not {type(value).__name__}")
        tags = []
        for item in items:
            if item is None:
                continue
            text = str(item).strip()
            if text and text not in tags:
                tags.append(text)
        return tags

    def finish(self) -> Metadata:
        tag_names = np.array(list(self.tag_index), dtype=str) if self.tag_index else np.zeros(0, dtype="U1")
        source_names = (
            np.array(list(self.source_index), dtype=str) if self.source_index else np.zeros(0, dtype="U1")
        )
        return Metadata(
            root=self.root,
            paths=np.array(list(self.first_row_of), dtype="S") if self.first_row_of else np.zeros(0, dtype="S1"),
            width=np.frombuffer(self.width, dtype=np.int32).copy(),
            height=np.frombuffer(self.height, dtype=np.int32).copy(),
            tag_names=tag_names,
            tag_ids=np.frombuffer(self.tag_ids, dtype=np.int32).copy(),
            tag_offsets=np.frombuffer(self.tag_offsets, dtype=np.int64).copy(),
            source_names=source_names,
            source_ids=np.frombuffer(self.source_ids, dtype=np.int32).copy(),
            bbox=np.frombuffer(self.bbox, dtype=np.float32).reshape(-1, 4).copy(),
            origin=self.origin,
            skipped=self.skipped,
        )


_UNUSUAL_PATH = re.compile(r"^/|\\|(^|/)\.\.?(/|$)|//")


def safe_relative_path(root: str, value: str) -> str:
    """The path relative to `root`, or ValueError when it escapes the folder."""
    if not _UNUSUAL_PATH.search(value):
        return value  # the common case: already relative and clean, nothing to resolve
    value = value.replace("\\", "/")
    joined = os.path.normpath(os.path.join(root, value))
    if joined != root and not joined.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError(f"path '{value}' escapes the image folder {root}; use a path inside it")
    relative = os.path.relpath(joined, root).replace(os.sep, "/")
    if relative == ".":
        raise ValueError(f"path '{value}' is the image folder itself, not a file")
    return relative


def _size(value: Any, name: str) -> int:
    if type(value) is int and 0 < value <= 1_000_000:
        return value
    if value is None or value == "":
        return -1  # unknown: read from the image header when it is needed
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{name}' is {value!r}, not a number") from None
    if not number.is_integer() or number <= 0 or number > 1_000_000:
        raise ValueError(f"'{name}' is {value!r}, not a positive whole number of pixels")
    return int(number)


def _bbox(value: Any, name: str) -> Optional[tuple[float, float, float, float]]:
    if type(value) is list and len(value) == 4:
        try:  # the common case: four numbers in order
            x0, y0, x1, y1 = (float(v) for v in value)
            if x0 < x1 < math.inf and y0 < y1 < math.inf and x0 > -math.inf and y0 > -math.inf:
                return x0, y0, x1, y1
        except (TypeError, ValueError):
            pass  # explained below
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,;\[\]()]+", value) if v]
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"'{name}' is {value!r}; expected [x0, y0, x1, y1]") from None
    if len(box) != 4 or not all(np.isfinite(box)):
        raise ValueError(f"'{name}' is {list(value)!r}; expected 4 numbers [x0, y0, x1, y1]")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"'{name}' {list(box)} is empty: it needs x1 > x0 and y1 > y0")
    return box  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The columnar cache
# --------------------------------------------------------------------------------------------

_ARRAYS = ("paths", "width", "height", "tag_names", "tag_ids", "tag_offsets", "source_names", "source_ids", "bbox")


def save_npz(metadata: Metadata, cache_file: Path) -> None:
    try:
        with atomic_path(cache_file) as temporary, open(temporary, "wb") as handle:
            np.savez(
                handle,
                **{name: getattr(metadata, name) for name in _ARRAYS},
                skipped_items=np.array([s.item for s in metadata.skipped], dtype=str),
                skipped_reasons=np.array([s.reason for s in metadata.skipped], dtype=str),
            )
    except OSError:
        pass  # a cache is an optimisation; a read-only cache folder only costs speed


def read_npz(cache_file: Path, root: Path, origin: str) -> Optional[Metadata]:
    try:
        with np.load(cache_file, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in _ARRAYS}
            skipped = [Skip(str(i), str(r)) for i, r in zip(stored["skipped_items"], stored["skipped_reasons"])]
    except (OSError, KeyError, ValueError):
        return None
    return Metadata(root=root, origin=origin, skipped=skipped, **arrays)


def from_records(records: list[dict[str, Any]], root: Path, fields: Optional[FieldNames] = None,
                 origin: str = "records") -> Metadata:
    """Columns from in-memory records (used by the folder indexer and by tests)."""
    builder = ColumnBuilder(root, fields or FieldNames(), origin=origin)
    for number, record in enumerate(records, start=1):
        builder.add(record, number)
    return builder.finish()
