"""Batches of fitted uint8 images, decoded by worker processes once and read from the cache after.

The epoch order is a pure function of (seed, epoch), so a resumed run can skip to any batch
without touching an image. Batches stay uint8 (N, H, W, 3) until `scaling.to_model_input`
turns them into floats on the training device: four times less to copy and pin.
"""

from __future__ import annotations

import queue
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from vaelab.config import DataConfig
from vaelab.data.cache import FAILED, FILLED, ImageCache
from vaelab.data.collection import Collection
from vaelab.data.images import Fitted, ImageError, load_fitted
from vaelab.data.metadata import Skip


@dataclass
class Batch:
    pixels: Optional[torch.Tensor]  # uint8 (N, H, W, 3); None only inside the loader
    boxes: torch.Tensor  # int64 (N, 4): top, left, height, width of the real pixels
    positions: torch.Tensor  # int64 (N,): positions in the selection (cache slots)

    def __len__(self) -> int:
        return len(self.positions)


class FittedImages(Dataset):
    """Every selected image, fitted; position i is `collection.selected[i]`."""

    def __init__(self, collection: Collection, data: DataConfig, use_cache: Optional[bool] = None):
        self.metadata = collection.metadata
        self.selected = collection.selected
        self.data = data
        self.cache: Optional[ImageCache] = None
        if data.cache if use_cache is None else use_cache:
            cache = ImageCache(self.metadata, self.selected, collection.file_stats, data, data.resolved_cache_dir())
            try:
                cache.prepare()
                self.cache = cache
            except OSError as error:
                warnings.warn(f"image cache disabled, every epoch will decode: {error}")

    def __len__(self) -> int:
        return len(self.selected)

    def positions_of(self, indices: np.ndarray) -> np.ndarray:
        """Positions in the selection of metadata indices (both are sorted)."""
        return np.searchsorted(self.selected, indices)

    def __getitem__(self, position: int) -> tuple[Optional[np.ndarray], tuple[int, int, int, int], int, str]:
        """(pixels, box, position, error). With a cache the pixels stay in it (None here): a worker
        fills the shared file and the main process reads it, so no image crosses a pipe."""
        if self.cache is None:
            fitted, error = self._decode(position)
            return fitted.pixels, fitted.box, position, error or ""
        cached = self.cache.read(position)
        if cached is not None:
            box = cached[1]
            return None, box, position, "could not be decoded when the cache was built" if box[2] == 0 else ""
        fitted, error = self.cache.fill(position)
        return None, fitted.box, position, error or ""

    def _decode(self, position: int) -> tuple[Fitted, Optional[str]]:
        index = self.selected[position]
        bbox = None
        if self.data.bbox_crop and not np.isnan(self.metadata.bbox[index]).any():
            bbox = tuple(float(v) for v in self.metadata.bbox[index])
        try:
            return load_fitted(self.metadata.file(index), self.data.size, self.data.fit, self.data.pad_rgb, bbox), None
        except ImageError as problem:
            height, width = self.data.size
            return Fitted(np.zeros((height, width, 3), np.uint8), (0, 0, 0, 0)), str(problem)

    def cache_ready(self) -> bool:
        """True when every image is in the cache; makes the cache final the first time it is."""
        return self.cache is not None and self.cache.finalize()


def collate(samples: list[tuple[Optional[np.ndarray], tuple, int, str]]) -> tuple[Batch, list[tuple[int, str]]]:
    """Stack the good samples; hand back the failed ones as (position, message).
    Pixels are None when they live in the cache; the main process gathers them from there."""
    good = [s for s in samples if not s[3]]
    failed = [(s[2], s[3]) for s in samples if s[3]]
    boxes = torch.tensor([s[1] for s in good], dtype=torch.int64).reshape(-1, 4)
    positions = torch.tensor([s[2] for s in good], dtype=torch.int64)
    pixels = None
    if good and good[0][0] is not None:
        pixels = torch.empty((len(good), *good[0][0].shape), dtype=torch.uint8)
        if get_worker_info() is not None:
            pixels.share_memory_()  # before filling: the batch is then sent to the main process without a copy
        np.stack([s[0] for s in good], out=pixels.numpy())
    return Batch(pixels, boxes, positions), failed


