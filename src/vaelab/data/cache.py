"""A memory-mapped file of fitted uint8 images, so that no epoch after the first decodes a JPEG.

One file holds a slot table and the pixels of every selected image, in selection order:

    [slot table: n x 6 int64 (state, crc32, top, left, height, width)] [pad to 4 KiB] [n x H x W x 3 uint8]

- The file name carries a key: a hash of the selected paths, each file's size and mtime, the
  bboxes when cropping to them, the size, the fit mode and the pad colour. Change any of
  them and a new file is built; the stale one of the same collection is deleted.
- While it is being filled it is called `*.partial`. Any number of processes (DataLoader
  workers, two training runs) map the same partial file and write slots; the images are
  decoded deterministically, so two writers of one slot write the same bytes. A slot is
  written pixels first, then its table row, and carries a CRC of its pixels, so a build
  that is killed midway leaves only slots that verify or slots that are rebuilt.
- When every slot is filled the file is renamed to its final name (atomic), and later
  opens map it read-only and trust it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import warnings
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.images import Fitted, ImageError, load_fitted
from vaelab.data.metadata import Metadata
from vaelab.files import fsync_file

CACHE_VERSION = 1
EMPTY, FILLED, FAILED = 0, 1, 2
_COLUMNS = 6
_ALIGN = 4096


def cache_key(metadata: Metadata, slots: np.ndarray, file_stats: np.ndarray, data: DataConfig) -> tuple[str, str]:
    """(collection id, content key). The collection id names the family of files to evict.
    `file_stats` holds each slot's file size and mtime, so an edited image changes the key."""
    family = hashlib.sha256(
        json.dumps([str(metadata.root), metadata.origin, list(data.size), data.fit]).encode()
    ).hexdigest()[:12]
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, list(data.size), data.fit, data.pad_rgb, data.bbox_crop]).encode())
    digest.update(str(metadata.root).encode())
    digest.update(b"\0".join(metadata.paths[slots].tolist()))
    digest.update(np.ascontiguousarray(file_stats, dtype=np.int64).tobytes())
    if data.bbox_crop:
        digest.update(np.ascontiguousarray(metadata.bbox[slots]).tobytes())
    return family, digest.hexdigest()[:24]


