"""Run folders: one per training run, never reused. How a run starts, resumes, records, and is loaded.

    runs/<%Y-%m-%d_%Hh%Mm%Ss>[_name]/
      config.yaml      the resolved config (absolute paths); a resume that adds epochs updates it
      run.json         status (running, interrupted, stopped, diverged, finished), epoch, step
      env.json         versions, device, threads, parameter count
      source/          the vaelab package as it ran; git.json (commit, status) and git.diff in a repo
      metrics.jsonl    one JSON object per epoch (keys: see `vaelab.train.trainer`)
      log.txt          resumes, skipped steps, rollbacks, stops
      reconstructions/epoch-NNNN.png   a fixed validation batch: originals above reconstructions
      samples/epoch-NNNN.png           decoded prior samples, the same noise every epoch
      tensorboard/     scalars and both grids, when the tensorboard package is installed
      checkpoints/     see `vaelab.runs.checkpoints`

The folder's files, its run.json, lock and metrics.jsonl: `vaelab.runs.folder.RunFolder`; naming a
folder and finding the run to resume are there too. With run.remote the folder also has a copy on
object storage (`vaelab.remote.mirror`).

Data-parallel runs (`vaelab.train.distributed`): every process goes through the same `train_run`
and `train_in`; rank 0 alone opens, writes and prints, inside `if world.main:`.

Resuming replays nothing that was recorded: metrics lines past the checkpoint are dropped and
rewritten, so a run killed at any moment and resumed ends with the same files as one that was not.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from vaelab.config import Config, load_config
from vaelab.config.keys import flatten
from vaelab.data.collection import describe_skips, load_collection
from vaelab.data.loader import Batch, FittedImages, ImageLoader
from vaelab.errors import VaelabError
from vaelab.files import write_json, write_text
from vaelab.model import build_model, check_model_fits, count_parameters
from vaelab.model.spatial import check_diffusers_folder, load_diffusers_weights
from vaelab.remote.fetch import download_run
from vaelab.remote.mirror import RunMirror, check_remote, claim_name
from vaelab.runs.checkpoints import LAST, CheckpointFolder, LowDisk
from vaelab.runs.folder import RunFolder, create_run_dir, find_resumable, resume_config
from vaelab.runs.mlflow import require_mlflow
from vaelab.runs.provenance import environment, record_environment, snapshot_source
from vaelab.runs.recorder import RankCallbacks, Recorder, RunLog, write_status
from vaelab.train import distributed
from vaelab.train.device import amp_dtype, precision_name, select_device
from vaelab.train.losses import check_scaling
from vaelab.train.rng import isolated, seed_everything
from vaelab.train.trainer import Trainer

# --------------------------------------------------------------------------------------------
# training a run
# --------------------------------------------------------------------------------------------


def train_run(config: Optional[Config] = None, resume: Union[Path, str, None] = None,
              progress: Optional[bool] = None) -> Path:
    """Train `config` in a new run folder, or continue one; returns the run folder.

    resume: None = a new run; a run folder = continue it with its own config (`config` may
    then be None, or differ only in keys a resume may change (vaelab.config.keys), e.g. more epochs); "auto" = continue
    the newest unfinished run under run.root with the same config, else start a new one.
    progress: the live progress bar; None = when stderr is a terminal.
    With run.remote, "auto" also looks there and fetches the run it continues (`vaelab.remote.mirror`).
    Under torchrun every process calls this: rank 0 opens and records the run, the others train
    in step with it and write nothing (see `train_in` and `vaelab.train.distributed`).
    """
    world = distributed.init()
    try:
        if config is not None:  # a config that cannot train is refused before it gets a run folder
            check_scaling(config.loss, config.data.scale, config.model.output_activation)
            check_model_fits(config.model, *config.data.size)
            if getattr(config.model, "init_from", None) and world.main:
                check_diffusers_folder(build_model(config.model, config.data.size), config.model.init_from)
            require_mlflow(config.run)
            check_batch_split(config, world)
            amp_dtype(config.train.amp, select_device(config.train.device))  # an explicit bf16/fp16 it cannot run
            if config.run.remote and world.main:
                check_remote(config.run.remote, config.run.remote_options)
        run_dir, config, fresh = distributed.share(lambda: open_run(config, resume))
        run = RunFolder(run_dir)
        lock = run.lock() if world.main else None
        try:
            if world.main:
                write_text(run.config_file, config.to_yaml(), durable=True)  # a resume may have added epochs
                print(f"run folder: {run_dir}", flush=True)
            train_in(run, config, fresh, progress)
        finally:
            if lock:
                lock.close()
    finally:
        distributed.teardown()
    if world.main:
        print(f"run folder: {run_dir}", flush=True)
    return run_dir


def exit_status(run_dir: Path) -> int:
    """The exit status of `vaelab train` for the run's state. Only a finished run exits 0, so a
    scheduler that restarts failed jobs restarts a preempted one: interrupted is 128 + the signal
    (143 after SIGTERM, 130 after Ctrl-C, as a shell reports them), stopped for lack of disk is 75
    (EX_TEMPFAIL: try again later), diverged 1. Data-parallel ranks other than 0 exit 0: rank 0
    speaks for the run."""
    if not distributed.env_world().main:
        return 0
    state = RunFolder(run_dir).read_status()
    if state.get("status") == "interrupted":
        return 128 + int(state.get("signal") or signal.SIGINT)
    return {"finished": 0, "stopped": 75}.get(state.get("status"), 1)


def check_batch_split(config: Config, world: distributed.World) -> None:
    if config.train.batch_size % world.size:
        raise VaelabError(f"train.batch_size: {config.train.batch_size} images do not split evenly over {world.size} "
                          f"processes; use a multiple of {world.size} (it is the global batch, each process takes "
                          f"batch_size / {world.size} of it)")


def train_command(config_path: Optional[Path], overrides: Sequence[str] = (), resume: Optional[str] = None,
                  progress: Optional[bool] = None) -> Path:
    """`vaelab train [-c CONFIG] [--set KEY=VALUE ...] [--resume RUN_DIR|auto]`.

    With --resume RUN_DIR the --set overrides apply to the run's own config.yaml (e.g.
    train.epochs=300 to train on), and -c, if given, must describe the same run. RUN_DIR may be
    a URL under run.remote (s3://bucket/runs/NAME): it is downloaded into run.root first.
    """
    if resume is not None and "://" in resume:  # a run folder on run.remote: fetch it, then as below
        given = load_config(config_path, overrides)
        url, _, name = resume.rstrip("/").rpartition("/")
        if distributed.env_world().main:  # the other ranks get the run from rank 0
            download_run(url, given.run.remote_options, name, given.run.root)
        resume = str(Path(given.run.root) / name)
    if resume is not None and resume != "auto":
        run_dir = Path(resume)
        if not distributed.env_world().main:  # rank 0 reads the run's config and sends it: the run
            return train_run(None, resume=run_dir, progress=progress)  # folder may be on its disk only
        base = config_path if config_path is not None else RunFolder(run_dir).config_file
        config = load_config(base, overrides) if (config_path is not None or overrides) else None
        if config is None and not base.is_file():
            resume_config(run_dir, None)  # raises the 'not a run folder' message
        return train_run(config, resume=run_dir, progress=progress)
    return train_run(load_config(config_path, overrides), resume=resume, progress=progress)


def open_run(config: Optional[Config], resume: Union[Path, str, None]) -> tuple[Path, Config, bool]:
    """(run folder, config to train, whether the folder is new)."""
    if resume is not None and str(resume) != "auto":
        run_dir = Path(resume).absolute()
        return run_dir, resume_config(run_dir, config), False
    config = config if config is not None else load_config()
    if resume is not None:
        found = find_resumable(config)
        if found is not None:
            return found, resume_config(found, config), False
    r = config.run
    claim = (lambda name: claim_name(r.remote, r.remote_options, name)) if r.remote else (lambda name: True)
    run = RunFolder(create_run_dir(r.root, r.name, claim=claim))
    run.write_status("created")
    snapshot_source(run.source)
    return run.path, config, True


def train_in(run: RunFolder, config: Config, fresh: bool, progress: Optional[bool]) -> str:
    """Build data, model and trainer, restore the last state if there is one, train, record.

    Every process of a data-parallel run calls this, and so runs the same collectives in the same
    order: the loaders' barriers, DDP's first broadcast (in `Trainer`), the state to resume from,
    each step's sums. Rank 0 alone (`world.main`) reads and writes the run folder, logs and shows
    progress; the others train in step with it and may not even have the folder on their disk."""
    world = distributed.current()
    log = RunLog(run.log_file) if world.main else (lambda message: None)
    seed_everything(config.train.seed)  # the same seed on every rank: see vaelab.train.distributed
    device = distributed.device_for(select_device(config.train.device))
    train_loader, val_loader = make_loaders(config, device, log)
    model = build_model(config.model, config.data.size)
    init_from = getattr(config.model, "init_from", None)
    if world.main and init_from and not (run.checkpoints / LAST).exists():  # a resumed run has its own weights
        load_diffusers_weights(model, init_from)  # before DDP, which hands rank 0's weights to the others
        log(f"model: weights from {init_from}")
    trainer = Trainer(config, model, device)
    processes = f"; {world.size} processes (data-parallel, {config.train.batch_size // world.size} images each per batch)"
    log(f"model: {count_parameters(model):,} parameters; device {device}; "
        f"precision {precision_name(trainer.amp)} (train.amp {config.train.amp})"
        f"{processes if world.parallel else ''}")
    r = config.run
    checkpoints = None
    if world.main:
        if fresh:
            write_json(run.env_file, environment(device, model, trainer))
        checkpoints = CheckpointFolder(run.checkpoints, r.keep_checkpoints, r.min_free_gb)

    def prepare() -> tuple[Optional[dict], Optional[str]]:  # (state to resume, status if it cannot start)
        state = checkpoints.load(LAST)
        if state is None:
            try:  # the state before any step: what a rollback in the first epoch returns to
                checkpoints.save_epoch_end(trainer.state_dict(), 0, numbered=False, best=False)
            except LowDisk as problem:
                log(f"stopped: {problem}")
                return None, "stopped"
        return state, None

    state, status = distributed.share(prepare if world.main else None)  # the other ranks get rank 0's
    if state is not None:
        trainer.load_state_dict(state)
        if world.main:
            repair_after_kill(checkpoints, trainer, r.checkpoint_every)
            run.trim_metrics(trainer.epoch)
        log(f"resumed at epoch {trainer.epoch + 1}, batch {trainer.batch} (step {trainer.step})")
    if world.main and not fresh:
        record_environment(run.env_file, device, model, trainer)  # where, and in which precision, it goes on
    recorder = None  # the other ranks record nothing: `RankCallbacks` without a recorder
    if world.main:
        recorder = Recorder(run, config, checkpoints, log, fixed_batch(val_loader or train_loader, r.images))
        recorder.tracker.open(flatten(config.to_dict(), items=False))  # before the try: no mlflow on a resume leaves the run resumable
        recorder.board.open(purge_step=None if fresh else trainer.epoch + 1)
        write_status(run, "running", trainer)
    callbacks = RankCallbacks(recorder) if world.parallel else recorder
    with mirrored(run, config, log) as mirror:
        if recorder is not None:
            recorder.mirror = mirror
        try:
            with stop_on_signals(trainer, log) as received:
                status = status or trainer.fit(train_loader, val_loader, callbacks, progress if world.main else False)
                if world.parallel and callbacks.problem is not None:
                    status = "stopped"
        except BaseException:
            if world.main:
                write_status(run, "failed", trainer)
            raise
        finally:
            if recorder is not None:
                recorder.board.close()
                recorder.tracker.close(status or "failed")
        if world.main:
            write_status(run, status, trainer, signal=received.get("signal") if status == "interrupted" else None)
            best = (f"; best val loss {trainer.best_loss:.6g} at epoch {trainer.best_epoch}"
                    if trainer.best_epoch else "")
            log(f"{status}: {trainer.epoch}/{config.train.epochs} epochs, {trainer.step} steps{best}")
            if status != "finished":
                log(f"continue with: vaelab train --resume {run.path}")
    return status


@contextmanager
def mirrored(run: RunFolder, config: Config, log):
    """The run folder's copy on run.remote while training, synced a last time at the end; None
    without one, and on the ranks other than 0 of a data-parallel run, which write nothing."""
    if not config.run.remote or not distributed.current().main:
        yield None
        return
    mirror = RunMirror(run.path, config.run.remote, config.run.remote_options, log)
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.close()


def make_loaders(config: Config, device: torch.device, log) -> tuple[ImageLoader, Optional[ImageLoader]]:
    world = distributed.current()
    check_batch_split(config, world)
    with distributed.local_main_first():  # it fills the on-disk caches the other ranks then read
        collection = load_collection(config.data, progress=sys.stderr.isatty() and world.main)
        images = FittedImages(collection, config.data)
        if world.local_size < world.size and world.local_rank == 0:
            fill_cache(images, config.data.worker_count())
    summary = describe_skips(collection.skipped)
    if summary:
        log(summary)
    t, workers, pin, ahead = config.train, config.data.worker_count(world.local_size), device.type == "cuda", config.data.prefetch
    train = ImageLoader(images, images.positions_of(collection.train), t.batch_size, t.seed,
                        shuffle=True, drop_last=True, workers=workers, pin_memory=pin, prefetch=ahead,
                        shard=(world.rank, world.size))
    val = None
    if len(collection.val):
        val = ImageLoader(images, images.positions_of(collection.val), t.batch_size, t.seed,
                          shuffle=False, workers=workers, pin_memory=pin, prefetch=ahead)
    log(f"data: {len(collection.train)} train, {len(collection.val)} val images at "
        f"{config.data.size[0]}x{config.data.size[1]} ({config.data.fit}); {train.batches_per_epoch()} batches per epoch")
    return train, val


def fill_cache(images: FittedImages, workers: int) -> None:
    """Decode every image into this machine's cache file before training. With several machines
    no machine's processes see all the images (each takes its share of every batch, and rank 0
    alone validates), so the cache would never become final and every epoch would go through the
    slower decoding path. Isolated: the pass must not move the RNG whose noise all ranks share."""
    if images.cache is None or images.cache_ready():
        return
    every = ImageLoader(images, np.arange(len(images)), batch_size=64, shuffle=False, workers=workers)
    for _ in isolated(every.batches(0)):
        pass


def fixed_batch(loader: ImageLoader, count: int) -> Optional[Batch]:
    """The first `count` images of the loader's epoch-0 order: the same images every epoch."""
    if count <= 0:
        return None
    got: list[Batch] = []
    with closing(loader.batches(0)) as batches:
        for batch in isolated(batches):
            got.append(batch)
            if sum(len(b) for b in got) >= count:
                break
    if not got:
        return None
    return Batch(*(torch.cat([getattr(b, f) for b in got])[:count] for f in ("pixels", "boxes", "positions")))


