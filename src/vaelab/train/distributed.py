"""Data-parallel training: one process per device, started by torchrun, that together act as one run.

    torchrun --nproc_per_node=N -m vaelab train ...        (add --nnodes/--rdzv-* for several machines)
    vaelab train --devices N ...                            (the same, on this machine, through torchrun's launcher)

This module holds the plumbing (the process group from torchrun's RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT, who is rank 0, sums over ranks, barriers) and the one model wrapper DDP
needs. How a run is spread, and why:

- Backend: NCCL for CUDA tensors, gloo for CPU tensors, in one group ("cpu:gloo,cuda:nccl"), so
  small control sums on the CPU never wait for the GPU. Each rank trains on cuda:LOCAL_RANK.
- Data: every rank computes the same epoch order and takes its contiguous slice of each global
  batch (`ImageLoader.shard`): train.batch_size is the global batch, each rank gets
  batch_size / world_size images of it. N processes therefore see exactly the global batches of a
  one-process run.
- Noise: every rank seeds torch with the same train.seed and draws the reparameterisation noise
  for the whole global batch, then uses its own rows (`GlobalBatchForward`). The ranks' RNG
  streams stay identical and equal to a one-process run's, so the loss curves match and one RNG
  state (rank 0's, in the checkpoint) resumes every rank. Drawing a global batch of noise costs
  batch_size x latent numbers per step, nothing next to the images.
- Loss: each rank computes its share of the global-batch loss (`GlobalBatch` in `vaelab.train.losses`):
  its per-image sum times world_size / global image count, so DDP's gradient average is the
  full-batch gradient even when a shard lost images to decode errors. The statistics that are not
  sums over images (optimal sigma's batch MSE, free bits' per-dimension KL) are summed over the
  ranks before the loss, so they are the global batch's.
- Guard and stop: the step's loss parts, gradient norm, image count and stop wish are summed in
  one small all-reduce per step (`step_totals`); the guard judges the global values, which are
  the same on every rank, so every rank skips, applies or rolls back the same steps and all leave
  at the same step after a Ctrl-C or SIGTERM.
- Files: only rank 0 writes the run folder (config, metrics, TensorBoard, images, checkpoints,
  log) and prints; rank 0 reads a checkpoint and sends it to the others (no shared disk needed).
- Validation runs on rank 0 only, on the unwrapped model: its metrics are then exactly a
  one-process run's (latent statistics such as active units need every image in one place),
  and the validation split is a tenth of the data; the other ranks wait at the next step.
- Image cache: the ranks of one machine share the memory-mapped cache file, which is built to
  take several writers (`vaelab.data.cache`); each rank decodes only its own shard in the first
  epoch. A machine that does not hold every rank has its first process fill the whole cache
  before training (`vaelab.runs.session.fill_cache`), or it would never be complete. The local rank 0 of each machine loads the collection first (index, metadata and the
  built-in set are cached on disk), the others then find it ready.
- Batch norm: on CUDA the model's BatchNorm layers become SyncBatchNorm (statistics over the
  global batch); gloo has no SyncBatchNorm, so on CPU each rank normalises over its own shard.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from vaelab.errors import VaelabError
from vaelab.model.contract import VAEOutput
from vaelab.train.rng import compiled

# Rank 0 may index a large photo folder or write a checkpoint while the others wait in a collective.
TIMEOUT = timedelta(minutes=float(os.environ.get("VAELAB_DIST_TIMEOUT_MIN", "30")))


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run; World() is a plain one-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


_world = World()
_owned = False  # whether init() created the process group (a caller's own group is left alone)


def current() -> World:
    return _world


def env_world() -> World:
    """The world torchrun describes in the environment (World() when not under torchrun)."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return World(int(env.get("RANK", "0")), size, int(env.get("LOCAL_RANK", "0")), local_size)


def init() -> World:
    """Join the process group torchrun set up; a no-op in a one-process run. Returns the world."""
    global _world, _owned
    world = env_world()
    if not world.parallel or torch.distributed.is_initialized():
        _world = world
        return world
    if not torch.distributed.is_available():
        raise VaelabError("torch.distributed is not available in this PyTorch build; train with one process")
    if torch.cuda.is_available():
        if world.local_size > torch.cuda.device_count():
            raise VaelabError(f"{world.local_size} processes on this machine but only {torch.cuda.device_count()} "
                              "GPU(s); start one process per GPU (--nproc_per_node / --devices)")
        torch.cuda.set_device(world.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend, timeout=TIMEOUT)
    _world, _owned = world, True
    return world


def teardown() -> None:
    global _world, _owned
    if _owned and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _world, _owned = World(), False


def device_for(device: torch.device) -> torch.device:
    """The device this rank trains on: cuda:LOCAL_RANK when the config says CUDA (or auto found it)."""
    if not _world.parallel:
        return device
    if device.type == "cuda":
        return torch.device("cuda", _world.local_rank)
    if device.type != "cpu":
        raise VaelabError(f"train.device: {device.type} cannot train with several processes; use cuda or cpu")
    return device


