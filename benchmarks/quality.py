"""Reconstruction quality of each model family against PCA and bicubic at the same latent size.

On ../shared/data/ccp-figures (600 real photos) at 64x64, fit pad, no bbox crop, each family is
trained with `vaelab.runs.session.train_run` for `--epochs` epochs over all 538 training images, once per
seed in `--seeds`, from its config:
- vector:  configs/ccp-64.yaml's model and training (the small conv VAE), with the benchmark's data
           settings (bbox_crop false, every training batch each epoch);
- spatial: configs/spatial-64.yaml (diffusers AutoencoderKL, a Gaussian latent map);
- vq:      configs/vq-64.yaml (the same blocks, a VQ codebook latent map).

Every number is measured here, in this run, on the run's own validation split (the loader that
`vaelab.experiments.evaluate.split_loader` builds from the run's data config, so the split is
exactly the run's), with one metric code path for models and baselines alike:
- reconstruction: the model's posterior mode decoded (no sampling), mapped back to uint8 pixels
  as `vaelab` shows them; a baseline's reconstruction is clipped and rounded to uint8 the same way;
- PSNR: per image, over its real (unpadded) pixels and 3 channels, pixels in [0, 1]; then the
  mean over images ("pooled" is 10 log10(1 / MSE over all real pixels), as the trainer's val_psnr
  is pooled; the trainer's decodes one sampled z, so for the vector and spatial families the
  logged val_psnr, also in the JSON, is a little lower than the pooled PSNR of the mode);
- SSIM: `vaelab.train.metrics.box_ssim` on each image's content box, mean over images.

The baselines, in the same run:
- PCA-k: fitted on the training split's fitted images (uint8 -> [0, 1], flattened, the same pad
  fit as training: padding is always 0, so it has no variance and costs no components) by an
  exact SVD of the centred 538 x 12288 matrix; val images are projected on the first k
  components. k = each family's latent float count, 128, 256 and 512 (and the float32
  count of the vq latent's bits). After centring, n_train images span at most n_train - 1
  directions, so k is capped there and the table says so.
- bicubic-F: each image's content box (its real pixels only: the padding is given away free)
  is resized with Pillow bicubic to the size of the box's aspect ratio whose h * w * 3 is
  nearest to F floats, and back to the box's size.

Also, unless --skip-640: training speed at 640x640 on the CPU of configs/spatial-640.yaml against
configs/journal-2022-04-05.yaml (the vector journal config, whose flatten -> dense layer alone has
52M weights), each in its own process (so its peak RSS is its own): `Trainer.train_step` on real
ccp-figures batches decoded before timing, the same batch size (--speed-batch) for both.

    python benchmarks/quality.py [--seeds 0 1 2] [--epochs 10] [--families vector spatial vq]
                                 [--skip-640] [--threads 2] [--set spatial:train.lr=2e-3 ...]

Ends with one JSON line: {"benchmark": "quality", "families": ..., "pca": ..., "bicubic": ...,
"targets": ..., "speed_640": ...}. Targets: spatial beats PCA at its own float count by >= 1 dB;
vq beats PCA-256 by >= 1 dB; the vector family's numbers are those of the commit before the
families existed (387296e, trained again in the same run; --vector-reference none skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "ccp-figures"
CONFIGS = {"vector": REPO / "configs" / "ccp-64.yaml", "spatial": REPO / "configs" / "spatial-64.yaml",
           "vq": REPO / "configs" / "vq-64.yaml"}
SPEED_CONFIGS = {"spatial-640": REPO / "configs" / "spatial-640.yaml",
                 "journal (vector)": REPO / "configs" / "journal-2022-04-05.yaml"}
PCA_KS = (128, 256, 512)
TARGET_DB = 1.0
# "The vector family's numbers are unchanged": the vector family is also trained, in the same run and
# with the same overrides, from the tree of this commit, the last one before model.kind existed, and
# the logged val_psnr of each seed must be equal. Float rounding differs between CPUs (by up to
# ~0.03 dB for both commits alike), so stored numbers would only compare on the machine that made them.
VECTOR_REFERENCE = "387296e"


# --------------------------------------------------------------------------------------------
# configs and data
# --------------------------------------------------------------------------------------------


def data_overrides(images: Path, size: int) -> list[str]:
    """The benchmark's data settings, the same for every family: the photos, whole, letterboxed."""
    over = [f"data.images={images}", f"data.size=[{size},{size}]", "data.fit=pad", "data.bbox_crop=false",
            "data.workers=0", "data.val_fraction=0.1"]
    if (images / "metadata.json").is_file():
        over += [f"data.metadata={images / 'metadata.json'}", "data.fields.bbox=person_bbox_xyxy",
                 "data.fields.source=null"]
    else:  # a folder without metadata (the tests' photos): indexed
        over += ["data.metadata=null"]
    return over