@contextmanager
def stop_on_signals(trainer: Trainer, log):
    """Ctrl-C or SIGTERM (what a preempted machine gets): finish the step, save, stop. Twice: abort."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return

    owner = os.getpid()
    # Under torchrun a Ctrl-C reaches each rank twice: from the terminal and forwarded by torchrun.
    repeat_after = 2.0 if distributed.current().parallel else 0.0
    first = [0.0]
    received: dict = {}  # the first signal, for the exit status (`exit_status`)

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked data worker inherited this handler: the main process decides
            return
        if trainer.stop_requested:
            if time.monotonic() - first[0] < repeat_after:
                return
            raise KeyboardInterrupt
        trainer.stop_requested = True
        first[0] = time.monotonic()
        received["signal"] = int(signum)
        log(f"{signal.Signals(signum).name}: stopping after this step once a checkpoint is written (again to abort)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------------
# continuing a run
# --------------------------------------------------------------------------------------------


def repair_after_kill(checkpoints: CheckpointFolder, trainer: Trainer, every: int) -> None:
    """A kill between writing an epoch-end last.pt and linking it leaves the links stale; redo them."""
    checkpoints.drop_after(trainer.epoch)
    if trainer.batch == 0:
        epoch = trainer.epoch
        numbered = epoch > 0 and (epoch % every == 0 or epoch == trainer.config.train.epochs)
        best = epoch > 0 and trainer.best_epoch == epoch
        checkpoints.link_epoch_end(epoch, numbered, best)
