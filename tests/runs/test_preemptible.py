"""Preemptible jobs: a killed or stopped `vaelab train --resume auto`, started again with the same
command, continues the same run folder. Also the shipped job scripts (deploy/).

Exact resume (bitwise the same weights and metrics) is test_session.py's; here the point is the
command a scheduler restarts. Each job is a real subprocess; a `sitecustomize` hook, active
only in the first start, freezes training in step FREEZE_AT (after the mid-epoch checkpoint
of step 9, as `run.checkpoint_steps: 3`) and touches a marker, so the kill lands at a known point without
timing, and the library carries no test hooks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from tiny_runs import make_images, metrics, only_run, write_config

from vaelab.files import read_json

ROOT = Path(__file__).resolve().parents[2]
FREEZE_AT = 11  # epoch 2 of 3, batch 5 of 6 (steps count from 1)

HOOK = textwrap.dedent("""\
    import os, time
    from pathlib import Path
    from vaelab.train import trainer as train

    step = train.Trainer.train_step
    def frozen_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        if self.step + 1 == int(os.environ["FREEZE_AT"]):  # its weights changed, not yet counted
            Path(os.environ["FROZEN"]).touch()
            while not self.stop_requested:  # a SIGTERM sets it; a SIGKILL just ends the process
                time.sleep(0.05)
        return result
    train.Trainer.train_step = frozen_step
    """)


@pytest.fixture
def job(tmp_path):
    """(config path, runs root, env of a first start that freezes, env of a plain restart)."""
    images = make_images(tmp_path / "images", count=30)
    config = write_config(tmp_path, images, tmp_path / "runs")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    # The vaelab console script sits beside this interpreter; the job scripts call it by name.
    plain = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    plain.pop("PYTHONPATH", None)
    freezing = dict(plain, PYTHONPATH=str(hook), FREEZE_AT=str(FREEZE_AT), FROZEN=str(tmp_path / "frozen"))
    return config, tmp_path / "runs", freezing, plain


def start_frozen(command: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    """Start `command` and return once it is frozen in step FREEZE_AT."""
    with open(cwd / "first.log", "w") as log:  # the child keeps its own handle
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    frozen = Path(env["FROZEN"])
    deadline = time.monotonic() + 600  # a guard against a hang, not a measurement
    while not frozen.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never reached step {FREEZE_AT}:\n{(cwd / 'first.log').read_text()}")
        time.sleep(0.1)
    return process


def finish(command: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def assert_continued_once(root: Path, resumed_at: str) -> Path:
    """One run folder under root, finished, with each epoch's metrics exactly once."""
    run_dir = only_run(root)
    assert read_json(run_dir / "run.json")["status"] == "finished"
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2, 3]
    assert f"resumed at epoch {resumed_at}" in (run_dir / "log.txt").read_text()
    return run_dir


def test_auto_resume_after_sigkill_continues_the_same_run_folder(job, tmp_path):
    config, root, freezing, plain = job
    command = [sys.executable, "-m", "vaelab", "train", "-c", str(config), "--resume", "auto"]

    first = start_frozen(command, freezing, tmp_path)
    run_dir = only_run(root)
    assert (run_dir / "checkpoints" / "last.pt").is_file() and [r["epoch"] for r in metrics(run_dir)] == [1]
    first.send_signal(signal.SIGKILL)  # what a preempted machine or an OOM kill does: no chance to save
    assert first.wait() == -signal.SIGKILL
    assert read_json(run_dir / "run.json")["status"] == "running"

    again = finish(command, plain, tmp_path)  # the same command, as a restarted pod runs it
    assert f"run folder: {run_dir}" in again.stdout
    assert assert_continued_once(root, "2, batch 3 (step 9)") == run_dir  # from the step-9 checkpoint


def job_script() -> str:
    """The container script of deploy/k8s-job.yaml's Job."""
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s-job.yaml").read_text()) if d]
    (job,) = [d for d in documents if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"] and "--resume auto" in container["args"][0]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    return container["args"][0]


def test_k8s_job_script_saves_on_sigterm_and_fails_the_pod_so_the_job_retries(job, tmp_path):
    config, root, freezing, plain = job
    command = ["/bin/sh", "-c", job_script()]
    env = {"VAELAB_JOB_CONFIG": str(config)}

    first = start_frozen(command, dict(freezing, **env), tmp_path)
    first.send_signal(signal.SIGTERM)  # the kubelet's signal to PID 1 on eviction or preemption
    assert first.wait(timeout=600) == 143  # not 0: a pod that succeeded would end the Job
    run_dir = only_run(root)
    assert read_json(run_dir / "run.json")["status"] == "interrupted"
    assert read_json(run_dir / "run.json")["step"] == FREEZE_AT  # the frozen step was finished and saved

    finish(command, dict(plain, **env), tmp_path)  # the Job's next pod
    assert assert_continued_once(root, f"2, batch 5 (step {FREEZE_AT})") == run_dir


@pytest.mark.skipif(shutil.which("bash") is None, reason="the Slurm script is a bash script")
def test_slurm_script_saves_on_usr1_and_requeues_itself(job, tmp_path):
    config, root, freezing, plain = job
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    (fake / "scontrol").chmod(0o755)
    env = {"VAELAB_CONFIG": str(config), "SLURM_JOB_ID": "1234", "SLURM_ARRAY_TASK_ID": "2",
           "PATH": f"{fake}{os.pathsep}{plain['PATH']}"}
    command = ["bash", str(ROOT / "deploy" / "slurm-array.sh")]

    first = start_frozen(command, dict(freezing, **env), tmp_path)
    first.send_signal(signal.SIGUSR1)  # --signal=B:USR1@300: the time limit is near
    assert first.wait(timeout=600) == 143  # vaelab's own status after the SIGTERM the script sent
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 1234\n"
    run_dir = only_run(root)
    assert read_json(run_dir / "run.json")["status"] == "interrupted"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"] == 2  # the task id

    finish(command, dict(plain, **env), tmp_path)  # the requeued task
    assert assert_continued_once(root, f"2, batch 5 (step {FREEZE_AT})") == run_dir
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 1234\n"  # finished: no second requeue