# --------------------------------------------------------------------------------------------
# sums over ranks
# --------------------------------------------------------------------------------------------


def sum_over_ranks(values: Tensor) -> Tensor:
    """The elementwise sum of `values` over all ranks (a new tensor; no gradient flows through)."""
    total = values.detach().clone()
    if _world.parallel:
        torch.distributed.all_reduce(total)
    return total


class RankSum:
    """The `vaelab.train.losses.GlobalBatch` of this run: the ranks that share each global batch."""

    def __init__(self, size: int):
        self.size = size

    def sum(self, values: Tensor) -> Tensor:
        return sum_over_ranks(values)


def global_batch() -> Optional[RankSum]:
    """What `vae_loss` needs to compute global-batch statistics; None in a one-process run."""
    return RankSum(_world.size) if _world.parallel else None


def step_totals(values: Tensor, images: int, stop: bool) -> tuple[list[float], int, bool]:
    """The step's loss shares (summed over ranks and divided by their number: the global values),
    the global image count and whether any rank wants to stop, from one all-reduce.

    `values` are this rank's shares of the loss parts and the gradient norm (already the same
    on every rank: DDP averaged the gradients). One process: the values as they are."""
    if not _world.parallel:
        return values.tolist(), images, stop
    extra = torch.tensor([float(images), float(stop)], device=values.device)
    totals = sum_over_ranks(torch.cat([values.float() / _world.size, extra])).tolist()
    return totals[:-2], int(round(totals[-2])), totals[-1] > 0


def barrier() -> None:
    """Wait for every rank. A CPU sum (gloo), so it never involves the GPU or NCCL's timeouts."""
    if _world.parallel:
        torch.distributed.all_reduce(torch.zeros(1))


def broadcast(value: Any = None) -> Any:
    """Rank 0's `value` on every rank (pickled over the process group, never written to a file)."""
    if not _world.parallel:
        return value
    box = [value if _world.main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class RankFailed(SystemExit):
    """Raised on the other ranks when rank 0 fails in `share`: rank 0 alone reports the error."""


def share(make: Optional[Callable[[], Any]]) -> Any:
    """Run `make` on rank 0 only and hand its result to every rank.

    When it fails on rank 0 the other ranks leave too (quietly, status 2) instead of waiting
    in the next collective until the timeout."""
    if not _world.parallel:
        return make() if make is not None else None
    if _world.main:
        try:
            result = make() if make is not None else None
        except BaseException:
            broadcast(("failed", None))
            raise
        broadcast(("ok", result))
        return result
    status, result = broadcast()
    if status != "ok":
        raise RankFailed(2)
    return result


@contextmanager
def local_main_first():
    """The local rank 0 of each machine runs the body first (it may build on-disk caches: the
    built-in figure set, the folder index, the image cache file); the others follow once it is done."""
    if _world.parallel and _world.local_rank != 0:
        barrier()
    try:
        yield
    finally:
        if _world.parallel and _world.local_rank == 0:
            barrier()


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


class GlobalBatchForward(nn.Module):
    """The model's forward with the noise of the whole global batch.

    Every rank draws `total` rows of noise, exactly what a one-process run draws for the global
    batch, and keeps the `rows` of its own images; the RNG streams of all ranks stay the same. A
    family with a deterministic latent (vq: `noise_shape` None) draws nothing."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor, rows: Tensor, total: int) -> VAEOutput:
        shape = self.vae.noise_shape
        noise = None if shape is None else torch.randn((total, *shape), device=x.device).index_select(0, rows)
        return self.vae(x, noise=noise)


def wrap(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """The module a rank's training step calls: DDP around `GlobalBatchForward(model)`.

    `model` itself stays the plain module (its BatchNorm layers synchronised on CUDA), so
    checkpoints hold its state_dict without DDP's `module.` prefix and load in any run."""
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the children in place; same state_dict keys
    ddp = nn.parallel.DistributedDataParallel(
        GlobalBatchForward(model), device_ids=[device.index] if device.type == "cuda" else None)
    return compiled(ddp) if compile else ddp


# --------------------------------------------------------------------------------------------
# launching
# --------------------------------------------------------------------------------------------


def launch(nproc: int, args: Sequence[str]) -> int:
    """`vaelab train --devices N`: start N local processes running `python -m vaelab ARGS` through
    torchrun's own launcher (standalone rendezvous on this machine). Returns the exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise VaelabError(f"--devices {nproc}: this machine has {torch.cuda.device_count()} GPU(s); "
                          "use at most that many (or torchrun --nnodes for several machines)")
    # The N processes share the cores (torchrun alone would give each one thread, with a warning).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    options = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                          "-m", "vaelab", *args])
    try:
        run(options)
    except ChildFailedError as failed:
        # Every rank has already reported its own error (rank 0 the readable one).
        codes = [f.exitcode for f in failed.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    except SignalException:
        # Ctrl-C / SIGTERM: torchrun passed it on; the ranks stopped after rank 0's checkpoint.
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0
