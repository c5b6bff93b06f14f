"""run.remote: the run folder's copy on object storage, and --resume from it.

The S3 tests talk to a real S3 API (moto's server on loopback) through s3fs, the package a
user installs with vaelab[s3]; the others use a file:// remote, which goes through the same
fsspec code.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST_FAIL
from tiny_runs import (
    UNTIMED,
    drive,
    make_images,
    metrics,
    only_run,
    reference,  # noqa: F401 - a fixture: the same run, never interrupted
    weights,
    write_config,
)

from vaelab.cli import main
from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.remote import mirror as mirror_module
from vaelab.remote.mirror import HEARTBEAT, MANIFEST, RunMirror, check_remote, claim_name, local_files, open_remote
from vaelab.runs.folder import create_run_dir, find_resumable
from vaelab.runs.session import train_command, train_run
from vaelab.train.trainer import Trainer


def remote_files(url: str, options: dict) -> dict[str, bytes]:
    fs, root = open_remote(url, options)
    return {path[len(root) + 1:]: fs.cat_file(path) for path in fs.find(root)}


def remote_overrides(url: str, options: dict) -> list[str]:
    """--set values for a copy on `url` (JSON is YAML, so the options fit in one value)."""
    return [f"run.remote={url}", f"run.remote_options={json.dumps(options)}"]


# --------------------------------------------------------------------------------------------
# RunMirror on a folder
# --------------------------------------------------------------------------------------------


def make_run_folder(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("train: {epochs: 1}\n")
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (folder / "run.json").write_text('{"status": "running"}\n')
    (folder / "checkpoints" / "last.pt").write_bytes(b"weights-1")
    (folder / "checkpoints" / "epoch-0001.pt").write_bytes(b"weights-1")
    (folder / ".lock").write_text("")
    (folder / "checkpoints" / ".last.pt.tmp-123").write_bytes(b"half a checkpoint")
    return folder


def test_sync_copies_changes_deletes_what_the_run_deleted_and_keeps_dot_files_local(tmp_path, monkeypatch):
    run_dir = make_run_folder(tmp_path / "runs" / "2026-01-01_00h00m00s")
    url = (tmp_path / "remote").as_uri()
    log = []
    mirror = RunMirror(run_dir, url, None, log.append)
    assert mirror.sync()
    remote = tmp_path / "remote" / run_dir.name
    assert sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()) == sorted([
        "checkpoints/epoch-0001.pt", "checkpoints/last.pt", "config.yaml", HEARTBEAT, "metrics.jsonl", "run.json"])

    with open(run_dir / "metrics.jsonl", "a") as file:
        file.write('{"epoch": 2}\n')
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights-2")
    (run_dir / "checkpoints" / "epoch-0001.pt").unlink()  # retention pruned it
    assert mirror.sync()
    assert (remote / "metrics.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert (remote / "checkpoints" / "last.pt").read_bytes() == b"weights-2"
    assert not (remote / "checkpoints" / "epoch-0001.pt").exists()
    assert not list(remote.rglob(".*")) and not list(remote.rglob("*.partial"))
    assert log == []

    # A hard link (best.pt is often last.pt) is copied inside the store, not sent twice.
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights-3")
    os.link(run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt")
    sent, copied = [], []
    put, copy = mirror.fs.put_file, mirror.fs.copy
    monkeypatch.setattr(mirror.fs, "put_file", lambda local, target, **kw: (sent.append(target), put(local, target, **kw)))
    monkeypatch.setattr(mirror.fs, "copy", lambda source, target, **kw: (copied.append(target), copy(source, target, **kw)))
    assert mirror.sync()
    assert [Path(p).name for p in sent] == ["best.pt.partial"] and [Path(p).name for p in copied] == ["last.pt.partial"]
    assert (remote / "checkpoints" / "last.pt").read_bytes() == (remote / "checkpoints" / "best.pt").read_bytes() == b"weights-3"
    monkeypatch.undo()

    # A later process on the same folder (a resume) uploads only what changed since.
    uploads = []
    again = RunMirror(run_dir, url, None, log.append)
    put = again.fs.put_file
    monkeypatch.setattr(again.fs, "put_file",
                        lambda local, target, **kw: (uploads.append(Path(local).name), put(local, target, **kw)))
    (run_dir / "run.json").write_text('{"status": "finished"}\n')
    assert again.sync()
    assert uploads == ["run.json"]


def test_records_go_up_before_checkpoints_and_run_json_last(tmp_path, monkeypatch):
    """A copy cut short never has a checkpoint newer than its metrics (a resume trims metrics past it)."""
    run_dir = make_run_folder(tmp_path / "run")
    (run_dir / "reconstructions").mkdir()
    (run_dir / "reconstructions" / "epoch-0001.png").write_bytes(b"png")
    mirror = RunMirror(run_dir, (tmp_path / "remote").as_uri(), None, print)
    order = []
    put = mirror.fs.put_file
    monkeypatch.setattr(mirror.fs, "put_file", lambda local, target, **kw: (
        order.append(Path(local).relative_to(run_dir).as_posix()), put(local, target, **kw)))
    mirror.sync()
    assert order == ["config.yaml", "metrics.jsonl", "reconstructions/epoch-0001.png",
                     "checkpoints/epoch-0001.pt", "checkpoints/last.pt", "run.json"]


def test_a_failing_store_warns_once_training_goes_on_and_it_catches_up(tmp_path, monkeypatch):
    run_dir = make_run_folder(tmp_path / "run")
    log = []
    mirror = RunMirror(run_dir, (tmp_path / "remote").as_uri(), None, log.append)
    put = mirror.fs.put_file
    down = [True]

    def flaky_put(local, target, **kw):
        if down[0]:
            raise ConnectionError("connection reset by peer")
        return put(local, target, **kw)

    monkeypatch.setattr(mirror.fs, "put_file", flaky_put)  # the fs instance is fsspec's shared one
    assert not mirror.sync() and not mirror.sync()
    assert len(log) == 1 and "connection reset by peer" in log[0] and "training goes on" in log[0]
    down[0] = False
    assert mirror.sync()
    assert "works again" in log[-1]
    assert (tmp_path / "remote" / "run" / "checkpoints" / "last.pt").read_bytes() == b"weights-1"
    assert set(json.loads((run_dir / MANIFEST).read_text())) == set(local_files(run_dir))


@pytest.mark.parametrize("url, says", [
    ("runs-backup", "is not a URL"),
    ("nosuch://bucket/runs", "nosuch:// is not a storage that fsspec knows"),
])
def test_a_remote_that_cannot_work_is_named_in_one_line(url, says):
    with pytest.raises(VaelabError, match="^run.remote: ") as error:
        check_remote(url)
    assert says in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("where, says, status", [
    ("down", "Could not connect to the endpoint URL", 75),  # the scheduler may retry later
    ("no-bucket", "The specified bucket does not exist", 2),  # a retry cannot help
])
def test_a_store_that_cannot_be_written_stops_the_run_before_it_gets_a_folder(tmp_path, s3_endpoint, capsys,
                                                                               where, says, status):
    images = make_images(tmp_path / "images")
    config_path = write_config(tmp_path, images, tmp_path / "runs")
    endpoint = "http://127.0.0.1:9" if where == "down" else s3_endpoint
    with pytest.raises(SystemExit) as exit:
        main(["train", "-c", str(config_path), "--set", "run.remote=s3://no-such-bucket/runs",
              "--set", f"run.remote_options={json.dumps({'endpoint_url': endpoint, **FAST_FAIL})}"])
    assert exit.value.code == status
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: run.remote: cannot write to s3://no-such-bucket/runs (") and says in message
    assert "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "runs").exists()


def test_resume_from_a_url_without_a_run_says_so(tmp_path, bucket):
    url, options = bucket
    config_path = write_config(tmp_path, make_images(tmp_path / "images"), tmp_path / "runs")
    with pytest.raises(VaelabError, match=f"^{url}/2020-01-01_00h00m00s: no run folder there"):
        train_command(config_path, [f"run.remote_options={json.dumps(options)}"],
                      resume=f"{url}/2020-01-01_00h00m00s")
    assert not (tmp_path / "runs" / "2020-01-01_00h00m00s").exists()


def test_two_machines_starting_the_same_second_get_different_names(tmp_path, monkeypatch):
    monkeypatch.setattr(mirror_module, "CLAIM_SETTLE_S", 0.0)
    url = (tmp_path / "remote").as_uri()
    assert claim_name(url, None, "2026-01-01_00h00m00s")
    assert not claim_name(url, None, "2026-01-01_00h00m00s")  # the other machine's, already there
    first = create_run_dir(tmp_path / "a", None, now=0, claim=lambda name: claim_name(url, None, name))
    second = create_run_dir(tmp_path / "b", None, now=0, claim=lambda name: claim_name(url, None, name))
    assert first.name != second.name and second.name == first.name + "-2"
    assert not (tmp_path / "b" / first.name).exists()  # the refused name's empty folder is gone


# --------------------------------------------------------------------------------------------
# a preempted pod without a persistent disk, on S3
# --------------------------------------------------------------------------------------------


def stop_at_step(monkeypatch, at: int) -> None:
    """What SIGTERM does (runs.stop_on_signals), at a chosen step: finish it, save, stop."""
    step = Trainer.train_step

    def stopping_step(self, batch):
        result = step(self, batch)
        if self.step + 1 == at:
            self.stop_requested = True
        return result

    monkeypatch.setattr(Trainer, "train_step", stopping_step)


@pytest.mark.parametrize("resume", ["auto", "url"])
def test_a_pod_without_disk_resumes_from_s3_exactly(tmp_path, monkeypatch, bucket, resume, reference):
    url, options = bucket
    images = make_images(tmp_path / "images")
    config_path = write_config(tmp_path, images, tmp_path / "runs")
    overrides = remote_overrides(url, options)
    _, reference_dir = reference  # the same run, never interrupted

    with monkeypatch.context() as patch:
        stop_at_step(patch, 10)
        first = train_run(load_config(config_path, overrides))
    assert json.loads((first / "run.json").read_text())["status"] == "interrupted"
    on_s3 = remote_files(url, options)
    assert json.loads(on_s3[f"{first.name}/run.json"])["status"] == "interrupted"
    assert f"{first.name}/checkpoints/last.pt" in on_s3

    shutil.rmtree(tmp_path / "runs")  # the pod is gone, and its disk with it
    if resume == "auto":
        resumed = train_run(load_config(config_path, overrides), resume="auto")
    else:
        resumed = train_command(config_path, overrides, resume=f"{url}/{first.name}")
    assert resumed == tmp_path / "runs" / first.name == only_run(tmp_path / "runs")
    assert "resumed at epoch 2" in (resumed / "log.txt").read_text()

    assert [UNTIMED(r) for r in metrics(resumed)] == [UNTIMED(r) for r in metrics(reference_dir)]
    for name in ("last.pt", "best.pt", "last-epoch.pt"):
        ours, theirs = weights(resumed, name), weights(reference_dir, name)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name

    # The remote now mirrors the finished local folder, file for file.
    on_s3 = remote_files(url, options)
    local = {p.relative_to(resumed).as_posix(): p.read_bytes() for p in resumed.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(resumed).parts)}
    assert {k.split("/", 1)[1]: v for k, v in on_s3.items() if k.split("/", 1)[1] != HEARTBEAT} == local
    assert json.loads(on_s3[f"{first.name}/run.json"])["status"] == "finished"


def test_auto_resume_leaves_a_run_alone_that_another_machine_trains(tmp_path, monkeypatch, bucket):
    url, options = bucket
    monkeypatch.setattr(mirror_module, "ALIVE_WITHIN_S", 1.5)
    images = make_images(tmp_path / "images")
    config = load_config(write_config(tmp_path, images, tmp_path / "runs"),
                         remote_overrides(url, options))
    fs, root = open_remote(url, options)
    name = "2026-01-01_00h00m00s"
    fs.pipe_file(f"{root}/{name}/config.yaml", config.to_yaml().encode())
    fs.pipe_file(f"{root}/{name}/run.json", json.dumps({"status": "running", "created": 1.0}).encode())

    def beat(at: float) -> None:
        fs.pipe_file(f"{root}/{name}/{HEARTBEAT}", json.dumps({"host": "other", "pid": 1, "time": at}).encode())

    # Its machine is alive: the heartbeat moves on while we wait, so we start no copy of it.
    beat(time.time())
    real_sleep = time.sleep
    monkeypatch.setattr(mirror_module.time, "sleep", lambda s: (real_sleep(s), beat(time.time())))
    log = []
    assert find_resumable(config, log.append) is None
    assert "waiting up to" in log[0] and not (tmp_path / "runs" / name).exists()

    # Its machine was SIGKILLed: the heartbeat stops, and after ALIVE_WITHIN_S the run is ours.
    monkeypatch.setattr(mirror_module.time, "sleep", real_sleep)
    beat(time.time())
    started = time.monotonic()
    assert find_resumable(config, log.append) == tmp_path / "runs" / name
    assert 0.5 < time.monotonic() - started < 10
    assert json.loads((tmp_path / "runs" / name / "run.json").read_text())["status"] == "running"


def test_with_a_remote_tensorboard_writes_a_file_per_epoch_that_reads_as_one_run(tmp_path, monkeypatch):
    """A store has no append: one growing events file would be sent whole again every epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(mirror_module, "CLAIM_SETTLE_S", 0.0)
    images = make_images(tmp_path / "images")
    remote = tmp_path / "remote"
    run_dir = train_run(load_config(write_config(tmp_path, images, tmp_path / "runs"),
                                    ["run.tensorboard=true", f"run.remote={remote.as_uri()}"]))
    events = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 3  # 3 epochs, and no empty file after the last
    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("val_loss")] == [1, 2, 3]
    assert [e.step for e in board.Images("reconstructions")] == [1, 2, 3]
    assert [m["val_loss"] for m in metrics(run_dir)] == pytest.approx([e.value for e in board.Scalars("val_loss")])
    for path in events:
        assert (remote / run_dir.name / "tensorboard" / path.name).read_bytes() == path.read_bytes()


