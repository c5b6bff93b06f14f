"""The one state machine of a sweep's jobs, used by both queues: the local one (`local`: the plan's
pairs, in this process or in worker processes) and the storage one (`storage`: jobs claimed from a
database by workers on any machine). A job is a pair of the plan (<variant>-s<seed>) or a search
trial (search-<trial>): a key and the config of its run.

What a job needs is read from its run folders, never from memory (`look`, by `records.pair_state`),
so a sweep killed at any moment, or a job given back by a lost worker, is read correctly:

    new        no run folder                       start it
    resume     an unfinished folder                resume it in that folder
    busy       a folder another process holds      not this process's to train
    finished   trained for the planned epochs      done
    diverged   the loss blew up                    done: training again would blow up again

A queue starts or resumes a job (`starting` says which) in this process with `train_here`, or in
a worker process, then reads its run folders again to see how it ended (`look`, or `ended` for a
status): finished or diverged; failed, when training raised; else the status `train_run` left in
the folder, of which interrupted (Ctrl-C, SIGTERM) and stopped (a nearly full disk) stop the
sweep (STOP_SWEEP). Each queue records the outcome its own way: sweep.json, or the job's trial.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, Protocol

from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.experiments.sweep.records import Found, match_key, pair_state, scan_runs

STOP_SWEEP = ("interrupted", "stopped")  # Ctrl-C, SIGTERM or a full disk: later pairs would fare no better


class Runnable(Protocol):
    """A job as the executor sees it: the plan's Pair, or the storage queue's Job."""

    @property
    def key(self) -> str: ...

    @property
    def config(self) -> Config: ...


def look(folder: Path, job: Runnable, recorded: Optional[str] = None) -> tuple[str, Optional[Found]]:
    """(what to do, which run folder) for the job now, from a fresh scan of the sweep folder;
    `recorded` is the folder sweep.json names, preferred where several match."""
    return pair_state(job, scan_runs(folder).get(match_key(job.config), []), recorded)


def starting(found: Optional[Found]) -> str:
    return f"resuming {found.folder.name}" if found else "starting"


def train_here(train: Callable[..., object], found: Optional[Found]) -> Optional[str]:
    """Start the job's run, or resume it in `found`, in this process: `train(resume=folder or None)`
    is the queue's call of `train_run` (with or without a progress bar). Returns what it raised, on
    one line, or None: one failed job must not stop the others."""
    try:
        train(resume=found.folder if found else None)
    except Exception as exc:  # noqa: BLE001 - a KeyboardInterrupt is not caught: it stops the sweep
        return str(exc) if isinstance(exc, VaelabError) else f"{type(exc).__name__}: {exc}"
    return None


def ended(folder: Path, job: Runnable, error: Optional[str],
          recorded: Optional[str] = None) -> tuple[str, Optional[Found]]:
    """How the job's run ended, as its run folder says after training: (status, folder). The status
    is finished or diverged; failed where training failed (`error`: what it raised, or a worker
    process's exit), unless the folder says the run was interrupted or stopped; else the folder's
    own status (interrupted, stopped, ...), or `look`'s word where there is no folder."""
    action, found = look(folder, job, recorded)
    status = found.status if action == "resume" and found else action
    if error and status not in STOP_SWEEP:
        status = "failed"
    return status, found


def say(message: str) -> None:
    """A progress line, on stderr (the journal is printed on stdout)."""
    print(message, file=sys.stderr, flush=True)
