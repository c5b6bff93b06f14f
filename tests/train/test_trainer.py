"""The trainer: guard and rollback, training state, device and precision choice."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from tiny_runs import make_images, metrics, write_config

import vaelab.train.trainer
from vaelab.config import load_config
from vaelab.model import build_model
from vaelab.runs.checkpoints import load_state
from vaelab.train.device import amp_dtype, precision_name, select_device
from vaelab.train.evaluation import reconstruction_grid
from vaelab.train.guard import Guard
from vaelab.train.trainer import Trainer


@pytest.fixture
def config_path(tmp_path):
    return write_config(tmp_path, make_images(tmp_path / "images"), tmp_path / "runs")


def poison_losses(monkeypatch, bad_steps: set[int]) -> None:
    """Make the training loss NaN on the given (1-based) training steps; evaluation is left alone."""
    real = vaelab.train.trainer.vae_loss
    calls = {"n": 0}

    def poisoned(out, *args, **kwargs):
        parts = real(out, *args, **kwargs)
        if torch.is_grad_enabled():  # a training step, not evaluation
            calls["n"] += 1
            if calls["n"] in bad_steps:
                parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(vaelab.train.trainer, "vae_loss", poisoned)


def test_nan_steps_are_skipped_then_rolled_back_with_lower_lr(config_path, monkeypatch):
    # Steps 8..12 (epoch 2 of 6-batch epochs) give NaN: 5 bad steps in a row trigger a rollback.
    poison_losses(monkeypatch, set(range(8, 13)))
    run_dir = vaelab.runs.session.train_run(load_config(config_path, ["train.rollback_after=5"]))

    records = metrics(run_dir)
    assert [r["skipped_steps"] for r in records] == [0, 5, 0]
    assert [r["rollbacks"] for r in records] == [0, 1, 1]
    assert [r["lr"] for r in records] == [0.003, 0.0015, 0.0015]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in records)
    # the cheap evaluation metrics, logged every epoch on the validation split (latent 4)
    for r in records:
        assert isinstance(r["val_active_units"], int) and 0 <= r["val_active_units"] <= 4
        kl = r["val_kl_per_dim"]
        assert len(kl) == 4 and all(math.isfinite(v) and v >= 0 for v in kl)
        assert all(v == float(f"{v:.4g}") for v in kl)  # 4 significant digits
        assert sum(kl) == pytest.approx(r["val_kl"], rel=1e-3, abs=1e-3)
    log = (run_dir / "log.txt").read_text()
    assert "step 8: skipped, non-finite loss" in log
    assert "rolled back to the weights at the end of epoch 1 and lowered lr 0.003 -> 0.0015" in log
    state = load_state(run_dir / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert state["guard"]["skipped"] == 5 and state["progress"]["lr_scale"] == 0.5


def test_a_run_that_keeps_diverging_stops(config_path, monkeypatch):
    poison_losses(monkeypatch, set(range(8, 100)))
    run_dir = vaelab.runs.session.train_run(load_config(config_path, ["train.rollback_after=2", "train.max_rollbacks=1"]))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "diverged"
    assert "training diverged after 1 rollbacks" in (run_dir / "log.txt").read_text()
    state = load_state(run_dir / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_guard_judges_non_finite_values_and_spikes():
    guard = Guard(spike_factor=10.0, warmup=5)
    assert "non-finite loss" in guard.judge(float("nan"), 1.0)
    assert "non-finite gradient" in guard.judge(1.0, float("inf"))
    for i in range(20):
        loss, norm = 100.0 + (i % 3), 5.0 + 0.1 * (i % 2)
        assert guard.judge(loss, norm) is None
        guard.accept(loss, norm)
    assert guard.judge(102.0, 5.1) is None
    assert "loss spike" in guard.judge(1e4, 5.0)
    assert "gradient norm spike" in guard.judge(100.0, 500.0)
    assert Guard(spike_factor=0.0, warmup=0, seen=50, loss_mean=1.0).judge(1e9, 1e9) is None  # spikes off


def test_state_dict_round_trips_through_a_weights_only_file(config_path, tmp_path):
    config = load_config(config_path, ["loss.reconstruction=gaussian", "loss.sigma=learned"])
    torch.manual_seed(0)
    trainer = Trainer(config, build_model(config.model, config.data.size), torch.device("cpu"))
    trainer.epoch, trainer.batch, trainer.step, trainer.lr_scale = 2, 3, 15, 0.25
    torch.save(trainer.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # no pickled code needed

    torch.manual_seed(123)  # scramble, then restore
    other = Trainer(config, build_model(config.model, config.data.size), torch.device("cpu"))
    other.load_state_dict(state)
    assert (other.epoch, other.batch, other.step) == (2, 3, 15)
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(config.train.lr * 0.25)
    assert other.log_sigma is not None
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), trainer.model.state_dict().values()))
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])


def test_device_and_precision_choice():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(vaelab.errors.VaelabError, match="train.device"):
        select_device("tpu")
    for amp in ("bf16", "fp16"):  # an explicit request that cannot be met is an error, not a warning
        with pytest.raises(vaelab.errors.VaelabError, match=f"^train.amp: {amp} is mixed precision for CUDA GPUs"):
            amp_dtype(amp, torch.device("cpu"))
    assert amp_dtype("auto", torch.device("cpu")) is None and amp_dtype("off", torch.device("cpu")) is None
    assert (precision_name(None), precision_name(torch.bfloat16)) == ("float32", "bfloat16")


def test_mixed_precision_paths_run_on_cpu(config_path):
    """The GPU code paths (autocast, fp16 loss scaling, overflow handling), exercised on the CPU."""
    config = load_config(config_path)
    torch.manual_seed(0)
    trainer = Trainer(config, build_model(config.model, config.data.size), torch.device("cpu"))
    trainer.amp = torch.bfloat16
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    images = vaelab.data.loader.Batch(
        torch.randint(0, 255, (4, 16, 16, 3), dtype=torch.uint8), torch.tensor([[0, 0, 16, 16]] * 4),
        torch.arange(4))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.train_step(images) is None
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))

    # An fp16-style overflow (finite loss, inf gradient) is skipped and lowers the scale, but is
    # not a sign of divergence: it does not count towards a rollback.
    weight = next(trainer.model.parameters())
    hook = weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    assert "non-finite gradient" in trainer.train_step(images)
    hook.remove()
    assert trainer.scaler.get_scale() == 2.0**9
    assert trainer.guard.skipped == 1 and trainer.guard.streak == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_an_epoch_without_a_validation_split_has_null_val_metrics(config_path):
    config = load_config(config_path)
    trainer = Trainer(config, build_model(config.model, config.data.size), torch.device("cpu"))
    record = trainer._end_epoch(None)
    for key in ("val_loss", "val_recon", "val_kl", "val_mse", "val_psnr", "val_active_units", "val_kl_per_dim"):
        assert key in record and record[key] is None, key
    json.dumps(record, allow_nan=False)  # the record is plain JSON


def tiny_trainer(*overrides):
    from vaelab.data.loader import Batch

    config = load_config(None, ["data.size=[16, 16]", "model.conv=[{filters: 8, kernel: 3, stride: 2}]",
                                "model.dense=16", "model.latent=4", *overrides])
    torch.manual_seed(0)
    trainer = Trainer(config, build_model(config.model, (16, 16)), torch.device("cpu"))
    pixels = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    batch = Batch(pixels, torch.tensor([[0, 0, 16, 16]] * 4), torch.arange(4))
    return trainer, batch


def three_steps(trainer, batch) -> list[float]:
    losses = []
    for _ in range(3):
        torch.manual_seed(5)  # the same z noise on both sides
        assert trainer.train_step(batch) is None
        losses.append(trainer.sums["loss"])
    return losses


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from inside torch.compile
def test_channels_last_and_compile_train_like_the_plain_step_and_resume_exactly():
    """train.compile draws eager's noise (without it inductor's own generator gave other z and
    3 losses 10% apart), so a compiled run trains like an eager one, and resumes bitwise."""
    plain, batch = tiny_trainer()
    fast, _ = tiny_trainer("train.channels_last=true", "train.compile=true")
    assert fast.channels_last and not plain.channels_last  # auto = off on the CPU
    assert fast.model.decoder[-1].weight.is_contiguous(memory_format=torch.channels_last)
    assert three_steps(fast, batch) == pytest.approx(three_steps(plain, batch), rel=1e-4)
    # checkpoints hold the plain module's names, loadable without compile
    assert not any(key.startswith("_orig_mod") for key in fast.state_dict()["model"])
    plain.model.load_state_dict(fast.state_dict()["model"])

    # resume: a fresh compiled trainer loaded from the state continues bitwise; the noise comes
    # from the global RNG that the state holds (no manual_seed between these steps)
    state = copy.deepcopy(fast.state_dict())  # as saved: the live tensors move on
    for _ in range(2):
        assert fast.train_step(batch) is None
    resumed, _ = tiny_trainer("train.channels_last=true", "train.compile=true")
    resumed.load_state_dict(state)
    for _ in range(2):
        assert resumed.train_step(batch) is None
    ours, theirs = resumed.model.state_dict(), fast.model.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_cosine_schedule_runs_from_lr_to_a_hundredth_and_follows_the_position():
    trainer, batch = tiny_trainer("train.lr_schedule=cosine", "train.epochs=4", "train.lr=0.01")
    trainer.per_epoch = 10
    assert trainer.lr == pytest.approx(0.01)
    trainer.epoch, trainer.batch = 2, 0  # half way
    assert trainer.lr == pytest.approx(0.01 * (0.01 + 0.99 * 0.5))
    trainer.epoch = 4
    assert trainer.lr == pytest.approx(0.0001)
    trainer.epoch, trainer.batch = 1, 5
    assert trainer.train_step(batch) is None
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.lr)  # applied with the step
    trainer.lr_scale = 0.5  # a rollback halves whatever the schedule gives
    assert trainer.lr == pytest.approx(0.5 * 0.01 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 1.5 / 4))))


def test_ema_weights_are_what_validation_and_load_run_use(config_path, tmp_path):
    """train.ema: validation scores the averaged weights, checkpoints keep them beside the trained
    ones, and load_run (so evaluate and export) gets them; a resumed run continues the average."""
    from vaelab.experiments.evaluate import evaluate_run
    from vaelab.runs.loaded import load_run

    run_dir = vaelab.runs.session.train_run(load_config(config_path, ["train.ema=0.9", "loss.reconstruction=mse_sum"]))
    state = load_state(run_dir / "checkpoints" / "best.pt")
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert int(state["ema"]["n_averaged"]) == state["progress"]["step"] - state["guard"]["skipped"]
    assert any(not torch.equal(averaged[k], state["model"][k]) for k in averaged)
    loaded = load_run(run_dir)
    assert all(torch.equal(loaded.model.state_dict()[k], averaged[k]) for k in averaged)
    best = next(r for r in metrics(run_dir) if r["best"] and r["epoch"] == state["progress"]["epoch"])
    # evaluate draws the same z as the trainer's validation pass: the same loss only with the EMA weights
    assert evaluate_run(run_dir, device="cpu")["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


@pytest.mark.parametrize("kind", ["vector", "spatial"])
def test_reconstruction_grids_show_padding_as_padding(kind):
    """The letterbox of a reconstruction keeps the original's pad colour; the real pixels are the model's."""
    from vaelab.data.loader import Batch

    model = ["model.kind=spatial", "model.channels=[8, 16]", "model.norm_groups=8"] if kind == "spatial" else []
    config = load_config(None, ["data.size=[16, 16]", *model])
    trainer = Trainer(config, build_model(config.model, (16, 16)), torch.device("cpu"))
    pixels = torch.full((2, 16, 16, 3), 7, dtype=torch.uint8)  # pad colour 7 everywhere ...
    pixels[:, :, 4:12] = 200  # ... but the real pixels, 8 columns in the middle
    boxes = torch.tensor([[0, 4, 16, 8], [0, 4, 16, 8]])
    grid = reconstruction_grid(trainer, Batch(pixels, boxes, torch.arange(2)))
    gap = 2
    recon = grid[gap * 2 + 16: gap * 2 + 32, gap: gap + 16]  # second row, first image
    assert (recon[:, :4] == 7).all() and (recon[:, 12:] == 7).all()
    assert not (recon[:, 4:12] == 200).all()  # an untrained model does not reproduce the real pixels