def run_overrides(args, seed: int, root: Path, name: str) -> list[str]:
    """Everything the benchmark sets on a family's config: its data settings, epochs, seed, run folder."""
    return data_overrides(args.images, args.size) + [
        f"train.epochs={args.epochs}", "train.batches_per_epoch=null", f"train.seed={seed}",
        "train.device=cpu", f"run.root={root}", f"run.name={name}",
        "run.tensorboard=false", f"run.checkpoint_every={args.epochs}", "run.keep_checkpoints=1"]


def family_config(family: str, args, seed: int, extra: list[str]):
    from vaelab.config import load_config

    return load_config(CONFIGS[family], run_overrides(args, seed, args.out / "runs", f"{family}-s{seed}") + extra)


def logged_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_reference(args, log) -> dict:
    """The vector family trained from the tree of `args.vector_reference` (`git archive`), one process
    per seed, with `vaelab train` and the same overrides as this run's vector family: the logged
    val_psnr per seed, or the reason it could not run."""
    import io
    import tarfile

    commit = args.vector_reference
    tree = args.out / f"reference-{commit}"
    if not (tree / "src" / "vaelab").is_dir():
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True)
        if archive.returncode != 0:
            return {"error": f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()[:200]}"}
        tree.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(args.threads)}
    root = args.out / "reference-runs"
    val_psnr = {}
    for seed in args.seeds:
        name = f"vector-{commit}-s{seed}"
        command = [sys.executable, "-m", "vaelab", "train", "-c", str(tree / "configs" / "ccp-64.yaml")]
        for override in run_overrides(args, seed, root, name):
            command += ["--set", override]
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
        runs = sorted(root.glob(f"*{name}"), key=lambda path: path.stat().st_mtime)
        if done.returncode != 0 or not runs:
            tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            return {"error": f"training {commit} seed {seed} failed: {tail}"}
        metrics = logged_metrics(runs[-1])
        val_psnr[seed] = metrics[-1].get("val_psnr") if metrics else None
        log(f"vector at {commit} seed {seed}: logged val_psnr {val_psnr[seed]}")
    return {"val_psnr": val_psnr}


