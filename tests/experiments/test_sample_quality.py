"""Sample-quality checks: nearest-neighbour distances by hand, and a C2ST that must tell apart
what is different and not invent differences between two draws of one distribution."""

import numpy as np
import pytest
import torch

from vaelab.errors import VaelabError
from vaelab.experiments import sample_quality as sq


def smooth_blobs(rng, n, size=16):
    """Soft coloured blobs on black: smooth images, unlike iid noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((n, size, size, 3))
    for i in range(n):
        for _ in range(2):
            cy, cx = rng.uniform(0, size, 2)
            radius = rng.uniform(2, 5)
            out[i] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))[..., None] * rng.uniform(60, 255, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def noise(rng, n, size=16):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_common_box_is_the_intersection():
    boxes = np.array([[0, 2, 16, 10], [1, 0, 14, 16], [3, 1, 13, 12]])
    # top = max(0, 1, 3) = 3; bottom = min(16, 15, 16) = 15; left = 2; right = min(12, 16, 13) = 12
    assert sq.common_box(boxes) == (3, 2, 12, 10)
    assert sq.common_box(torch.tensor([[4, 5, 6, 7]])) == (4, 5, 6, 7)


def test_common_box_without_overlap_is_an_error():
    with pytest.raises(VaelabError, match="no area in common"):
        sq.common_box([[0, 0, 4, 4], [0, 4, 4, 4]])  # side by side, touching only at an edge


def test_crop_cuts_the_box_and_is_contiguous():
    images = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    out = sq.crop(images, (1, 2, 3, 4))
    assert out.shape == (2, 3, 4, 3) and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, images[:, 1:4, 2:6])
    with pytest.raises(VaelabError, match="does not fit"):
        sq.crop(images, (6, 0, 4, 4))


def test_nearest_distances_finds_the_copy_and_the_offset():
    rng = np.random.default_rng(0)
    references = rng.integers(20, 200, (7, 8, 8, 3), dtype=np.uint8)
    queries = np.stack([references[4], references[2] + np.uint8(51)])  # 51/255 = 0.2 everywhere
    distances, index = sq.nearest_distances(queries, references, chunk=3)  # chunks split both sides
    assert index.tolist() == [4, 2]
    assert distances[0] == 0.0
    assert distances[1] == pytest.approx(0.2, abs=1e-12)
    # Agrees with the direct computation for arbitrary images.
    others = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    distances, index = sq.nearest_distances(others, references, chunk=2)
    direct = np.sqrt((((others[:, None].astype(float) - references[None].astype(float)) / 255) ** 2).mean(axis=(2, 3, 4)))
    assert np.allclose(distances, direct.min(1), atol=1e-12) and index.tolist() == direct.argmin(1).tolist()


def test_nearest_distances_rejects_bad_input():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(VaelabError, match="same box"):
        sq.nearest_distances(a, np.zeros((2, 8, 6, 3), np.uint8))
    with pytest.raises(VaelabError, match="no images"):
        sq.nearest_distances(a[:0], a)


def test_distance_summary():
    summary = sq.distance_summary(np.arange(21, dtype=float) / 10)  # 0.0 .. 2.0
    assert summary == pytest.approx({"mean": 1.0, "median": 1.0, "p05": 0.1, "min": 0.0})
    assert all(type(v) is float for v in summary.values())


def test_c2st_tells_smooth_images_from_noise():
    rng = np.random.default_rng(1)
    result = sq.classifier_two_sample_test(smooth_blobs(rng, 24), noise(rng, 30), folds=3, epochs=8)
    assert result["per_image"] == 24 and result["tested"] == 48 and len(result["fold_accuracy"]) == 3
    assert result["accuracy"] >= 0.9 and result["ci95"][0] > 0.5 and result["p_value"] < 0.001


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c2st_finds_no_difference_between_two_draws_of_one_distribution(seed):
    rng = np.random.default_rng(100 + seed)
    result = sq.classifier_two_sample_test(smooth_blobs(rng, 30), smooth_blobs(rng, 30), seed=seed, folds=3, epochs=8)
    # Chance is 0.5, and 60 test images scatter a useless classifier by about ±0.13 (below
    # chance too), so ask only that it is not significantly better than chance.
    assert result["accuracy"] < 0.75 and result["p_value"] > 0.01


def test_c2st_is_deterministic_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(2)
    real, fake = smooth_blobs(rng, 14), noise(rng, 12)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = sq.classifier_two_sample_test(real, fake, seed=5, folds=2, epochs=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert sq.classifier_two_sample_test(real, fake, seed=5, folds=2, epochs=2) == first
    assert first["seed"] == 5 and first["per_image"] == 12 and first["chance"] == 0.5


def test_c2st_with_too_few_images_says_how_many_and_what_to_do():
    rng = np.random.default_rng(3)
    with pytest.raises(VaelabError, match=r"got 9 real and 40 generated.*more samples"):
        sq.classifier_two_sample_test(smooth_blobs(rng, 9), noise(rng, 40), folds=5)
    with pytest.raises(VaelabError, match="same size"):
        sq.classifier_two_sample_test(noise(rng, 20), noise(rng, 20, size=12))
