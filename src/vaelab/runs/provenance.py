"""What a run folder records about where it came from: the code, its git state, the machine.

Kept apart from `vaelab.runs.session` so that the training flow there reads without these details.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import vaelab
from vaelab.files import read_json, write_json, write_text
from vaelab.model import AnyModel, count_parameters
from vaelab.train.device import precision_name
from vaelab.train.trainer import Trainer


def snapshot_source(folder: Path) -> None:
    """Copy the vaelab package as it runs, plus its git commit and uncommitted diff."""
    package = Path(vaelab.__file__).parent
    shutil.copytree(package, folder / "vaelab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    state = git_state(package)
    diff = state.pop("diff", "")
    write_json(folder / "git.json", state)
    if diff:
        write_text(folder / "git.diff", diff)


def git_state(folder: Path, timeout: float = 10.0) -> dict:
    """Commit, status and diff of the repository holding `folder`; a note when there is none."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git": "not in a git repository with commits"}
        status = git("status", "--porcelain", "--", ".")
        diff = git("diff", "HEAD", "--", ".")
    except (OSError, subprocess.SubprocessError) as error:  # no git, or it hung
        return {"git": f"unavailable ({type(error).__name__})"}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()),
            "status": status.stdout.splitlines()[:200], "diff": diff.stdout[:10_000_000]}


def environment(device: torch.device, model: AnyModel, trainer: Trainer) -> dict:
    import pydantic

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "vaelab": vaelab.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__,
        "pydantic": pydantic.__version__, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "precision": precision_name(trainer.amp), "amp": trainer.config.train.amp, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "hostname": platform.node(), "argv": sys.argv,
        "parameters": count_parameters(model),
    }


def record_environment(env_file: Path, device: torch.device, model: AnyModel, trainer: Trainer) -> None:
    """env.json: the environment of the run's start; a resume adds where and in which precision it
    went on under `resumes`, since that may differ (another machine, or train.amp auto on a GPU
    without bf16), and the numbers after it were computed there."""
    env = read_json(env_file)
    current = environment(device, model, trainer)
    if not isinstance(env, dict):  # a fresh run, or one killed before its env.json was written
        write_json(env_file, current)
        return
    keys = ("device", "device_name", "precision", "amp", "hostname", "torch", "cuda")
    resume = {"epoch": trainer.epoch, **{k: current[k] for k in keys}}
    env["resumes"] = [*env.get("resumes", []), resume]
    write_json(env_file, env)


def rss_mb() -> Optional[float]:
    """Resident memory of this process now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as file:
            return round(int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
    except (ImportError, OSError):
        return None
