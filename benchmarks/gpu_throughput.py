"""Training images/s and peak GPU memory for vaelab's GPU fast path, against fp32 eager.

For each image size (640x640: the journal config; 256x256) and batch size, five setups:

    fp32 eager              train.amp=off,  channels_last=false, compile=false   (the baseline)
    bf16                    train.amp=bf16, channels_last=false, compile=false
    bf16 + channels_last    train.amp=bf16, channels_last=true,  compile=false
    bf16 + cl + compile     train.amp=bf16, channels_last=true,  compile=true
    loader alone            the same batches from the same loader, copied to the GPU, no training

What is timed is vaelab's real path: `ImageLoader.batches` (memory-mapped cache, pinned ring
buffers, `data.prefetch` thread) feeding `Trainer.train_step` (uint8 host-to-device copy,
scaling on the GPU, forward, loss, backward, gradient norm, the guard's one sync, optimizer
step). The model is configs/journal-2022-04-05.yaml's, on ../shared/data/ccp-figures (pad).
The first pass decodes every image into the cache, untimed, so all setups read the same cache.

Per setup: `--warmup` untimed steps (compile happens there), then `--steps` timed steps, the
GPU synchronised at both ends. GPU utilisation is the mean of nvidia-smi samples (every 0.2 s)
during the timed steps. The loader must not be the bottleneck: its images/s should be at least
3x the fastest training setup's. Target: bf16 + channels_last >= 2x fp32 eager at 640x640.

    python benchmarks/gpu_throughput.py [--sizes 640 256] [--batches 640:8,16,32 256:32,64,128]

On a machine without a CUDA GPU it says so and exits with status 2. `--allow-cpu` runs the
same code on the CPU (float32 only) to check the script itself, e.g. in the tests.
Ends with one JSON line: {"benchmark": "gpu_throughput", "rows": [...], "ratios": {...}}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import mean
from typing import Iterator, Optional

import torch

from vaelab.config import Config, load_config
from vaelab.data.collection import load_collection
from vaelab.data.loader import Batch, FittedImages, ImageLoader
from vaelab.model import build_model, count_parameters
from vaelab.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ccp-figures"
JOURNAL = ROOT / "configs" / "journal-2022-04-05.yaml"
SETUPS = {  # name -> (train.amp, train.channels_last, train.compile); None = the loader alone
    "fp32 eager": ("off", False, False),
    "bf16": ("bf16", False, False),
    "bf16 + channels_last": ("bf16", True, False),
    "bf16 + cl + compile": ("bf16", True, True),
    "loader alone": None,
}
DEFAULT_BATCHES = {640: [8, 16, 32], 256: [32, 64, 128]}


class UtilisationSampler:
    """Mean GPU utilisation (%) from nvidia-smi, sampled in a thread while a `with` block runs."""

    def __init__(self, device: torch.device):
        self.index = device.index or 0
        self.samples: list[float] = []
        self.enabled = device.type == "cuda" and shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                out = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                self.samples.append(float(out.stdout.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def result(self) -> Optional[float]:
        return round(mean(self.samples), 1) if self.samples else None


def make_config(images: Path, size: int, batch: int, setup: Optional[tuple], device: str, workers: int) -> Config:
    overrides = [f"data.images={images}", f"data.size=[{size},{size}]", f"train.batch_size={batch}",
                 f"train.device={device}", f"data.workers={workers}", "data.val_fraction=0"]
    if (images / "metadata.json").is_file():
        overrides += [f"data.metadata={images / 'metadata.json'}", "data.fields.bbox=person_bbox_xyxy",
                      "data.fields.source=null"]
    if setup is not None:
        amp, channels_last, compile_ = setup
        overrides += [f"train.amp={amp}", f"train.channels_last={str(channels_last).lower()}",
                      f"train.compile={str(compile_).lower()}"]
    return load_config(JOURNAL, overrides)


def endless(loader: ImageLoader) -> Iterator[Batch]:
    epoch = 1  # epoch 0 filled the cache
    while True:
        yield from loader.batches(epoch)
        epoch += 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: Config, loader: ImageLoader, setup: Optional[tuple], warmup: int, steps: int) -> dict:
    """images/s, peak GPU memory and utilisation of one setup."""
    device = torch.device(config.train.device)
    torch.manual_seed(0)
    trainer = None
    if setup is not None:
        trainer = Trainer(config, build_model(config.model, config.data.size), device)

    def step(batch: Batch) -> None:
        if trainer is not None:
            trainer.train_step(batch)
        else:
            batch.pixels.to(device, non_blocking=True)
            synchronize(device)  # as train_step's one sync: the buffer may be reused after it

    batches = endless(loader)
    for _ in range(warmup):
        step(next(batches))
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = 0
    with UtilisationSampler(device) as utilisation:
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            step(batch)
            images += len(batch)
        synchronize(device)
        seconds = time.perf_counter() - start
    batches.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    skipped = trainer.guard.skipped if trainer is not None else 0
    return {"images_per_s": round(images / seconds, 1), "peak_mb": None if peak is None else round(peak),
            "gpu_util_pct": utilisation.result(), "skipped_steps": skipped}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED, help="a photo collection (default ../shared/data/ccp-figures)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 256])
    parser.add_argument("--batches", nargs="+", default=None,
                        help="per size, SIZE:B1,B2,... (default 640:8,16,32 256:32,64,128)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per setup (compile happens here)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per setup")
    parser.add_argument("--workers", type=int, default=8, help="decoding workers for the first, untimed pass")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS), metavar="SETUP")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (checks the script)")
    args = parser.parse_args(argv)

    if torch.cuda.is_available():
        device = "cuda"
    elif args.allow_cpu:
        device = "cpu"
    else:
        print("gpu_throughput: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "run it on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --allow-cpu to check the script",
              file=sys.stderr)
        return 2
    if not args.images.is_dir():
        print(f"gpu_throughput: {args.images}: no such folder; pass --images with a photo collection", file=sys.stderr)
        return 2
    per_size = dict(DEFAULT_BATCHES)
    for item in args.batches or []:
        size, _, sizes = item.partition(":")
        per_size[int(size)] = [int(b) for b in sizes.split(",")]
    card = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (script check only)"

    rows = []
    for size in args.sizes:
        for batch in per_size.get(size, [16]):
            base = make_config(args.images, size, batch, None, device, args.workers)
            collection = load_collection(base.data)
            images = FittedImages(collection, base.data)
            loader = ImageLoader(images, images.positions_of(collection.train), batch, base.train.seed, shuffle=True,
                                 drop_last=True, workers=args.workers, pin_memory=device == "cuda",
                                 prefetch=base.data.prefetch)
            for _ in loader.batches(0):  # decode everything into the cache, untimed
                pass
            if images.cache is not None:
                images.cache.wait()
            for name in args.setups:
                setup = SETUPS[name]
                config = make_config(args.images, size, batch, setup, device, args.workers)
                try:
                    result = measure(config, loader, setup, args.warmup, args.steps)
                except torch.cuda.OutOfMemoryError:
                    result = {"images_per_s": None, "peak_mb": None, "gpu_util_pct": None, "skipped_steps": 0,
                              "error": "out of GPU memory"}
                    torch.cuda.empty_cache()
                rows.append({"size": size, "batch": batch, "setup": name, **result})
                print(f"  {size}x{size} batch {batch:>4} {name:<22} {result['images_per_s']} images/s", file=sys.stderr)

    parameters = count_parameters(build_model(make_config(args.images, 640, 8, None, device, 0).model, (640, 640)))
    print(f"\ncard: {card}; torch {torch.__version__}; journal model ({parameters:,} parameters at 640x640); "
          f"{args.warmup} warm-up + {args.steps} timed steps per setup; data {args.images}\n")
    print(f"{'size':>5} {'batch':>5}  {'setup':<22} {'images/s':>9} {'x fp32':>7} {'peak MB':>8} {'GPU util %':>10}")
    ratios = {}
    for row in rows:
        base = next((r for r in rows if r["size"] == row["size"] and r["batch"] == row["batch"]
                     and r["setup"] == "fp32 eager"), None)
        speedup = None
        if base and base["images_per_s"] and row["images_per_s"]:
            speedup = round(row["images_per_s"] / base["images_per_s"], 2)
        row["x_fp32"] = speedup
        shown = lambda v: "-" if v is None else v  # noqa: E731
        print(f"{row['size']:>5} {row['batch']:>5}  {row['setup']:<22} {shown(row['images_per_s']):>9} "
              f"{shown(speedup):>7} {shown(row['peak_mb']):>8} {shown(row['gpu_util_pct']):>10}"
              + (f"  ({row['error']})" if row.get("error") else ""))
    for size in args.sizes:
        for batch in per_size.get(size, [16]):
            group = {r["setup"]: r["images_per_s"] for r in rows if r["size"] == size and r["batch"] == batch}
            trained = [v for k, v in group.items() if k != "loader alone" and v]
            key = f"{size}/{batch}"
            if group.get("fp32 eager") and group.get("bf16 + channels_last"):
                ratios[f"{key} bf16+cl vs fp32"] = round(group["bf16 + channels_last"] / group["fp32 eager"], 2)
            if trained and group.get("loader alone"):
                ratios[f"{key} loader vs fastest training"] = round(group["loader alone"] / max(trained), 2)
    print()
    for key, value in ratios.items():
        target = 2.0 if "fp32" in key else 3.0
        print(f"{key}: {value}x (target >= {target}x){'' if value >= target else '  BELOW TARGET'}")
    print(json.dumps({"benchmark": "gpu_throughput", "card": card, "torch": torch.__version__,
                      "warmup": args.warmup, "steps": args.steps, "rows": rows, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
