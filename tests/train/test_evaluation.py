"""Validation: train.val_batches draws a fixed random subset of the validation split."""

from __future__ import annotations

import numpy as np
import torch
from tiny_runs import make_images, write_config

import vaelab.train.evaluation
from vaelab.config import load_config
from vaelab.model import build_model
from vaelab.runs.session import make_loaders
from vaelab.train.evaluation import validation_metrics, validation_subset
from vaelab.train.trainer import Trainer


def test_validation_subset_is_random_fixed_and_in_split_order():
    positions = np.arange(1000, 2000)
    subset = validation_subset(positions, 100, seed=3)
    assert len(subset) == 100 and len(set(subset)) == 100 and set(subset) <= set(positions)
    assert (np.diff(subset) > 0).all()  # split order: the cache file is read front to back
    assert not np.array_equal(subset, positions[:100]) and subset.max() > 1500  # from the whole split
    assert np.array_equal(validation_subset(positions, 100, seed=3), subset)  # every epoch, every rank
    assert not np.array_equal(validation_subset(positions, 100, seed=4), subset)
    assert validation_subset(positions, None, seed=3) is positions
    assert validation_subset(positions, 5000, seed=3) is positions


def test_val_batches_validates_the_same_random_subset_every_epoch(tmp_path, monkeypatch):
    images = make_images(tmp_path / "images", count=60)
    config = load_config(write_config(tmp_path, images, tmp_path / "runs"), ["train.val_batches=1"])
    _, val = make_loaders(config, torch.device("cpu"), lambda message: None)
    assert len(val.positions) > 2 * config.train.batch_size  # a subset to choose from
    seen: list[list[int]] = []
    real = vaelab.train.evaluation.to_model_input

    def recording(batch, *args):
        seen[-1].extend(batch.positions.tolist())
        return real(batch, *args)

    monkeypatch.setattr(vaelab.train.evaluation, "to_model_input", recording)
    trainer = Trainer(config, build_model(config.model, config.data.size), torch.device("cpu"))
    for _ in range(2):  # two epochs' validation
        seen.append([])
        assert validation_metrics(trainer, val)["val_loss"] is not None
    expected = validation_subset(val.positions, config.train.batch_size, config.train.seed).tolist()
    assert seen == [expected, expected]
    assert expected != val.positions[:config.train.batch_size].tolist()  # not the first in metadata order