def test_a_download_cut_short_is_neither_a_run_nor_in_the_way(tmp_path, bucket, monkeypatch):
    url, options = bucket
    monkeypatch.setattr(mirror_module, "CLAIM_SETTLE_S", 0.0)
    images = make_images(tmp_path / "images")
    config = load_config(write_config(tmp_path, images, tmp_path / "runs"),
                         [*remote_overrides(url, options), "train.epochs=1"])
    stop_at_step(monkeypatch, 2)
    first = train_run(config)
    shutil.rmtree(tmp_path / "runs")

    fs, _ = open_remote(url, options)
    get = fs.get_file
    calls = []

    def dying_get(source, target, **kw):  # the pod dies in the middle of the download
        calls.append(source)
        if len(calls) == 3:
            raise ConnectionError("connection reset by peer")
        return get(source, target, **kw)

    monkeypatch.setattr(fs, "get_file", dying_get)
    with pytest.raises(VaelabError, match="cannot download") as error:
        find_resumable(config)
    assert error.value.exit_status == 75  # try again later
    assert not (tmp_path / "runs" / first.name).exists()
    monkeypatch.undo()
    # A download SIGKILLed midway leaves its hidden partial folder, which holds a run.json and config.yaml.
    partial = tmp_path / "runs" / f".{first.name}.download"
    partial.mkdir(parents=True)
    for name in ("run.json", "config.yaml"):
        fs.get_file(f"{open_remote(url, options)[1]}/{first.name}/{name}", str(partial / name))
    import vaelab.files

    synced = []
    fsync_file = vaelab.files.fsync_file
    monkeypatch.setattr(vaelab.files, "fsync_file", lambda path: (synced.append(path.name), fsync_file(path)))
    assert find_resumable(config) == tmp_path / "runs" / first.name  # the next attempt fetches it whole
    assert not partial.exists()
    # Durable, as the run's own writes are: a power cut after the download leaves no emptied run.json.
    assert {".run.json.tmp", ".last.pt.tmp"} <= {name.rsplit("-", 1)[0] for name in synced}
    assert (tmp_path / "runs" / first.name / "checkpoints" / "last.pt").is_file()


