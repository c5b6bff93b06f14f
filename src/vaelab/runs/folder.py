"""Run folders: one run's files (`RunFolder`: paths, run.json status, lock, metrics.jsonl), naming
a new folder, finding the one to resume, and its config.

A folder is named by its start time (`2026-11-26_21h33m47s`, optionally `_<run.name>`) and never
reused. `--resume auto` continues the newest unfinished run with the same config: under run.root,
or, with run.remote, one found only on the remote (`vaelab.remote.mirror`), fetched first. A
run.json that is there but unreadable is not a missing one: that run is continued with a warning
(`find_resumable`), never passed over for a new run beside it.

metrics.jsonl has one JSON object per epoch (its keys: `vaelab.train.trainer`), appended and
fsynced line by line. `read_metrics` is the package's one reader of it (and of the same format
elsewhere, as a prior's metrics.jsonl): lenient, since a killed run can leave a torn last line.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Union

from vaelab.config import Config, config_from_text, load_config
from vaelab.config.keys import RESUME_MAY_CHANGE, described, flatten, resume_may_change
from vaelab.errors import VaelabError
from vaelab.files import append_json_line, read_json, write_json, write_text
from vaelab.remote.fetch import download_run
from vaelab.remote.mirror import maybe_alive, remote_runs, trained_elsewhere

STAMP = "%Y-%m-%d_%Hh%Mm%Ss"
NOT_RESUMABLE = ("finished", "diverged")  # auto-resume would only repeat them
GRIDS = ("reconstructions", "samples")  # the image grids of each epoch, a folder each


# --------------------------------------------------------------------------------------------
# one run's folder
# --------------------------------------------------------------------------------------------


class RunFolder:
    """One run's folder (its layout: `vaelab.runs.session`): where its files are, its run.json
    status, its lock and its metrics.jsonl. Creating one writes nothing."""

    def __init__(self, path: Union[Path, str]):
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.status_file = self.path / "run.json"
        self.env_file = self.path / "env.json"
        self.metrics_file = self.path / "metrics.jsonl"
        self.log_file = self.path / "log.txt"
        self.source = self.path / "source"
        self.checkpoints = self.path / "checkpoints"
        self.tensorboard = self.path / "tensorboard"
        self.lock_file = self.path / ".lock"

    def is_run(self) -> bool:
        """Whether the folder holds a run: its config.yaml and run.json."""
        return self.config_file.is_file() and self.status_file.is_file()

    def grid_file(self, grid: str, epoch: int) -> Path:
        """An epoch's image grid; `grid` is one of GRIDS."""
        return self.path / grid / f"epoch-{epoch:04d}.png"

    # --- run.json ----------------------------------------------------------------------------

    def read_status(self) -> dict:
        """run.json's fields; empty when it is missing or damaged (`status_damage` tells which)."""
        status = read_json(self.status_file)
        return status if isinstance(status, dict) else {}

    def status_damage(self) -> Optional[str]:
        """What is wrong with run.json when it is there but unreadable (a torn or emptied file, left
        by a crash of a version that did not fsync it, or by a failing disk); None when it reads,
        and when it is missing."""
        try:
            text = self.status_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            return "is not text"
        except OSError as error:
            return f"cannot be read ({error.strerror})"
        if not text.strip():
            return "is empty"
        try:
            value = json.loads(text)
        except ValueError:
            return "is not valid JSON"
        if not isinstance(value, dict) or not isinstance(value.get("status"), str):
            return "has no status"
        return None

    def write_status(self, status: str, **fields) -> None:
        """run.json: `status`, when the run was created (kept from the file; from the folder's name
        when the file is damaged), then `fields`. The one writer of run.json. Durable (fsynced):
        without it a power cut could leave a run that --resume auto no longer finds."""
        created = self.read_status().get("created")
        if created is None:
            created = (started_at(self.path.name) if self.status_file.exists() else None) or time.time()
        write_json(self.status_file, {"status": status, "created": created, **fields}, durable=True)

    # --- the lock ----------------------------------------------------------------------------

    def lock(self):
        """An exclusive lock for as long as this process trains the run (or fits its prior); the
        OS drops it if we die. Returns the open lock file to close, or None where there are no locks."""
        try:
            import fcntl
        except ImportError:  # Windows: no lock, the user keeps one process per run
            return None
        file = open(self.lock_file, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            raise VaelabError(f"{self.path}: another vaelab process is training this run; "
                              "wait for it or stop it") from None
        return file

    def is_locked(self) -> bool:
        try:
            self.lock().close()
            return False
        except VaelabError:
            return True
        except (AttributeError, OSError):
            return False

    # --- metrics.jsonl -----------------------------------------------------------------------

    def read_metrics(self) -> tuple[list[dict], int]:
        return read_metrics(self.metrics_file)

    def append_metrics(self, record: dict) -> None:
        append_json_line(self.metrics_file, record)

    def trim_metrics(self, epochs_done: int) -> None:
        trim_metrics(self.metrics_file, epochs_done)


def started_at(folder_name: str) -> Optional[float]:
    """The start time in a run folder's name (`2026-11-26_21h33m47s[_name]`), local time; None if
    the name has none."""
    try:
        return time.mktime(time.strptime(folder_name[:20], STAMP))
    except (ValueError, OverflowError):
        return None


def epoch_record(line: str) -> Optional[dict]:
    """The epoch record on one metrics.jsonl line: a JSON object with a positive integer `epoch`.
    None for any other line (blank, or torn by a kill)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        return None
    return record


def metrics_lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise VaelabError(f"{path}: cannot read it ({error.strerror})") from None


def read_metrics(path: Path, finite: bool = True) -> tuple[list[dict], int]:
    """Epoch records sorted by epoch, and the number of lines skipped as unparsable.

    A killed run can leave a half-written last line; any line that is not a JSON object with a
    positive integer `epoch` is skipped and counted. If an epoch appears twice (a resume that
    did not trim), the later line wins, as it is the one the run continued from.
    finite: NaN and Infinity (Python's json writes them) become None, as no comparison can use them.
    """
    by_epoch: dict[int, dict] = {}
    skipped = 0
    for line in metrics_lines(path):
        if not line.strip():
            continue
        record = epoch_record(line)
        if record is None:
            skipped += 1
            continue
        if finite:
            record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)], skipped


def trim_metrics(path: Path, epochs_done: int) -> None:
    """Keep the complete lines of the first `epochs_done` epochs, as they were written: the rest is
    redone by the resume. Durable, as the appends are: the file is the run's whole history."""
    if not Path(path).is_file():
        return
    kept = [line for line in metrics_lines(path) if (record := epoch_record(line)) and record["epoch"] <= epochs_done]
    write_text(path, "".join(f"{line}\n" for line in kept), durable=True)


# --------------------------------------------------------------------------------------------
# naming, finding and resuming a run
# --------------------------------------------------------------------------------------------


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


def resume_config(run_dir: Path, given: Optional[Config]) -> Config:
    """The run's own config, with the keys a resume may change taken from `given`."""
    run = RunFolder(run_dir)
    if not run.is_run():
        raise VaelabError(f"{run_dir}: not a run folder (no config.yaml and run.json); pass a folder under run.root")
    saved = load_config(run.config_file)
    if given is None:
        return saved
    # A resume may change how long, where and how the run goes on, and what it records (the
    # execution, length and bookkeeping keys of vaelab.config.keys), never what it computes.
    old, new = flatten(saved.to_dict(), items=False), flatten(given.to_dict(), items=False)
    changed = [k for k in new if old.get(k) != new[k] and not resume_may_change(k)]
    if changed:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed[:3])
        raise VaelabError(f"{run_dir}: resuming with a different config: {shown}; a resume may change only "
                          f"{described(RESUME_MAY_CHANGE)}, "
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
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        if folder.name.startswith("."):  # a download in progress (`vaelab.remote.fetch.download_run`)
            continue
        run = RunFolder(folder)
        status = run.read_status()
        damage = None if status else run.status_damage()
        if damage is not None and same_run(run.config_file, wanted) and not run.is_locked():
            # Not the same as no run.json: this is our run, and only its status is lost. Passing it
            # over would start a new run beside it. Its checkpoints say where it stopped, so it is
            # continued (a finished one then ends at once); the resume writes a new run.json.
            found.append((started_at(folder.name) or 0.0, folder.name, folder, {"damage": damage}))
            continue
        if not status or status.get("status") in NOT_RESUMABLE or not same_run(run.config_file, wanted):
            continue
        if not run.is_locked():
            found.append((status.get("created", 0.0), folder.name, folder, status))
    if r.remote:
        here = {folder.name for folder in root.iterdir()} if root.is_dir() else set()
        for name, status, config_text in remote_runs(r.remote, r.remote_options):
            if name not in here and status.get("status") not in NOT_RESUMABLE and same_run(config_text, wanted):
                found.append((status.get("created", 0.0), name, None, status))
    for _, name, folder, status in sorted(found, key=lambda item: item[:2], reverse=True):
        if folder is not None:
            if "damage" in status:
                log(f"warning: {folder / 'run.json'} {status['damage']}, so the run's status is unknown; its config "
                    f"is this one, so --resume auto continues it from its checkpoints and writes a new run.json (to "
                    f"start a new run instead, move {folder} out of {root})")
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