def split_pixels(data, split: str, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """All fitted uint8 images (N, H, W, 3) of a split and their content boxes, in the split's order."""
    from vaelab.experiments.evaluate import split_loader
    from vaelab.train.rng import isolated

    loader, _ = split_loader(data, split, batch_size)
    pixels, boxes = [], []
    for batch in isolated(loader.batches(0)):
        pixels.append(batch.pixels.clone())
        boxes.append(batch.boxes.clone())
    return torch.cat(pixels), torch.cat(boxes)


# --------------------------------------------------------------------------------------------
# the one metric code path
# --------------------------------------------------------------------------------------------


def scores(recon: torch.Tensor, pixels: torch.Tensor, boxes: torch.Tensor) -> dict:
    """uint8 reconstructions vs uint8 originals (N, H, W, 3): per-image PSNR on real pixels, SSIM on
    the content box, and the pooled PSNR; their means over images."""
    from vaelab.data.scaling import box_masks
    from vaelab.train.metrics import box_ssim

    x, y = recon.double() / 255.0, pixels.double() / 255.0
    mask = box_masks(boxes, *pixels.shape[1:3]).permute(0, 2, 3, 1).double()
    sse = (((x - y) ** 2) * mask).sum(dim=(1, 2, 3))
    count = mask.sum(dim=(1, 2, 3)) * pixels.shape[3]
    mse = sse / count.clamp_min(1)
    psnr = torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-12)), torch.full_like(mse, 100.0))
    nchw = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    ssim = box_ssim(nchw(x), nchw(y), boxes)
    pooled = float(sse.sum() / count.sum())
    return {"psnr": float(psnr.mean()), "psnr_per_image": psnr.tolist(), "ssim": float(ssim.mean()),
            "psnr_pooled": 10 * math.log10(1.0 / pooled) if pooled > 0 else 100.0, "images": len(pixels)}


def to_uint8(values: np.ndarray, shape) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8).reshape(shape))


