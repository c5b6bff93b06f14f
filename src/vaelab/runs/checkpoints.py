"""Checkpoint files: written atomically, read back safely, pruned, and never allowed to fill the disk.

A checkpoint is `Trainer.state_dict()` saved with `torch.save`: tensors, numbers, strings,
lists and dicts only, so `torch.load(weights_only=True)` reads it and no code is unpickled.

The files of a run's `checkpoints/` folder:
- last.pt:        the newest training state (epoch ends, mid-epoch saves, Ctrl-C). Resume reads it.
- last-epoch.pt:  the state at the end of the last completed epoch; the guard rolls back to it.
                  Mid-epoch saves happen on a timer, so this is what keeps rollbacks, and so
                  resumed runs, deterministic.
- best.pt:        the epoch-end state with the lowest validation loss.
- epoch-NNNN.pt:  every `run.checkpoint_every` epochs; only the newest `run.keep_checkpoints` stay.

Only last.pt is written out in full. The others are hard links to the epoch-end last.pt
(a copy where the file system has no hard links), so an epoch end costs one write. When
last.pt is later replaced, the links keep the old contents.

Every write goes to a temporary file in the same folder, is fsynced, and then renamed over
the target (`vaelab.files.atomic_path`, durable): a kill or a power cut at any moment leaves
either the old file or the new one, never a torn one.
Before writing, the free space is checked; too little raises `LowDisk`, and the run stops
cleanly with its previous checkpoints intact.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from vaelab.errors import VaelabError
from vaelab.files import atomic_path

LAST, LAST_EPOCH, BEST = "last.pt", "last-epoch.pt", "best.pt"
NUMBERED = re.compile(r"^epoch-(\d+)\.pt$")


class LowDisk(Exception):
    """Not enough free disk for the next checkpoint plus the safety margin."""


def state_bytes(state: Any) -> int:
    """Bytes of all tensors in a (nested) state: about the size of its file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def check_free_space(folder: Path, needed: int, margin: int) -> None:
    free = free_bytes(folder)
    if free < needed + margin:
        raise LowDisk(
            f"only {free / 1e9:.2f} GB free on the disk of {folder}; a checkpoint needs {needed / 1e9:.2f} GB "
            f"and run.min_free_gb keeps {margin / 1e9:.2f} GB free. Free some space (or lower run.min_free_gb), "
            "then resume with --resume"
        )


def save_state(state: dict, path: Path, min_free_bytes: int = 0) -> Path:
    """Write `state` to `path` atomically and durably (`vaelab.files.atomic_path`: temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = state_bytes(state) + (1 << 20)
    # The old file stays until the rename, so both must fit at once.
    check_free_space(path.parent, needed, min_free_bytes)
    with atomic_path(path, durable=True) as temporary, open(temporary, "wb") as file:
        torch.save(state, file)
    return path


def load_state(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without unpickling code."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise VaelabError(f"{path}: checkpoint not found") from None
    except Exception as error:  # torch raises several types for a damaged or foreign file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VaelabError(f"{path}: not a readable vaelab checkpoint ({first}); use another checkpoint") from None


def link_state(source: Path, target: Path) -> None:
    """Make `target` hold `source`'s contents, atomically and durably: a hard link, or a copy where links fail."""
    with atomic_path(target, durable=True) as temporary:
        temporary.unlink(missing_ok=True)  # a killed process's of the same pid: os.link needs the name free
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)


class CheckpointFolder:
    """The checkpoints of one run, with its save, link and retention rules."""

    def __init__(self, folder: Path, keep: int, min_free_gb: float):
        self.folder = Path(folder)
        self.keep = keep
        self.margin = int(min_free_gb * 1e9)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.remove_temporaries()

    def path(self, name: str) -> Path:
        return self.folder / name

    def remove_temporaries(self) -> None:
        """Temp files of writes that a kill interrupted (`vaelab.files.temporary_for`): never valid, safe to drop."""
        for leftover in self.folder.glob(".*.tmp-*"):
            leftover.unlink(missing_ok=True)

    def save_last(self, state: dict) -> Path:
        return save_state(state, self.path(LAST), self.margin)

    def save_epoch_end(self, state: dict, epoch: int, numbered: bool, best: bool) -> None:
        """The state after `epoch` completed epochs: last, last-epoch, and maybe numbered and best."""
        self.save_last(state)
        self.link_epoch_end(epoch, numbered, best)

    def link_epoch_end(self, epoch: int, numbered: bool, best: bool) -> None:
        """Point last-epoch (and maybe best and a numbered copy) at `last`: links, not writes.
        Also redoes the links after a kill between writing `last` and linking it."""
        last = self.path(LAST)
        link_state(last, self.path(LAST_EPOCH))
        if best:
            link_state(last, self.path(BEST))
        if numbered:
            link_state(last, self.path(f"epoch-{epoch:04d}.pt"))
            self.prune()

    def numbered(self) -> list[Path]:
        """Numbered checkpoints, oldest first."""
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := NUMBERED.match(p.name))]
        return [p for _, p in sorted(found)]

    def prune(self) -> list[Path]:
        """Delete all but the newest `keep` numbered checkpoints; returns what was deleted."""
        old = self.numbered()[: -self.keep]
        for path in old:
            path.unlink(missing_ok=True)
        return old

    def drop_after(self, epoch: int) -> None:
        """Numbered checkpoints from beyond `epoch`: left by a run that is resumed from an earlier state."""
        for path in self.numbered():
            if int(NUMBERED.match(path.name).group(1)) > epoch:
                path.unlink(missing_ok=True)

    def load(self, name: str, map_location: str | torch.device = "cpu") -> Optional[dict]:
        path = self.path(name)
        return load_state(path, map_location) if path.is_file() else None
