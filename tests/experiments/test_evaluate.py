"""`vaelab evaluate`: the bits/dim formula and a real evaluation of a tiny trained run (trained
once per module, a few seconds), and of a tiny spatial and vq run. SSIM and latent statistics are
tested in tests/test_metrics.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.experiments.evaluate import EVALUATION_FILE, Totals, evaluate_run, print_table

LATENT = 6
# What a vector run's evaluation holds: the same keys as before the spatial and vq families.
VECTOR_KEYS = {"run", "checkpoint", "checkpoint_requested", "checkpoint_note", "epoch", "split", "data", "images", "skipped", "recon", "kl", "elbo", "loss",
               "mse", "psnr", "ssim", "bits_per_dim", "bits_per_dim_note", "real_subpixels", "active_units",
               "latent", "kl_per_dim", "units", "seed", "time_s", "file"}


def make_images(folder: Path, count: int = 24) -> Path:
    """Gradients with a bright block, in portrait, landscape and square shapes (so padding happens)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        width, height = [(48, 64), (64, 40), (56, 56)][i % 3]
        pixels = np.linspace(0, 1, width)[None, :, None] * rng.integers(60, 220, 3)[None, None, :]
        pixels = np.repeat(pixels, height, axis=0)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top:top + height // 3, left:left + width // 3] = rng.integers(0, 255, 3)
        path = folder / f"set-{i // 8}" / f"{['standing', 'sitting'][i % 2]}-{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    return folder


def train_tiny(tmp: Path, images: Path, *overrides: str) -> Path:
    from vaelab.runs.session import train_run

    config = load_config(None, [
        f"data.images={images}", "data.size=[32, 32]", "data.workers=0", "data.val_fraction=0.3",
        f"data.cache_dir={tmp / 'cache'}",  # module fixtures run before the per-test cache fixture
        "model.conv=[{filters: 8, kernel: 3, stride: 2}, {filters: 16, kernel: 3, stride: 2}]",
        "model.dense=32", f"model.latent={LATENT}", "loss.reconstruction=mse_sum",  # what the tests assume
        "train.epochs=2", "train.batch_size=4",
        f"run.root={tmp / 'runs'}", "run.tensorboard=false", "run.images=2", *overrides])
    return train_run(config, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("evaluate")
    return train_tiny(tmp, make_images(tmp / "images"), "loss.reconstruction=mse_sum")


# --------------------------------------------------------------------------------------------
# SSIM and latent statistics: tested in tests/test_metrics.py (they live in vaelab.train.metrics)
# --------------------------------------------------------------------------------------------


def test_metrics_stay_importable_from_evaluate():
    import vaelab.experiments.evaluate as evaluate
    import vaelab.train.metrics as metrics

    for name in ("LatentStats", "cheap_metrics", "ssim", "box_ssim", "gaussian_window", "ACTIVE_THRESHOLD"):
        assert getattr(evaluate, name) is getattr(metrics, name), name


# --------------------------------------------------------------------------------------------
# bits/dim
# --------------------------------------------------------------------------------------------


def test_bits_per_dim_formulas_by_hand():
    config = load_config(None, ["loss.reconstruction=gaussian", "loss.sigma=0.5"])
    totals = Totals(latent=2)
    # 2 images, 100 real subpixels, squared error 10 (model scale), KL 3 nats per image
    totals.images, totals.subpixels, totals.sse, totals.kl, totals.pixel_sse = 2, 100.0, 10.0, 6.0, 1.0
    result = totals.result(config, None)
    nll = 10.0 / (2 * 0.25) + 100 * (math.log(0.5) + 0.5 * math.log(2 * math.pi))
    assert result["recon"] == pytest.approx(nll / 2)
    assert result["elbo"] == pytest.approx(-(nll + 6.0) / 2)
    assert result["bits_per_dim"] == pytest.approx((nll + 6.0) / (100 * math.log(2)) + math.log2(255))
    assert result["mse"] == pytest.approx(0.01) and result["psnr"] == pytest.approx(20.0)

    config.data.scale = "symmetric"
    assert totals.result(config, None)["bits_per_dim"] == pytest.approx(
        (nll + 6.0) / (100 * math.log(2)) + math.log2(127.5))
    config.data.scale = "standardize"
    assert totals.result(config, None)["bits_per_dim"] is None

    bce = load_config(None, ["loss.reconstruction=bce"])
    totals.recon = 2 * 20.0  # BCE averaged over 3 channels: 20 nats per image, 60 summed over channels
    assert totals.result(bce, None)["bits_per_dim"] == pytest.approx((2 * 60.0 + 6.0) / (100 * math.log(2)))
    for kind in ("mse_sum", "l1"):
        result = totals.result(load_config(None, [f"loss.reconstruction={kind}"]), None)
        assert result["bits_per_dim"] is None and "not calibrated" in result["bits_per_dim_note"]


# --------------------------------------------------------------------------------------------
# evaluating a trained run
# --------------------------------------------------------------------------------------------


def metrics_at(run_dir: Path, epoch: int) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(row for row in rows if row["epoch"] == epoch)


def test_evaluate_a_trained_run(trained, capsys):
    result = evaluate_run(trained, device="cpu")
    assert set(result) == VECTOR_KEYS and "family" not in result
    assert result["latent"] == LATENT and len(result["kl_per_dim"]) == LATENT
    assert 0 <= result["active_units"] <= LATENT
    assert math.isfinite(result["psnr"]) and result["psnr"] > 0
    assert 0 < result["mse"] < 1 and -1 < result["ssim"] <= 1
    assert result["elbo"] == pytest.approx(-(result["recon"] + result["kl"]))
    assert sum(result["kl_per_dim"]) == pytest.approx(result["kl"], rel=1e-5)
    assert result["bits_per_dim"] is None  # mse_sum
    # One z per image with the trainer's seed: recon and KL are the trainer's own val numbers.
    row = metrics_at(trained, result["epoch"])
    assert result["recon"] == pytest.approx(row["val_recon"], rel=1e-5)
    assert result["kl"] == pytest.approx(row["val_kl"], rel=1e-5)
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-5)
    # Real pixels only: at most 32 x 32 x 3 per image, fewer for padded ones.
    assert result["real_subpixels"] < result["images"] * 32 * 32 * 3
    written = json.loads((trained / EVALUATION_FILE).read_text())
    assert written == json.loads(json.dumps(result)) and result["file"] == str(trained / EVALUATION_FILE)
    assert not [p for p in trained.iterdir() if ".tmp" in p.name]
    assert evaluate_run(trained, device="cpu")["kl_per_dim"] == result["kl_per_dim"]  # deterministic
    # The trainer logs the same latent statistics every epoch (same images, same z draws);
    # its KL per dimension is rounded to 4 significant digits.
    assert row["val_active_units"] == result["active_units"]
    assert row["val_kl_per_dim"] == pytest.approx(result["kl_per_dim"], rel=1e-3, abs=1e-6)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
        print_table(result)
    out = capsys.readouterr().out
    assert f"{result['active_units']} / {LATENT}" in out and "KL per dim (top)" in out


