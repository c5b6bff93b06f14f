"""`vaelab evaluate`: SSIM against an independent reference, latent statistics, the bits/dim
formula, and a real evaluation of a tiny trained run (trained once per module, a few seconds)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.experiments.evaluate import (EVALUATION_FILE, LatentStats, Totals, box_ssim, cheap_metrics,
                                         evaluate_run, ssim)

LATENT = 6


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
    from vaelab.runs import train_run

    config = load_config(None, [
        f"data.images={images}", "data.size=[32, 32]", "data.workers=0", "data.val_fraction=0.3",
        f"data.cache_dir={tmp / 'cache'}",  # module fixtures run before the per-test cache fixture
        "model.conv=[{filters: 8, kernel: 3, stride: 2}, {filters: 16, kernel: 3, stride: 2}]",
        "model.dense=32", f"model.latent={LATENT}", "train.epochs=2", "train.batch_size=4",
        f"run.root={tmp / 'runs'}", "run.tensorboard=false", "run.images=2", *overrides])
    return train_run(config, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("evaluate")
    return train_tiny(tmp, make_images(tmp / "images"))


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. as skimage computes it (gaussian_weights=True, use_sample_covariance=False):
    scipy's gaussian filter with sigma 1.5 truncated at 3.5 sigma (11 taps), the 5-pixel border
    dropped, averaged over positions and channels. Written independently of vaelab."""
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for channel in range(x.shape[0]):
        a, b = x[channel].astype(np.float64), y[channel].astype(np.float64)
        f = lambda t: ndimage.gaussian_filter(t, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
        mu_a, mu_b = f(a), f(b)
        var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        values.append(s[5:-5, 5:-5].mean())
    return float(np.mean(values))


def test_ssim_of_identical_images_is_one():
    x = torch.rand(3, 3, 24, 17, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_ssim_of_two_flat_images_is_the_hand_value():
    # Flat images: every local variance and covariance is 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.6, 0.2
    got = ssim(torch.full((1, 3, 16, 16), a, dtype=torch.float64), torch.full((1, 3, 16, 16), b, dtype=torch.float64))
    c1 = 0.01**2
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    assert got.item() == pytest.approx(0.6001, abs=1e-4)  # 0.24 / 0.40 = 0.6, nudged by C1


def test_ssim_matches_an_independent_reference():
    rng = np.random.default_rng(1)
    x = rng.random((3, 40, 30))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)  # a noisy copy: SSIM well below 1
    expected = reference_ssim(x, y)
    got = ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None]).item()
    assert 0.2 < expected < 0.95
    assert got == pytest.approx(expected, abs=1e-10)


def test_box_ssim_sees_only_the_content_box():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    boxes = torch.tensor([[6, 0, 20, 32], [0, 4, 32, 24]])
    y[0, :, :6] = 0.0  # padding rows of image 0 differ wildly...
    y[1, :, :, :4] = 1.0  # ...and padding columns of image 1
    assert torch.allclose(box_ssim(x, y, boxes), torch.ones(2, dtype=torch.float64), atol=1e-12)
    y[0, :, 10, 10] = 1.0 - y[0, :, 10, 10]  # a change inside the box counts
    assert box_ssim(x, y, boxes)[0] < 0.999
    # and equals plain SSIM on the crop
    assert box_ssim(x, y, boxes)[0].item() == pytest.approx(ssim(x[:1, :, 6:26], y[:1, :, 6:26]).item())


# --------------------------------------------------------------------------------------------
# latent statistics and bits/dim
# --------------------------------------------------------------------------------------------


def test_latent_stats_streamed_over_batches_equal_the_whole_split():
    g = torch.Generator().manual_seed(3)
    # dim 0 varies (active), dim 1 barely (variance 1e-4 < 0.01), dim 2 varies around 5
    mu = torch.stack([torch.randn(50, generator=g), 0.01 * torch.randn(50, generator=g),
                      5 + torch.randn(50, generator=g)], 1)
    logvar = torch.randn(50, 3, generator=g) * 0.3
    streamed = LatentStats(3)
    for part in torch.split(torch.arange(50), 7):
        streamed.update(mu[part], logvar[part])
    got = streamed.result()
    assert got["active_units"] == 2
    assert np.allclose(got["mu_variance"], mu.double().var(0).numpy(), rtol=1e-10)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)
    assert np.allclose(got["kl_per_dim"], kl.double().mean(0).numpy(), rtol=1e-6)
    whole = cheap_metrics(mu, logvar)
    assert whole["active_units"] == 2
    assert np.allclose(whole["kl_per_dim"], got["kl_per_dim"], rtol=1e-12)
    assert np.allclose(whole["mu_variance"], got["mu_variance"], rtol=1e-12)


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


def test_evaluate_a_trained_run(trained):
    result = evaluate_run(trained, device="cpu")
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
