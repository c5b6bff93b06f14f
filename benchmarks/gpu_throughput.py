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

Made for one run on a lent GPU with little time (see gpu_session.sh and RESULTS.md):
- Order: the most important numbers first. Per image size (in `--sizes` order, 640 first),
  the first batch size of its list (the primary: 640:16, 256:64) gets fp32 eager,
  bf16 + channels_last and the loader alone, then bf16; then the other batch sizes; then
  compile. torch.compile (forward and backward, cold cache) can take a minute or more per
  shape, so it runs at the primary batch size only (`--compile-all` for every batch size), each
  time from a fresh dynamo cache (static shapes, as a real run compiles).
- `--budget-s` (default 300): a setup whose expected time (the longest one of its kind so far:
  compiled or not; 90 s and 20 s before any) would end past the budget is skipped and marked so;
  the table and the JSON line still come for what was measured. `--hard-limit-s` (default the
  budget + 90 s): a watchdog prints the table and the JSON line for what was measured, the
  setup in flight marked, and exits with status 3 (for a compile that hangs).
- `--rows-out PATH`: each row is appended to this JSON-lines file as soon as it is measured,
  so a killed run still leaves its numbers.
- A setup that fails (out of memory, a compile error...) gets its row with a one-line error, and
  the run goes on. Only a bad argument, a missing folder or a failed import ends it.

    python benchmarks/gpu_throughput.py [--sizes 640 256] [--batches 640:16,8,32 256:64,32,128]

On a machine without a CUDA GPU it says so and exits with status 2. `--allow-cpu` runs the
same code on the CPU (float32 only: the bf16 setups run with train.amp auto there, since an
explicit bf16 without CUDA is an error) to check the script, e.g. in the tests.
Ends with one JSON line: {"benchmark": "gpu_throughput", "rows": [...], "ratios": {...}, ...}.
Each row has "status": measured, failed (with "error") or skipped (with "error": why).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import mean
from typing import Iterator, Optional, TextIO

import torch

from vaelab.config import Config, load_config
from vaelab.data.collection import load_collection
from vaelab.data.loader import Batch, FittedImages, ImageLoader
from vaelab.model import build_model, count_parameters
from vaelab.train.trainer import Trainer

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
CORE = ("fp32 eager", "bf16 + channels_last", "loader alone")  # the numbers the issue is about
DEFAULT_BATCHES = {640: [16, 8, 32], 256: [64, 32, 128]}  # the first of each list is the primary
FIRST_GUESS_S = {True: 90.0, False: 20.0}  # expected seconds of a setup (compiled?) before any ran


def compiled(setup: str) -> bool:
    spec = SETUPS[setup]
    return spec is not None and spec[2]


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
        if not device.startswith("cuda"):  # --allow-cpu: float32, which `auto` is on a CPU
            amp = "auto" if amp == "bf16" else amp
        overrides += [f"train.amp={amp}", f"train.channels_last={str(channels_last).lower()}",
                      f"train.compile={str(compile_).lower()}"]
    return load_config(JOURNAL, overrides)


def make_loader(images_dir: Path, size: int, batch: int, device: str, workers: int) -> ImageLoader:
    """The loader of one (size, batch), its cache filled (untimed; later batch sizes reuse the cache).
    Should the decoding worker processes fail (a machine short of shared memory, say), it decodes
    in this process instead: slower, untimed, and the timed epochs read the same cache."""
    try:
        return _make_loader(images_dir, size, batch, device, workers)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001
        if workers == 0:
            raise
        print(f"gpu_throughput: decoding with {workers} workers failed ({one_line(error)}); decoding in this process",
              file=sys.stderr, flush=True)
        return _make_loader(images_dir, size, batch, device, 0)


def _make_loader(images_dir: Path, size: int, batch: int, device: str, workers: int) -> ImageLoader:
    base = make_config(images_dir, size, batch, None, device, workers)
    collection = load_collection(base.data)
    images = FittedImages(collection, base.data)
    loader = ImageLoader(images, images.positions_of(collection.train), batch, base.train.seed, shuffle=True,
                         drop_last=True, workers=workers, pin_memory=device == "cuda", prefetch=base.data.prefetch)
    if len(loader.positions) < batch:  # the loader would hand out one short batch: not this batch size
        raise ValueError(f"fewer than {batch} images in {images_dir}")
    for _ in loader.batches(0):  # decode everything into the cache, untimed
        pass
    if images.cache is not None:
        images.cache.wait()
    return loader