class ImageCache:
    """The fitted images of `slots` (metadata indices) at `data.size`. Safe to use from workers:
    each process maps the file itself on first use."""

    def __init__(self, metadata: Metadata, slots: np.ndarray, file_stats: np.ndarray, data: DataConfig, folder: Path):
        self.metadata = metadata
        self.slots = np.asarray(slots)
        self.data = data
        self.height, self.width = data.size
        self.folder = Path(folder)
        self.family, self.key = cache_key(metadata, self.slots, file_stats, data)
        stem = f"fitted-{self.family}-{self.key}-{self.height}x{self.width}"
        self.final_path = self.folder / f"{stem}.u8"
        self.partial_path = self.folder / f"{stem}.u8.partial"
        self.table_bytes = -(-len(self.slots) * _COLUMNS * 8 // _ALIGN) * _ALIGN
        self.file_bytes = self.table_bytes + len(self.slots) * self.height * self.width * 3
        self._pid: Optional[int] = None
        self._committer: Optional[threading.Thread] = None
        self.complete = False

    # -- mapping -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the partial file if needed (atomically) and drop slots that fail their CRC."""
        if self.final_path.exists():
            self.complete = True
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.partial_path.exists():
            free = shutil.disk_usage(self.folder).free
            if free < self.file_bytes * 1.1 + (1 << 28):
                raise OSError(
                    f"{self.folder}: the image cache needs {self.file_bytes / 2**30:.1f} GiB but only "
                    f"{free / 2**30:.1f} GiB is free"
                )
            temporary = self.folder / f".{self.partial_path.name}.{os.getpid()}.tmp"
            with open(temporary, "wb") as handle:
                handle.truncate(self.file_bytes)
            try:
                os.link(temporary, self.partial_path)  # fails if another process won the race
            except FileExistsError:
                pass
            finally:
                temporary.unlink()
        self._map()
        self._drop_torn_slots()

    def _map(self) -> None:
        if self._pid == os.getpid():
            return
        # One open file for both views, so that a rename by another process between two
        # opens can never leave the table and the pixels pointing at different files.
        for path, mode, file_mode in ((self.final_path, "r", "rb"), (self.partial_path, "r+", "r+b")):
            try:
                handle = open(path, file_mode)
            except FileNotFoundError:
                continue  # the partial file may have just become the final one
            with handle:
                self.table = np.memmap(handle, dtype=np.int64, mode=mode, shape=(len(self.slots), _COLUMNS))
                self.pixels = np.memmap(
                    handle, dtype=np.uint8, mode=mode, offset=self.table_bytes,
                    shape=(len(self.slots), self.height, self.width, 3),
                )
            self.complete = mode == "r"
            self._pid = os.getpid()
            return
        if self.final_path.exists():
            return self._map()
        raise OSError(f"{self.partial_path}: the image cache file disappeared; run again to rebuild it")

    def _drop_torn_slots(self) -> None:
        if self.complete:
            return
        for slot in np.flatnonzero(self.table[:, 0] == FILLED):
            if zlib.crc32(self.pixels[slot]) != self.table[slot, 1]:
                self.table[slot, 0] = EMPTY

    # -- slots ---------------------------------------------------------------------------------

    def filled(self) -> np.ndarray:
        self._map()
        return np.asarray(self.table[:, 0])

    def read(self, slot: int) -> Optional[tuple[np.ndarray, tuple[int, int, int, int]]]:
        """The cached image and its content box, or None when the slot is not built yet."""
        self._map()
        row = self.table[slot]
        if row[0] == FILLED:
            return self.pixels[slot], (int(row[2]), int(row[3]), int(row[4]), int(row[5]))
        if row[0] == FAILED:
            return np.zeros((self.height, self.width, 3), np.uint8), (0, 0, 0, 0)
        return None

    def rows(self, slots: np.ndarray) -> np.ndarray:
        """Table rows (state, crc, top, left, height, width) of `slots`."""
        self._map()
        return self.table[slots]

    def gather(self, slots: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy the pixels of `slots` into `out` (N, H, W, 3). One plain copy per image into a
        reused buffer is several times faster than fancy indexing into fresh memory."""
        self._map()
        pixels = self.pixels
        for row, slot in enumerate(slots):
            out[row] = pixels[slot]
        return out

    def fill(self, slot: int) -> tuple[Fitted, Optional[str]]:
        """Decode and fit one image, store it, and return it with the error message if it failed."""
        self._map()
        index = self.slots[slot]
        bbox = None
        if self.data.bbox_crop and not np.isnan(self.metadata.bbox[index]).any():
            bbox = tuple(float(v) for v in self.metadata.bbox[index])
        try:
            fitted = load_fitted(self.metadata.file(index), self.data.size, self.data.fit, self.data.pad_rgb, bbox)
            error = None
        except ImageError as problem:
            fitted = Fitted(np.zeros((self.height, self.width, 3), np.uint8), (0, 0, 0, 0))
            error = str(problem)
        if not self.complete:
            self.pixels[slot] = fitted.pixels
            state = FAILED if error else FILLED
            self.table[slot, 1:] = (zlib.crc32(self.pixels[slot]), *fitted.box)
            self.table[slot, 0] = state  # last, so a reader never sees a half-written slot as filled
        return fitted, error

    def finalize(self) -> bool:
        """True once every slot is filled. The first time, a background thread writes the file
        to disk and renames it to its final name, so the next epoch need not wait for the disk."""
        if self.complete:
            return True
        if self.final_path.exists():
            self.complete, self._pid = True, None
            return True
        self._map()
        if (self.table[:, 0] == EMPTY).any():
            return False
        self.complete = True  # every slot is readable through the current mapping already
        self._committer = threading.Thread(target=self._commit, name="vaelab-image-cache")
        self._committer.start()  # not a daemon: the interpreter waits for it before exiting
        return True

    def _commit(self) -> None:
        try:
            self.pixels.flush()
            self.table.flush()
            # Not `vaelab.files.atomic_path`: the other processes have this very file mapped and
            # may still read it, so it is renamed in place rather than replaced by a copy.
            fsync_file(self.partial_path)
            os.rename(self.partial_path, self.final_path)
        except FileNotFoundError:
            if not self.final_path.exists():
                warnings.warn(f"{self.partial_path}: vanished before it could be finished; it will be rebuilt")
            return  # otherwise another process finished the same file first
        except OSError as error:
            warnings.warn(f"{self.partial_path}: could not finish the image cache ({error}); it will be rebuilt")
            return
        self._evict_stale()

    def wait(self) -> None:
        """Block until a background commit (if any) is on disk under the final name."""
        if self._committer is not None:
            self._committer.join()

    def _evict_stale(self) -> None:
        # Only finished files: a partial one may belong to a run that is building it right now.
        for old in self.folder.glob(f"fitted-{self.family}-*.u8"):
            if self.key not in old.name:
                try:
                    old.unlink()
                except OSError as error:
                    warnings.warn(f"{old}: could not remove a stale image cache ({error})")
