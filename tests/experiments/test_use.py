"""Using a trained run: encode -> decode restores each image's size and aspect ratio, reconstruct
crops a padded image back to its own shape, sample / interpolate / traverse grids, bad input;
and the same commands on the spatial and vq families.

One tiny run (32x32 px, pad, latent 6) is trained once for the module, and a tiny spatial and
vq run (16x16 px, one epoch) each once, in a few seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaelab.config import load_config
from vaelab.data.images import load_fitted
from vaelab.errors import VaelabError
from vaelab.experiments import latents as lat
from vaelab.experiments import use

SIZE = 32
LATENT = 6
GAP = 2  # image_grid's default gap between and around cells


def make_images(folder: Path, count: int = 18) -> Path:
    """Gradients with a bright block, in portrait, landscape and square shapes."""
    rng = np.random.default_rng(0)
    for i in range(count):
        width, height = [(48, 64), (64, 40), (56, 56)][i % 3]
        pixels = np.linspace(0, 1, width)[None, :, None] * rng.integers(60, 220, 3)[None, None, :]
        pixels = np.repeat(pixels, height, axis=0)
        pixels[: height // 3, : width // 3] = rng.integers(0, 255, 3)
        path = folder / f"set-{i // 6}" / f"standing-{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, images folder)."""
    from vaelab.runs.session import train_run

    tmp = tmp_path_factory.mktemp("use")
    images = make_images(tmp / "images")
    config = load_config(None, [
        f"data.images={images}", f"data.size=[{SIZE}, {SIZE}]", "data.fit=pad", "data.workers=0",
        f"data.cache_dir={tmp / 'cache'}",  # module fixtures run before the per-test cache fixture
        "model.conv=[{filters: 8, kernel: 3, stride: 2}, {filters: 16, kernel: 3, stride: 2}]",
        "model.dense=32", f"model.latent={LATENT}", "train.epochs=1", "train.batch_size=4",
        f"run.root={tmp / 'runs'}", "run.tensorboard=false", "run.images=2"])
    return train_run(config, progress=False), images


def grid_size(rows: int, columns: int, height: int = SIZE, width: int = SIZE) -> tuple[int, int]:
    """PIL (width, height) of an image_grid of equal cells."""
    return columns * width + (columns + 1) * GAP, rows * height + (rows + 1) * GAP


