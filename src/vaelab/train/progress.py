"""The live progress bar of a training run, and the compact numbers it shares with the epoch lines."""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Optional

# At import, not lazily in ProgressBar: importing rich draws from Python's global `random`
# (rich.style seeds its id counter with getrandbits), and a run restores that RNG from its
# checkpoint before the bar is made, so a lazy import moved it once per resume and a resumed
# run's checkpoints no longer matched an uninterrupted run's (benchmarks/kill_resume.py found it).
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Column

if TYPE_CHECKING:
    from vaelab.train.trainer import Trainer

MIN_BAR = 10  # narrower than this, the bar says nothing; the losses give way first
_EXPONENT = re.compile(r"e([+-])0*(\d)")


def compact(value: Optional[float], fmt: str = ".4g") -> str:
    """`value` in `fmt` with a short exponent (5.801e4, not 5.801e+04); '-' for None."""
    if value is None:
        return "-"
    return _EXPONENT.sub(lambda m: f"e{'-' if m.group(1) == '-' else ''}{m.group(2)}", format(value, fmt))


def clock(seconds: Optional[float]) -> str:
    """h:mm:ss, or days and hours past 99 hours; '-:--:--' before there is an estimate."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(seconds)
    if seconds >= 100 * 3600:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def layout(width: int, description: str, losses: str, eta: str) -> tuple[int, str]:
    """(bar width, right-hand text) so that `description bar text` fills `width` columns and no more:
    rich cuts a row that is too wide, and the terminal would wrap one that is. The losses are cut
    from the end when the bar would fall under MIN_BAR; the ETA always stays."""
    tail = f"{losses}  ETA {eta}" if losses else f"ETA {eta}"
    room = width - len(description) - 2  # one space each side of the bar
    if room - len(tail) < MIN_BAR and losses:
        keep = room - MIN_BAR - len(f"  ETA {eta}")
        pairs = losses.split("  ")  # whole "name value" pairs go, from the last
        while pairs and len("  ".join(pairs)) > keep:
            pairs.pop()
        tail = "  ".join([*pairs, f"ETA {eta}"])
    return max(1, room - len(tail)), tail


class ProgressBar:
    """One bar over the whole run on stderr: epoch and batch, live losses and ETA, fitted to the
    terminal's width on every refresh, and removed when the run ends (the epoch lines stay). Off
    when stderr is not a terminal (logs and CI get the per-epoch summary lines instead)."""

    def __init__(self, enabled: Optional[bool], epochs: int, per_epoch: int, done: int, console=None):
        self.console = console if console is not None else Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.epochs, self.per_epoch = epochs, per_epoch
        self.bar = BarColumn(bar_width=MIN_BAR)
        self.progress = Progress(
            TextColumn("{task.description}", table_column=Column(no_wrap=True)), self.bar,
            TextColumn("{task.fields[tail]}", table_column=Column(no_wrap=True)),
            console=self.console, disable=not self.enabled, transient=True)
        self.task = self.progress.add_task("", total=epochs * per_epoch, completed=done, tail="")
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
        losses = []
        if s["applied"]:
            n = s["applied"]
            second = ("kl", s["kl"]) if trainer.has_kl else ("commit", s["commitment"])
            losses += [f"recon {compact(s['recon'] / n)}", f"{second[0]} {compact(second[1] / n)}"]
        if s["skipped"]:
            losses.append(f"skipped {s['skipped']}")
        self.progress.update(self.task, completed=trainer.epoch * self.per_epoch + trainer.batch)
        description = f"epoch {trainer.epoch + 1}/{self.epochs} {trainer.batch}/{self.per_epoch}"
        eta = clock(self.progress.tasks[0].time_remaining)
        self.bar.bar_width, tail = layout(self.console.width, description, "  ".join(losses), eta)
        self.progress.update(self.task, description=description, tail=tail)
