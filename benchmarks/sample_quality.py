"""Sample quality without downloads: the C2ST and nearest-neighbour distances of three samplers.

On ../shared/data/ccp-figures at 64x64 (fit pad, no bbox crop, the split of every ccp-figures
config: 538 train, 62 val), in one run:

- the vector family (configs/ccp-64.yaml) and the vq family (configs/vq-64.yaml) are trained for
  --epochs epochs with `vaelab.runs.session.train_run`, with the data settings of benchmarks/quality.py;
- `vaelab.experiments.prior.fit_prior` fits the vector run's Gaussian mixture and trains the vq
  run's gated PixelCNN (prior config defaults, --prior-epochs);
- `vaelab.experiments.evaluate_samples.evaluate_samples` (what `vaelab evaluate --samples`
  runs) judges --samples draws, seed 0, of
    (a) vector, N(0, I)                   the baseline: what `vaelab sample` gave before priors
    (b) vector, the mixture prior
    (c) vq, the PixelCNN prior
  and, as a reference for how far a sampler with this decoder can go, (r) the vq model's
  reconstructions of training images (decoded real codes; the C2ST's real images are the
  validation images, so these are not the same pictures).

C2ST: a CNN trained from scratch per fold (5 folds) to tell the 62 validation images from 62 of
the samples; accuracy over all 124 held-out predictions with its exact 95% interval. Also against
each model's reconstructions of the validation images (c2st_decoded: the prior alone, without the
decoder's blur, which a CNN always spots); for (r) that compares decoded real codes with decoded
real codes, so it should be near 0.5: the check that the test is not biased. NN: RMSE to
the nearest training image, on the region every real image covers; ratio = median over samples /
median over validation images (well below 1 = copies of training images).

    python benchmarks/sample_quality.py [--epochs 10] [--prior-epochs 40] [--samples 128] [--threads 2]

Ends with one JSON line {"benchmark": "sample_quality", ...}. Target: (c)'s C2ST accuracy clearly
below (a)'s, the 95% intervals not overlapping.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import CONFIGS, SHARED, data_overrides  # noqa: E402  (the same data settings)


def train(family: str, args, log) -> Path:
    from vaelab.config import load_config
    from vaelab.runs.session import train_run

    overrides = data_overrides(args.images, args.size) + [
        f"train.epochs={args.epochs}", "train.batches_per_epoch=null", "train.seed=0", "train.device=cpu",
        f"run.root={args.out / 'runs'}", f"run.name={family}", "run.tensorboard=false",
        f"run.checkpoint_every={args.epochs}", "run.keep_checkpoints=1"]
    started = time.monotonic()
    run_dir = train_run(load_config(CONFIGS[family], overrides), progress=False)
    log(f"{family}: trained in {time.monotonic() - started:.0f} s ({run_dir})")
    return run_dir


def reconstructions_of_training_images(run, args) -> np.ndarray:
    from vaelab.experiments.evaluate_samples import split_pixels
    from vaelab.experiments.use import decode_pixels, encode_pixels

    pixels, boxes = split_pixels(run.data, "train")
    chosen = np.random.default_rng(0).choice(len(pixels), min(args.samples, len(pixels)), replace=False)
    encoded = encode_pixels(run, torch.from_numpy(pixels[chosen]), torch.from_numpy(boxes[chosen]))
    return decode_pixels(run, encoded.codes, codes=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vaelab-sample-quality"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--prior-epochs", type=int, default=None, help="PixelCNN epochs [default: the prior config's]")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 16 px, 1 epoch, 1 prior epoch, 24 samples")
    args = parser.parse_args()
    if args.quick:
        args.size, args.epochs, args.prior_epochs, args.samples = 16, 1, 1, 24
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    log = lambda message: print(f"[{time.monotonic() - started:7.1f} s] {message}", file=sys.stderr, flush=True)  # noqa: E731

    from vaelab.experiments.evaluate_samples import evaluate_samples, judge
    from vaelab.experiments.prior import fit_prior
    from vaelab.runs.loaded import load_run

    runs = {family: train(family, args, log) for family in ("vector", "vq")}
    prior_sets = [] if args.prior_epochs is None else [f"prior.epochs={args.prior_epochs}"]
    priors = {}
    for family, run_dir in runs.items():
        began = time.monotonic()
        priors[family] = fit_prior(run_dir, prior_sets if family == "vq" else [], fresh=True, device="cpu",
                                   progress=False, log=log)
        priors[family]["fit_s"] = round(time.monotonic() - began, 1)
    loaded = {family: load_run(run_dir, device="cpu") for family, run_dir in runs.items()}

    rows = {}
    for key, family, prior in (("a", "vector", "normal"), ("b", "vector", "learned"), ("c", "vq", "learned")):
        began = time.monotonic()
        rows[key] = evaluate_samples(loaded[family], loaded[family].data, args.samples, prior, seed=0)
        rows[key].update({"family": family, "wall_s": round(time.monotonic() - began, 1)})
        log(f"({key}) {family} {rows[key]['prior']}: C2ST {rows[key]['c2st']['accuracy']:.3f}")
    reference = reconstructions_of_training_images(loaded["vq"], args)
    rows["r"] = {"prior": "reconstructions", "family": "vq", **judge(loaded["vq"], loaded["vq"].data, reference, seed=0)}

    names = {"a": "vector, N(0, I) (baseline)", "b": "vector, mixture prior", "c": "vq, PixelCNN prior",
             "r": "vq, reconstructions of train images (reference)"}
    print(f"\nsample quality on {args.images.name} at {args.size}px, {args.samples} samples, seed 0, "
          f"{platform.processor() or platform.machine()}, {args.threads} threads\n")
    shown = lambda c: f"{c['accuracy']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"  # noqa: E731
    print("| sampler | C2ST vs val images [95% CI] | C2ST vs the model's val reconstructions | "
          "NN sample->train median | NN val->train median | ratio |")
    print("|---|---|---|---|---|---|")
    for key, row in rows.items():
        print(f"| ({key}) {names[key]} | {shown(row['c2st'])} | {shown(row['c2st_decoded'])} | "
              f"{row['nn_sample_to_train']['median']:.4f} | {row['nn_val_to_train']['median']:.4f} | {row['nn_ratio']:.2f} |")
    apart = lambda key: rows["c"][key]["ci95"][1] < rows["a"][key]["ci95"][0]  # noqa: E731
    a, c = rows["a"]["c2st"], rows["c"]["c2st"]
    met, met_decoded = apart("c2st"), apart("c2st_decoded")
    print(f"\nprior fits: mixture {priors['vector']['components']} x {priors['vector']['covariance']} "
          f"({priors['vector']['fit_s']} s); PixelCNN best epoch {priors['vq']['best_epoch']}/{priors['vq']['epochs']}, "
          f"val {priors['vq']['val_bits_per_code']:.3f} bits/code of {priors['vq']['uniform_bits_per_code']:.2f} "
          f"({priors['vq']['fit_s']} s)")
    print(f"target (c) below (a), intervals apart: {'MET' if met else 'MISSED'} "
          f"((c) high {c['ci95'][1]:.3f} vs (a) low {a['ci95'][0]:.3f})")
    print(f"the same against each model's reconstructions (the prior alone): {'MET' if met_decoded else 'MISSED'} "
          f"((c) high {rows['c']['c2st_decoded']['ci95'][1]:.3f} vs (a) low {rows['a']['c2st_decoded']['ci95'][0]:.3f})")
    drop = ("prior_description", "units", "region", "grid")
    print(json.dumps({
        "benchmark": "sample_quality", "images": str(args.images), "size": args.size, "epochs": args.epochs,
        "samples": args.samples, "threads": args.threads, "torch": torch.__version__,
        "runs": {family: str(path) for family, path in runs.items()}, "priors": priors,
        "rows": {key: {k: v for k, v in row.items() if k not in drop} for key, row in rows.items()},
        "target": {"c_below_a": met, "a_ci95": a["ci95"], "c_ci95": c["ci95"], "c_below_a_decoded": met_decoded,
                   "a_decoded_ci95": rows["a"]["c2st_decoded"]["ci95"], "c_decoded_ci95": rows["c"]["c2st_decoded"]["ci95"]},
        "wall_s": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