def test_evaluating_other_data_keeps_the_runs_own_evaluation(trained):
    own = evaluate_run(trained, device="cpu")
    other = evaluate_run(trained, overrides=["data.filter.include=[sitting]"], split="all", device="cpu")
    assert other["file"] != own["file"] and Path(other["file"]).name.startswith("evaluation-")
    assert other["images"] == 12 and other["data"]["filter"]["include"] == ["sitting"]
    assert json.loads((trained / EVALUATION_FILE).read_text())["images"] == own["images"]


def test_gaussian_bits_per_dim_on_a_trained_run(tmp_path):
    run_dir = train_tiny(tmp_path, make_images(tmp_path / "images", 12), "loss.reconstruction=gaussian",
                         "loss.sigma=0.2")
    result = evaluate_run(run_dir, device="cpu")
    # A fixed sigma is the trainer's too, so recon is the trainer's val_recon here.
    assert result["recon"] == pytest.approx(metrics_at(run_dir, result["epoch"])["val_recon"], rel=1e-5)
    expected = -result["elbo"] * result["images"] / (result["real_subpixels"] * math.log(2)) + math.log2(255)
    assert result["bits_per_dim"] == pytest.approx(expected)
    assert 0 < result["bits_per_dim"] < 64


def test_bad_inputs_are_one_line_errors(trained, tmp_path):
    bare = tmp_path / "no-checkpoint"
    bare.mkdir()
    for name in ("config.yaml", "run.json"):
        shutil.copy(trained / name, bare / name)
    with pytest.raises(VaelabError, match="no checkpoint"):
        evaluate_run(bare, device="cpu")
    with pytest.raises(VaelabError, match="not a run folder"):
        evaluate_run(tmp_path, device="cpu")
    with pytest.raises(VaelabError, match="split is empty"):
        evaluate_run(trained, overrides=["data.val_fraction=0"], device="cpu")
    with pytest.raises(VaelabError, match="--split"):
        evaluate_run(trained, split="test", device="cpu")


