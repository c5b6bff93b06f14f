"""The progress bar at a terminal's width: nothing cut, nothing wrapped, nothing left behind."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from vaelab.train.progress import MIN_BAR, ProgressBar, clock, compact, layout


def fake_trainer(epoch: int, batch: int, applied: int, recon: float, kl: float, skipped: int = 0):
    sums = {"applied": applied, "recon": recon * applied, "kl": kl * applied, "commitment": 0.0,
            "loss": (recon + kl) * applied, "skipped": skipped}
    return SimpleNamespace(epoch=epoch, batch=batch, sums=sums, has_kl=True)


def rendered(bar: ProgressBar, console: Console) -> list[str]:
    console.file.seek(0)
    console.file.truncate()
    console.print(bar.progress.get_renderable())
    return console.file.getvalue().splitlines()


@pytest.mark.parametrize("width", [80, 60, 132])
@pytest.mark.parametrize("epochs, per_epoch, epoch, batch, recon, kl, skipped", [
    (20, 50, 2, 12, 5.801e4, 412.3, 0),  # the journal's numbers
    (1000, 5000, 926, 4321, -5.801e4, 1.234e4, 20),  # long run, gaussian (negative) loss, skipped steps
])
def test_the_bar_fits_the_terminal_width(width, epochs, per_epoch, epoch, batch, recon, kl, skipped):
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    bar = ProgressBar(True, epochs, per_epoch, done=0, console=console)
    bar.update(fake_trainer(epoch, batch, 7, recon, kl, skipped))
    (line,) = rendered(bar, console)  # one row: nothing wrapped
    assert len(line) <= width
    assert line.startswith(f"epoch {epoch + 1}/{epochs} {batch}/{per_epoch} ")  # not cut
    assert "ETA " in line and "…" not in line
    assert bar.bar.bar_width >= MIN_BAR
    if width >= 80:
        assert f"recon {compact(recon)}" in line  # the losses fit at 80 columns


def test_the_losses_give_way_to_the_bar_and_the_eta_stays():
    description = "epoch 927/1000 4321/5000"
    bar_width, tail = layout(64, description, "recon -5.801e4  kl 1.234e4  skipped 20", "1:02:03")
    assert len(description) + 1 + bar_width + 1 + len(tail) <= 64 and bar_width >= MIN_BAR
    assert tail == "recon -5.801e4  ETA 1:02:03"  # whole pairs dropped from the end
    assert layout(30, description, "recon 1", "1:02:03")[1] == "ETA 1:02:03"


def test_the_bar_is_removed_when_the_run_ends():
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    bar = ProgressBar(True, 3, 6, done=0, console=console)
    assert bar.progress.live.transient


def test_compact_numbers_and_clock():
    assert [compact(5.801e4), compact(-1.5e-5), compact(412.3), compact(None)] == ["5.801e4", "-1.5e-5", "412.3", "-"]
    assert [clock(None), clock(83), clock(99 * 3600 + 59), clock(250 * 3600)] == [
        "-:--:--", "0:01:23", "99:00:59", "10d10h"]