def landscape(path: Path, width: int = 90, height: int = 40) -> Path:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 0] = np.linspace(0, 255, width).astype(np.uint8)
    pixels[: height // 2, :, 1] = 200
    Image.fromarray(pixels).save(path)
    return path


# --------------------------------------------------------------------------------------------
# encode -> decode
# --------------------------------------------------------------------------------------------


def test_encode_then_decode_gives_images_of_the_original_size_and_aspect_ratio(trained, tmp_path):
    run_dir, images = trained
    latents = tmp_path / "latents.npz"
    summary = lat.encode(run_dir, latents, device="cpu")
    assert summary["images"] == 18 and summary["latent"] == LATENT

    with np.load(latents, allow_pickle=False) as file:  # no pickle needed
        assert set(file.files) == set(lat.LATENTS_KEYS)
        assert file["mu"].shape == (18, LATENT) and file["mu"].dtype == np.float32
        assert np.isfinite(file["mu"]).all() and file["logvar"].shape == (18, LATENT)
        assert file["codes"].shape == (18, 0)  # only a vq latent has codes
        ids = [str(i) for i in file["ids"]]
        meta = json.loads(str(file["meta"]))
    assert meta["format"] == "vaelab-latents" and meta["version"] == lat.LATENTS_VERSION == 2
    assert meta["family"] == "vector" and meta["latent_shape"] == [LATENT] and meta["latent"] == LATENT
    assert sorted(ids) == sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg"))

    written = lat.decode(run_dir, latents, tmp_path / "decoded", device="cpu")
    assert len(written) == 18
    for identifier, path in zip(ids, written):
        assert path.parent == tmp_path / "decoded" and path.name == use.safe_name(identifier)
        with Image.open(images / identifier) as original, Image.open(path) as decoded:
            assert decoded.size == original.size

    # At the model's resolution: cropped to the content box, the original aspect ratio to a pixel.
    small = lat.decode(run_dir, latents, tmp_path / "small", device="cpu", full_size=False)
    for identifier, path in zip(ids, small):
        with Image.open(images / identifier) as original, Image.open(path) as decoded:
            (w, h), (ow, oh) = decoded.size, original.size
            assert max(w, h) == SIZE and abs(w - h * ow / oh) <= 1


def test_decoded_file_names_stay_inside_the_output_folder(trained, tmp_path):
    run_dir, _ = trained
    latents = tmp_path / "latents.npz"
    lat.encode(run_dir, latents, device="cpu")
    with np.load(latents, allow_pickle=False) as file:
        arrays = {k: file[k] for k in file.files}
    n = len(arrays["ids"])
    assert n == 18
    hostile = ["../../escape.jpg", "/etc/passwd", "a/b.jpg", "a__b.jpg", "..", "a\\..\\c.png"]
    arrays["ids"] = np.array((hostile * n)[:n], dtype=str)
    lat.write_latents(latents, arrays)
    out = tmp_path / "out"
    written = lat.decode(run_dir, latents, out, device="cpu")
    assert [p.parent for p in written] == [out] * n
    assert len({p.name for p in written}) == n and sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    assert not (tmp_path / "escape.png").exists()


# --------------------------------------------------------------------------------------------
# reconstruct, sample, interpolate, traverse
# --------------------------------------------------------------------------------------------


def test_reconstruct_crops_a_padded_landscape_image_to_its_aspect_ratio(trained, tmp_path):
    run_dir, _ = trained
    image = landscape(tmp_path / "wide.png", 90, 40)
    (path,) = use.reconstruct(run_dir, [image], tmp_path / "out", device="cpu")
    assert path == tmp_path / "out" / "wide.png"
    fitted = load_fitted(image, (SIZE, SIZE), "pad")
    top, left, height, width = fitted.box
    assert (height, width) == (14, 32)  # 40 * 32 / 90 = 14.2 rows of content, the rest padding
    pair = np.asarray(Image.open(path))
    assert pair.shape == (14, 64, 3)  # original | reconstruction, each 32 x 14, like 90 x 40
    assert np.array_equal(pair[:, :32], fitted.pixels[top:top + height, left:left + width])

    (big,) = use.reconstruct(run_dir, [image], tmp_path / "big", device="cpu", full_size=True)
    assert Image.open(big).size == (180, 40)


def test_reconstruct_refuses_to_overwrite_its_input(trained, tmp_path):
    run_dir, _ = trained
    image = landscape(tmp_path / "wide.png")
    with pytest.raises(VaelabError, match="overwrite an input"):
        use.reconstruct(run_dir, [image], tmp_path, device="cpu")
    assert Image.open(image).size == (90, 40)


def test_sample_grid_size_and_seed(trained, tmp_path):
    run_dir, _ = trained
    a = use.sample(run_dir, tmp_path / "a.png", count=5, seed=3, device="cpu")[0]
    b = use.sample(run_dir, tmp_path / "b.png", count=5, seed=3, device="cpu")[0]
    c = use.sample(run_dir, tmp_path / "c.png", count=5, seed=4, device="cpu")[0]
    assert Image.open(a).size == grid_size(rows=2, columns=3)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(c)))
    with pytest.raises(VaelabError, match="at least 1"):
        use.sample(run_dir, tmp_path / "d.png", count=0, device="cpu")


def test_interpolate_strip(trained, tmp_path):
    run_dir, images = trained
    first, second = sorted(images.rglob("*.jpg"))[:2]
    path = use.interpolate(run_dir, first, second, tmp_path / "strip.png", steps=4, device="cpu")
    strip = np.asarray(Image.open(path))
    assert Image.open(path).size == grid_size(rows=1, columns=6)  # A, 4 steps, B
    cell = lambda i: strip[GAP:GAP + SIZE, GAP + i * (SIZE + GAP):GAP + i * (SIZE + GAP) + SIZE]  # noqa: E731
    assert np.array_equal(cell(0), load_fitted(first, (SIZE, SIZE), "pad").pixels)
    assert np.array_equal(cell(5), load_fitted(second, (SIZE, SIZE), "pad").pixels)


