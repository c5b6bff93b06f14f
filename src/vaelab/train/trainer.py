"""The Trainer: guarded optimisation steps, the epoch loop, and a training state that resumes exactly.

The trainer does no file I/O. The run layer (`vaelab.runs.session`) hands `fit` a `Callbacks` object
that saves checkpoints, writes metrics and images, and supplies the state to roll back to.

Exact resume. Everything a step depends on is in `state_dict()`: weights (with a vq model's
codebook buffers), the EMA of the weights, optimizer, grad scaler, learned sigma, every RNG
(torch, CUDA, numpy, python), the epoch, the batch position in the epoch, the step, the
guard's running statistics and the epoch's partial sums. The data
order is a pure function of (seed, epoch), so a resumed run asks the loader for the remaining
batches of the epoch. Two things would otherwise break bit-exactness and are fenced off:
- torch's DataLoader draws a seed from the global torch RNG each time it starts, which the
  model's sampling noise also uses; every batch fetch runs inside `fork_rng` (`vaelab.train.rng.isolated`).
- evaluation samples z too; it runs with its own fixed seed inside `fork_rng` (`vaelab.train.evaluation`).

Guard. A step whose loss or gradient norm is non-finite, or spikes far above its running
level, is not applied: the gradients are dropped and the step is counted as skipped. After
`train.rollback_after` bad steps in a row the trainer asks the callbacks for the state at the
end of the last completed epoch, reloads its weights and optimizer, and lowers the lr by
`train.rollback_lr_factor`; data position, RNG and step count go on forward.

Data parallelism (`vaelab.train.distributed`, under torchrun): the step runs through DDP on this
rank's slice of the global batch, with the global batch's noise; the loss is this rank's share
of the global-batch loss, and the guard judges the loss and gradient norm summed over the ranks
in the step's one sync, so every rank applies, skips, rolls back and stops at the same steps.
Validation runs on rank 0 only. All metrics below are the global batch's.

Metric conventions (the per-batch ones are defined in `vaelab.train.losses`, the val_* ones in
`vaelab.train.evaluation`):
- train_loss/recon/kl: means over the epoch's applied steps (loss includes KL warm-up and free bits).
- train_images: images the epoch's steps took, skipped steps included (for images/s).
- A vq model has no KL: train_kl is None, and its records add train_commitment (in train_loss).
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Optional, Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaelab.config import Config
from vaelab.data.loader import Batch, ImageLoader, epoch_order
from vaelab.data.scaling import to_model_input
from vaelab.errors import VaelabError
from vaelab.train import distributed
from vaelab.train.device import amp_dtype
from vaelab.train.evaluation import validation_metrics
from vaelab.train.guard import Guard
from vaelab.train.losses import check_scaling, kl_weight_at, make_log_sigma, vae_loss
from vaelab.train.optim import load_optimizer, make_optimizer
from vaelab.train.progress import ProgressBar
from vaelab.train.rng import capture_rng, compiled, isolated, restore_rng

STATE_FORMAT = "vaelab-train-state"
STATE_VERSION = 1
COSINE_FLOOR = 0.01  # train.lr_schedule cosine ends at lr / 100
SKIP_LOG_LIMIT = 20  # skipped steps logged one by one per epoch; the rest are only counted


class Callbacks(Protocol):
    """What `Trainer.fit` needs from the run layer."""

    def after_step(self, trainer: "Trainer") -> None: ...  # may save a mid-epoch checkpoint
    def epoch_end(self, trainer: "Trainer", record: dict) -> None: ...  # metrics, images, checkpoints
    def rollback_state(self) -> dict: ...  # the training state at the end of the last completed epoch
    def log(self, message: str) -> None: ...


class StopTraining(Exception):
    """Raised by a callback to end the run cleanly (e.g. the disk is nearly full)."""


# --------------------------------------------------------------------------------------------
# the data order, a checkpoint's weights
# --------------------------------------------------------------------------------------------


def batch_rows(loader: ImageLoader, epoch: int) -> np.ndarray:
    """selection position -> row of the image in its global batch of `epoch` (data-parallel runs
    draw the noise of the whole global batch and pick their rows, see `vaelab.train.distributed`)."""
    plan = epoch_order(len(loader.positions), loader.batch_size, loader.seed, epoch, loader.shuffle, loader.drop_last)
    rows = np.zeros(len(loader.images), dtype=np.int64)
    for batch in plan:
        rows[loader.positions[batch]] = np.arange(len(batch))
    return rows


def batch_index(loader: ImageLoader, epoch: int) -> np.ndarray:
    """selection position -> index of its batch in `epoch`'s order. The loader drops a batch whose
    images all failed to decode, so counting yielded batches would lose the place in the epoch."""
    plan = epoch_order(len(loader.positions), loader.batch_size, loader.seed, epoch, loader.shuffle, loader.drop_last)
    index = np.full(len(loader.images), -1, dtype=np.int64)
    for i, rows in enumerate(plan):
        index[loader.positions[rows]] = i
    return index


def inference_weights(state: dict) -> dict:
    """The model weights a checkpoint's user should get: the EMA of the weights when the run kept
    one (train.ema), else the trained weights."""
    if state.get("ema"):
        return {key.removeprefix("module."): value for key, value in state["ema"].items() if key.startswith("module.")}
    return state["model"]


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------


def empty_sums() -> dict:
    return {"loss": 0.0, "recon": 0.0, "kl": 0.0, "commitment": 0.0, "grad_norm": 0.0, "applied": 0, "skipped": 0,
            "images": 0}


class Trainer:
    def __init__(self, config: Config, model: nn.Module, device: torch.device):
        check_scaling(config.loss, config.data.scale, config.model.output_activation)
        self.config, self.device = config, device
        wanted = config.train.channels_last
        self.channels_last = device.type == "cuda" if wanted == "auto" else wanted
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=memory_format)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        self.amp = amp_dtype(config.train.amp, device)
        # The training step calls `step_model`; `model` stays the plain module, so checkpoints,
        # evaluation and images never see a compiled wrapper's renamed state dict.
        self.step_model = compiled(self.model) if config.train.compile else self.model
        self.world = distributed.current()
        if self.world.parallel:  # DDP around the global-batch forward; `model` stays plain (see above)
            self.step_model = distributed.wrap(self.model, device, config.train.compile)
        self.rows: Optional[np.ndarray] = None  # data-parallel: position -> row in its global batch
        self.noise_rows = 0  # data-parallel: rows of noise per global batch
        self.log_sigma: Optional[nn.Parameter] = None
        if config.loss.reconstruction == "gaussian" and config.loss.sigma == "learned":
            self.log_sigma = nn.Parameter(make_log_sigma().detach().to(device))
        self.has_kl = model.family != "vq"  # a quantized latent has a commitment term instead
        self.params = list(model.parameters()) + ([self.log_sigma] if self.log_sigma is not None else [])
        t = config.train
        self.optimizer = make_optimizer(self.params, config)  # decay on weights of ndim >= 2 only
        self.ema: Optional[AveragedModel] = None  # train.ema: the averaged weights that evaluation uses
        if t.ema is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema))
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.guard = Guard(t.spike_factor, t.spike_warmup_steps)
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the current epoch (its position in the epoch's order)
        self.step = 0  # batches done in the whole run, applied or skipped
        self.lr_scale = 1.0  # lowered by each rollback
        self.best_loss, self.best_epoch = math.inf, 0
        self.sums = empty_sums()
        self.per_epoch = 1  # set by fit from the loader
        self.time_base = 0.0  # active seconds before this process took over
        self.clock = time.monotonic()
        self.stop_requested = False  # set by a signal handler: stop after the current step
        self.stop_agreed = False  # data-parallel: some rank's stop_requested, as of the last step's all-reduce

    # --- one step ------------------------------------------------------------------------

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext()

    def kl_weight(self) -> float:
        return kl_weight_at(self.config.loss, self.epoch + self.batch / self.per_epoch)

    @property
    def stopping(self) -> bool:
        """Stop at this point? Under data parallelism every rank must leave at the same step, so only
        the wishes summed with the last step's losses count; a signal after that counts at the next step."""
        return self.stop_agreed if self.world.parallel else self.stop_requested

    @property
    def lr(self) -> float:
        """The configured lr, lowered by rollbacks, times the schedule at this point of the run. The
        schedule depends on the position alone, so resuming restores it with the epoch and batch."""
        t = self.config.train
        factor = 1.0
        if t.lr_schedule == "cosine":
            done = min(1.0, (self.epoch + self.batch / self.per_epoch) / t.epochs)
            factor = COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * done))
        return t.lr * self.lr_scale * factor

    def train_step(self, batch: Batch) -> Optional[str]:
        """One guarded optimisation step. None when the weights were updated, else why they were not."""
        inputs = to_model_input(batch, self.config.data.scale, self.device, self.channels_last)
        with self.autocast():
            if self.world.parallel:  # this rank's rows of the global batch's noise
                rows = torch.from_numpy(self.rows[batch.positions.numpy()]).to(self.device)
                out = self.step_model(inputs.x, rows, self.noise_rows)
            else:
                out = self.step_model(inputs.x)
        parts = vae_loss(out, inputs.x, inputs.mask, self.config.loss, self.kl_weight(), self.log_sigma,
                         distributed.global_batch())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts["loss"]).backward()
        if self.world.parallel and self.log_sigma is not None:  # outside the DDP module: average it here
            self.log_sigma.grad = distributed.sum_over_ranks(self.log_sigma.grad) / self.world.size
        self.scaler.unscale_(self.optimizer)  # no-op without fp16; the norm must be in true units
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        # One device sync per step: the guard must see the values before the weights change. Under
        # data parallelism they are summed over the ranks in the same sync, so every rank judges
        # the global batch's loss and agrees on skips, rollbacks and when to stop.
        (loss, norm_value, recon, kl, commitment), images, self.stop_agreed = distributed.step_totals(torch.stack(
            [parts["loss"].detach().float(), norm.float(), parts["recon"], parts["kl"], parts["commitment"]]),
            len(batch), self.stop_requested)
        self.sums["images"] += images  # for images/s in `vaelab compare`, skipped steps included
        reason = self.guard.judge(loss, norm_value)
        if reason is None:
            if self.config.train.lr_schedule != "constant":
                self.set_lr()
            if self.config.train.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.config.train.grad_clip, norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.guard.accept(loss, norm_value)
            for key, value in (("loss", loss), ("recon", recon), ("kl", kl), ("commitment", commitment),
                               ("grad_norm", norm_value)):
                self.sums[key] += value
            self.sums["applied"] += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        # An fp16 overflow with a finite loss is the scaler's normal calibration: it lowers the
        # scale; the step is skipped but is no sign of divergence, so it does not count to a rollback.
        overflow = self.scaler.is_enabled() and math.isfinite(loss) and not math.isfinite(norm_value)
        if self.scaler.is_enabled():
            self.scaler.update()
        self.guard.skipped += 1
        self.sums["skipped"] += 1
        if not overflow:
            self.guard.streak += 1
        return reason

    def roll_back(self, state: dict, reason: str) -> str:
        """Reload weights and optimizer from `state`, lower the lr; returns the log line."""
        old_lr = self.lr
        self._load_learned(state)
        self.lr_scale *= self.config.train.rollback_lr_factor
        self.set_lr()
        self.guard.rollbacks += 1
        self.guard.streak = 0
        self.guard.seen = 0  # re-learn the running level from the restored weights
        epoch = state["progress"]["epoch"]
        return (f"step {self.step}: {self.config.train.rollback_after} bad steps in a row (last: {reason}); "
                f"rolled back to the weights at the end of epoch {epoch} and lowered lr {old_lr:.3g} -> {self.lr:.3g}")

    def set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    # --- the weights that `vaelab.train.evaluation` uses ---------------------------------

    @property
    def eval_model(self) -> nn.Module:
        """The model that validation, the image grids and saved inference weights use: the EMA of
        the weights with train.ema (with the live model's buffers: norm statistics, a VQ codebook,
        which are not averaged), else the model itself."""
        if self.ema is None:
            return self.model
        self._sync_ema_buffers()
        return self.ema.module

    @torch.no_grad()
    def _sync_ema_buffers(self) -> None:
        for averaged, live in zip(self.ema.module.buffers(), self.model.buffers()):
            averaged.copy_(live)

    # --- the loop ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.time_base + time.monotonic() - self.clock

    def fit(self, train: ImageLoader, val: Optional[ImageLoader], callbacks: Callbacks,
            progress: Optional[bool] = None) -> str:
        """Train until `train.epochs` are done. Returns finished, interrupted, stopped or diverged."""
        t = self.config.train
        self.per_epoch = min(train.batches_per_epoch(), t.batches_per_epoch or sys.maxsize)
        self.clock = time.monotonic()
        self.model.train()
        bar = ProgressBar(progress, t.epochs, self.per_epoch, done=self.epoch * self.per_epoch + self.batch)
        try:
            with bar:
                while self.epoch < t.epochs:
                    status = self._train_epoch(train, callbacks, bar)
                    if status:
                        return status
                    # Data-parallel: validation on rank 0 only, the others wait (see vaelab.train.distributed).
                    record = self._end_epoch(val if self.world.main else None)
                    callbacks.epoch_end(self, record)
                    if self.stopping:
                        return "interrupted"
        except StopTraining as stop:
            callbacks.log(f"stopped: {stop}")
            return "stopped"
        return "finished"

    def _train_epoch(self, train: ImageLoader, callbacks: Callbacks, bar: ProgressBar) -> Optional[str]:
        t = self.config.train
        index = batch_index(train, self.epoch)
        if self.world.parallel:
            self.rows, self.noise_rows = batch_rows(train, self.epoch), min(train.batch_size, len(train.positions))
        batches = isolated(train.batches(self.epoch, start=self.batch, stop=self.per_epoch))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return None
            except RuntimeError:
                # Ctrl-C also reaches the first epoch's decoding workers, whose exit surfaces here.
                if not self.stop_requested:
                    raise
                callbacks.after_step(self)
                return "interrupted"
            reason = self.train_step(batch)
            # A data-parallel shard may be empty (all its images failed), yet it is its batch's turn.
            self.batch = int(index[int(batch.positions[0])]) + 1 if len(batch) else self.batch + 1
            self.step += 1
            if reason is not None:
                if self.sums["skipped"] <= SKIP_LOG_LIMIT:
                    callbacks.log(f"step {self.step}: skipped, {reason}")
                if self.guard.streak >= t.rollback_after:
                    if self.guard.rollbacks >= t.max_rollbacks:
                        callbacks.log(f"stopped: training diverged after {self.guard.rollbacks} rollbacks "
                                      f"(last: {reason}); lower train.lr or set train.grad_clip")
                        return "diverged"
                    callbacks.log(self.roll_back(callbacks.rollback_state(), reason))
            bar.update(self)
            callbacks.after_step(self)
            if self.stopping:
                return "interrupted"

    def _end_epoch(self, val: Optional[ImageLoader]) -> dict:
        s = self.sums
        applied = max(s["applied"], 1)
        mean = (lambda key: s[key] / applied) if s["applied"] else (lambda key: None)
        record = {"epoch": self.epoch + 1, "step": self.step, "time_s": round(self.elapsed(), 3),
                  "train_loss": mean("loss"), "train_recon": mean("recon"),
                  "train_kl": mean("kl") if self.has_kl else None}
        if not self.has_kl:
            record["train_commitment"] = mean("commitment")
        record.update({"val_loss": None, "val_recon": None, "val_kl": None, "val_mse": None, "val_psnr": None,
                       "val_active_units": None, "val_kl_per_dim": None})
        if val is not None:
            record.update(validation_metrics(self, val))
        record.update({"lr": self.lr, "kl_weight": self.kl_weight(), "grad_norm": mean("grad_norm"),
                       "skipped_steps": s["skipped"], "rollbacks": self.guard.rollbacks,
                       "train_images": s["images"]})
        judged = record["val_loss"] if record["val_loss"] is not None else record["train_loss"]
        record["best"] = judged is not None and judged < self.best_loss
        if record["best"]:
            self.best_loss, self.best_epoch = judged, self.epoch + 1
        self.epoch, self.batch, self.sums = self.epoch + 1, 0, empty_sums()
        return record

    # --- training state ------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The complete training state: tensors, numbers, strings, lists and dicts only."""
        if self.ema is not None:
            self._sync_ema_buffers()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "log_sigma": None if self.log_sigma is None else self.log_sigma.detach().clone(),
            # AveragedModel's state ("module.<weight>", "n_averaged"); its weights are what
            # `inference_weights` hands to load_run
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": {**capture_rng(), "cuda_device": self.device.index or 0 if self.device.type == "cuda" else -1},
            "progress": {"epoch": self.epoch, "batch": self.batch, "step": self.step, "time_s": self.elapsed(),
                         "lr_scale": self.lr_scale, "best_loss": self.best_loss, "best_epoch": self.best_epoch},
            "guard": asdict(self.guard),
            "sums": dict(self.sums),
        }

    def _load_learned(self, state: dict) -> None:
        """Everything that gradient steps change: weights, optimizer, scaler, log-sigma."""
        self.model.load_state_dict(state["model"])
        load_optimizer(self.optimizer, state["optimizer"], self.params)
        if state["scaler"]:  # empty when saved without fp16
            self.scaler.load_state_dict(state["scaler"])
        if self.log_sigma is not None and state["log_sigma"] is not None:
            self.log_sigma.data.copy_(state["log_sigma"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise VaelabError(f"checkpoint: not a vaelab training state of version {STATE_VERSION}; start a new run")
        self._load_learned(state)
        p = state["progress"]
        self.epoch, self.batch, self.step, self.time_base = p["epoch"], p["batch"], p["step"], p["time_s"]
        self.lr_scale, self.best_loss, self.best_epoch = p["lr_scale"], p["best_loss"], p["best_epoch"]
        self.set_lr()
        self.guard = Guard(**state["guard"])
        self.sums = dict(state["sums"])
        restore_rng(state["rng"])
        rng = state["rng"]
        if self.device.type == "cuda" and rng["cuda"] and 0 <= rng.get("cuda_device", -1) < len(rng["cuda"]):
            # Each rank trains on its own GPU (cuda:LOCAL_RANK) but continues the stream of the GPU
            # the state was saved from (rank 0's); the same holds for a run resumed on another GPU.
            torch.cuda.set_rng_state(rng["cuda"][rng["cuda_device"]], self.device)
        self.clock = time.monotonic()
