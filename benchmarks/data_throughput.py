"""Images per second of three loaders on a real photo collection, fit `pad`.

  (a) naive:  a torch DataLoader whose dataset opens, converts and letterboxes every image with
              plain Pillow in every epoch (what Keras's ImageDataGenerator did), same workers
  (b) cold:   vaelab's first epoch: draft-mode JPEG decode, fit, and writing the uint8 cache
  (c) cached: vaelab's later epochs, read from the memory-mapped cache

Each loader yields uint8 batches of the same shape; the timing covers the whole epoch.

    python benchmarks/data_throughput.py [--images DIR --metadata FILE] [--sizes 128 640]

Ends with one JSON line: {"benchmark": "data_throughput", "results": [...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vaelab.config import load_config
from vaelab.data.collection import load_collection
from vaelab.data.loader import FittedImages, ImageLoader

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp-figures"


class NaiveLetterbox(Dataset):
    """The baseline: full decode and resize of every image, every epoch, no cache."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = Image.open(self.files[i]).convert("RGB")
        scale = min(self.size / image.width, self.size / image.height)
        resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        canvas = Image.new("RGB", (self.size, self.size))
        canvas.paste(resized, ((self.size - resized.width) // 2, (self.size - resized.height) // 2))
        return torch.from_numpy(np.asarray(canvas).copy())


def timed_epoch(batches) -> tuple[float, int]:
    start = time.perf_counter()
    count = 0
    for batch in batches:
        count += len(batch.pixels) if hasattr(batch, "pixels") else len(batch)
    return time.perf_counter() - start, count


def measure(size: int, images: Path, metadata: Path, workers: int, batch: int, cold_repeats: int, cached_epochs: int) -> dict:
    overrides = [f"data.images={images}", f"data.metadata={metadata}", f"data.size=[{size}, {size}]",
                 "data.fit=pad", "data.val_fraction=0", f"data.workers={workers}"]
    naive_ips, cold_ips, cached_ips = [], [], []
    for _ in range(cold_repeats):
        with tempfile.TemporaryDirectory(prefix="vaelab-bench-") as cache_dir:
            data = load_config(None, overrides + [f"data.cache_dir={cache_dir}"]).data
            collection = load_collection(data)
            fitted = FittedImages(collection, data)
            loader = ImageLoader(fitted, fitted.positions_of(collection.train), batch_size=batch, workers=workers)
            seconds, count = timed_epoch(loader.batches(0))
            cold_ips.append(count / seconds)
            for epoch in range(1, cached_epochs + 1):
                seconds, count = timed_epoch(loader.batches(epoch))
                cached_ips.append(count / seconds)
            fitted.cache.wait()
            assert fitted.cache.final_path.exists(), "the cold epoch should leave a finished cache"
    files = [collection.metadata.file(i) for i in collection.train]
    naive = DataLoader(NaiveLetterbox(files, size), batch_size=batch, shuffle=True, num_workers=workers)
    for _ in range(cold_repeats):
        seconds, count = timed_epoch(naive)
        naive_ips.append(count / seconds)
    result = {
        "size": size,
        "images": len(files),
        "naive_ips": round(statistics.median(naive_ips), 1),
        "cold_ips": round(statistics.median(cold_ips), 1),
        "cached_ips": round(statistics.median(cached_ips), 1),
    }
    result["cached_over_naive"] = round(result["cached_ips"] / result["naive_ips"], 2)
    result["cold_over_naive"] = round(result["cold_ips"] / result["naive_ips"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--metadata", type=Path, default=SHARED / "metadata.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 640])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="cold and naive epochs per size (median)")
    parser.add_argument("--cached-epochs", type=int, default=3, help="cached epochs per repeat")
    args = parser.parse_args()
    if not args.metadata.is_file():
        sys.exit(f"error: {args.metadata}: not found; pass --images and --metadata")
    torch.set_num_threads(1)
    results = [measure(s, args.images, args.metadata, args.workers, args.batch, args.repeats, args.cached_epochs)
               for s in args.sizes]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}; "
          f"workers={args.workers}, batch={args.batch}, median of {args.repeats} (cached: {args.repeats * args.cached_epochs})")
    print(f"{'size':>5} {'images':>6} {'naive ips':>10} {'cold ips':>9} {'cached ips':>11} {'cold/naive':>11} {'cached/naive':>13}")
    for r in results:
        print(f"{r['size']:>5} {r['images']:>6} {r['naive_ips']:>10.1f} {r['cold_ips']:>9.1f} {r['cached_ips']:>11.1f} "
              f"{r['cold_over_naive']:>11.2f} {r['cached_over_naive']:>13.2f}")
    print(json.dumps({"benchmark": "data_throughput", "results": results}))


if __name__ == "__main__":
    main()
