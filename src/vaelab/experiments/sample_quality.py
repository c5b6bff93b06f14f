"""How good are generated samples? Two checks that need no downloaded weights.

FID and friends score samples through an Inception network trained on ImageNet; those weights
are a download, and their features say little about a narrow image collection. Instead:

1. Nearest-neighbour distances. For each generated image, the pixel RMSE to its closest
   training image. Very small distances mean the model is copying its training set rather
   than generating; the summary (mean, median, 5th percentile, min) shows how close it gets.
   Images are first cropped to the box that every letterbox leaves as content (`common_box`,
   `crop`) so that padding bars do not count as a match.

2. Classifier two-sample test (C2ST, Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample
   Tests", ICLR 2017). If real and generated images came from the same distribution, no
   classifier could tell them apart better than chance. A small CNN is trained from scratch
   to do so, with k-fold cross-validation so that every image is judged by a classifier that
   never saw it; held-out accuracy near 0.5 means the samples are indistinguishable, near 1.0
   means they are easy to spot. An exact binomial interval and p-value say whether the
   accuracy is really above chance or only looks so on a few dozen images.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats as _scipy_stats
from torch import nn

from vaelab.errors import VaelabError


def common_box(boxes) -> tuple[int, int, int, int]:
    """The (top, left, height, width) box that lies inside every (top, left, height, width) box."""
    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise VaelabError(f"content boxes must be an (N, 4) array of (top, left, height, width), got shape {boxes.shape}")
    top, left = boxes[:, 0].max(), boxes[:, 1].max()
    bottom, right = (boxes[:, 0] + boxes[:, 2]).min(), (boxes[:, 1] + boxes[:, 3]).min()
    if bottom <= top or right <= left:
        raise VaelabError("the images' content boxes have no area in common; "
                          "compare images letterboxed to similar shapes, or skip the crop")
    return int(top), int(left), int(bottom - top), int(right - left)


def crop(images: np.ndarray, box) -> np.ndarray:
    """Images (N, H, W, 3) cut down to box = (top, left, height, width)."""
    top, left, height, width = (int(v) for v in box)
    if top < 0 or left < 0 or height <= 0 or width <= 0 or top + height > images.shape[1] or left + width > images.shape[2]:
        raise VaelabError(f"crop box {tuple(box)} does not fit inside images of size "
                          f"{images.shape[1]}x{images.shape[2]}; compute it from these images' content boxes")
    return np.ascontiguousarray(images[:, top:top + height, left:left + width])


def _check_images(images: np.ndarray, what: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise VaelabError(f"{what} must be a uint8 array of shape (N, H, W, 3), got "
                          f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    if len(images) == 0:
        raise VaelabError(f"{what} holds no images; pass at least one")


def nearest_distances(queries: np.ndarray, references: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each query image, the pixel RMSE (on [0, 1]) to its nearest reference and that reference's index."""
    if chunk < 1:
        raise VaelabError(f"chunk must be a positive number of images, got {chunk}")
    _check_images(queries, "query images")
    _check_images(references, "reference images")
    if queries.shape[1:] != references.shape[1:]:
        raise VaelabError(f"query images are {queries.shape[1:3]} but reference images are {references.shape[1:3]}; "
                          "crop both to the same box first")
    q = torch.from_numpy(queries.reshape(len(queries), -1))
    r = torch.from_numpy(references.reshape(len(references), -1))
    best = torch.full((len(q),), float("inf"), dtype=torch.float64)
    index = torch.zeros(len(q), dtype=torch.int64)
    # Working on raw 0..255 values in float64 keeps every sum of products an integer below 2**53,
    # so |q|^2 + |r|^2 - 2 q.r is exact: an identical image gives exactly 0, not rounding noise.
    # Both sides are chunked so memory stays at a few chunk x pixels blocks, whatever N is.
    for r_start in range(0, len(r), chunk):
        r_block = r[r_start:r_start + chunk].to(torch.float64)
        r_norm = (r_block * r_block).sum(1)
        for q_start in range(0, len(q), chunk):
            q_block = q[q_start:q_start + chunk].to(torch.float64)
            squared = (q_block * q_block).sum(1, keepdim=True) + r_norm - 2.0 * q_block @ r_block.T
            value, at = squared.min(1)
            here = slice(q_start, q_start + len(q_block))
            better = value < best[here]  # strict, so ties keep the earliest reference
            best[here] = torch.where(better, value, best[here])
            index[here] = torch.where(better, at + r_start, index[here])
    rmse = torch.sqrt(best.clamp_min(0.0) / q.shape[1]) / 255.0
    return rmse.numpy(), index.numpy()


