"""Memory soak: 30 short epochs on ccp-figures at 128 px with data workers; RSS must not creep.

Trains one run with `vaelab.runs.session.train_run` (the same code path as `vaelab train`), in a
temporary run.root, from configs/ccp-figures.yaml with:
  data.size [128, 128], data.workers 2, a small conv VAE (8/16/32 filters, dense 128, latent 64),
  train.epochs 30, train.batches_per_epoch capped (default 8 batches of 32), one checkpoint kept.
Everything the run does each epoch is included: training steps, validation, the reconstruction
and sample PNGs, the TensorBoard record if enabled, and the end-of-epoch checkpoints.

The run layer records `rss_mb` (this process's resident set from /proc/self/statm, so the
trainer's process; worker processes are separate and not counted) in metrics.jsonl at the end
of every epoch. This script reads those values back and reports the growth from epoch 2 to
epoch 30:

    growth % = 100 * (rss[30] - rss[2]) / rss[2]        target: < 3 %

Baseline: the epoch-2 RSS of the same run. Epoch 1 is excluded because it builds the image
cache, starts the workers and allocates the allocator's and optimizer's steady-state buffers;
a leak shows as growth after that. Note: with data.cache true (the default) the workers decode
images only until every image is in the memory-mapped cache; with `--no-cache` every epoch
decodes through the 2 worker processes, which exercises the worker path in all 30 epochs.

    python benchmarks/memory_soak.py [--epochs 30] [--batches 8] [--size 128] [--no-cache] [--keep DIR]

Ends with one JSON line: {"benchmark": "memory_soak", "rss_growth_pct": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from vaelab.config import load_config
from vaelab.runs.session import train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ccp-figures.yaml"

SMALL_MODEL = [
    "model.conv=[{filters: 8, kernel: 4, stride: 2}, {filters: 16, kernel: 4, stride: 2}, {filters: 32, kernel: 4, stride: 2}]",
    "model.dense=128",
    "model.latent=64",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batches", type=int, default=8, help="train.batches_per_epoch")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-cache", action="store_true", help="data.cache false: decode with workers every epoch")
    parser.add_argument("--keep", type=Path, default=None, help="run.root to keep (default: a temp dir, deleted)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2")

    os.chdir(ROOT)  # the config's data paths are relative to the repository root
    root = args.keep or Path(tempfile.mkdtemp(prefix="vaelab-soak-"))
    overrides = [f"data.size=[{args.size},{args.size}]", f"data.workers={args.workers}",
                 f"train.epochs={args.epochs}", f"train.batches_per_epoch={args.batches}",
                 "train.batch_size=32", "train.device=cpu", f"run.root={root}", "run.name=soak",
                 f"run.checkpoint_every={args.epochs}", "run.keep_checkpoints=1", *SMALL_MODEL]
    if args.no_cache:
        overrides.append("data.cache=false")
    config = load_config(args.config, overrides)

    start = time.monotonic()
    try:
        run_dir = train_run(config, progress=False)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        status = json.loads((run_dir / "run.json").read_text()).get("status")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - start

    rss = {int(r["epoch"]): r.get("rss_mb") for r in records}
    last = max(rss)
    if rss.get(2) is None or rss.get(last) is None:
        print("rss_mb missing from metrics.jsonl (not Linux?)", file=sys.stderr)
        return 1
    base = rss[2]
    growth = 100.0 * (rss[last] - base) / base
    peak = max(v for v in rss.values() if v is not None)
    # RSS moves by tens of MB from epoch to epoch (allocator, page cache of the memory-mapped
    # image cache), so a two-point difference is noisy: also report the least-squares trend
    # over epochs 2..last, as growth of the fitted line over that span.
    xs = [e for e in sorted(rss) if e >= 2]
    ys = [rss[e] for e in xs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    fitted_growth = 100.0 * slope * (xs[-1] - xs[0]) / (my + slope * (xs[0] - mx))
    spread = 100.0 * (max(ys) - min(ys)) / base

    print(f"memory soak: {last} epochs x {args.batches} batches of 32 at {args.size}x{args.size}, "
          f"data.workers {args.workers}, data.cache {not args.no_cache}, status {status}, {seconds:.0f} s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()} {os.cpu_count()} cpus")
    print()
    print(f"{'epoch':>5} {'rss MB':>8} {'vs epoch 2':>11}")
    for epoch in sorted(rss):
        value = rss[epoch]
        delta = "" if epoch < 2 else f"{100.0 * (value - base) / base:+.2f}%"
        print(f"{epoch:>5} {value:>8.1f} {delta:>11}")
    print()
    print(f"growth epoch 2 -> {last}: {rss[last] - base:+.1f} MB = {growth:+.2f}% of the epoch-2 RSS "
          f"({base:.1f} MB; target < 3%){'' if growth < 3 else '  ABOVE TARGET'}; peak {peak:.1f} MB")
    print(f"trend over epochs 2..{last}: {slope:+.2f} MB/epoch = {fitted_growth:+.2f}% (least-squares line); "
          f"epoch-to-epoch spread {spread:.1f}% of the epoch-2 RSS")
    print(json.dumps({"benchmark": "memory_soak", "rss_growth_pct": round(growth, 3),
                      "rss_epoch2_mb": base, f"rss_epoch{last}_mb": rss[last], "rss_peak_mb": peak,
                      "trend_mb_per_epoch": round(slope, 3), "trend_growth_pct": round(fitted_growth, 3),
                      "spread_pct": round(spread, 2),
                      "rss_mb": [rss[e] for e in sorted(rss)], "epochs": last, "batches_per_epoch": args.batches,
                      "size": args.size, "workers": args.workers, "cache": not args.no_cache,
                      "status": status, "seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