def endless(loader: ImageLoader) -> Iterator[Batch]:
    epoch = 1  # epoch 0 filled the cache
    while True:
        yield from loader.batches(epoch)
        epoch += 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free the last setup's model, optimizer and cached blocks, so the next peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(config: Config, loader: ImageLoader, setup: Optional[tuple], warmup: int, steps: int) -> dict:
    """images/s, peak GPU memory and utilisation of one setup."""
    device = torch.device(config.train.device)
    torch.manual_seed(0)
    trainer = None
    if setup is not None:
        if setup[2] and hasattr(torch, "_dynamo"):
            torch._dynamo.reset()  # compile this shape from scratch (no dynamic-shape recompile of the last)
        trainer = Trainer(config, build_model(config.model, config.data.size), device)

    def step(batch: Batch) -> None:
        if trainer is not None:
            trainer.train_step(batch)
        else:
            batch.pixels.to(device, non_blocking=True)
            synchronize(device)  # as train_step's one sync: the buffer may be reused after it

    batches = endless(loader)
    try:
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
    finally:
        batches.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    skipped = trainer.guard.skipped if trainer is not None else 0
    return {"images_per_s": round(images / seconds, 1), "peak_mb": None if peak is None else round(peak),
            "gpu_util_pct": utilisation.result(), "skipped_steps": skipped}


def end_children() -> None:
    """Kill this process's descendants (torch.compile's worker pool, decoding workers): by pid, from /proc."""
    try:
        parents: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        todo, found = [os.getpid()], []
        while todo:
            for child in parents.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        for pid in found:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    except OSError:
        pass


class LoaderBroken(Exception):
    """The loader of this (size, batch) could not be built; the message says why."""


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "out of GPU memory"
    if isinstance(error, LoaderBroken):
        return str(error)
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 300 else text[:297] + "..."


def plan_work(sizes: list[int], per_size: dict[int, list[int]], setups: list[str], compile_all: bool) -> list[tuple]:
    """(size, batch, setup) in the order they run: the most important numbers first (module doc)."""
    plan: list[tuple] = []
    for size in sizes:
        batches = per_size.get(size, [16])
        primary, others = batches[0], batches[1:]
        plain = [s for s in setups if not compiled(s)]
        plan += [(size, primary, s) for s in plain if s in CORE] + [(size, primary, s) for s in plain if s not in CORE]
        plan += [(size, b, s) for b in others for s in plain]
        for s in (s for s in setups if compiled(s)):
            plan += [(size, b, s) for b in ([primary] + others if compile_all else [primary])]
    return plan


def blank_row(size: int, batch: int, setup: str, status: str, error: Optional[str] = None) -> dict:
    row = {"size": size, "batch": batch, "setup": setup, "status": status, "images_per_s": None, "peak_mb": None,
           "gpu_util_pct": None, "skipped_steps": None, "seconds": None}
    if error:
        row["error"] = error
    return row


