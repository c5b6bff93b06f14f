"""Run folders: naming a new one, finding the one to resume, its config, its lock.

A folder is named by its start time (`2026-11-26_21h33m47s`, optionally `_<run.name>`) and never
reused. `--resume auto` continues the newest unfinished run with the same config: under run.root,
or, with run.remote, one found only on the remote (`vaelab.remote.mirror`), fetched first.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Union

from vaelab.config import Config, config_from_text, load_config
from vaelab.errors import VaelabError
from vaelab.files import read_json
from vaelab.remote.fetch import download_run
from vaelab.remote.mirror import maybe_alive, remote_runs, trained_elsewhere

STAMP = "%Y-%m-%d_%Hh%Mm%Ss"
NOT_RESUMABLE = ("finished", "diverged")  # auto-resume would only repeat them
# Keys a resume may change: they decide how long and where, not what is computed.
RESUME_MAY_CHANGE = ("train.epochs", "train.device", "train.amp", "train.channels_last", "train.compile",
                     "data.workers", "data.prefetch", "data.cache", "data.cache_dir", "run.")




def create_run_dir(root: Path, name: Optional[str], now: Optional[float] = None,
                   claim: Callable[[str], bool] = lambda folder_name: True) -> Path:
    """A new folder named by the start time; a counter is appended if that name is taken here,
    or refused by `claim` (the name on run.remote: `vaelab.remote.mirror.claim_name`)."""
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise VaelabError(f"run.name: {name!r} must be a plain name of letters, digits, '.', '_' and '-'")
    base = time.strftime(STAMP, time.localtime(now)) + (f"_{name}" if name else "")
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            folder = Path(root) / (base if n == 1 else f"{base}-{n}")
            try:
                folder.mkdir()  # atomic: two runs started in the same second get different folders
            except FileExistsError:
                continue
            if claim(folder.name):
                return folder
            folder.rmdir()
    except OSError as error:
        raise VaelabError(f"run.root: cannot create a run folder in {root} ({error.strerror}); choose another run.root") from None
    raise AssertionError("unreachable")


def identity(config: Config) -> dict:
    """What makes two configs 'the same run' for --resume auto: everything but run.name."""
    values = config.to_dict()
    values["run"].pop("name", None)
    return values


def flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_config(run_dir: Path, given: Optional[Config]) -> Config:
    """The run's own config, with the keys a resume may change taken from `given`."""
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "run.json").is_file():
        raise VaelabError(f"{run_dir}: not a run folder (no config.yaml and run.json); pass a folder under run.root")
    saved = load_config(run_dir / "config.yaml")
    if given is None:
        return saved
    old, new = flat(saved.to_dict()), flat(given.to_dict())
    changed = [k for k in new if old.get(k) != new[k] and not k.startswith(RESUME_MAY_CHANGE)]
    if changed:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed[:3])
        raise VaelabError(f"{run_dir}: resuming with a different config: {shown}; a resume may change only "
                          f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUME_MAY_CHANGE)}, "
                          "so drop that setting or start a new run")
    given = given.model_copy(deep=True)
    given.run.root, given.run.name = saved.run.root, saved.run.name
    return given


def find_resumable(config: Config, log=lambda message: print(message, file=sys.stderr)) -> Optional[Path]:
    """The newest unfinished run with the same config that no process is training: under
    run.root, or on run.remote (then fetched into run.root) when the newest is there only.
    A remote run that says running may be trained on another machine: see `trained_elsewhere`."""
    root, wanted, r = Path(config.run.root), identity(config), config.run
    found = []
    for folder in root.iterdir() if root.is_dir() else ():
        if folder.name.startswith("."):  # a download in progress (`vaelab.remote.fetch.download_run`)
            continue
        status = read_json(folder / "run.json")
        if not status or status.get("status") in NOT_RESUMABLE or not same_run(folder / "config.yaml", wanted):
            continue
        if not is_locked(folder):
            found.append((status.get("created", 0.0), folder.name, folder, status))
    if r.remote:
        here = {folder.name for folder in root.iterdir()} if root.is_dir() else set()
        for name, status, config_text in remote_runs(r.remote, r.remote_options):
            if name not in here and status.get("status") not in NOT_RESUMABLE and same_run(config_text, wanted):
                found.append((status.get("created", 0.0), name, None, status))
    for _, name, folder, status in sorted(found, key=lambda item: item[:2], reverse=True):
        if folder is not None:
            return folder
        if not (maybe_alive(status) and trained_elsewhere(r.remote, r.remote_options, name, status, log)):
            return download_run(r.remote, r.remote_options, name, root)
    return None


def same_run(config_source: Union[Path, str], wanted: dict) -> bool:
    """Whether a saved config (a config.yaml path, or its text) is the run `wanted` describes."""
    try:
        if isinstance(config_source, Path):
            return identity(load_config(config_source)) == wanted
        return identity(config_from_text(config_source, "a run's config.yaml on run.remote")) == wanted
    except VaelabError:
        return False


def lock_run(run_dir: Path):
    """An exclusive lock for as long as this process trains the run; the OS drops it if we die."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, the user keeps one process per run
        return None
    file = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.close()
        raise VaelabError(f"{run_dir}: another vaelab process is training this run; wait for it or stop it") from None
    return file


def is_locked(run_dir: Path) -> bool:
    try:
        lock_run(run_dir).close()
        return False
    except VaelabError:
        return True
    except (AttributeError, OSError):
        return False
