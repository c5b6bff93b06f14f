"""Small file helpers shared by every layer: writes are atomic, so a crash never leaves half a file.

A writer gets a temporary path beside the target (same folder, so the rename cannot cross
file systems) and the target is replaced only when the write finished; readers see the old
file or the new one. That survives a killed process. To survive a power cut too, a `durable`
write fsyncs the file before the rename and the folder after it. It costs a disk flush, so it
is for the files whose loss would hide a run or lose its training: run.json, config.yaml, the
checkpoints, and a resume's rewrite of metrics.jsonl (whose appends are fsynced line by line).
Everything else is rebuilt or rewritten anyway, and stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional


def temporary_for(path: Path) -> Path:
    """The temporary beside `path` that `atomic_path` and `atomic_folder` write: hidden, so folder
    listings (run folders, the copy on run.remote) pass over it, and named by the process, so
    `vaelab.runs.checkpoints` can drop what a killed write left. A plain name (not mkstemp or
    mkdtemp), so the result gets the usual umask permissions, not 0600 or 0700."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.
    durable: fsync the written file before the rename and its folder after it (see the module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_for(path)
    try:
        yield temporary
        if durable:
            fsync_file(temporary)
        os.replace(temporary, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: Path, temporary: Optional[Path] = None) -> Iterator[Path]:
    """Yield a new temporary folder beside `path` to fill; on success it is renamed to `path`
    (which must be missing or an empty folder), on error it is removed with what it holds.
    temporary: its name when a retry should find and replace the leftover of a killed attempt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(temporary) if temporary is not None else temporary_for(path)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        if path.is_dir():
            path.rmdir()  # an empty folder the caller accepted; rmdir refuses a full one
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def fsync_file(path: Path) -> None:
    """Flush a written file's contents to the disk. Any descriptor of the file will do, but a
    writable one: Windows refuses to flush through a read-only one."""
    with open(path, "r+b") as file:
        os.fsync(file.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable. Not every platform can open a folder; there it is best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str, durable: bool = False) -> None:
    with atomic_path(path, durable) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, value: Any, durable: bool = False) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n", durable)


def read_json(path: Path) -> Optional[Any]:
    """The parsed file, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_safetensors(tensors: dict, path: Path, metadata: Optional[dict[str, str]] = None) -> None:
    """Tensors (no pickle: safe to download) in the safetensors format, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(Path(path)) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)


def append_json_line(path: Path, record: dict) -> None:
    """One JSON object per line, flushed to disk, so a kill loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")
        file.flush()
        os.fsync(file.fileno())
