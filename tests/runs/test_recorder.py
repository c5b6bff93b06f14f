"""The epoch line: what a person reads in the terminal after every epoch, at 80 columns."""

from __future__ import annotations

from vaelab.runs.recorder import EPOCH_LINE_WIDTH, epoch_line


def record(**changes) -> dict:
    base = {"epoch": 12, "time_s": 123.4, "train_loss": 5.842e4, "train_recon": 5.801e4, "train_kl": 412.3,
            "val_loss": 5.901e4, "val_psnr": 23.456, "lr": 5e-5, "skipped_steps": 0, "best": True}
    return {**base, **changes}


def test_an_epoch_line_fits_80_columns_on_one_line():
    line = epoch_line(record(), 20)
    assert EPOCH_LINE_WIDTH == 80 and "\n" not in line and len(line) <= 80
    assert line == "epoch 12/20  recon 5.801e4  kl 412.3  val 5.901e4  psnr 23.46 dB  123 s  *best"
    vq = epoch_line(record(train_kl=None, train_commitment=0.0123, best=False), 20)
    assert "commit 0.0123" in vq and "kl" not in vq and len(vq) <= 80


def test_a_long_epoch_line_breaks_between_groups_and_never_wraps():
    line = epoch_line(record(epoch=927, train_recon=-5.801e4, train_kl=1.234e4, val_loss=-5.901e4, val_psnr=None,
                             time_s=98765.0, skipped_steps=20), 1000)
    lines = line.split("\n")
    assert len(lines) == 2 and all(len(part) <= 80 for part in lines)
    assert lines[1].startswith("    ")  # the continuation is indented
    for group in ("epoch 927/1000", "recon -5.801e4", "kl 1.234e4", "val -5.901e4", "psnr - dB", "98765 s",
                  "skipped 20", "*best"):
        assert group in line