def test_traverse_grid_rows_and_dimension_choice(trained, tmp_path):
    run_dir, images = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)  # this test writes an evaluation.json
    # The trainer logs val_kl_per_dim every epoch; traverse ranks by the last epoch's.
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    kl = rows[-1]["val_kl_per_dim"]
    result = use.traverse(copy, tmp_path / "s.png", dims=3, steps=5, device="cpu")
    assert result["dims"] == sorted(range(LATENT), key=lambda d: -kl[d])[:3]
    assert result["ranked_by"] == "metrics.jsonl (last epoch)"
    (copy / "metrics.jsonl").write_text("".join(json.dumps({**r, "val_kl_per_dim": None}) + "\n" for r in rows))
    result = use.traverse(copy, tmp_path / "t.png", dims=3, steps=5, span=2.0, device="cpu")
    assert Image.open(result["file"]).size == grid_size(rows=3, columns=5)
    assert result["dims"] == [0, 1, 2] and "no KL known" in result["ranked_by"]
    # The middle column is the base (0) in every row: the same image three times.
    grid = np.asarray(Image.open(result["file"]))
    middle = [grid[GAP + r * (SIZE + GAP):GAP + r * (SIZE + GAP) + SIZE, GAP + 2 * (SIZE + GAP):][:, :SIZE]
              for r in range(3)]
    assert np.array_equal(middle[0], middle[1]) and np.array_equal(middle[1], middle[2])

    image = next(images.rglob("*.jpg"))
    assert use.traverse(copy, tmp_path / "u.png", dims=2, image=image, device="cpu")["ranked_by"] == "the image's own KL"
    (copy / "evaluation.json").write_text(json.dumps({"kl_per_dim": [0.1, 3.0, 0.0, 2.0, 0.5, 1.0]}))
    result = use.traverse(copy, tmp_path / "v.png", dims=10, device="cpu")
    assert result["dims"] == [1, 3, 5, 4, 0, 2] and result["ranked_by"] == "evaluation.json"
    assert Image.open(result["file"]).size == grid_size(rows=LATENT, columns=7)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors_naming_the_file(trained, tmp_path):
    run_dir, images = trained
    bare = tmp_path / "no-checkpoint"
    bare.mkdir()
    for name in ("config.yaml", "run.json"):
        shutil.copy(run_dir / name, bare / name)
    with pytest.raises(VaelabError, match="no checkpoint"):
        use.sample(bare, tmp_path / "s.png", device="cpu")

    missing = tmp_path / "missing.jpg"
    with pytest.raises(VaelabError, match="missing.jpg: file not found"):
        use.reconstruct(run_dir, [missing], tmp_path / "out", device="cpu")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(VaelabError, match="notes.jpg: not an image"):
        use.interpolate(run_dir, next(images.rglob("*.jpg")), text, tmp_path / "i.png", device="cpu")
    assert not (tmp_path / "out").exists() and not (tmp_path / "i.png").exists()

    latents = tmp_path / "latents.npz"
    lat.encode(run_dir, latents, split="val", device="cpu")
    with np.load(latents, allow_pickle=False) as file:
        arrays = {k: file[k] for k in file.files}
    meta = json.loads(str(arrays["meta"]))
    wrong = dict(arrays, mu=np.zeros((len(arrays["ids"]), LATENT + 2), np.float32),
                 logvar=np.zeros((len(arrays["ids"]), LATENT + 2), np.float32),
                 meta=np.array(json.dumps({**meta, "latent_shape": [LATENT + 2], "run": "runs/other"})))
    lat.write_latents(tmp_path / "wrong.npz", wrong)
    with pytest.raises(VaelabError, match=r"wrong.npz: latents of shape \(8,\) from a model.kind vector model, but"
                                          r" this run's model takes \(6,\) .*\(runs/other\)"):
        lat.decode(run_dir, tmp_path / "wrong.npz", tmp_path / "d", device="cpu")
    # The arrays must have the shape meta says: a file that disagrees with itself is damaged.
    lat.write_latents(tmp_path / "damaged.npz", dict(wrong, meta=arrays["meta"]))
    with pytest.raises(VaelabError, match=r"damaged.npz: 'mu' has shape \(\d+, 8\), expected \(\d+, 6\).*damaged"):
        lat.decode(run_dir, tmp_path / "damaged.npz", tmp_path / "d", device="cpu")
    np.savez(tmp_path / "pickled.npz", **dict(arrays, ids=np.array(list(arrays["ids"]), dtype=object)))
    with pytest.raises(VaelabError, match="pickled.npz: not a readable vaelab latents file"):
        lat.decode(run_dir, tmp_path / "pickled.npz", tmp_path / "d", device="cpu")
    with pytest.raises(VaelabError, match="notes.jpg: not a readable vaelab latents file"):
        lat.decode(run_dir, text, tmp_path / "d", device="cpu")
    with pytest.raises(VaelabError, match="nothing.npz: latents file not found"):
        lat.decode(run_dir, tmp_path / "nothing.npz", tmp_path / "d", device="cpu")
    assert not (tmp_path / "d").exists()