class Report:
    """Prints the table, the ratios and the JSON line once: at the end, or from the watchdog."""

    def __init__(self, args, plan: list[tuple], card: str, parameters: int, out: TextIO):
        self.args, self.plan, self.card, self.parameters, self.out = args, plan, card, parameters, out
        self.rows: list[dict] = []
        self.current: Optional[tuple] = None  # the setup being measured
        self.lock = threading.Lock()
        self.done = False

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.args.rows_out:
            with open(self.args.rows_out, "a") as file:
                file.write(json.dumps(row) + "\n")
        shown = row["images_per_s"] if row["status"] == "measured" else f"{row['status']}: {row.get('error')}"
        print(f"  {row['size']}x{row['size']} batch {row['batch']:>4} {row['setup']:<22} {shown}"
              + (f" images/s ({row['seconds']} s)" if row["status"] == "measured" else ""), file=sys.stderr, flush=True)

    def finish(self, stopped: Optional[str] = None) -> bool:
        """Print everything once; False when another thread already did."""
        with self.lock:
            if self.done:
                return False
            self.done = True
        rows = list(self.rows)
        seen = {(r["size"], r["batch"], r["setup"]) for r in rows}
        if stopped and self.current and self.current not in seen:
            rows.append(blank_row(*self.current, "failed", stopped))
            seen.add(self.current)
        why = "not run: " + (stopped or "time budget")
        rows += [blank_row(*key, "skipped", why) for key in self.plan if key not in seen]
        order = {key: i for i, key in enumerate(
            sorted(self.plan, key=lambda k: (self.args.sizes.index(k[0]), k[1], list(SETUPS).index(k[2]))))}
        rows.sort(key=lambda r: order.get((r["size"], r["batch"], r["setup"]), len(order)))
        self.print(rows, stopped)
        return True

    def print(self, rows: list[dict], stopped: Optional[str]) -> None:
        a, out = self.args, self.out
        compiled_at = ", ".join(sorted({f"{s}/{b}" for s, b, n in self.plan if compiled(n)}, key=lambda k: (
            a.sizes.index(int(k.split("/")[0])), int(k.split("/")[1])))) or "nowhere"
        print(f"\ncard: {self.card}; torch {torch.__version__}; journal model ({self.parameters:,} parameters at "
              f"640x640); {a.warmup} warm-up + {a.steps} timed steps per setup; compiled at {compiled_at}; "
              f"budget {a.budget_s:g} s; data {a.images}\n", file=out)
        print(f"{'size':>5} {'batch':>5}  {'setup':<22} {'images/s':>9} {'x fp32':>7} {'peak MB':>8} {'GPU util %':>10}",
              file=out)
        shown = lambda v: "-" if v is None else v  # noqa: E731
        for row in rows:
            base = next((r for r in rows if r["size"] == row["size"] and r["batch"] == row["batch"]
                         and r["setup"] == "fp32 eager"), None)
            speedup = None
            if base and base["images_per_s"] and row["images_per_s"]:
                speedup = round(row["images_per_s"] / base["images_per_s"], 2)
            row["x_fp32"] = speedup
            print(f"{row['size']:>5} {row['batch']:>5}  {row['setup']:<22} {shown(row['images_per_s']):>9} "
                  f"{shown(speedup):>7} {shown(row['peak_mb']):>8} {shown(row['gpu_util_pct']):>10}"
                  + (f"  ({row['status']}: {row['error']})" if row.get("error") else ""), file=out)
        ratios = {}
        for size, batch in dict.fromkeys((r["size"], r["batch"]) for r in rows):
            group = {r["setup"]: r["images_per_s"] for r in rows if r["size"] == size and r["batch"] == batch}
            trained = [v for k, v in group.items() if k != "loader alone" and v]
            key = f"{size}/{batch}"
            if group.get("fp32 eager") and group.get("bf16 + channels_last"):
                ratios[f"{key} bf16+cl vs fp32"] = round(group["bf16 + channels_last"] / group["fp32 eager"], 2)
            if trained and group.get("loader alone"):
                ratios[f"{key} loader vs fastest training"] = round(group["loader alone"] / max(trained), 2)
        print(file=out)
        for key, value in ratios.items():
            target = 2.0 if "fp32" in key else 3.0
            print(f"{key}: {value}x (target >= {target}x){'' if value >= target else '  BELOW TARGET'}", file=out)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("measured", "failed", "skipped")}
        print(f"rows: {counts['measured']} measured, {counts['failed']} failed, {counts['skipped']} skipped"
              + (f"; stopped: {stopped}" if stopped else ""), file=out)
        print(json.dumps({"benchmark": "gpu_throughput", "card": self.card, "torch": torch.__version__,
                          "warmup": a.warmup, "steps": a.steps, "budget_s": a.budget_s, "complete": not stopped
                          and counts["skipped"] == 0, "stopped": stopped, "rows": rows, "ratios": ratios}), file=out)
        out.flush()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED, help="a photo collection (default ../shared/data/ccp-figures)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 256])
    parser.add_argument("--batches", nargs="+", default=None,
                        help="per size, SIZE:B1,B2,... the first is the primary (default 640:16,8,32 256:64,32,128)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per setup (compile happens here)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per setup")
    parser.add_argument("--workers", type=int, default=8, help="decoding workers for the first, untimed pass")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS), metavar="SETUP")
    parser.add_argument("--compile-all", action="store_true", help="compile at every batch size, not the primary only")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="start no setup expected to end later than this many seconds after the start (default 300)")
    parser.add_argument("--hard-limit-s", type=float, default=None,
                        help="report what was measured and exit 3 at this many seconds (default budget + 90)")
    parser.add_argument("--rows-out", type=Path, default=None, help="append each row to this JSON-lines file as measured")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (checks the script)")
    args = parser.parse_args(argv)
    started = time.monotonic()

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
    per_size = {size: list(batches) for size, batches in DEFAULT_BATCHES.items()}
    for item in args.batches or []:
        size, _, sizes = item.partition(":")
        try:
            per_size[int(size)] = [int(b) for b in sizes.split(",")]
        except ValueError:
            parser.error(f"--batches {item}: expected SIZE:B1,B2,... e.g. 640:16,8,32")
    if args.rows_out:
        args.rows_out.parent.mkdir(parents=True, exist_ok=True)
        args.rows_out.write_text("")
    card = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (script check only)"
    with torch.device("meta"):  # only the count: no memory, no init
        parameters = count_parameters(build_model(make_config(args.images, 640, 8, None, device, 0).model, (640, 640)))
    plan = plan_work(args.sizes, per_size, args.setups, args.compile_all)
    report = Report(args, plan, card, parameters, sys.stdout)
    hard_limit = args.hard_limit_s if args.hard_limit_s is not None else args.budget_s + 90

    def watchdog() -> None:
        if report.finish(f"hard limit of {hard_limit:g} s reached"):
            sys.stderr.flush()
            end_children()  # compile workers would hold the session's output pipe open
            os._exit(3)

    timer = threading.Timer(max(0.0, hard_limit - (time.monotonic() - started)), watchdog)
    timer.daemon = True
    timer.start()
    print(f"gpu_throughput: {card}, torch {torch.__version__}, {len(plan)} setups planned, budget {args.budget_s:g} s,"
          f" hard limit {hard_limit:g} s", file=sys.stderr, flush=True)

    loaders: dict[tuple[int, int], ImageLoader] = {}
    broken: dict[tuple[int, int], str] = {}  # (size, batch) -> why its loader could not be built
    took: dict[bool, list[float]] = {True: [], False: []}  # seconds of the setups so far, compiled or not
    for size, batch, name in plan:
        expected = max(took[compiled(name)], default=FIRST_GUESS_S[compiled(name)])
        elapsed = time.monotonic() - started
        if elapsed + expected > args.budget_s:
            report.add(blank_row(size, batch, name, "skipped",
                                 f"time budget: {elapsed:.0f} s + ~{expected:.0f} s expected > {args.budget_s:g} s"))
            continue
        report.current = (size, batch, name)
        began = time.monotonic()
        try:
            if (size, batch) not in loaders and (size, batch) not in broken:
                try:
                    loaders[(size, batch)] = make_loader(args.images, size, batch, device, args.workers)
                except Exception as error:  # noqa: BLE001 - recorded for every setup of this (size, batch)
                    broken[(size, batch)] = f"loader: {one_line(error)}"
            if (size, batch) in broken:
                raise LoaderBroken(broken[(size, batch)])
            setup = SETUPS[name]
            config = make_config(args.images, size, batch, setup, device, args.workers)
            result = measure(config, loaders[(size, batch)], setup, args.warmup, args.steps)
            row = {"size": size, "batch": batch, "setup": name, "status": "measured", **result,
                   "seconds": round(time.monotonic() - began, 1)}
            took[compiled(name)].append(time.monotonic() - began)
        except Exception as error:  # noqa: BLE001 - one setup's failure must not end the run
            row = blank_row(size, batch, name, "failed", one_line(error))
            row["seconds"] = round(time.monotonic() - began, 1)
        release(torch.device(device))
        report.add(row)
        report.current = None

    timer.cancel()
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