def test_a_pod_without_disk_that_is_sigkilled_resumes_from_s3_exactly(tmp_path, monkeypatch, bucket, reference):
    """The hard case: no SIGTERM, so no final sync. The copy on S3 is as of the last sync (a checkpoint
    or more behind) and says running; the new pod waits out its heartbeat, fetches it, and the run still
    ends bitwise equal to one that was never killed."""
    url, options = bucket
    _, reference_dir = reference
    images = make_images(tmp_path / "images")
    config = load_config(write_config(tmp_path, images, tmp_path / "runs"), remote_overrides(url, options))
    config_path = tmp_path / "remote.yaml"
    config_path.write_text(config.to_yaml())
    killed = drive(tmp_path, config_path, "new", die="kill:8")  # SIGKILL mid-epoch 2
    assert killed.returncode == -9, killed.stderr
    on_s3 = remote_files(url, options)
    (name,) = {k.split("/", 1)[0] for k in on_s3}
    assert json.loads(on_s3[f"{name}/run.json"])["status"] == "running"

    shutil.rmtree(tmp_path / "runs")  # the pod is gone, and its disk with it
    monkeypatch.setattr(mirror_module, "ALIVE_WITHIN_S", 1.0)  # instead of 3 minutes
    resumed = train_run(load_config(config_path), resume="auto")
    assert resumed == tmp_path / "runs" / name
    assert "resumed at epoch" in (resumed / "log.txt").read_text()
    assert [UNTIMED(r) for r in metrics(resumed)] == [UNTIMED(r) for r in metrics(reference_dir)]
    for checkpoint in ("last.pt", "best.pt", "last-epoch.pt"):
        ours, theirs = weights(resumed, checkpoint), weights(reference_dir, checkpoint)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), checkpoint


def test_the_store_client_does_not_change_the_run_config(tmp_path, bucket, monkeypatch):
    """botocore rewrites a retries dict in place; the config would then differ from the user's
    file, and --resume auto would not find the run again."""
    url, options = bucket
    monkeypatch.setattr(mirror_module, "CLAIM_SETTLE_S", 0.0)
    options = {"endpoint_url": options["endpoint_url"], "config_kwargs": {"retries": {"max_attempts": 2}}}
    config = load_config(write_config(tmp_path, make_images(tmp_path / "images"), tmp_path / "runs"),
                         [*remote_overrides(url, options), "train.epochs=1"])
    before = config.to_yaml()
    run_dir = train_run(config)
    assert config.to_yaml() == before == (run_dir / "config.yaml").read_text()