@torch.no_grad()
def reconstruct(run, pixels: torch.Tensor, boxes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The run's model: encode, posterior mode, decode, back to uint8 pixels (as vaelab shows them)."""
    from vaelab.data.loader import Batch
    from vaelab.data.scaling import to_model_input, to_pixels

    scale, out = run.config.data.scale, []
    for start in range(0, len(pixels), batch_size):
        batch = Batch(pixels[start:start + batch_size], boxes[start:start + batch_size],
                      torch.arange(min(batch_size, len(pixels) - start)))
        inputs = to_model_input(batch, scale, run.device)
        decoded = run.model.decode(run.model.encode(inputs.x).mode())
        out.append(to_pixels(decoded, scale, inputs.mean, inputs.std))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# the baselines
# --------------------------------------------------------------------------------------------


class PCA:
    """Exact PCA of the training images (rows of X in [0, 1]): mean and right singular vectors."""

    def __init__(self, train: torch.Tensor):
        x = train.reshape(len(train), -1).numpy().astype(np.float64) / 255.0
        self.mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.n_train = len(train)
        self.max_k = min(self.n_train - 1, x.shape[1])
        self.components = vt[: self.max_k]
        self.spectrum = s[: self.max_k]

    def reconstruct(self, pixels: torch.Tensor, k: int) -> torch.Tensor:
        x = pixels.reshape(len(pixels), -1).numpy().astype(np.float64) / 255.0
        c = self.components[: min(k, self.max_k)]
        return to_uint8((x - self.mean) @ c.T @ c + self.mean, pixels.shape)


def bicubic_size(box_h: int, box_w: int, floats: int) -> tuple[int, int]:
    """(h, w) with w/h the box's aspect ratio whose h * w * 3 is nearest `floats` (ties: the smaller)."""
    best = None
    for h in range(1, box_h + 1):
        w = min(box_w, max(1, round(h * box_w / box_h)))
        cost = (abs(3 * h * w - floats), 3 * h * w)
        if best is None or cost < best[0]:
            best = (cost, (h, w))
    return best[1]


def bicubic(pixels: torch.Tensor, boxes: torch.Tensor, floats: int) -> tuple[torch.Tensor, float]:
    """Each content box bicubic down to ~`floats` floats and back; padding left as it is (unscored).
    Returns the images and the mean float count actually used."""
    out, used = pixels.clone(), []
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        small_h, small_w = bicubic_size(h, w, floats)
        used.append(3 * small_h * small_w)
        crop = Image.fromarray(pixels[i, top:top + h, left:left + w].numpy())
        back = crop.resize((small_w, small_h), Image.BICUBIC).resize((w, h), Image.BICUBIC)
        out[i, top:top + h, left:left + w] = torch.from_numpy(np.array(back))
    return out, float(np.mean(used))


# --------------------------------------------------------------------------------------------
# training and scoring a family
# --------------------------------------------------------------------------------------------


def latent_size(model) -> dict:
    from vaelab.model import latent_floats

    shape = list(model.latent_shape)
    if model.family == "vq":
        positions = math.prod(shape[1:])
        bits = positions * math.log2(model.codebook_size)
        return {"latent_shape": shape, "latent_floats": None, "latent_bits": bits, "codes": model.codebook_size,
                "float32_equivalent": math.ceil(bits / 32)}
    return {"latent_shape": shape, "latent_floats": latent_floats(model), "latent_bits": None}


def run_family(family: str, args, extra: list[str], configs: list, val: tuple, log) -> dict:
    """Train `configs` (one per seed, read before any training, so that editing a config file
    while the benchmark runs changes nothing) and score each run's last checkpoint."""
    from vaelab.model import count_parameters
    from vaelab.runs.loaded import load_run
    from vaelab.runs.session import train_run

    per_seed = []
    for seed, config in zip(args.seeds, configs):
        load = os.getloadavg()[0]
        started = time.perf_counter()
        run_dir = train_run(config, progress=False)
        wall = time.perf_counter() - started
        run = load_run(run_dir, "last", "cpu")
        got = scores(reconstruct(run, *val), *val)
        metrics = logged_metrics(run_dir)
        grid = run_dir / "reconstructions" / f"epoch-{args.epochs:04d}.png"
        per_seed.append({"seed": seed, "run": str(run_dir), "wall_s": round(wall, 2), "load_1min": round(load, 2),
                         "psnr": got["psnr"], "ssim": got["ssim"], "psnr_pooled": got["psnr_pooled"],
                         "val_psnr_logged": metrics[-1].get("val_psnr") if metrics else None,
                         "epochs": len(metrics), "grid": str(grid) if grid.is_file() else None,
                         "parameters": count_parameters(run.model), **latent_size(run.model)})
        log(f"{family} seed {seed}: PSNR {got['psnr']:.2f} dB (pooled {got['psnr_pooled']:.2f}, logged "
            f"{per_seed[-1]['val_psnr_logged']}), SSIM {got['ssim']:.4f}, {wall:.0f} s, load {load:.1f}")
    first = per_seed[0]
    summary = {key: first[key] for key in ("parameters", "latent_shape", "latent_floats", "latent_bits")}
    if first.get("codes"):
        summary.update(codes=first["codes"], float32_equivalent=first["float32_equivalent"])
    for key in ("psnr", "ssim", "psnr_pooled", "wall_s"):
        values = [r[key] for r in per_seed]
        summary[key] = statistics.mean(values)
        summary[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    summary["config"] = str(CONFIGS[family].relative_to(REPO))
    summary["overrides"] = extra
    config = configs[0]
    summary["resolved"] = {"model": config.model.model_dump(mode="json"), "loss": config.loss.model_dump(mode="json"),
                           "train": {k: getattr(config.train, k) for k in ("batch_size", "lr", "lr_schedule", "ema")},
                           "scale": config.data.scale}
    summary["seeds"] = per_seed
    return summary


# --------------------------------------------------------------------------------------------
# training speed at 640x640 (each config in its own process)
# --------------------------------------------------------------------------------------------


def speed_worker(args) -> None:
    """One config's training speed; prints one JSON line. Runs in a fresh process."""
    from vaelab.config import load_config
    from vaelab.data.collection import load_collection
    from vaelab.data.loader import Batch, FittedImages, ImageLoader
    from vaelab.model import build_model, count_parameters
    from vaelab.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    size = args.speed_size
    over = data_overrides(args.images, size) + [f"train.batch_size={args.speed_batch}", "train.device=cpu",
                                                "train.batches_per_epoch=null", "data.cache=false"]
    config = load_config(Path(args.speed_worker), over)
    collection = load_collection(config.data)
    images = FittedImages(collection, config.data, use_cache=False)
    loader = ImageLoader(images, images.positions_of(collection.train), args.speed_batch, 0, shuffle=True,
                         drop_last=True, workers=0)
    batches = []
    for batch in loader.batches(0, stop=args.speed_warmup + args.speed_steps):
        batches.append(Batch(batch.pixels.clone(), batch.boxes.clone(), batch.positions.clone()))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    model = build_model(config.model, config.data.size)
    trainer = Trainer(config, model, torch.device("cpu"))
    trainer.model.train()
    for batch in batches[: args.speed_warmup]:
        trainer.train_step(batch)
    started = time.perf_counter()
    for batch in batches[args.speed_warmup:]:
        trainer.train_step(batch)
    seconds = time.perf_counter() - started
    timed = sum(len(b) for b in batches[args.speed_warmup:])
    print(json.dumps({"config": str(Path(args.speed_worker).resolve().relative_to(REPO)), "kind": config.model.kind,
                      "parameters": count_parameters(model), "size": size, "batch": args.speed_batch,
                      "steps": len(batches) - args.speed_warmup, "warmup": args.speed_warmup,
                      "images_per_s": timed / seconds, "s_per_step": seconds / max(1, len(batches) - args.speed_warmup),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_model_mb": rss_before, "skipped_steps": trainer.guard.skipped,
                      "threads": args.threads}))


def speed_640(args, log) -> list[dict]:
    rows = []
    for name, path in SPEED_CONFIGS.items():
        command = [sys.executable, str(Path(__file__).resolve()), "--speed-worker", str(path), "--images", str(args.images),
                   "--speed-size", str(args.speed_size), "--speed-batch", str(args.speed_batch),
                   "--speed-steps", str(args.speed_steps), "--speed-warmup", str(args.speed_warmup),
                   "--threads", str(args.threads)]
        load = os.getloadavg()[0]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"name": name, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                         f"exit {done.returncode}", "load_1min": round(load, 2)})
            log(f"speed {name}: FAILED {rows[-1]['error']}")
            continue
        row = {"name": name, **json.loads(done.stdout.strip().splitlines()[-1]), "load_1min": round(load, 2)}
        rows.append(row)
        log(f"speed {name}: {row['images_per_s']:.3f} images/s, peak RSS {row['peak_rss_mb']:.0f} MB")
    return rows


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def fmt(value, spec=".2f", none="-") -> str:
    return none if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED, help="a photo collection (with metadata.json, or a folder to index)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vaelab-quality"), help="runs go to OUT/runs")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--pca-k", type=int, nargs="+", default=list(PCA_KS), help="PCA components besides the latents' float counts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FAMILY:KEY=VALUE",
                        help="an override for one family's config, e.g. spatial:train.lr=2e-3 (repeatable)")
    parser.add_argument("--skip-640", action="store_true", help="skip the 640x640 training-speed comparison")
    parser.add_argument("--speed-size", type=int, default=640)
    parser.add_argument("--speed-batch", type=int, default=2, help="batch size of both configs in the speed comparison")
    parser.add_argument("--speed-steps", type=int, default=2, help="timed training steps per config")
    parser.add_argument("--speed-warmup", type=int, default=1)
    parser.add_argument("--vector-reference", default=VECTOR_REFERENCE, metavar="COMMIT",
                        help="train the vector family at this commit too and require equal numbers; none = skip")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 16 px, 1 epoch, seed 0, the speed part at 32 px")
    parser.add_argument("--speed-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_worker:
        speed_worker(args)
        return 0
    if args.quick:
        args.size, args.epochs, args.seeds = 16, 1, [0]
        args.speed_size, args.speed_steps, args.speed_warmup, args.speed_batch = 32, 1, 0, 2
    torch.set_num_threads(args.threads)
    extra = {family: [] for family in CONFIGS}
    for item in args.sets:
        family, _, override = item.partition(":")
        if family not in extra or "=" not in override:
            parser.error(f"--set {item!r}: use FAMILY:KEY=VALUE with FAMILY one of {', '.join(CONFIGS)}")
        extra[family].append(override)

    from vaelab.config import load_config

    started = time.perf_counter()
    loads = [os.getloadavg()]
    log = lambda message: print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)  # noqa: E731
    data = load_config(None, data_overrides(args.images, args.size)).data
    train_px, _ = split_pixels(data, "train")
    val = split_pixels(data, "val")
    log(f"data: {len(train_px)} train, {len(val[0])} val images at {args.size}x{args.size}")

    configs = {family: [family_config(family, args, seed, extra[family]) for seed in args.seeds] for family in args.families}
    families = {}
    for family in args.families:
        families[family] = run_family(family, args, extra[family], configs[family], val, log)
        loads.append(os.getloadavg())

    # the baselines: PCA at every latent's float count and the fixed ks; bicubic at the same counts
    pca = PCA(train_px)
    ks = set(args.pca_k)
    for name, f in families.items():
        ks.add(f["latent_floats"] if f["latent_floats"] is not None else f["float32_equivalent"])
    pca_rows, bicubic_rows = [], []
    for k in sorted(ks):
        got = scores(pca.reconstruct(val[0], k), *val)
        pca_rows.append({"k": k, "k_used": min(k, pca.max_k), "capped": k > pca.max_k, "psnr": got["psnr"],
                         "ssim": got["ssim"], "psnr_pooled": got["psnr_pooled"],
                         "for": [n for n, f in families.items() if k in (f["latent_floats"], f.get("float32_equivalent"))]})
        images, used = bicubic(val[0], val[1], k)
        got = scores(images, *val)
        bicubic_rows.append({"floats": k, "floats_used": round(used, 1), "psnr": got["psnr"], "ssim": got["ssim"],
                             "psnr_pooled": got["psnr_pooled"]})
    log(f"baselines: PCA on {pca.n_train} training images (k <= {pca.max_k}), bicubic")

    speed = [] if args.skip_640 else speed_640(args, log)
    loads.append(os.getloadavg())

    # targets
    by_k = {row["k"]: row for row in pca_rows}
    targets = {}
    if "spatial" in families:
        f = families["spatial"]
        ref = by_k[f["latent_floats"]]
        margin = f["psnr"] - ref["psnr"]
        targets["spatial_vs_pca_same_floats"] = {
            "target_db": TARGET_DB, "pca_k": ref["k"], "pca_k_used": ref["k_used"], "margin_db": round(margin, 3),
            "met": margin >= TARGET_DB}
    if "vq" in families and 256 in by_k:
        f = families["vq"]
        margin = f["psnr"] - by_k[256]["psnr"]
        targets["vq_vs_pca_256"] = {"target_db": TARGET_DB, "margin_db": round(margin, 3), "met": margin >= TARGET_DB,
                                    "factor": configs["vq"][0].model.factor,
                                    "codes": f["codes"]}
    if "vector" in families and args.vector_reference != "none":
        if extra["vector"]:
            target = {"error": "not compared: --set changed the vector config"}
        else:
            target = train_reference(args, log)
            if "val_psnr" in target:
                diffs = [abs(r["val_psnr_logged"] - target["val_psnr"][r["seed"]]) for r in families["vector"]["seeds"]]
                target.update(max_abs_diff_db=max(diffs), met=max(diffs) == 0.0)
        targets["vector_unchanged"] = {"reference_commit": args.vector_reference, **target}
        loads.append(os.getloadavg())

    wall = time.perf_counter() - started

    # the table
    print(f"quality on {args.images.name} at {args.size}x{args.size}, fit pad, no bbox crop: {len(train_px)} train, "
          f"{len(val[0])} val images; {args.epochs} epochs over all training images, seeds {args.seeds}; "
          f"CPU, torch {torch.__version__}, {args.threads} thread(s), {platform.machine()} {os.cpu_count()} cpus")
    print(f"load average (1 min) over the run: {min(l[0] for l in loads):.2f}-{max(l[0] for l in loads):.2f}; "
          f"whole run {wall / 60:.1f} min")
    print("PSNR: dB on real pixels, mean over val images (pooled = over all real pixels); SSIM on the content box; "
          "models: posterior mode of the last checkpoint; +- = sd over seeds")
    print()
    head = f"{'method':<24} {'latent':>16} {'floats':>7} {'bits':>7} {'params':>10} {'train s':>9} " \
           f"{'PSNR dB':>14} {'pooled':>7} {'SSIM':>14}"
    print(head)
    print("-" * len(head))
    for name, f in families.items():
        shape = "x".join(str(s) for s in f["latent_shape"])
        latent = f"{shape} ({f['codes']} codes)" if f.get("codes") else shape
        print(f"{name:<24} {latent:>16} {fmt(f['latent_floats'], 'd'):>7} {fmt(f['latent_bits'], '.0f'):>7} "
              f"{f['parameters']:>10,} {f['wall_s']:>9.0f} {f['psnr']:>7.2f} +-{f['psnr_sd']:<5.2f}"
              f"{f['psnr_pooled']:>7.2f} {f['ssim']:>7.4f} +-{f['ssim_sd']:.4f}")
    for row in pca_rows:
        label = f"PCA-{row['k']}" + (f" (capped {row['k_used']})" if row["capped"] else "")
        note = f" <- {', '.join(row['for'])}" if row["for"] else ""
        print(f"{label:<24} {'':>16} {row['k_used']:>7} {32 * row['k_used']:>7} {'':>10} {'':>9} "
              f"{row['psnr']:>7.2f}{'':7}{row['psnr_pooled']:>7.2f} {row['ssim']:>7.4f}{note}")
    for row in bicubic_rows:
        print(f"{'bicubic-' + str(row['floats']):<24} {'':>16} {row['floats_used']:>7.0f} {'':>7} {'':>10} {'':>9} "
              f"{row['psnr']:>7.2f}{'':7}{row['psnr_pooled']:>7.2f} {row['ssim']:>7.4f}")
    print()
    for name, t in targets.items():
        if name == "vector_unchanged":
            state = (t["error"] if "error" in t else
                     f"{'met' if t['met'] else 'MISSED'}: max |val_psnr - {t['reference_commit']}'s, trained in this "
                     f"run| = {t['max_abs_diff_db']:.2g} dB")
        else:
            state = f"{'met' if t['met'] else 'MISSED'}: margin {t['margin_db']:+.2f} dB (target >= +{t['target_db']:.0f} dB)"
        print(f"target {name}: {state}")
    if speed:
        print()
        print(f"training speed at {args.speed_size}x{args.speed_size} on the CPU, batch {args.speed_batch}, "
              f"{args.speed_steps} timed steps after {args.speed_warmup} warm-up, data decoded before timing:")
        print(f"{'config':<20} {'params':>12} {'images/s':>9} {'s/step':>8} {'peak RSS MB':>12} {'load':>5}")
        for row in speed:
            if "error" in row:
                print(f"{row['name']:<20} FAILED: {row['error']}")
            else:
                print(f"{row['name']:<20} {row['parameters']:>12,} {row['images_per_s']:>9.3f} {row['s_per_step']:>8.2f} "
                      f"{row['peak_rss_mb']:>12.0f} {row['load_1min']:>5.2f}")
    for f in families.values():
        for r in f["seeds"]:
            r.pop("psnr_per_image", None)
    print(json.dumps({
        "benchmark": "quality", "images": str(args.images), "size": args.size, "epochs": args.epochs, "seeds": args.seeds,
        "train_images": len(train_px), "val_images": len(val[0]), "threads": args.threads, "torch": torch.__version__,
        "families": families, "pca": pca_rows, "pca_max_k": pca.max_k, "bicubic": bicubic_rows, "targets": targets,
        "speed_640": speed, "load_1min": [round(l[0], 2) for l in loads], "wall_s": round(wall, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
