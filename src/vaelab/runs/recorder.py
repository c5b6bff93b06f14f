"""Recording a run: the callbacks that write what the trainer produces into the run folder.

metrics.jsonl, the image grids, TensorBoard, MLflow (`vaelab.runs.mlflow`), log.txt, run.json (where
each lies: `vaelab.runs.folder.RunFolder`), the checkpoint schedule (`vaelab.runs.checkpoints`) and
the copy on run.remote (`vaelab.remote.mirror`).
`vaelab.runs.session` builds a `Recorder` for each run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from vaelab.config import Config
from vaelab.data.grid import save_png
from vaelab.data.loader import Batch
from vaelab.remote.mirror import RunMirror
from vaelab.runs.checkpoints import LAST_EPOCH, CheckpointFolder, LowDisk, load_state
from vaelab.runs.folder import RunFolder
from vaelab.runs.mlflow import Tracker, epoch_grids
from vaelab.runs.provenance import rss_mb
from vaelab.train import distributed
from vaelab.train.evaluation import reconstruction_grid, sample_grid
from vaelab.train.progress import compact
from vaelab.train.trainer import StopTraining, Trainer


class Recorder:
    """Writes what the trainer produces into the run folder (implements `train.Callbacks`)."""

    def __init__(self, run: RunFolder, config: Config, checkpoints: CheckpointFolder, log, images: Optional[Batch]):
        self.run, self.config, self.checkpoints, self.log, self.images = run, config, checkpoints, log, images
        self.board = Board(run.tensorboard, config.run.tensorboard, log, file_per_epoch=bool(config.run.remote))
        self.tracker = Tracker(run.path, config.run, log)
        self.last_save = time.monotonic()
        self.mirror: Optional[RunMirror] = None  # the copy on run.remote, synced after each checkpoint

    def after_step(self, trainer: Trainer) -> None:
        r = self.config.run
        if trainer.batch >= trainer.per_epoch and not trainer.stopping:
            return  # the epoch-end save follows at once
        due = (trainer.stopping
               or (r.checkpoint_steps and trainer.step % r.checkpoint_steps == 0)
               or (r.checkpoint_minutes and time.monotonic() - self.last_save >= 60 * r.checkpoint_minutes))
        if due:
            try:
                self.checkpoints.save_last(trainer.state_dict())
            except LowDisk as problem:
                raise StopTraining(problem) from None
            self.last_save = time.monotonic()
            self.request_sync()

    def epoch_end(self, trainer: Trainer, record: dict) -> None:
        epoch = record["epoch"]
        record["rss_mb"] = rss_mb()
        self.run.append_metrics(record)
        recon = samples = None
        if self.images is not None:
            recon = reconstruction_grid(trainer, self.images)
            samples = sample_grid(trainer, 2 * len(self.images))
            save_png(recon, self.run.grid_file("reconstructions", epoch))
            if samples is not None:  # None: the family has no prior to sample yet
                save_png(samples, self.run.grid_file("samples", epoch))
        self.board.epoch(record, recon, samples)
        self.tracker.epoch(record, epoch_grids(self.run.path, epoch) if recon is not None else [])
        self.log(epoch_line(record, self.config.train.epochs))
        try:
            numbered = epoch % self.config.run.checkpoint_every == 0 or epoch == self.config.train.epochs
            self.checkpoints.save_epoch_end(trainer.state_dict(), epoch, numbered=numbered, best=record["best"])
        except LowDisk as problem:
            raise StopTraining(problem) from None
        self.last_save = time.monotonic()
        write_status(self.run, "running", trainer)
        self.request_sync()

    def request_sync(self) -> None:
        if self.mirror is not None:
            self.mirror.request()

    def rollback_state(self) -> dict:
        return load_state(self.checkpoints.path(LAST_EPOCH))


class RankCallbacks:
    """The callbacks of one rank of a data-parallel run: rank 0 records through its `Recorder`,
    the others (recorder None) only follow.

    Rank 0's stop (a full disk) must not leave the others waiting in the next step's all-reduce:
    it becomes rank 0's stop wish, which that all-reduce hands to every rank, and `problem`
    makes the run's status 'stopped'. A rollback's state is read by rank 0 and sent to all."""

    def __init__(self, recorder: Optional[Recorder]):
        self.recorder, self.problem = recorder, None

    def _call(self, trainer: Trainer, method: str, *args) -> None:
        if self.recorder is None:
            return
        try:
            getattr(self.recorder, method)(trainer, *args)
        except StopTraining as problem:
            if self.problem is None:
                self.recorder.log(f"stopping at the next step: {problem}")
            self.problem = problem
            trainer.stop_requested = True

    def after_step(self, trainer: Trainer) -> None:
        self._call(trainer, "after_step")

    def epoch_end(self, trainer: Trainer, record: dict) -> None:
        self._call(trainer, "epoch_end", record)

    def rollback_state(self) -> dict:
        return distributed.share(self.recorder.rollback_state if self.recorder is not None else None)

    def log(self, message: str) -> None:
        if self.recorder is not None:
            self.recorder.log(message)


EPOCH_LINE_WIDTH = 80  # a terminal's usual width: the line goes to stderr (and log.txt) unwrapped


def epoch_line(record: dict, epochs: int, width: int = EPOCH_LINE_WIDTH) -> str:
    """The epoch's summary: the two training losses the journal reads (recon and kl, or commitment),
    the val loss that picks best.pt, val PSNR, the run's time. Groups that do not fit in `width`
    columns go on an indented second line (a 1000-epoch run that skipped steps), never wrapped
    mid-group by the terminal. lr and the rest are in metrics.jsonl."""
    g = lambda key, fmt=".4g": compact(record.get(key), fmt)  # noqa: E731
    second = f"commit {g('train_commitment')}" if "train_commitment" in record else f"kl {g('train_kl')}"
    groups = [f"epoch {record['epoch']}/{epochs}", f"recon {g('train_recon')}", second,
              f"val {g('val_loss')}", f"psnr {g('val_psnr', '.2f')} dB", f"{record['time_s']:.0f} s"]
    if record["skipped_steps"]:
        groups.append(f"skipped {record['skipped_steps']}")
    if record["best"]:
        groups.append("*best")
    lines = [groups[0]]
    for group in groups[1:]:
        if len(lines[-1]) + 2 + len(group) <= width:
            lines[-1] += "  " + group
        else:
            lines.append("    " + group)
    return "\n".join(lines)


class Board:
    """TensorBoard events, when `torch.utils.tensorboard` can be imported; else a one-line note.

    file_per_epoch: each epoch's events in a file of their own, closed after the epoch. An object
    store has no append, so the copy on run.remote re-sends a growing file whole every sync; with
    the image grids of a 640 px run that is megabytes per epoch, sent again each epoch. TensorBoard
    reads all the files of the folder as one run."""

    def __init__(self, folder: Path, enabled: bool, log, file_per_epoch: bool = False):
        self.folder, self.enabled, self.log, self.writer = folder, enabled, log, None
        self.file_per_epoch, self.next_file = file_per_epoch, False

    def open(self, purge_step: Optional[int]) -> None:
        if not self.enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # ImportError, or a tensorboard that does not match this torch
            self.log("note: no TensorBoard events: the tensorboard package is not installed (pip install tensorboard)")
            return
        # purge_step hides events a killed process wrote past the checkpoint being resumed.
        self.writer = SummaryWriter(str(self.folder), purge_step=purge_step)
        self._new_writer = lambda: SummaryWriter(str(self.folder))

    def epoch(self, record: dict, recon: Optional[np.ndarray], samples: Optional[np.ndarray]) -> None:
        if self.writer is None:
            return
        if self.next_file:  # opened only now, so the run ends without an empty events file
            self.writer, self.next_file = self._new_writer(), False
        epoch = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, epoch)
        for name, grid in (("reconstructions", recon), ("samples", samples)):
            if grid is not None:
                self.writer.add_image(name, grid, epoch, dataformats="HWC")
        self.writer.flush()
        if self.file_per_epoch:
            self.writer.close()  # closing twice (here, then in close()) is harmless
            self.next_file = True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunLog:
    """Messages to stderr and, time-stamped, to the run's log.txt."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def write_status(run: RunFolder, status: str, trainer: Trainer, signal: Optional[int] = None) -> None:
    """run.json with the trainer's progress; `signal`: the one that interrupted the run, if one did."""
    run.write_status(status, updated=time.time(), epoch=trainer.epoch, epochs=trainer.config.train.epochs,
                     step=trainer.step, best_epoch=trainer.best_epoch, pid=os.getpid(), signal=signal)