def test_use_commands_on_the_command_line(trained, tmp_path, capsys):
    from vaelab import cli

    names = ("reconstruct", "sample", "encode", "decode", "interpolate", "traverse")
    if not set(names) <= set(cli.cli.commands):
        pytest.skip("the use-the-model commands are not registered in cli.py yet")
    run_dir, images = trained
    files = sorted(images.rglob("*.jpg"))
    cli.main(["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "s.png"), "--device", "cpu"])
    assert Image.open(tmp_path / "s.png").size == grid_size(2, 2)
    cli.main(["encode", str(run_dir), "--out", str(tmp_path / "l.npz"), "--device", "cpu"])
    cli.main(["decode", str(run_dir), str(tmp_path / "l.npz"), "--out", str(tmp_path / "d"), "--device", "cpu"])
    assert len(list((tmp_path / "d").iterdir())) == 18
    cli.main(["reconstruct", str(run_dir), str(files[0]), "--out", str(tmp_path / "r"), "--device", "cpu"])
    cli.main(["interpolate", str(run_dir), str(files[0]), str(files[1]), "--out", str(tmp_path / "i.png")])
    cli.main(["traverse", str(run_dir), "--dims", "2", "--out", str(tmp_path / "t.png")])
    assert "dimensions " in capsys.readouterr().out
    assert (tmp_path / "r" / "standing-000.png").is_file() and (tmp_path / "i.png").is_file()
    assert Image.open(tmp_path / "t.png").size == grid_size(2, 7)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["reconstruct", str(run_dir), str(tmp_path / "none.jpg"), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "none.jpg: file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the spatial and vq families
# --------------------------------------------------------------------------------------------

SMALL = 16  # px: two levels halve it once, an 8x8 latent map
FAMILY_MODELS = {
    "spatial": "{kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 2}",
    "vq": "{kind: vq, channels: [8, 16], norm_groups: 8, code_dim: 4, codebook_size: 16}",
}
FAMILY_SHAPES = {"spatial": (2, 8, 8), "vq": (4, 8, 8)}


def train_family(tmp: Path, images: Path, family: str) -> Path:
    from vaelab.runs.session import train_run

    config = load_config(None, [
        f"data.images={images}", f"data.size=[{SMALL}, {SMALL}]", "data.fit=pad", "data.workers=0",
        f"data.cache_dir={tmp / 'cache'}", f"model={FAMILY_MODELS[family]}", "train.epochs=1",
        "train.batch_size=4", f"run.root={tmp / family}", "run.tensorboard=false", "run.images=2"])
    return train_run(config, progress=False)


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    """({family: run folder} for spatial and vq, images folder)."""
    tmp = tmp_path_factory.mktemp("families")
    images = make_images(tmp / "images")
    return {family: train_family(tmp, images, family) for family in FAMILY_MODELS}, images


@pytest.mark.parametrize("family", ["spatial", "vq"])
def test_family_encode_decode_gives_the_reconstructions(families, family, tmp_path):
    runs, images = families
    run_dir = runs[family]
    latents = tmp_path / "latents.npz"
    summary = lat.encode(run_dir, latents, device="cpu")
    shape = FAMILY_SHAPES[family]
    assert summary["images"] == 18 and summary["family"] == family and summary["latent_shape"] == list(shape)
    with np.load(latents, allow_pickle=False) as file:
        assert set(file.files) == set(lat.LATENTS_KEYS)
        meta = json.loads(str(file["meta"]))
        mu, logvar, codes = file["mu"], file["logvar"], file["codes"]
        ids = [str(i) for i in file["ids"]]
    assert meta["family"] == family and meta["latent_shape"] == list(shape) and meta["version"] == 2
    assert mu.shape == (18, *shape) and mu.dtype == np.float32 and np.isfinite(mu).all()
    if family == "vq":
        assert logvar.shape == (18, 0) and codes.shape == (18, 8, 8) and codes.dtype == np.int32
        assert 0 <= codes.min() and codes.max() < 16
    else:
        assert logvar.shape == mu.shape and codes.shape == (18, 0)

    decoded = lat.decode(run_dir, latents, tmp_path / "decoded", device="cpu", full_size=False)
    assert len(decoded) == 18
    files = [images / identifier for identifier in ids]
    pairs = use.reconstruct(run_dir, files, tmp_path / "recon", device="cpu")
    for path, pair_path in zip(decoded, pairs):
        from_latents = np.asarray(Image.open(path)).astype(int)
        pair = np.asarray(Image.open(pair_path)).astype(int)
        width = pair.shape[1] // 2
        reconstruction = pair[:, width:]
        assert from_latents.shape == reconstruction.shape and max(from_latents.shape[:2]) == SMALL
        # The same latent decoded (a vq file: from its codes), up to float rounding in the decoder.
        assert np.abs(from_latents - reconstruction).max() <= 1
        assert (from_latents != reconstruction).mean() < 0.01

    if family == "vq":  # decoding reads the codes, not mu
        with np.load(latents, allow_pickle=False) as file:
            arrays = {k: file[k] for k in file.files}
        lat.write_latents(tmp_path / "no-mu.npz", dict(arrays, mu=np.zeros_like(arrays["mu"])))
        again = lat.decode(run_dir, tmp_path / "no-mu.npz", tmp_path / "again", device="cpu", full_size=False)
        assert all(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(decoded, again))


def test_a_version_1_latents_file_still_decodes(trained, tmp_path):
    run_dir, _ = trained
    latents = tmp_path / "latents.npz"
    lat.encode(run_dir, latents, split="val", device="cpu")
    with np.load(latents, allow_pickle=False) as file:
        arrays = {k: file[k] for k in file.files}
    del arrays["codes"]
    meta = json.loads(str(arrays["meta"]))
    old = {k: v for k, v in meta.items() if k not in ("family", "latent_shape")}
    old["version"] = 1  # as vaelab wrote it before the spatial and vq families: no codes, no family
    lat.write_latents(tmp_path / "v1.npz", dict(arrays, meta=np.array(json.dumps(old))))
    with np.load(tmp_path / "v1.npz", allow_pickle=False) as file:
        assert "codes" not in file.files
    read = lat.read_latents(tmp_path / "v1.npz", (LATENT,), "vector")
    assert read["meta"]["family"] == "vector" and read["meta"]["latent_shape"] == [LATENT]
    assert read["codes"].shape == (len(arrays["ids"]), 0)
    new = lat.decode(run_dir, latents, tmp_path / "new", device="cpu")
    v1 = lat.decode(run_dir, tmp_path / "v1.npz", tmp_path / "v1", device="cpu")
    assert len(v1) == len(new) > 0
    assert all(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(new, v1))
    lat.write_latents(tmp_path / "v3.npz", dict(arrays, meta=np.array(json.dumps({**meta, "version": 3}))))
    with pytest.raises(VaelabError, match="v3.npz: not a vaelab-latents file of version 1 or 2"):
        lat.decode(run_dir, tmp_path / "v3.npz", tmp_path / "v3", device="cpu")


def test_latents_of_another_shape_or_family_are_a_one_line_error(families, trained, tmp_path):
    runs, _ = families
    spatial = tmp_path / "spatial.npz"
    lat.encode(runs["spatial"], spatial, split="val", device="cpu")
    for other in (runs["vq"], trained[0]):
        with pytest.raises(VaelabError) as error:
            lat.decode(other, spatial, tmp_path / "d", device="cpu")
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"{spatial}: latents of shape (2, 8, 8)")
        assert "model.kind spatial" in message and str(runs["spatial"].absolute()) in message
        assert ("takes (4, 8, 8) (model.kind vq)" if other == runs["vq"] else "takes (6,) (model.kind vector)") in message
    # The same shape from another family (a vq run with code_dim 2 takes (2, 8, 8) too) is refused as well.
    with pytest.raises(VaelabError, match=r"model.kind spatial model, but this run's model takes \(2, 8, 8\) \(model.kind vq\)"):
        lat.read_latents(spatial, (2, 8, 8), "vq")
    assert lat.read_latents(spatial, (2, 8, 8), "spatial")["mu"].shape[1:] == (2, 8, 8)
    assert not (tmp_path / "d").exists()


def test_sample_on_a_spatial_run_and_not_on_a_vq_run_without_its_prior(families, tmp_path, capsys):
    from vaelab import cli

    runs, _ = families
    a = use.sample(runs["spatial"], tmp_path / "a.png", count=4, seed=1, device="cpu")[0]
    b = use.sample(runs["spatial"], tmp_path / "b.png", count=4, seed=1, device="cpu")[0]
    assert Image.open(a).size == grid_size(2, 2, SMALL, SMALL)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", str(runs["vq"]), "--out", str(tmp_path / "vq.png"), "--device", "cpu"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.out + captured.err and len(err.splitlines()) == 1
    assert err.startswith(f"error: {runs['vq']}: no learned prior") and f"'vaelab prior {runs['vq']}'" in err
    assert "PixelCNN" in err
    assert not (tmp_path / "vq.png").exists()


def test_traverse_a_spatial_run_by_channel_and_refuse_a_vq_run(families, tmp_path):
    runs, images = families
    copy = tmp_path / "run"
    shutil.copytree(runs["spatial"], copy)
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    kl = rows[-1]["val_kl_per_dim"]
    assert len(kl) == 2  # one KL per latent channel
    result = use.traverse(copy, tmp_path / "t.png", dims=8, steps=5, device="cpu")
    assert result["unit"] == "channel" and result["ranked_by"] == "metrics.jsonl (last epoch)"
    assert result["dims"] == sorted(range(2), key=lambda c: -kl[c])  # only 2 channels to show
    assert Image.open(result["file"]).size == grid_size(rows=2, columns=5, height=SMALL, width=SMALL)
    grid = np.asarray(Image.open(result["file"]))
    cell = lambda r, c: grid[GAP + r * (SMALL + GAP):][:SMALL, GAP + c * (SMALL + GAP):][:, :SMALL]  # noqa: E731
    assert np.array_equal(cell(0, 2), cell(1, 2))  # the middle column is the base (0) in both rows
    assert not np.array_equal(cell(0, 0), cell(0, 4))  # shifting a channel's map changes the image

    (copy / "metrics.jsonl").write_text("".join(json.dumps({**r, "val_kl_per_dim": None}) + "\n" for r in rows))
    image = next(images.rglob("*.jpg"))
    around = use.traverse(copy, tmp_path / "u.png", dims=1, image=image, device="cpu")
    assert around["ranked_by"] == "the image's own KL" and len(around["dims"]) == 1
    assert Image.open(around["file"]).size == grid_size(rows=1, columns=7, height=SMALL, width=SMALL)
    (copy / "evaluation.json").write_text(json.dumps({"kl_per_dim": [0.5, 4.0]}))
    assert use.traverse(copy, tmp_path / "v.png", device="cpu")["dims"] == [1, 0]

    with pytest.raises(VaelabError, match=r"traverse: .* model.kind vq run, whose latent is quantized") as error:
        use.traverse(runs["vq"], tmp_path / "q.png", device="cpu")
    assert "\n" not in str(error.value) and not (tmp_path / "q.png").exists()


def test_interpolate_a_vq_run_between_the_quantized_maps(families, tmp_path):
    runs, images = families
    first, second = sorted(images.rglob("*.jpg"))[:2]
    path = use.interpolate(runs["vq"], first, second, tmp_path / "strip.png", steps=3, device="cpu")
    assert Image.open(path).size == grid_size(rows=1, columns=5, height=SMALL, width=SMALL)
    strip = np.asarray(Image.open(path))
    cell = lambda i: strip[GAP:GAP + SMALL, GAP + i * (SMALL + GAP):][:, :SMALL]  # noqa: E731
    # The ends of the line are the two images' own codes, decoded.
    run = use.load_run(runs["vq"], device="cpu")
    encoded = use.encode_files(run, use.fit_files(run, [first, second]))
    ends = use.decode_pixels(run, encoded.codes, encoded.mean, encoded.std, codes=True)
    assert np.array_equal(cell(1), ends[0]) and np.array_equal(cell(3), ends[1])
    assert np.array_equal(cell(0), load_fitted(first, (SMALL, SMALL), "pad").pixels)
