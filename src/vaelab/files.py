"""Small file helpers shared by every layer: writes are atomic, so a crash never leaves half a file.

A writer gets a temporary path beside the target (same folder, so the rename cannot cross
file systems) and the target is replaced only when the write finished; readers see the old
file or the new one. Checkpoints additionally fsync (vaelab.runs.checkpoints) because they must
survive a power cut, not only a killed process.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain name (not mkstemp) so the file gets the usual umask permissions, not 0600.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


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
