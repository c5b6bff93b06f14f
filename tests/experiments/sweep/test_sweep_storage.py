"""`vaelab sweep --storage/--worker/--search`: a sweep's job queue in Optuna's RDB storage.

The PostgreSQL test starts a throwaway server of Debian's package on 127.0.0.1 (as the
postgres user when the tests run as root: the server refuses root), runs two worker processes
against one plan, SIGKILLs one of them in the middle of a job, and checks that the other
retries the lost job after the heartbeat grace period and that every job finished exactly
once. It fails when the server is not installed (CI installs it with .ci/install-postgres.sh);
VAELAB_SKIP_POSTGRES=1 skips it. The search and bad-input tests use SQLite.

Runs are tiny: 16 px images from `photo_folder`, a 2-layer model, 2 epochs of 3 batches.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from test_sweep import write_base

from vaelab.cli import main
from vaelab.errors import VaelabError
from vaelab.experiments.sweep import storage as sweep_storage
from vaelab.experiments.sweep.database import Storage
from vaelab.experiments.sweep.plan import load_plan
from vaelab.experiments.sweep.storage import storage_command
from vaelab.files import read_json


def write_plan(folder: Path, body: str) -> Path:
    path = folder / "plan.yaml"
    path.write_text(f"baseline: base.yaml\nroot: {folder / 'sweep'}\n" + textwrap.dedent(body))
    return path


@pytest.fixture
def base(tmp_path, photo_folder) -> Path:
    return write_base(tmp_path, photo_folder)


def finished_runs(root: Path) -> Counter:
    """Run folders whose run.json says finished, per pair (the folder name without its time)."""
    names = [re.sub(r"^\d{4}-\d\d-\d\d_\d\dh\d\dm\d\ds_", "", p.name) for p in root.iterdir()
             if (read_json(p / "run.json") or {}).get("status") == "finished"]
    return Counter(names)


def load_study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=Storage(url, 60).rdb)


# --------------------------------------------------------------------------------------------
# a throwaway PostgreSQL server
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres_url():
    if os.environ.get("VAELAB_SKIP_POSTGRES") == "1":
        pytest.skip("VAELAB_SKIP_POSTGRES=1")
    servers = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not servers:
        pytest.fail("no PostgreSQL server under /usr/lib/postgresql/*/bin; run `bash .ci/install-postgres.sh` "
                    "(or set VAELAB_SKIP_POSTGRES=1 to skip this test)")
    bindir = servers[-1].parent
    # Not under tmp_path: its root-only parent folders would shut out the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="vaelab-postgres-"))
    as_user = {}
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    server = None
    try:
        subprocess.run([bindir / "initdb", "-D", folder / "data", "-U", "postgres", "--auth=trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, **as_user)
        port = free_port()
        log = open(folder / "server.log", "w")
        server = subprocess.Popen([bindir / "postgres", "-D", folder / "data", "-k", folder, "-h", "127.0.0.1",
                                   "-p", str(port), "-c", "fsync=off"], stdout=log, stderr=subprocess.STDOUT,
                                  **as_user)
        import psycopg2

        for _ in range(300):  # the server takes a moment to accept connections
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                assert server.poll() is None, (folder / "server.log").read_text()
                time.sleep(0.1)
        else:
            pytest.fail("PostgreSQL did not accept connections: " + (folder / "server.log").read_text())
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE vaelab")
        connection.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/vaelab"
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients, then stops
            server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def start_worker(tmp_path: Path, url: str, name: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "vaelab", "sweep", "plan.yaml", "--storage", url, "--worker",
                             "--grace", "4"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_two_postgres_workers_finish_every_job_once_when_one_is_killed_mid_job(tmp_path, base, postgres_url):
    write_plan(tmp_path, """\
        seeds: [0, 1]
        variants:
          - {name: sigmoid, set: {model.output_activation: sigmoid}}
        """)
    pairs = {f"{v}-s{s}" for v in ("baseline", "sigmoid") for s in (0, 1)}
    root = tmp_path / "sweep"
    workers = {name: start_worker(tmp_path, postgres_url, name) for name in ("a", "b")}
    try:
        # Kill the first worker seen training (either may start first): its run folder says
        # running, with its pid. The other must then retry the lost job.
        killed = doomed = None
        while killed is None and all(w.poll() is None for w in workers.values()):
            for run in root.iterdir() if root.is_dir() else ():
                state = read_json(run / "run.json") or {}
                doomed = next((n for n, w in workers.items() if state.get("pid") == w.pid), None)
                if state.get("status") == "running" and doomed:
                    workers[doomed].send_signal(signal.SIGKILL)
                    killed = run
                    break
            time.sleep(0.02)
        assert killed is not None, "no worker was seen training: " + \
            "".join((tmp_path / f"{n}.log").read_text()[-2000:] for n in workers)
        survivor = next(n for n in workers if n != doomed)
        assert workers[doomed].wait(timeout=60) == -signal.SIGKILL
        assert workers[survivor].wait(timeout=300) == 0, (tmp_path / f"{survivor}.log").read_text()[-3000:]
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()

    trials = load_study(postgres_url, "plan").get_trials(deepcopy=False)
    complete = Counter(t.user_attrs["job"] for t in trials if t.state.name == "COMPLETE")
    assert complete == Counter(dict.fromkeys(pairs, 1))
    lost = [t for t in trials if t.state.name == "FAIL"]
    assert len(lost) == 1  # the killed worker's job, failed as stale and retried by Optuna's callback
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == lost[0].number]
    assert [t.state.name for t in retried] == ["COMPLETE"] and retried[0].user_attrs["run"] == killed.name

    # One finished folder per pair: the lost job resumed the killed folder instead of starting anew.
    assert finished_runs(root) == Counter(dict.fromkeys(pairs, 1))
    assert len([p for p in root.iterdir() if (p / "run.json").is_file()]) == len(pairs)
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]

    # The coordinating command then trains nothing more and writes the journal.
    assert storage_command(tmp_path / "plan.yaml", postgres_url) == root
    assert finished_runs(root) == Counter(dict.fromkeys(pairs, 1))
    assert Counter(t.user_attrs["job"] for t in load_study(postgres_url, "plan").get_trials()
                   if t.state.name == "COMPLETE") == Counter(dict.fromkeys(pairs, 1))
    table = (root / "journal.md").read_text()
    for group in ("baseline", "sigmoid"):
        assert re.search(rf"^\| {group} \|.* \| 2/2 \|", table, re.M)


# --------------------------------------------------------------------------------------------
# search (SQLite)
# --------------------------------------------------------------------------------------------


SEARCH = """\
    name: tiny
    seeds: [7]
    search:
      train.lr: loguniform(1e-4, 1e-2)
      model.latent: int(2, 8)
      model.output_activation: choice(none, sigmoid)
    """


def test_search_runs_tpe_trials_in_sqlite_and_the_journal_lists_the_best(tmp_path, base, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan_path = write_plan(tmp_path, SEARCH)
    root = storage_command(plan_path, None, search=2)
    assert (root / "optuna.db").is_file()  # the default storage: SQLite in the sweep folder

    url = f"sqlite:///{root / 'optuna.db'}"
    trials = load_study(url, "tiny/search").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert 1e-4 <= trial.params["train.lr"] <= 1e-2 and 2 <= trial.params["model.latent"] <= 8
        run = root / trial.user_attrs["run"]
        config = run / "config.yaml"
        text = config.read_text()
        assert f"latent: {trial.params['model.latent']}" in text and "seed: 7" in text
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert trial.value == last["val_loss"]
    best = min(trials, key=lambda t: t.value)

    journal = (root / "journal.md").read_text()
    rows = [line for line in journal.split("Search:")[1].splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == 2 and rows[0].startswith(f"| 1 | {best.number} |")
    assert "Search" in (root / "journal.html").read_text()

    # The same N again trains nothing; one more trial trains one more run.
    monkeypatch.setattr(sweep_storage, "train_run", lambda *a, **k: pytest.fail("a finished search was rerun"))
    storage_command(plan_path, None, search=2)
    assert len(load_study(url, "tiny/search").get_trials()) == 2


def test_pairs_are_enqueued_once_and_concurrent_sqlite_claimers_take_each_once(tmp_path, base):
    plan = load_plan(write_plan(tmp_path, "seeds: [0, 1, 2]\nvariants:\n  - {name: s, set: {model.latent: 8}}\n"))
    url = f"sqlite:///{tmp_path / 'q.db'}"
    storage = Storage(url, 60)
    study = storage.study("q", "minimize")
    jobs = [sweep_storage.Job(p.key, p.config) for p in plan.pairs]
    assert sweep_storage.enqueue_pairs(storage, study, jobs) == 6
    assert sweep_storage.enqueue_pairs(storage, study, jobs) == 0  # enqueued once

    # Claimers with connections and lock files of their own, at once: SQLite ignores Optuna's
    # SELECT ... FOR UPDATE, so without the queue lock two of them can take one trial.
    claimed = []

    def claimer() -> None:
        mine = Storage(url, 60)
        theirs = mine.study("q", "minimize")
        accept = sweep_storage.job_of(plan, theirs)
        while True:
            with mine.lock("q"):
                got = sweep_storage.claim_waiting(mine, theirs, accept)
            if got is None:
                return
            claimed.append(got[1].key)

    threads = [threading.Thread(target=claimer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(job.key for job in jobs)
    assert sweep_storage.pending(study, sweep_storage.job_of(plan, study)) == 6  # all RUNNING, none WAITING


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ranges, message", [
    ("train.lr: logunifrom(1e-5, 1e-3)", r"search: train\.lr: unknown distribution 'logunifrom'; did you mean "
                                         r"'loguniform'\?"),
    ("train.lr: loguniform(0, 1e-3)", r"train\.lr: loguniform\(0, 1e-3\): a log range needs low > 0"),
    ("model.latent: int(128, 16)", r"model\.latent: int\(128, 16\): low must be below high"),
    ("model.latent: int(1.5, 16)", r"model\.latent: int\(\) takes two integers"),
    ("model.activation: choice(lrelu)", r"choice\(\) takes two or more single values"),
    ("train.lrr: uniform(0.1, 0.2)", r"search: unknown key 'train\.lrr'; did you mean 'train\.lr'\?"),
    ("train.seed: int(0, 9)", r"train\.seed is set by the sweep"),
    ("{train.lr: loguniform(1e-5, 1e-3)}", r"a comma inside \{\.\.\.\} ends the value: write one key per line"),
    ("model.latent: int(0, 8)", r"search: model\.latent=0: .*model\.latent"),
    ("train.lr: 0.001", r"train\.lr: 0\.001 is not a range; use uniform"),
])
def test_bad_search_ranges_name_the_key_and_what_to_do(tmp_path, base, ranges, message):
    plan = write_plan(tmp_path, f"seeds: [0]\nsearch:\n  {ranges}\n")
    with pytest.raises(VaelabError, match=message):
        load_plan(plan)


def test_bad_storage_is_one_line_with_exit_status_2(tmp_path, base, capsys, monkeypatch):
    write_plan(tmp_path, SEARCH)
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--storage", f"postgresql://postgres@127.0.0.1:{free_port()}/x", "--worker"],
         r"--storage postgresql://postgres@127\.0\.0\.1:\d+/x: cannot open the database \(.*\); check the host"),
        (["--storage", "not a url", "--search", "2"], r"--storage not a url: not a database URL; give e\.g\. sqlite"),
        (["--workers", "2", "--storage", "sqlite:///x.db"], r"--workers 2: with --storage, start one"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit:
            main(["sweep", "plan.yaml", *args])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert re.fullmatch(r"error: " + message + r".*\n", err), err

    plan = write_plan(tmp_path, "seeds: [0]\nvariants:\n  - {name: a, set: {train.lr: 0.01}}\n")
    with pytest.raises(VaelabError, match=r"--search needs ranges in the plan: a 'search:' section"):
        storage_command(plan, None, search=2)
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if the postgres extra were not installed
    with pytest.raises(VaelabError, match=r"--storage postgresql://u:\*\*\*@db/x: the postgresql driver psycopg2 is "
                                          r"not installed; pip install 'vaelab\[postgres\]'"):
        Storage("postgresql://u:secret@db/x", 60)