def test_evaluate_command_line(trained, capsys):
    from vaelab import cli

    if "evaluate" not in cli.cli.commands:
        pytest.skip("vaelab evaluate is not registered in cli.py yet")
    cli.main(["evaluate", str(trained), "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert result["latent"] == LATENT and "psnr" in result


def test_a_run_without_best_pt_is_evaluated_with_last_pt_and_says_so(trained, tmp_path, capsys):
    """load_run(checkpoint="best") used last.pt without a word, and evaluate recorded its numbers
    as the run's own. Now the file used, what was asked for and why they differ are recorded,
    and said on stderr."""
    from vaelab import cli

    copy = shutil.copytree(trained, tmp_path / "run")
    (copy / "checkpoints" / "best.pt").unlink()
    (copy / EVALUATION_FILE).unlink(missing_ok=True)
    cli.main(["evaluate", str(copy), "--json", "--device", "cpu"])
    captured = capsys.readouterr()
    note = f"{copy}: no best.pt (no epoch has ended with a finite loss yet), so last.pt is used, after 2 completed epoch(s)"
    assert f"warning: {note}" in captured.err.splitlines()
    result = json.loads(captured.out)
    assert (result["checkpoint"], result["checkpoint_requested"], result["checkpoint_note"]) == ("last.pt", "best", note)
    assert json.loads((copy / EVALUATION_FILE).read_text())["checkpoint_note"] == note
    own = evaluate_run(trained, device="cpu")  # with its best.pt: nothing to say
    assert (own["checkpoint"], own["checkpoint_requested"], own["checkpoint_note"]) == ("best.pt", "best", None)


# --------------------------------------------------------------------------------------------
# the spatial and vq families
# --------------------------------------------------------------------------------------------

FAMILY_MODELS = {
    "spatial": "{kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 2}",
    "vq": "{kind: vq, channels: [8, 16], norm_groups: 8, code_dim: 4, codebook_size: 16}",
}


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Path]:
    """A tiny spatial and vq run (16 px, one epoch) on the same images."""
    from vaelab.runs.session import train_run

    tmp = tmp_path_factory.mktemp("families")
    images = make_images(tmp / "images")
    runs = {}
    for family, model in FAMILY_MODELS.items():
        config = load_config(None, [
            f"data.images={images}", "data.size=[16, 16]", "data.workers=0", "data.val_fraction=0.3",
            f"data.cache_dir={tmp / 'cache'}", f"model={model}", "loss.reconstruction=mse_sum",
            "train.epochs=1", "train.batch_size=4", f"run.root={tmp / family}", "run.tensorboard=false",
            "run.images=2"])
        runs[family] = train_run(config, progress=False)
    return runs


def test_evaluate_a_spatial_run_per_latent_channel(families, capsys):
    run_dir = families["spatial"]
    result = evaluate_run(run_dir, device="cpu")
    assert result["family"] == "spatial" and result["latent"] == [2, 8, 8]
    assert len(result["kl_per_dim"]) == 2 and 0 <= result["active_units"] <= 2  # per channel
    assert sum(result["kl_per_dim"]) == pytest.approx(result["kl"], rel=1e-5) and result["kl"] > 0
    assert result["elbo"] == pytest.approx(-(result["recon"] + result["kl"]))
    row = metrics_at(run_dir, result["epoch"])
    assert result["recon"] == pytest.approx(row["val_recon"], rel=1e-5)
    assert result["kl"] == pytest.approx(row["val_kl"], rel=1e-5)
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-5)
    assert row["val_kl_per_dim"] == pytest.approx(result["kl_per_dim"], rel=1e-3, abs=1e-6)
    assert row["val_active_units"] == result["active_units"]
    assert 0 < result["mse"] < 1 and result["psnr"] > 0
    assert "codebook_usage" not in result
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
        print_table(result)
    out = capsys.readouterr().out
    assert f"{result['active_units']} / 2 channels" in out and "KL per channel (top)" in out and "2x8x8" in out


def test_evaluate_a_vq_run_reports_the_codebook_not_a_kl(families, capsys):
    run_dir = families["vq"]
    result = evaluate_run(run_dir, device="cpu")
    assert result["family"] == "vq" and result["latent"] == [4, 8, 8]
    assert 0 < result["codebook_usage"] <= 1
    assert 1 <= result["perplexity"] <= 16 and result["perplexity"] <= result["codebook_usage"] * 16 + 1e-9
    assert result["kl"] is None and result["elbo"] is None and result["bits_per_dim"] is None
    assert "no density" in result["kl_note"] and "no density" in result["bits_per_dim_note"]
    assert result["active_units"] is None and result["kl_per_dim"] is None
    # The trainer's own validation numbers: recon, commitment, loss = recon + commitment, codebook use.
    row = metrics_at(run_dir, result["epoch"])
    assert result["commitment"] > 0 and result["commitment"] == pytest.approx(row["val_commitment"], rel=1e-5)
    assert result["recon"] == pytest.approx(row["val_recon"], rel=1e-5)
    assert result["loss"] == pytest.approx(result["recon"] + result["commitment"])
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-5)
    assert result["codebook_usage"] == pytest.approx(row["val_codebook_usage"])
    assert result["perplexity"] == pytest.approx(row["val_perplexity"], rel=1e-6)
    assert 0 < result["mse"] < 1 and -1 < result["ssim"] <= 1
    written = json.loads((run_dir / EVALUATION_FILE).read_text())
    assert written == json.loads(json.dumps(result))  # null, not NaN, in the JSON
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
        print_table(result)
    out = capsys.readouterr().out
    assert "codebook usage" in out and "perplexity" in out and "commitment" in out


def test_evaluate_command_line_on_a_vq_run(families, capsys):
    from vaelab import cli

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
        cli.main(["evaluate", str(families["vq"]), "--device", "cpu"])  # the table, with its nulls
    out = capsys.readouterr().out
    assert "codebook usage" in out and "written to" in out
    cli.main(["evaluate", str(families["vq"]), "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert result["kl"] is None and 0 < result["codebook_usage"] <= 1
