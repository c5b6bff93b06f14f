"""Using a trained model: reconstruct, sample, interpolate and traverse draw images; encode and
decode move images to and from a latents file. Each calls `vaelab.experiments.use` or `.latents`,
imported inside the command so that `vaelab --help` does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from vaelab.cli.options import (
    CHECKPOINT_OPTION,
    DATA_CONFIG_OPTION,
    DATA_SET_OPTION,
    DEVICE_OPTION,
    PRIOR_OPTION,
    RUN_DIR_ARGUMENT,
    echo_err,
)


@click.command("reconstruct")
@RUN_DIR_ARGUMENT
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for one <image name>.png per image.")
@click.option("--full-size", is_flag=True, help="Show both halves at the original image's size, not the model's.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def reconstruct_cmd(run_dir: Path, images: tuple[Path, ...], out_dir: Path, full_size: bool, checkpoint: str,
                    device: str) -> None:
    """Each image as the model sees it (fitted like the training images) beside its reconstruction
    from the posterior mean, both cropped to the real content: a padded image keeps its aspect ratio."""
    from vaelab.experiments.use import reconstruct

    written = reconstruct(run_dir, images, out_dir, checkpoint, device, full_size)
    click.echo(f"wrote {len(written)} reconstruction(s) to {out_dir}")


@click.command("sample")
@RUN_DIR_ARGUMENT
@click.option("-n", "--count", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same samples.")
@click.option("--columns", type=int, default=None, help="Grid columns [default: about the square root of N].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@PRIOR_OPTION
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Below 1: likelier latents, less variety (scales the logits of a PixelCNN, the spread otherwise).")
@click.option("--top-k", type=int, default=None, help="PixelCNN prior: draw each code from the k likeliest only.")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="A tag-conditioned PixelCNN prior: draw images with this tag. Repeatable.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def sample_cmd(run_dir: Path, count: int, seed: int, columns: Optional[int], out: Path, prior: str,
               temperature: float, top_k: Optional[int], tags: tuple[str, ...], checkpoint: str, device: str) -> None:
    """A grid of images decoded from draws of the run's prior: the one 'vaelab prior' fitted (a
    PixelCNN over a vq run's codes, a Gaussian mixture over a vector or spatial run's latents),
    else N(0, I). Says which prior it used."""
    from vaelab.experiments.use import sample

    path, description = sample(run_dir, out, count, seed, columns, checkpoint, device, prior, temperature, top_k, tags)
    click.echo(f"wrote {path}: {count} samples; prior: {description}")


@click.command("interpolate")
@RUN_DIR_ARGUMENT
@click.argument("image_a", type=click.Path(path_type=Path))
@click.argument("image_b", type=click.Path(path_type=Path))
@click.option("--steps", type=int, default=8, show_default=True, help="Decoded images between and including the ends.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def interpolate_cmd(run_dir: Path, image_a: Path, image_b: Path, steps: int, out: Path, checkpoint: str,
                    device: str) -> None:
    """A strip: IMAGE_A, then decodings along the straight line between the two posterior means (a vq
    run's two quantized maps, decoded without quantizing again), then IMAGE_B."""
    from vaelab.experiments.use import interpolate

    click.echo(f"wrote {interpolate(run_dir, image_a, image_b, out, steps, checkpoint, device)}")


@click.command("traverse")
@RUN_DIR_ARGUMENT
@click.option("--dims", type=int, default=8, show_default=True,
              help="Rows: the latent dimensions (channels of a spatial latent) with the most KL (from "
                   "evaluation.json when there is one).")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="Vary around this image's posterior mean [default: around 0].")
@click.option("--range", "span", type=float, default=3.0, show_default=True, help="Each row goes from -R to +R.")
@click.option("--steps", type=int, default=7, show_default=True, help="Columns.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def traverse_cmd(run_dir: Path, dims: int, image: Optional[Path], span: float, steps: int, out: Path,
                 checkpoint: str, device: str) -> None:
    """A grid with one row per latent dimension, varied alone while the others stay fixed; a spatial
    latent by channel (the channel's whole map shifted). Not for a vq run: its codes have no axis."""
    from vaelab.experiments.use import traverse

    result = traverse(run_dir, out, dims, image, span, steps, checkpoint, device)
    click.echo(f"wrote {result['file']}: {result.get('unit', 'dimension')}s {', '.join(map(str, result['dims']))} "
               f"(ranked by {result['ranked_by']})")


@click.command("encode")
@RUN_DIR_ARGUMENT
@DATA_CONFIG_OPTION
@DATA_SET_OPTION
@click.option("--split", type=click.Choice(["all", "val", "train"]), default="all", show_default=True,
              help="Which images of the data to encode.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Latents file to write (.npz: mu, logvar, codes, ids, boxes, sizes; loads without pickle).")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def encode_cmd(run_dir: Path, config_path: Optional[Path], overrides: tuple[str, ...], split: str, out: Path,
               checkpoint: str, device: str) -> None:
    """Encode the run's images (or another config's) into a latents file with their ids."""
    from vaelab.experiments.latents import encode

    result = encode(run_dir, out, config_path, overrides, split, checkpoint, device)
    shape = "x".join(map(str, result["latent_shape"]))
    click.echo(f"wrote {result['file']}: {result['images']} images x latent {shape} ({result['family']})")
    if result["skipped"]:
        echo_err(f"skipped {result['skipped']} unreadable image(s)")


@click.command("decode")
@RUN_DIR_ARGUMENT
@click.argument("latents", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder for one PNG per id.")
@click.option("--model-size", is_flag=True, help="Keep the model's resolution (cropped to the content box).")
@CHECKPOINT_OPTION
@DEVICE_OPTION
def decode_cmd(run_dir: Path, latents: Path, out_dir: Path, model_size: bool, checkpoint: str, device: str) -> None:
    """Decode a latents file (from 'vaelab encode') into images, cropped back to each image's
    aspect ratio and resized to its original size."""
    from vaelab.experiments.latents import decode

    written = decode(run_dir, latents, out_dir, checkpoint, device, full_size=not model_size)
    click.echo(f"wrote {len(written)} image(s) to {out_dir}")

