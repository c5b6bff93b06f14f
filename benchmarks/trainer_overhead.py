"""Time vaelab's training step against a bare, hand-written PyTorch loop on the same work.

Both sides get:
- the same model: `vaelab.model.build_model` with the demo config's model section (the
  embedded default, what `vaelab train` with no arguments builds), at 64x64 by default;
  the bare side gets a deep copy of the same initial weights;
- the same optimizer: torch.optim.Adam with the config's lr and weight decay;
- the same loss: `vaelab.train.losses.vae_loss` with the same loss config, kl weight and padding mask;
- the same batches: N real batches of `--batch` images from ../shared/data/ccp-figures (letterboxed,
  `pad`), fetched ONCE before timing and held in memory; the same batch sequence for both;
- the same torch thread count (`--threads`, set with torch.set_num_threads).

What is timed.
- vaelab:  `Trainer.train_step(batch)`, exactly as `Trainer.fit` calls it, on the pre-fetched
  uint8 `Batch`. This includes everything train_step does per step: uint8 -> float scaling and
  the padding mask (`to_model_input`), forward, loss, backward, the gradient norm, the one
  device sync for the guard, the guard's judgement, the optimizer step and the metric sums.
- bare:    forward, `vae_loss`, zero_grad, backward, optimizer.step() on pre-converted float
  tensors (x / 255 and the mask were computed once, before timing).
So vaelab's uint8 -> float conversion, gradient norm and guard count as *its* overhead; the
bare loop does the minimum. Data loading (decoding, the cache, the worker processes) is
excluded from BOTH sides: it is measured by benchmarks/data_throughput.py. Also excluded: the
per-epoch work in `fit` (evaluation, checkpoints, images), which is not per step.

Method: `--warmup` steps on each side first, then `--blocks` alternating blocks of `--steps`
steps (vaelab, bare, vaelab, bare, ...; the order flips every pair) so that machine noise hits
both equally. Reports the median ms/step over blocks for each, and their ratio.

    python benchmarks/trainer_overhead.py [--size 64] [--batch 32] [--threads 1] [--blocks 7]

Ends with one JSON line: {"benchmark": "trainer_overhead", "ratio": vaelab/bare, ...}. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from vaelab.config import load_config
from vaelab.data.collection import load_collection
from vaelab.data.loader import Batch, FittedImages, ImageLoader
from vaelab.data.scaling import to_model_input
from vaelab.model import build_model, count_parameters
from vaelab.train.losses import vae_loss
from vaelab.train.trainer import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp-figures"


def fetch_batches(config, count: int) -> list[Batch]:
    """`count` real training batches through vaelab's loader, copied so nothing is reused."""
    collection = load_collection(config.data)
    images = FittedImages(collection, config.data)
    loader = ImageLoader(images, images.positions_of(collection.train), config.train.batch_size,
                         config.train.seed, shuffle=True, drop_last=True, workers=0)
    got: list[Batch] = []
    epoch = 0
    while len(got) < count:
        for batch in loader.batches(epoch):
            got.append(Batch(batch.pixels.clone(), batch.boxes.clone(), batch.positions.clone()))
            if len(got) == count:
                break
        epoch += 1
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED, help="a photo collection with metadata.json")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--batches", type=int, default=16, help="distinct pre-fetched batches, cycled")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per side before timing")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=7, help="timed blocks per side (interleaved)")
    parser.add_argument("--loss", default=None, help="loss.reconstruction (default: the config's)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    overrides = [f"data.size=[{args.size},{args.size}]", f"train.batch_size={args.batch}",
                 "data.workers=0", "train.device=cpu"]
    if args.images is not None and (args.images / "metadata.json").is_file():
        overrides += [f"data.images={args.images}", f"data.metadata={args.images / 'metadata.json'}",
                      "data.fields.bbox=person_bbox_xyxy", "data.fields.source=null", "data.bbox_crop=true"]
        source = str(args.images)
    else:
        source = "the built-in demo figure set"
    if args.loss:
        overrides.append(f"loss.reconstruction={args.loss}")
    config = load_config(None, overrides)  # the embedded default = the demo config
    batches = fetch_batches(config, args.batches)

    torch.manual_seed(0)
    model = build_model(config.model, config.data.size)
    bare_model = copy.deepcopy(model)
    trainer = Trainer(config, model, torch.device("cpu"))
    trainer.model.train()
    kl_weight = trainer.kl_weight()  # the same weight for the bare loop (constant here)

    t = config.train
    bare_model.train()
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    # The bare loop's inputs: floats and masks computed once, before timing.
    floats = [(m.x.clone(), m.mask.clone()) for m in (to_model_input(b, config.data.scale) for b in batches)]

    def run_vaelab(n: int, start: int) -> float:
        t0 = time.perf_counter()
        for i in range(start, start + n):
            trainer.train_step(batches[i % len(batches)])
        return time.perf_counter() - t0

    def run_bare(n: int, start: int) -> float:
        t0 = time.perf_counter()
        for i in range(start, start + n):
            x, mask = floats[i % len(floats)]
            out = bare_model(x)
            loss = vae_loss(out, x, mask, config.loss, kl_weight)["loss"]
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()
        return time.perf_counter() - t0

    run_vaelab(args.warmup, 0)
    run_bare(args.warmup, 0)
    vaelab_ms, bare_ms = [], []
    step = args.warmup
    for block in range(args.blocks):
        order = (("vaelab", run_vaelab), ("bare", run_bare))
        if block % 2:
            order = order[::-1]
        for name, fn in order:
            ms = 1000 * fn(args.steps, step) / args.steps
            (vaelab_ms if name == "vaelab" else bare_ms).append(ms)
        step += args.steps
    skipped = trainer.guard.skipped

    v, b = statistics.median(vaelab_ms), statistics.median(bare_ms)
    ratio = v / b
    print(f"model: {count_parameters(model):,} parameters (demo config), {args.size}x{args.size}, "
          f"batch {args.batch}, loss {config.loss.reconstruction}; data: {source}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()} {os.cpu_count()} cpus; "
          f"{args.warmup} warm-up steps, {args.blocks} interleaved blocks of {args.steps} steps each")
    print("data loading excluded from both sides (see benchmarks/data_throughput.py)")
    print()
    print(f"{'loop':<8} {'median ms/step':>15} {'min':>8} {'max':>8}")
    print(f"{'vaelab':<8} {v:>15.2f} {min(vaelab_ms):>8.2f} {max(vaelab_ms):>8.2f}")
    print(f"{'bare':<8} {b:>15.2f} {min(bare_ms):>8.2f} {max(bare_ms):>8.2f}")
    print(f"ratio vaelab / bare: {ratio:.3f} (target <= 1.05){'' if ratio <= 1.05 else '  ABOVE TARGET'}")
    if skipped:
        print(f"note: the guard skipped {skipped} vaelab step(s)")
    print(json.dumps({"benchmark": "trainer_overhead", "ratio": round(ratio, 4),
                      "vaelab_ms_per_step": round(v, 3), "bare_ms_per_step": round(b, 3),
                      "vaelab_blocks_ms": [round(x, 3) for x in vaelab_ms],
                      "bare_blocks_ms": [round(x, 3) for x in bare_ms],
                      "size": args.size, "batch": args.batch, "threads": args.threads,
                      "loss": config.loss.reconstruction, "parameters": count_parameters(model),
                      "steps_per_block": args.steps, "blocks": args.blocks, "guard_skipped": skipped,
                      "data_loading": "excluded", "torch": torch.__version__}))


if __name__ == "__main__":
    sys.exit(main())
