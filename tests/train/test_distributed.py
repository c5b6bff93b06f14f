"""Data-parallel training: 2 CPU processes (gloo) against 1 process with the same global batch.

The 2-process runs start through `vaelab train --devices 2` (torchrun's launcher) in a
subprocess, on the tiny 16 px images of test_session. Tolerance: the per-epoch train and val loss
curves of 1 and 2 processes agree to 1e-5 relative (of each value, or of the curve's largest
value where a gaussian NLL passes through 0). Both see the same global batches and the same
noise; what differs is only the float summation order (two half-batch sums and a gradient
all-reduce instead of one sum): measured at most 6e-7 relative over these 6 epochs (train
loss; val_mse and val_psnr identical).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import UNTIMED, make_images, metrics, only_run, weights

from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.model import build_model
from vaelab.runs.session import check_batch_split, train_command, train_run
from vaelab.train.distributed import GlobalBatchForward, World
from vaelab.train.losses import vae_loss

RTOL = 1e-5
BAD_STEPS = range(14, 19)  # NaN losses in epoch 3: 5 bad steps in a row roll back to the end of epoch 2

# NaN training losses on BAD_STEPS (1-based run steps) in the processes that run it: in the
# 2-process runs only on rank 1, so the ranks must agree to skip and roll back. Installed in
# the training processes through a sitecustomize module (the library carries no test hooks).
POISON = textwrap.dedent("""\
    import os
    import vaelab.train.trainer

    def poison(setattr, bad_steps, rank):
        real_loss, real_step = vaelab.train.trainer.vae_loss, vaelab.train.trainer.Trainer.train_step
        now = {"step": 0}

        def step(self, batch):
            now["step"] = self.step + 1
            return real_step(self, batch)

        def loss(*args, **kwargs):
            parts = real_loss(*args, **kwargs)
            if now["step"] in bad_steps and rank in ("", "1") and parts["loss"].requires_grad:
                parts["loss"] = parts["loss"] * float("nan")
            return parts

        setattr(vaelab.train.trainer.Trainer, "train_step", step)
        setattr(vaelab.train.trainer, "vae_loss", loss)

    if os.environ.get("RANK") and os.environ.get("BAD_STEPS"):
        first, last = map(int, os.environ["BAD_STEPS"].split("-"))
        poison(setattr, range(first, last + 1), os.environ["RANK"])
    """)


def write_config(folder: Path, images: Path, root: Path) -> Path:
    """6 epochs of 6 global batches of 4 (2 per process); the default gaussian loss with optimal
    sigma, whose batch MSE is not a sum over images, and free bits near the KL, so both global
    statistics matter."""
    path = folder / "config.yaml"
    path.write_text(textwrap.dedent(f"""\
        data: {{images: {images}, size: [16, 16], val_fraction: 0.2, workers: 0}}
        model:
          conv: [{{filters: 4, kernel: 3, stride: 2}}, {{filters: 8, kernel: 3, stride: 2}}]
          dense: 16
          latent: 4
        loss: {{reconstruction: gaussian, sigma: optimal, free_bits: 0.03}}
        train: {{epochs: 6, batch_size: 4, lr: 0.003, seed: 1}}
        run: {{root: {root}, checkpoint_steps: 3, checkpoint_minutes: null, tensorboard: false, images: 4}}
        """))
    return path


def launch(config: Path, *args: str, cache: Path, wait: bool = True):
    """`vaelab train --devices 2` in a subprocess: one launcher, two training processes (rank 1's
    losses NaN on BAD_STEPS)."""
    hooks = cache.parent / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(POISON)
    env = dict(os.environ, OMP_NUM_THREADS="1", VAELAB_CACHE_DIR=str(cache), BAD_STEPS=f"{BAD_STEPS[0]}-{BAD_STEPS[-1]}",
               PYTHONPATH=os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "vaelab", "train", "--devices", "2", *args]
    if config is not None:
        command[4:4] = ["-c", str(config)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One uninterrupted 2-process run."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    images = make_images(tmp_path / "images")
    config = write_config(tmp_path, images, tmp_path / "runs")
    done = launch(config, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    return images, only_run(tmp_path / "runs"), done  # only_run: exactly one run folder


def curve(run_dir: Path, key: str) -> np.ndarray:
    return np.array([r[key] for r in metrics(run_dir)])


def test_two_processes_match_one(tmp_path, two_processes, monkeypatch):
    images, ddp_dir, done = two_processes
    namespace: dict = {}
    exec(POISON, namespace)  # the same NaN steps, here on the whole batch
    namespace["poison"](monkeypatch.setattr, BAD_STEPS, "")
    single_dir = train_run(load_config(write_config(tmp_path, images, tmp_path / "runs")))

    assert len(metrics(ddp_dir)) == 6
    for key in ("train_loss", "train_recon", "train_kl", "val_loss", "val_mse"):
        ours, theirs = curve(ddp_dir, key), curve(single_dir, key)
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=RTOL * np.abs(theirs).max(), err_msg=key)
    for key in ("train_images", "skipped_steps", "rollbacks", "lr"):
        assert [r[key] for r in metrics(ddp_dir)] == [r[key] for r in metrics(single_dir)], key
    # Rank 1 alone saw NaN losses; both ranks skipped the same 5 steps and rolled back together.
    assert [r["skipped_steps"] for r in metrics(ddp_dir)] == [0, 0, 5, 0, 0, 0]
    assert "rolled back to the weights at the end of epoch 2" in (ddp_dir / "log.txt").read_text()
    # Only rank 0 printed: each epoch line and the run folder once.
    assert done.stderr.count("epoch 1/6  recon") == 1, done.stderr
    assert done.stdout.count("run folder:") == 2, done.stdout
    log = (ddp_dir / "log.txt").read_text()
    assert "2 processes (data-parallel, 2 images each per batch)" in log

    # The checkpoint holds the plain model's state (no DDP "module." prefix) and loads anywhere.
    state = weights(ddp_dir)
    assert set(state) == set(weights(single_dir))
    model = build_model(load_config(ddp_dir / "config.yaml").model, (16, 16))
    model.load_state_dict(state)


# k-means init and dead-code restarts draw their vectors from each process's own share of the
# batch, so they are off here: with them a 2-process vq run is a different (equally valid) run.
DDP_FAMILIES = {
    "spatial": "{kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 2}",
    "vq": "{kind: vq, channels: [8, 16], norm_groups: 8, code_dim: 4, codebook_size: 16, kmeans_init: false,"
          " dead_code_threshold: 0}",
}


@pytest.mark.parametrize("family", sorted(DDP_FAMILIES))
def test_two_processes_match_one_for_every_family(tmp_path, family, monkeypatch):
    """The spatial family's global-batch noise and the vq family's codebook EMA (whose statistics
    vector-quantize-pytorch sums over the processes) give one process's loss curves, NaN steps on
    rank 1 and the rollback they cause included."""
    images = make_images(tmp_path / "images")
    config = write_config(tmp_path, images, tmp_path / "ddp")
    text = config.read_text().replace("epochs: 6", "epochs: 3")
    config.write_text(text.split("model:")[0] + f"model: {DDP_FAMILIES[family]}\nloss:" + text.split("loss:")[1])
    done = launch(config, "--set", "run.name=ddp", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    namespace: dict = {}
    exec(POISON, namespace)  # the same NaN steps, here on the whole batch
    namespace["poison"](monkeypatch.setattr, BAD_STEPS, "")
    single_dir = train_run(load_config(config, [f"run.root={tmp_path / 'single'}"]))
    ddp_dir = only_run(tmp_path / "ddp")
    assert [r["rollbacks"] for r in metrics(ddp_dir)] == [r["rollbacks"] for r in metrics(single_dir)] == [0, 0, 1]
    assert len(metrics(ddp_dir)) == 3
    keys = ("train_loss", "train_recon", "val_loss", "val_mse") + (("train_kl",) if family == "spatial" else ())
    for key in keys:
        ours, theirs = curve(ddp_dir, key), curve(single_dir, key)
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=RTOL * np.abs(theirs).max(), err_msg=key)


def test_ddp_resume_after_sigterm_is_exact(tmp_path, two_processes):
    images, reference_dir, _ = two_processes
    config = write_config(tmp_path, images, tmp_path / "runs")
    running = launch(config, cache=tmp_path / "cache", wait=False)
    try:
        deadline = time.monotonic() + 240
        log = tmp_path / "runs"
        while time.monotonic() < deadline and running.poll() is None:  # SIGTERM once epoch 1 is recorded
            found = list(log.glob("*/metrics.jsonl")) if log.is_dir() else []
            if found and found[0].read_text().strip():
                break
            time.sleep(0.02)
        running.send_signal(signal.SIGTERM)  # what a preempted job gets; torchrun passes it on
        out, err = running.communicate(timeout=120)
    finally:
        running.kill()
    run_dir = only_run(tmp_path / "runs")
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted" and status["epoch"] < 6, (status, err)
    assert running.returncode == 130, err

    resumed = launch(None, "--resume", str(run_dir), cache=tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert only_run(tmp_path / "runs") == run_dir and "resumed at epoch" in (run_dir / "log.txt").read_text()
    assert [UNTIMED(r) for r in metrics(run_dir)] == [UNTIMED(r) for r in metrics(reference_dir)]
    for name in ("last.pt", "best.pt", "last-epoch.pt"):
        ours, theirs = weights(run_dir, name), weights(reference_dir, name)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name

    # A 2-process checkpoint resumes in one process too: one more epoch, in this process.
    assert train_command(None, ["train.epochs=7"], resume=str(run_dir)) == run_dir
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5, 6, 7]


def test_batch_that_does_not_split_is_refused(tmp_path):
    config = load_config(None, ["train.batch_size=5", f"run.root={tmp_path / 'runs'}"])
    with pytest.raises(VaelabError, match="train.batch_size: 5 images do not split evenly over 2 processes"):
        check_batch_split(config, World(rank=0, size=2, local_rank=0, local_size=2))
    check_batch_split(config, World())  # one process takes any batch size


# --------------------------------------------------------------------------------------------
# the pieces, in one process
# --------------------------------------------------------------------------------------------


def test_global_batch_forward_is_the_model_forward():
    config = load_config(None, ["data.size=[16, 16]", "model.latent=4", "model.dense=8",
                                "model.conv=[{filters: 4, kernel: 3, stride: 2}]"])
    model = build_model(config.model, (16, 16))
    x = torch.rand(6, 3, 16, 16)
    torch.manual_seed(3)
    whole = model(x)
    torch.manual_seed(3)  # the second half of the batch, as rank 1 of 2 computes it
    half = GlobalBatchForward(model)(x[3:], torch.arange(3, 6), 6)
    pairs = [(whole.recon, half.recon), (whole.z, half.z), (whole.logits, half.logits),
             (whole.posterior.mean, half.posterior.mean), (whole.posterior.logvar, half.posterior.logvar)]
    for a, b in pairs:
        assert torch.allclose(a[3:], b, rtol=1e-5, atol=1e-6)  # a batch of 3 sums in another order than one of 6


class Ranks:
    """A stand-in process group: `sum` returns the sum of what every simulated rank passed."""

    size = 2

    def __init__(self, parts=None):
        self.parts, self.seen = parts, []

    def sum(self, values):
        self.seen.append(values)
        return values if self.parts is None else sum(self.parts)


@pytest.mark.parametrize("free_bits", [0.0, 0.5])
def test_loss_shares_add_up_to_the_global_batch(free_bits):
    """Two half-batch shares (averaged, as DDP averages gradients) give the full-batch loss and
    gradient: with optimal sigma from the global MSE, free bits on the global per-dimension KL,
    and a shard that lost one image (3 + 2 images)."""
    config = load_config(None, ["data.size=[16, 16]", "model.latent=4", "model.dense=8",
                                "model.conv=[{filters: 4, kernel: 3, stride: 2}]",
                                f"loss.free_bits={free_bits}"]).loss
    torch.manual_seed(0)
    model = build_model(load_config(None, ["model.latent=4", "model.dense=8",
                                           "model.conv=[{filters: 4, kernel: 3, stride: 2}]"]).model, (16, 16))
    x, mask = torch.rand(5, 3, 16, 16), (torch.rand(5, 1, 16, 16) > 0.2).float()
    shards = [slice(0, 3), slice(3, 5)]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    def shard_out(s):  # what rank s computes: its rows of the whole batch's noise
        torch.manual_seed(1)
        return GlobalBatchForward(model)(x[s], torch.arange(s.start, s.stop), 5)

    torch.manual_seed(1)
    full = vae_loss(model(x), x, mask, config, 1.0)
    full_grads = grads(full["loss"])
    capture = Ranks()  # first pass: what each rank contributes to the sum
    for s in shards:
        vae_loss(shard_out(s), x[s], mask[s], config, 1.0, group=capture)
    ranks = Ranks(capture.seen)
    shares, share_grads = [], []
    for s in shards:
        part = vae_loss(shard_out(s), x[s], mask[s], config, 1.0, group=ranks)
        shares.append(part)
        share_grads.append(grads(part["loss"]))
    for key in ("loss", "recon", "kl", "kl_term"):
        assert torch.allclose((shares[0][key] + shares[1][key]) / 2, full[key], rtol=1e-5), key
    assert torch.allclose(shares[0]["mse"], full["mse"]) and torch.allclose(shares[1]["sigma"], full["sigma"])
    for a, b, g in zip(*share_grads, full_grads):
        assert torch.allclose((a + b) / 2, g, rtol=1e-4, atol=1e-4 * g.abs().max()), ((a + b) / 2 - g).abs().max()


def test_a_second_machine_completes_its_own_image_cache(tmp_path):
    """Two 'machines' (torchrun nodes on loopback, one process each, separate cache folders): each
    machine's processes see only their share of every batch (and node 1 never validates), yet
    each cache must become final, or every epoch there would read through the decoding path."""
    import socket

    images = make_images(tmp_path / "images")
    config = write_config(tmp_path, images, tmp_path / "runs")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = []
    for node in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", VAELAB_CACHE_DIR=str(tmp_path / f"cache-{node}"))
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}",
             "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "vaelab", "train", "-c", str(config),
             "--set", "train.epochs=2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-2000:]
    for node in (0, 1):
        folder = tmp_path / f"cache-{node}"
        assert list(folder.glob("fitted-*.u8")) and not list(folder.glob("fitted-*.partial")), node
    assert [r["epoch"] for r in metrics(only_run(tmp_path / "runs"))] == [1, 2]