def epoch_order(count: int, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool) -> list[np.ndarray]:
    """The batches of one epoch, as indices into a split. A pure function of its arguments."""
    order = np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)
    stop = (count // batch_size) * batch_size if drop_last and count >= batch_size else count
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


@dataclass
class ImageLoader:
    """The batches of one split (train or val) of a `FittedImages`."""

    images: FittedImages
    positions: np.ndarray  # the split, as positions in the selection
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    workers: int = 0
    pin_memory: bool = False
    prefetch: int = 0  # cache batches gathered ahead in a thread (see `prefetched`)
    # Data-parallel training: (rank, world size). Each batch of the epoch's order is the global
    # batch; this process gets its contiguous slice of it and a batch for every global batch, even
    # an empty one, so that all processes step together (see `vaelab.train.distributed`).
    shard: tuple[int, int] = (0, 1)
    skipped: dict[int, Skip] = field(default_factory=dict)
    _ring: list[torch.Tensor] = field(default_factory=list, repr=False)

    def batches_per_epoch(self) -> int:
        return len(epoch_order(len(self.positions), self.batch_size, 0, 0, False, self.drop_last))

    def batches(self, epoch: int, start: int = 0, stop: Optional[int] = None) -> Iterator[Batch]:
        """Batches `start`..`stop` of `epoch`, in the epoch's order."""
        plan = [self.positions[b] for b in epoch_order(
            len(self.positions), self.batch_size, self.seed, epoch, self.shuffle, self.drop_last)][start:stop]
        rank, world = self.shard
        if world > 1:
            plan = [np.array_split(batch, world)[rank] for batch in plan]
        if not plan:
            return
        if self.images.cache_ready():
            yield from prefetched(self._from_cache(plan), self.prefetch)
        else:
            yield from self._decoding(plan)
            self.images.cache_ready()

    def _from_cache(self, plan: list[np.ndarray]) -> Iterator[Batch]:
        cache = self.images.cache
        for positions in plan:
            rows = np.asarray(cache.rows(positions))
            for position in positions[rows[:, 0] == FAILED]:
                self._skip(int(position), "could not be decoded when the cache was built")
            usable = rows[:, 0] == FILLED
            if usable.any() or self.shard[1] > 1:
                yield self._gather(positions[usable], torch.from_numpy(rows[usable, 2:6].copy()))

    def _gather(self, positions: np.ndarray, boxes: torch.Tensor) -> Batch:
        pixels = self._buffer(len(positions))
        self.images.cache.gather(positions, pixels.numpy())
        return Batch(pixels, boxes, torch.from_numpy(positions.astype(np.int64)))

    def _buffer(self, count: int) -> torch.Tensor:
        """A batch buffer that nobody else holds any more, or a new one.

        Buffers are reused only when the ring is their sole owner (by reference count), so a
        caller that keeps batches around never sees one overwritten."""
        height, width = self.images.data.size
        shape = (count, height, width, 3)
        for buffer in self._ring:
            # 3 references: the ring, this loop's variable and getrefcount's own argument
            if sys.getrefcount(buffer) == 3 and buffer.shape == shape:
                return buffer
        buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pin_memory)
        if count == -(-self.batch_size // self.shard[1]) and len(self._ring) < 4:  # a full (shard of a) batch
            self._ring.append(buffer)
        return buffer

    def _decoding(self, plan: list[np.ndarray]) -> Iterator[Batch]:
        loader = DataLoader(
            self.images,
            batch_sampler=[p.tolist() for p in plan],
            num_workers=self.workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.workers else None,
        )
        for batch, failed in loader:
            for position, message in failed:
                self._skip(position, message.split(": ", 1)[-1])
            if len(batch) and batch.pixels is None:
                batch = self._gather(batch.positions.numpy(), batch.boxes)
            if len(batch):
                yield batch
            elif self.shard[1] > 1:  # keep in step with the other processes
                yield Batch(torch.empty((0, *self.images.data.size, 3), dtype=torch.uint8), batch.boxes, batch.positions)

    def _skip(self, position: int, reason: str) -> None:
        if position not in self.skipped:
            path = self.images.metadata.path(self.images.selected[position])
            self.skipped[position] = Skip(path, reason)


def prefetched(items: Iterator, depth: int) -> Iterator:
    """`items`, produced up to `depth` ahead by a background thread.

    The cache gather is a memory copy that the GIL-free wait on the device (each step syncs once)
    leaves room for, so on a GPU the next batch is ready when the step ends. Only for sources that
    draw no random numbers: a thread's draws would land at unpredictable points of the global RNG
    stream and break exact resume (the decoding DataLoader draws a seed, so it is never wrapped).
    Closing the consumer early stops the producer.
    """
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as error:  # handed to the consumer, which raises it in its own thread
            put(error)

    thread = threading.Thread(target=produce, name="vaelab-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
