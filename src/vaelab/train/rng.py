"""The random number generators a run depends on: seeding them, saving and restoring them for an
exact resume, and fencing off the draws that must not move them.

A step's noise comes from the global torch RNG, which other code draws from too: torch's
DataLoader takes a seed from it each time it starts. `isolated` keeps batch fetching out of the
stream, so the noise depends only on the seed and the steps taken (see `vaelab.train.trainer`).

train.compile: inductor's generated kernels draw random numbers with their own Philox generator,
so a compiled step's noise differs from eager's. `compiled` keeps eager's random ops in the
compiled graph, so a compiled run draws the noise an eager run draws from the same global RNG,
and resuming, data-parallel equivalence and the RNG state in the checkpoint mean what they mean
without compile.
"""

from __future__ import annotations

import random
from typing import Iterator, TypeVar

import numpy as np
import torch
from torch import nn

Item = TypeVar("Item")


def seed_everything(seed: int) -> None:
    """The same seed on every rank of a data-parallel run: see `vaelab.train.distributed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every RNG state, in types that torch.load(weights_only=True) accepts."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def compiled(module: nn.Module) -> nn.Module:
    """torch.compile, drawing random numbers with eager's ops from the global RNG (see the module
    doc). The noise is batch x latent numbers per step: taking it out of the fused kernels costs
    nothing measurable next to the convolutions."""
    return torch.compile(module, options={"fallback_random": True})


def isolated(batches: Iterator[Item]) -> Iterator[Item]:
    """Fetch each batch with the global torch RNG saved and restored around it (see the module doc)."""
    while True:
        with torch.random.fork_rng(devices=[]):
            try:
                batch = next(batches)
            except StopIteration:
                return
        yield batch
