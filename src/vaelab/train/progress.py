"""The live progress bar of a training run."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from vaelab.train.trainer import Trainer


class ProgressBar:
    """One bar over the whole run on stderr: epoch, batches, live losses and ETA. Off when
    stderr is not a terminal (logs and CI get the per-epoch summary lines instead)."""

    def __init__(self, enabled: Optional[bool], epochs: int, per_epoch: int, done: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self.enabled = console.is_terminal if enabled is None else enabled
        self.epochs, self.per_epoch = epochs, per_epoch
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[losses]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not self.enabled)
        self.task = self.progress.add_task("", total=epochs * per_epoch, completed=done, losses="")
        self.last = 0.0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, trainer: Trainer) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.1:  # formatting costs more than a small step
            return
        self.last = now
        s = trainer.sums
        losses = ""
        if s["applied"]:
            n = s["applied"]
            losses = f"loss {s['loss'] / n:.4g}  recon {s['recon'] / n:.4g}  kl {s['kl'] / n:.4g}"
        if s["skipped"]:
            losses += f"  skipped {s['skipped']}"
        self.progress.update(self.task, completed=trainer.epoch * self.per_epoch + trainer.batch,
                             description=f"epoch {trainer.epoch + 1}/{self.epochs}", losses=losses)
