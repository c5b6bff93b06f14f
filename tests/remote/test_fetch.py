"""vaelab.remote.fetch: the commands that read runs take their URL on object storage (moto's S3 server)."""

from __future__ import annotations

import json

import pytest
import s3fs
from PIL import Image
from test_mirror import remote_overrides
from tiny_runs import make_images, write_config

from vaelab.cli import main
from vaelab.config import load_config
from vaelab.remote import mirror
from vaelab.remote.fetch import FETCHED, fetch_run
from vaelab.remote.mirror import open_remote
from vaelab.runs.session import train_run


def vaelab(args: list[str]) -> int:
    """The command's exit status."""
    try:
        main(args)
    except SystemExit as exit:
        return exit.code or 0
    return 0


@pytest.fixture
def run_on_s3(tmp_path, bucket, monkeypatch):
    """A finished run copied to S3 by run.remote; the commands find the store through AWS_ENDPOINT_URL."""
    url, options = bucket
    monkeypatch.setattr(mirror, "CLAIM_SETTLE_S", 0.0)
    images = make_images(tmp_path / "images")
    run_dir = train_run(load_config(write_config(tmp_path, images, tmp_path / "runs"), remote_overrides(url, options)))
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()  # a new process would read the environment afresh
    return f"{url}/{run_dir.name}", run_dir


def test_compare_and_sample_read_a_run_on_s3(run_on_s3, tmp_path, capsys, isolated_cache):
    url, local = run_on_s3
    assert vaelab(["compare", url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (run,) = result["runs"]
    final = json.loads((local / "metrics.jsonl").read_text().splitlines()[-1])
    assert run["epochs"] == 3 and run["final_train_loss"] == pytest.approx(final["train_loss"])

    copy = isolated_cache / "remote-runs" / url.replace("://", "/", 1)
    assert (copy / "metrics.jsonl").read_bytes() == (local / "metrics.jsonl").read_bytes()
    assert not (copy / "checkpoints").exists()  # compare reads no checkpoint, so none was fetched

    assert vaelab(["sample", url, "-n", "4", "--out", str(tmp_path / "samples.png")]) == 0
    assert Image.open(tmp_path / "samples.png").size[0] > 0
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["best.pt"]  # the one it loaded
    assert (copy / "checkpoints" / "best.pt").read_bytes() == (local / "checkpoints" / "best.pt").read_bytes()


def test_a_second_fetch_downloads_only_what_changed(run_on_s3, tmp_path, monkeypatch):
    url, local = run_on_s3
    copy = fetch_run(url, tmp_path / "cache")
    fs, path = open_remote(url)
    fetched = []
    get = fs.get_file
    monkeypatch.setattr(fs, "get_file", lambda source, target, **kw: (fetched.append(source), get(source, target, **kw)))
    assert fetch_run(url, tmp_path / "cache") == copy and fetched == []

    fs.pipe_file(f"{path}/log.txt", b"a line the run added\n")  # same remote, newer content
    fs.rm_file(f"{path}/samples/epoch-0001.png")
    fetch_run(url, tmp_path / "cache")
    assert [f.rsplit("/", 1)[1] for f in fetched] == ["log.txt"]
    assert (copy / "log.txt").read_text() == "a line the run added\n"
    assert not (copy / "samples" / "epoch-0001.png").exists()
    assert json.loads((copy / FETCHED).read_text())["url"] == url


def test_a_url_with_no_run_is_one_line(run_on_s3, capsys):
    url, _ = run_on_s3
    assert vaelab(["compare", url + "-nothing"]) == 2
    message = capsys.readouterr().err.strip()
    assert message == f"error: {url}-nothing: no run folder there; check the URL (vaelab lists nothing under it)"


def test_a_store_that_is_down_is_try_later(tmp_path, capsys, monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()  # a new process would read the environment afresh
    assert vaelab(["report", "s3://bucket/runs/2026-01-01_00h00m00s"]) == 75
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: s3://bucket/runs/2026-01-01_00h00m00s: cannot list it (Could not connect")
    assert "\n" not in message


def test_compare_takes_the_url_of_a_folder_of_runs(run_on_s3, tmp_path, capsys, monkeypatch):
    url, first = run_on_s3
    folder = url.rsplit("/", 1)[0]
    config = load_config(first / "config.yaml", ["train.seed=2", "run.name=seed2", f"run.root={tmp_path / 'more'}"])
    second = train_run(config)
    assert vaelab(["compare", folder + "/", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]
    assert sorted(r["name"] for r in runs) == sorted([first.name, second.name])


def test_a_key_that_leads_outside_the_copy_is_refused(bucket, tmp_path, capsys, monkeypatch):
    # Keys are plain strings on S3: whoever can write to the bucket could aim a fetch anywhere.
    url, options = bucket
    fs, root = open_remote(url, options)
    fs.pipe_file(f"{root}/A/run.json", b'{"status": "finished"}')
    fs.pipe_file(f"{root}/A/config.yaml", b"{}")
    # From the copy's grids/ folder, seven levels up is the tests' temporary folder, out of the cache.
    fs.pipe_file(f"{root}/A/grids/{'../' * 7}escaped.txt", b"written outside")
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.chdir(tmp_path)
    assert vaelab(["compare", f"{url}/A"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: {url}/A: the object key 'grids/{'../' * 7}escaped.txt' leads outside "
                              "the local folder ") and "\n" not in message
    assert not list(tmp_path.parent.rglob("escaped.txt"))  # nothing written, there or anywhere else
