"""benchmarks/quality.py in --quick mode on a tiny generated collection: the whole script runs (three
families, PCA, bicubic, the speed comparison in subprocesses), its JSON line has the documented
structure, and its baselines behave as they must (PCA's PSNR rises with k, k is capped at n_train - 1)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.config import load_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("quality_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_history(commit: str) -> bool:
    found = subprocess.run(["git", "-C", str(SCRIPT.parent), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return found.returncode == 0


@pytest.fixture
def textured_photos(tmp_path) -> Path:
    """40 portrait images of smooth random colour fields: more than a few directions of variance,
    so PCA keeps gaining with every component."""
    root = tmp_path / "photos" / "set-a"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:48] / 64.0
    for i in range(40):
        image = np.zeros((64, 48, 3))
        for c in range(3):
            a, b, p, q = rng.normal(size=4)
            image[..., c] = 0.5 + 0.25 * np.sin(3 * a * xx + 3 * b * yy + p) + 0.15 * np.cos(5 * q * xx * yy)
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(root / f"standing-{i:04d}.jpg", quality=95)
    return tmp_path / "photos"


def test_quick_run_reports_every_family_and_baseline(bench, textured_photos, tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--images", str(textured_photos), "--out", str(tmp_path / "out"),
         "--threads", "1", "--pca-k", "1", "2", "4", "8", "16"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "quality" and result["size"] == 16 and result["epochs"] == 1
    n_train, n_val = result["train_images"], result["val_images"]
    assert n_train + n_val == 40 and n_val >= 1

    families = result["families"]
    assert set(families) == {"vector", "spatial", "vq"}
    for name, f in families.items():
        assert f["parameters"] > 0 and f["wall_s"] > 0
        assert 0 < f["psnr"] < 100 and -1 <= f["ssim"] <= 1
        [run] = f["seeds"]
        assert run["seed"] == 0 and run["epochs"] == 1 and Path(run["run"]).is_dir() and run["grid"]
        assert run["val_psnr_logged"] is not None
    # The trainer's val_psnr decodes one sampled z; the benchmark decodes the posterior mode. A vq
    # latent has no noise, so there the two, both pooled over real pixels, must agree.
    [vq_run] = families["vq"]["seeds"]
    assert vq_run["psnr_pooled"] == pytest.approx(vq_run["val_psnr_logged"], abs=1e-6)
    assert families["vector"]["latent_floats"] == 64 and families["vector"]["latent_bits"] is None
    spatial = families["spatial"]
    # the latent map of configs/spatial-64.yaml's levels at the quick run's 16 px
    side = 16 // load_config(Path(__file__).parents[2] / "configs" / "spatial-64.yaml").model.factor
    assert spatial["latent_floats"] == math.prod(spatial["latent_shape"]) and spatial["latent_shape"][1:] == [side, side]
    vq = families["vq"]
    assert vq["latent_floats"] is None and vq["latent_bits"] == 4 * 4 * math.log2(vq["codes"])

    # PCA: k capped at n_train - 1 and flagged; PSNR rises with every uncapped k
    assert result["pca_max_k"] == n_train - 1
    rows = result["pca"]
    assert [r["k"] for r in rows] == sorted(r["k"] for r in rows)
    for r in rows:
        assert r["k_used"] == min(r["k"], n_train - 1) and r["capped"] == (r["k"] > n_train - 1)
    uncapped = [r for r in rows if not r["capped"]]
    assert {1, 2, 4, 8, 16} <= {r["k"] for r in uncapped}
    psnrs = [r["psnr"] for r in uncapped]
    assert all(b > a for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert any("spatial" in r["for"] for r in rows)
    # bicubic at every PCA row's float count
    assert [b["floats"] for b in result["bicubic"]] == [r["k"] for r in rows]

    assert set(result["targets"]) == {"spatial_vs_pca_same_floats", "vq_vs_pca_256", "vector_unchanged"} - (
        set() if any(r["k"] == 256 for r in rows) else {"vq_vs_pca_256"})
    target = result["targets"]["spatial_vs_pca_same_floats"]
    assert target["met"] == (target["margin_db"] >= 1.0)
    # The vector family trained again from the tree before model.kind existed, with the same overrides,
    # logs the same val_psnr to the last digit (on any CPU: both run here). A clone without that
    # history says so instead.
    unchanged = result["targets"]["vector_unchanged"]
    assert unchanged["reference_commit"] == bench.VECTOR_REFERENCE
    if in_history(bench.VECTOR_REFERENCE):
        assert "error" not in unchanged, unchanged
        assert unchanged["val_psnr"]["0"] == families["vector"]["seeds"][0]["val_psnr_logged"]
        assert unchanged["met"] is True and unchanged["max_abs_diff_db"] == 0.0
    else:
        assert unchanged["error"].startswith("git archive") and "met" not in unchanged

    speed = result["speed_640"]
    assert [s["name"] for s in speed] == ["spatial-640", "journal (vector)"]
    for s in speed:
        assert "error" not in s, s
        assert s["size"] == 32 and s["batch"] == 2 and s["images_per_s"] > 0 and s["peak_rss_mb"] > 0
    assert speed[0]["kind"] == "spatial" and speed[1]["kind"] == "vector"
    assert "target spatial_vs_pca_same_floats" in done.stdout and "training speed at 32x32" in done.stdout


def test_pca_reconstructs_its_own_span_exactly_and_caps_k(bench):
    rng = np.random.default_rng(1)
    basis = rng.uniform(0, 1, size=(3, 8 * 8 * 3))
    weights = rng.uniform(0, 1, size=(10, 3)) / 3
    images = torch.from_numpy(np.round(weights @ basis * 255).astype(np.uint8).reshape(10, 8, 8, 3))
    pca = bench.PCA(images)
    assert pca.max_k == 9
    # 10 images in a 3-dimensional affine span (up to rounding): 3 components give them back
    assert (pca.reconstruct(images, 3).int() - images.int()).abs().max() <= 2
    assert (pca.reconstruct(images, 1).int() - images.int()).abs().max() > 2
    assert torch.equal(pca.reconstruct(images, 50), pca.reconstruct(images, 9))


def test_bicubic_size_matches_the_float_count_and_the_aspect(bench):
    assert bench.bicubic_size(64, 42, 256) in {(11, 7), (12, 8)}
    h, w = bench.bicubic_size(64, 42, 256)
    assert abs(3 * h * w - 256) == min(abs(3 * a * max(1, round(a * 42 / 64)) - 256) for a in range(1, 65))
    assert bench.bicubic_size(64, 42, 10**6) == (64, 42)  # never larger than the box


def test_scores_count_real_pixels_only(bench):
    pixels = torch.full((2, 8, 8, 3), 100, dtype=torch.uint8)
    recon = pixels.clone()
    recon[:, :, :2] = 0  # wrong only in the padding (columns 0-1)
    recon[1, 4, 4] = 110  # and one real pixel of the second image
    boxes = torch.tensor([[0, 2, 8, 6], [0, 2, 8, 6]])
    got = bench.scores(recon, pixels, boxes)
    assert got["psnr_per_image"][0] == 100.0  # perfect on its real pixels
    mse = (10 / 255) ** 2 / (8 * 6)  # one pixel off by 10 in all 3 channels, over 48 pixels x 3 channels
    assert got["psnr_per_image"][1] == pytest.approx(10 * math.log10(1 / mse))
    assert got["psnr"] == pytest.approx((100.0 + 10 * math.log10(1 / mse)) / 2)
