"""Checkpoint files: atomic under SIGKILL, weights-only loadable, pruned, stopped before a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_runs import make_images, metrics, write_config

import vaelab.runs.checkpoints
from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.runs.checkpoints import BEST, LAST, LAST_EPOCH, CheckpointFolder, LowDisk, load_state, save_state
from vaelab.runs.session import train_run


def state(value: float, size: int = 1000) -> dict:
    return {"model": {"w": torch.full((size,), value)}, "progress": {"epoch": int(value)}}


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_state(state(1.0), path)
    # A second process starts overwriting it and is SIGKILLed halfway through the bytes.
    script = textwrap.dedent(f"""\
        import os, signal, torch
        from vaelab.runs import checkpoints
        real_save = torch.save
        def dying_save(obj, file):
            real_save(obj, file)
            file.truncate(file.tell() // 2)
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoints.torch.save = dying_save
        checkpoints.save_state({{"model": {{"w": torch.full((1000,), 2.0)}}}}, {str(path)!r})
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert leftovers and all(name.startswith(".last.pt.tmp-") for name in leftovers)

    assert torch.equal(load_state(path)["model"]["w"], torch.full((1000,), 1.0))
    CheckpointFolder(tmp_path, keep=1, min_free_gb=0)  # opening the folder drops the torn temp file
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoints_load_weights_only_and_reject_foreign_files(tmp_path):
    save_state(state(3.0), tmp_path / "a.pt")
    assert torch.load(tmp_path / "a.pt", weights_only=True)["progress"]["epoch"] == 3
    (tmp_path / "b.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VaelabError, match="b.pt: not a readable vaelab checkpoint"):
        load_state(tmp_path / "b.pt")
    with pytest.raises(VaelabError, match="not found"):
        load_state(tmp_path / "missing.pt")


def test_retention_keeps_the_newest_numbered_plus_last_and_best(tmp_path):
    folder = CheckpointFolder(tmp_path, keep=2, min_free_gb=0)
    for epoch in range(1, 7):
        folder.save_epoch_end(state(float(epoch)), epoch, numbered=True, best=epoch == 3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [BEST, "epoch-0005.pt", "epoch-0006.pt", LAST_EPOCH, LAST]
    assert load_state(tmp_path / BEST)["progress"]["epoch"] == 3  # a link keeps its epoch's contents
    assert load_state(tmp_path / LAST)["progress"]["epoch"] == 6
    folder.save_last(state(7.0))  # a mid-epoch save leaves the epoch-end state for rollbacks
    assert load_state(tmp_path / LAST_EPOCH)["progress"]["epoch"] == 6


def test_low_disk_raises_before_writing(tmp_path, monkeypatch):
    save_state(state(1.0), tmp_path / "last.pt")
    monkeypatch.setattr(vaelab.runs.checkpoints, "free_bytes", lambda _: 5000)
    with pytest.raises(LowDisk, match="GB free"):
        save_state(state(2.0), tmp_path / "last.pt")
    assert load_state(tmp_path / "last.pt")["progress"]["epoch"] == 1


def test_a_run_stops_cleanly_when_the_disk_fills(tmp_path, monkeypatch):
    config = load_config(write_config(tmp_path, make_images(tmp_path / "images"), tmp_path / "runs"))
    calls = {"n": 0}

    def filling(path):  # plenty of room for the first 4 checkpoint writes, then none
        calls["n"] += 1
        return 10**12 if calls["n"] <= 4 else 0

    monkeypatch.setattr(vaelab.runs.checkpoints, "free_bytes", filling)
    run_dir = train_run(config)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    log = (run_dir / "log.txt").read_text()
    assert "stopped: only 0.00 GB free" in log and f"vaelab train --resume {run_dir}" in log
    # writes 1-4: the initial state, step 3, epoch 1, step 9; the epoch-2 write is refused
    assert load_state(run_dir / "checkpoints" / LAST)["progress"]["step"] == 9
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2]
    assert os.listdir(run_dir / "checkpoints")  # nothing half-written left
    assert not [n for n in os.listdir(run_dir / "checkpoints") if ".tmp-" in n]
