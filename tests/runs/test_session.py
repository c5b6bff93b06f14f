"""Run folders, exact resume after SIGKILL or Ctrl-C, auto-resume, load_run.

Training runs here are tiny (16 px images, a 2-layer model, 6 batches per epoch) and the ones
that get killed run in subprocesses. The subprocess driver patches vaelab in memory to kill
itself at a chosen point, so the library carries no test hooks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import (  # noqa: F401
    FAMILY_MODELS,
    METRIC_KEYS,
    UNTIMED,
    VECTOR_MODEL,
    drive,
    make_images,
    metrics,
    only_run,
    reference,
    weights,
    write_config,
)

from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.runs.checkpoints import load_state
from vaelab.runs.folder import create_run_dir, find_resumable, started_at
from vaelab.runs.loaded import load_run
from vaelab.runs.session import train_run


@pytest.fixture
def setup(tmp_path):
    images = make_images(tmp_path / "images")
    return tmp_path, images, write_config(tmp_path, images, tmp_path / "runs")


def test_run_folder_holds_everything(setup):
    tmp_path, images, config_path = setup
    config = load_config(config_path, ["run.name=first", "run.checkpoint_every=2", "run.keep_checkpoints=1"])
    run_dir = train_run(config)

    assert run_dir.parent == tmp_path / "runs" and run_dir.name.endswith("_first")
    for name in ("config.yaml", "env.json", "run.json", "metrics.jsonl", "log.txt", "source/vaelab/train/trainer.py",
                 "source/git.json", "reconstructions/epoch-0003.png", "samples/epoch-0001.png"):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.yaml") == config  # resolved, so it loads back to the same config
    records = metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert METRIC_KEYS <= set(records[0])
    assert records[-1]["step"] == 18 and records[-1]["val_psnr"] > 0 and 0 < records[-1]["val_mse"] < 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    env = json.loads((run_dir / "env.json").read_text())
    assert env["parameters"] > 0 and (env["precision"], env["amp"]) == ("float32", "auto") and "resumes" not in env
    assert "precision float32 (train.amp auto)" in (run_dir / "log.txt").read_text()
    # periodic every 2 epochs plus the final epoch, keeping only 1; plus last, last-epoch and best
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-0003.pt", "last-epoch.pt", "last.pt"]
    # reconstructions: originals row above reconstructions row, 4 images of 16 px with 2 px gaps
    assert np.asarray(Image.open(run_dir / "reconstructions" / "epoch-0001.png")).shape == (2 * 16 + 3 * 2, 4 * 16 + 5 * 2, 3)

    vae = load_run(run_dir)
    assert not vae.model.training and vae.data.size == (16, 16)
    z = vae.encode(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    assert z.shape == (2, 4) and vae.decode(z).shape == (2, 16, 16, 3)


def test_run_folders_are_never_reused(tmp_path):
    first = create_run_dir(tmp_path, "x", now=0.0)
    second = create_run_dir(tmp_path, "x", now=0.0)
    assert first != second and second.name == first.name + "-2"
    with pytest.raises(VaelabError, match="run.name"):
        create_run_dir(tmp_path, "../escape")


# --------------------------------------------------------------------------------------------
# exact resume
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("die, resume", [
    ("kill:8", "dir"),  # SIGKILL mid-epoch 2; the last checkpoint is from step 6
    ("link:2", "auto"),  # SIGKILL inside the epoch-2 checkpoint, between the write and the links
    ("sigint:10", "dir"),  # Ctrl-C: finishes the step, writes a checkpoint, exits cleanly
])
def test_resume_is_exact(tmp_path, reference, die, resume):
    images, reference_dir = reference
    config = write_config(tmp_path, images, tmp_path / "runs")
    first = drive(tmp_path, config, "new", die=die)
    mode = die.split(":")[0]
    assert first.returncode == (0 if mode == "sigint" else -9), first.stderr  # the Python API returns
    run_dir = only_run(tmp_path / "runs")
    status = json.loads((run_dir / "run.json").read_text())["status"]
    assert status == ("interrupted" if mode == "sigint" else "running")

    # The resume runs in this process: same code, same thread count, so the same arithmetic.
    resumed = train_run(None, resume=run_dir) if resume == "dir" else train_run(load_config(config), resume="auto")
    assert resumed == run_dir and only_run(tmp_path / "runs") == run_dir  # continued in its own folder
    assert "resumed at epoch" in (run_dir / "log.txt").read_text()

    assert [UNTIMED(r) for r in metrics(run_dir)] == [UNTIMED(r) for r in metrics(reference_dir)]
    for name in ("last.pt", "best.pt", "last-epoch.pt"):
        ours, theirs = weights(run_dir, name), weights(reference_dir, name)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_resume_is_exact_for_every_family(tmp_path, family):
    """SIGKILL mid-epoch 2 and resume: the spatial and vq families (EMA codebook, k-means init,
    dead-code restarts, train.ema included) end with the same metrics and bitwise the same weights."""
    images = make_images(tmp_path / "images")
    results = {}
    for name, die in (("reference", "none:0"), ("killed", "kill:8")):
        folder = tmp_path / name
        folder.mkdir()
        # vq also keeps an EMA of its weights, whose average a resume must continue exactly
        config = write_config(folder, images, folder / "runs", model=FAMILY_MODELS[family],
                              train=", ema: 0.8" if family == "vq" else "")
        first = drive(folder, config, "new", die=die)
        assert first.returncode == (0 if name == "reference" else -9), first.stderr[-2000:]
        run_dir = only_run(folder / "runs")
        if name == "killed":
            train_run(None, resume=run_dir)
        results[name] = run_dir
    reference_dir, run_dir = results["reference"], results["killed"]
    records = metrics(run_dir)
    assert [UNTIMED(r) for r in records] == [UNTIMED(r) for r in metrics(reference_dir)]
    assert len(records) == 3 and all(r["val_psnr"] > 0 for r in records)
    if family == "spatial":
        assert len(records[-1]["val_kl_per_dim"]) == 2  # one value per latent channel
    else:
        assert records[-1]["val_kl"] is None and 0 < records[-1]["val_codebook_usage"] <= 1
        assert not (run_dir / "samples").exists()  # no prior to sample from yet
    ours, theirs = load_state(run_dir / "checkpoints" / "last.pt"), load_state(reference_dir / "checkpoints" / "last.pt")
    for part in ("model", "ema") if family == "vq" else ("model",):
        assert set(ours[part]) == set(theirs[part]) and all(torch.equal(ours[part][k], theirs[part][k]) for k in theirs[part])


# --------------------------------------------------------------------------------------------
# auto-resume picks the right run
# --------------------------------------------------------------------------------------------


def fake_run(root: Path, config, status: str, created: float, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config.to_yaml())
    (folder / "run.json").write_text(json.dumps({"status": status, "created": created}))
    return folder


def test_auto_resume_picks_newest_unfinished_with_same_config(setup):
    tmp_path, _, config_path = setup
    root = tmp_path / "runs"
    config = load_config(config_path)
    other = load_config(config_path, ["train.lr=0.01"])
    named = load_config(config_path, ["run.name=renamed"])  # the name does not make it another run
    fake_run(root, config, "running", 1.0, "a-old")
    wanted = fake_run(root, named, "interrupted", 2.0, "b-wanted")
    fake_run(root, config, "finished", 3.0, "c-finished")
    fake_run(root, other, "running", 4.0, "d-other-config")
    assert find_resumable(config) == wanted
    assert find_resumable(load_config(config_path, ["train.epochs=9"])) is None


def test_resume_refuses_a_different_config(setup):
    tmp_path, _, config_path = setup
    run_dir = fake_run(tmp_path / "runs", load_config(config_path), "running", 1.0, "r")
    with pytest.raises(VaelabError, match=r"different config: train.lr"):
        train_run(load_config(config_path, ["train.lr=0.5"]), resume=run_dir)
    with pytest.raises(VaelabError, match="not a run folder"):
        train_run(None, resume=tmp_path)


def test_a_run_being_trained_is_locked(setup):
    from vaelab.runs.folder import RunFolder

    tmp_path, _, config_path = setup
    run_dir = fake_run(tmp_path / "runs", load_config(config_path), "running", 1.0, "busy")
    held = RunFolder(run_dir).lock()
    try:
        with pytest.raises(VaelabError, match="another vaelab process is training this run"):
            train_run(None, resume=run_dir)
        assert find_resumable(load_config(config_path)) is None  # auto-resume leaves it alone
    finally:
        held.close()
    assert find_resumable(load_config(config_path)) == run_dir


def test_a_damaged_run_json_is_told_from_a_missing_one(tmp_path):
    from vaelab.runs.folder import RunFolder

    run = RunFolder(tmp_path)
    assert run.status_damage() is None  # missing
    for text, damage in [("", "is empty"), ('{"status": "runn', "is not valid JSON"), ("{}", "has no status"),
                         ("[1]", "has no status"), ('{"status": "running"}', None)]:
        run.status_file.write_text(text)
        assert run.status_damage() == damage


def test_auto_resume_continues_a_run_whose_run_json_is_damaged_and_says_so(setup, capsys):
    """A torn run.json used to read as a missing one: --resume auto passed the run over and started
    a new run beside it. Now the run is continued (its checkpoints say where it stopped) with a warning."""
    tmp_path, _, config_path = setup
    config = load_config(config_path)
    run_dir = train_run(config)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    (run_dir / "run.json").write_text('{"status": "fini')  # what a crash before the fsync could leave
    other = fake_run(tmp_path / "runs", load_config(config_path, ["train.lr=0.01"]), "running", 1.0, "other")
    (other / "run.json").write_text("")  # damaged too, but another config: not ours, passed over quietly
    capsys.readouterr()
    assert train_run(config, resume="auto") == run_dir
    err = capsys.readouterr().err
    assert (f"warning: {run_dir / 'run.json'} is not valid JSON, so the run's status is unknown; its config is this "
            f"one, so --resume auto continues it from its checkpoints and writes a new run.json (to start a new run "
            f"instead, move {run_dir} out of {tmp_path / 'runs'})") in err
    assert str(other) not in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted([run_dir.name, "other"])  # no new run
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished" and status["epoch"] == 3  # finished already: it ends at once
    assert status["created"] == started_at(run_dir.name)  # the lost creation time, from the folder's name

    # Only the run it continues is warned about: a newer unfinished run goes first, without a word.
    (run_dir / "run.json").write_text("")
    newer = fake_run(tmp_path / "runs", config, "interrupted", time.time() + 60, "9999-01-01_00h00m00s")
    assert find_resumable(config, log=lambda message: pytest.fail(message)) == newer


def test_tensorboard_events_or_a_note(setup):
    tmp_path, _, config_path = setup
    run_dir = train_run(load_config(config_path, ["run.tensorboard=true", "train.epochs=1"]))
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert "the tensorboard package is not installed" in (run_dir / "log.txt").read_text()
    else:
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_config_that_cannot_train_gets_no_run_folder(setup):
    tmp_path, _, config_path = setup
    with pytest.raises(VaelabError, match="bce needs targets in \\[0, 1\\]"):
        train_run(load_config(config_path, ["loss.reconstruction=bce", "model.output_activation=sigmoid",
                                            "data.scale=standardize"]))
    for amp in ("bf16", "fp16"):  # asked for explicitly: not trained in float32 under a config that says otherwise
        with pytest.raises(VaelabError) as error:
            train_run(load_config(config_path, ["train.device=cpu", f"train.amp={amp}"]))
        assert str(error.value) == (f"train.amp: {amp} is mixed precision for CUDA GPUs and this run trains on cpu; "
                                    "set train.amp: auto (float32 here) or off")
    assert not (tmp_path / "runs").exists()


def test_train_command_resumes_with_more_epochs(setup):
    from vaelab.runs.session import train_command

    tmp_path, _, config_path = setup
    run_dir = train_command(config_path, ["train.epochs=1"])
    assert [r["epoch"] for r in metrics(run_dir)] == [1]
    assert train_command(None, ["train.epochs=2"], resume=str(run_dir)) == run_dir  # overrides the run's config
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2]
    assert load_config(run_dir / "config.yaml").train.epochs == 2
    # where, and in which precision, the run went on: a resume may be on another machine
    (resumed,) = json.loads((run_dir / "env.json").read_text())["resumes"]
    assert resumed["epoch"] == 1 and (resumed["device"], resumed["precision"], resumed["amp"]) == ("cpu", "float32", "auto")
    with pytest.raises(VaelabError, match="different config: train.lr"):
        train_command(None, ["train.lr=0.1"], resume=str(run_dir))
    with pytest.raises(VaelabError, match="not a run folder"):
        train_command(None, [], resume=str(tmp_path / "nowhere"))


def test_loaded_run_encode_keeps_padding_out_of_standardize_stats():
    from vaelab.config import load_config
    from vaelab.model import build_model
    from vaelab.runs.loaded import LoadedRun

    config = load_config(None, ["data.size=[16, 16]", "data.scale=standardize", "model.latent=4",
                                "model.conv=[{filters: 4, kernel: 3, stride: 2}]", "model.dense=8"])
    torch.manual_seed(0)
    loaded = LoadedRun(Path("."), config, build_model(config.model, (16, 16)).eval(), Path("x"), 0, torch.device("cpu"))
    image = torch.randint(0, 255, (1, 16, 16, 3), dtype=torch.uint8)
    boxes = torch.tensor([[4, 0, 8, 16]])  # a letterboxed image: rows 0-3 and 12-15 are padding
    image[:, :4] = 0
    image[:, 12:] = 0
    from vaelab.data.loader import Batch
    from vaelab.data.scaling import to_model_input

    as_in_training = to_model_input(Batch(image, boxes, torch.arange(1)), "standardize")
    expected = loaded.model.encode(as_in_training.x).mode()
    assert torch.allclose(loaded.encode(image, boxes), expected, atol=1e-6)
    assert not torch.allclose(loaded.encode(image), expected, atol=1e-4)  # padding skews the stats


@pytest.mark.parametrize("state, code", [
    ({"status": "finished"}, 0),
    ({"status": "interrupted", "signal": 15}, 143),  # SIGTERM: a scheduler restarts the job
    ({"status": "interrupted", "signal": None}, 130),  # a rank stopped for another rank's Ctrl-C
    ({"status": "stopped"}, 75),  # disk nearly full: try again later
    ({"status": "diverged"}, 1),
    ({"status": "running"}, 1),  # failed without a word
])
def test_only_a_finished_run_exits_0(tmp_path, state, code):
    from vaelab.files import write_json
    from vaelab.runs.session import exit_status

    write_json(tmp_path / "run.json", state)
    assert exit_status(tmp_path) == code