def distance_summary(distances: np.ndarray) -> dict:
    """Mean, median, 5th percentile and minimum of nearest-neighbour distances."""
    d = np.asarray(distances, dtype=np.float64).ravel()
    if d.size == 0:
        raise VaelabError("no distances to summarise; generate at least one sample")
    return {"mean": float(d.mean()), "median": float(np.median(d)),
            "p05": float(np.percentile(d, 5)), "min": float(d.min())}


def _classifier() -> nn.Module:
    # Three stride-2 convolutions see textures and blur at several scales, which is where
    # generated images usually give themselves away; GroupNorm (not BatchNorm) so that
    # the last small batch of an epoch and evaluation behave like every other batch.
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))


def _to_tensor(images: np.ndarray, device) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(device)


def classifier_two_sample_test(real: np.ndarray, fake: np.ndarray, seed: int = 0, folds: int = 5,
                               epochs: int = 40, batch_size: int = 32,
                               device: str | torch.device = "cpu") -> dict:
    """Held-out accuracy of a CNN telling real (label 1) from generated (label 0) images.

    Both sets are cut to the same size n (a seeded random subset of the larger), split into
    `folds` stratified folds, and each fold is predicted by a classifier trained from scratch
    on the other folds for `epochs` passes. The folds' test predictions are then pooled into
    one binomial count out of 2n: standard practice for C2ST, since the folds share no test
    image, though strictly the count mixes `folds` slightly different classifiers. ci95 is the
    exact Clopper-Pearson interval; p_value is one-sided, against the chance level 0.5.

    The result depends only on the inputs and `seed` (on CPU; GPU kernels may not be
    bit-exact); the caller's global random state is left as it was. These convolutions are
    too small to gain from several threads: on a shared 2-core machine, call it under
    torch.set_num_threads(1) (several times faster there).
    """
    _check_images(real, "real images")
    _check_images(fake, "generated images")
    if real.shape[1:] != fake.shape[1:]:
        raise VaelabError(f"real images are {real.shape[1:3]} but generated images are {fake.shape[1:3]}; "
                          "crop or resize both to the same size")
    if folds < 2:
        raise VaelabError(f"the two-sample test needs at least 2 folds, got {folds}")
    n = min(len(real), len(fake))
    if n < 2 * folds:
        raise VaelabError(f"the two-sample test got {len(real)} real and {len(fake)} generated images, "
                          f"but {folds} folds need at least {2 * folds} of each; "
                          "generate more samples or use a larger validation split")
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    real = real[np.sort(rng.choice(len(real), n, replace=False))]
    fake = fake[np.sort(rng.choice(len(fake), n, replace=False))]
    images = _to_tensor(np.concatenate([real, fake]), device)
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).to(device)
    # Stratified: each class is shuffled and dealt round-robin, so every fold gets an equal
    # share of real and generated images and chance stays at exactly 0.5 in every fold.
    fold_of = np.concatenate([rng.permutation(n) % folds, rng.permutation(n) % folds])

    correct_per_fold, tested_per_fold = [], []
    for fold in range(folds):
        train_at = torch.from_numpy(np.flatnonzero(fold_of != fold)).to(device)
        test_at = torch.from_numpy(np.flatnonzero(fold_of == fold)).to(device)
        fold_seed = seed * 1000 + fold
        with torch.random.fork_rng(devices=[]):  # layer init draws from the global RNG
            torch.manual_seed(fold_seed)
            model = _classifier()
        model.to(device)
        generator = torch.Generator().manual_seed(fold_seed)  # shuffles and flips
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(epochs):
            order = train_at[torch.randperm(len(train_at), generator=generator).to(device)]
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                x = images[batch]
                # Mirrored images are as real as the originals, so flips are free extra data;
                # with ~100 training images per fold they are what keeps the CNN from memorising.
                flip = (torch.rand(len(batch), generator=generator) < 0.5).to(device)
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            guesses = (model(images[test_at]).squeeze(1) > 0).float()
        correct_per_fold.append(int((guesses == labels[test_at]).sum()))
        tested_per_fold.append(len(test_at))

    correct, tested = sum(correct_per_fold), sum(tested_per_fold)
    low, high = _scipy_stats.binomtest(correct, tested).proportion_ci(0.95, method="exact")
    p_value = _scipy_stats.binomtest(correct, tested, 0.5, alternative="greater").pvalue
    return {
        "accuracy": correct / tested, "ci95": [float(low), float(high)], "p_value": float(p_value),
        "correct": correct, "tested": tested, "per_image": n, "folds": folds, "epochs": epochs,
        "seed": seed, "fold_accuracy": [c / t for c, t in zip(correct_per_fold, tested_per_fold)],
        "chance": 0.5,
    }
