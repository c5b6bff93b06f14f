"""Reading metadata files: JSON list, JSONL, CSV and Parquet, streamed row by row into columns.

A JSON list is decoded one record at a time, so a 120 MB file never becomes 500,000 Python
dicts at once. The resulting columns are cached as `.npz` beside the other caches, keyed by
the file's path, size, mtime and the field names, so later loads take about a second.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from vaelab.config import FieldNames
from vaelab.data.metadata import ColumnBuilder, Metadata, Skip, read_npz, save_npz
from vaelab.errors import VaelabError

CACHE_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Readers: each yields (row_number, row) pairs
# --------------------------------------------------------------------------------------------

_CHUNK = 1 << 22
_SEPARATORS = re.compile(r"[\s,]*")


def _json_list_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Stream a JSON list object by object, so the whole file never becomes Python objects."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as handle:
        buffer = handle.read(_CHUNK)
        consumed = 0  # characters dropped from the front of the buffer, for error positions
        start = len(buffer) - len(buffer.lstrip())
        if buffer[start : start + 1] != "[":
            raise VaelabError(f"{path}: expected a JSON list of records ('[' ...); for one record per line use .jsonl")
        position = _SEPARATORS.match(buffer, start + 1).end()
        row = 0
        while True:
            while position >= len(buffer) - 1:
                more = handle.read(_CHUNK)
                consumed += position
                buffer = buffer[position:] + more
                position = _SEPARATORS.match(buffer).end()  # a chunk may start between records
                if not more:
                    break
            if position >= len(buffer):
                raise VaelabError(f"{path}: the JSON list is not closed with ']'; the file looks truncated")
            if buffer[position] == "]":
                return
            try:
                item, end = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as error:
                more = handle.read(_CHUNK)
                if not more:
                    raise VaelabError(
                        f"{path}: invalid JSON near character {consumed + error.pos} ({error.msg}); fix the file"
                    ) from None
                consumed += position
                buffer, position = buffer[position:] + more, 0
                continue
            row += 1
            yield row, item
            position = _SEPARATORS.match(buffer, end).end()


def _jsonl_rows(path: Path, skipped: list[Skip]) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                skipped.append(Skip(f"{path} line {number}", f"invalid JSON ({error.msg})"))


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=1):
            yield number, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise VaelabError(f"{path}: reading Parquet needs pyarrow; pip install 'vaelab[parquet]'") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise VaelabError(f"{path}: not a readable Parquet file ({error}); check the file") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=65536):
        for row in batch.to_pylist():
            number += 1
            yield number, row


READERS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def read_metadata_file(path: Path, root: Path, fields: FieldNames) -> Metadata:
    """Read any supported metadata file into columns, skipping and reporting malformed rows."""
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise VaelabError(f"{path}: unknown metadata format '{path.suffix}'; use .json, .jsonl, .csv or .parquet")
    if not path.is_file():
        raise VaelabError(f"{path}: metadata file not found; check data.metadata")
    builder = ColumnBuilder(root, fields, origin=path.name)
    rows = {
        "json": lambda: _json_list_rows(path),
        "jsonl": lambda: _jsonl_rows(path, builder.skipped),
        "csv": lambda: _csv_rows(path),
        "parquet": lambda: _parquet_rows(path),
    }[kind]()
    try:
        for number, row in rows:
            builder.add(row, number)
    except UnicodeDecodeError:
        raise VaelabError(f"{path}: not UTF-8 text; save the metadata as UTF-8") from None
    except csv.Error as error:
        raise VaelabError(f"{path}: malformed CSV ({error}); fix the file") from None
    metadata = builder.finish()
    if len(metadata) == 0:
        reasons = f" (first problem: {metadata.skipped[0]})" if metadata.skipped else ""
        raise VaelabError(f"{path}: no usable records{reasons}; check the file and data.fields")
    return metadata


def load_metadata(path: Path, root: Path, fields: FieldNames, cache_dir: Optional[Path]) -> Metadata:
    """`read_metadata_file`, served from the columnar cache when the file has not changed."""
    cache_file = None
    if cache_dir is not None:
        stat = path.stat() if path.is_file() else None
        if stat is not None:
            key = json.dumps(
                [CACHE_FORMAT, str(path.resolve()), str(root), stat.st_size, stat.st_mtime_ns, fields.model_dump()]
            )
            cache_file = cache_dir / f"metadata-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
            cached = read_npz(cache_file, root, path.name)
            if cached is not None:
                return cached
    metadata = read_metadata_file(path, root, fields)
    if cache_file is not None:
        save_npz(metadata, cache_file)
    return metadata
