"""What a sweep has recorded: which run folder holds each job (a (variant, seed) pair or a search
trial), and sweep.json, the local sweep's index of pairs to run folders.

The run folders are the source of truth and sweep.json is their index: each pair is matched to
the run folders under the sweep folder whose config is the pair's, ignoring what a resume may
change (train.epochs, run.*, ...). So a sweep killed at any moment, even before sweep.json was
written, is read correctly: a finished pair is skipped, an unfinished one is resumed in its own
folder, a diverged one is final, a locked one is being trained elsewhere (`pair_state`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vaelab.config import Config, load_config
from vaelab.config.keys import flatten, resume_may_change
from vaelab.errors import VaelabError
from vaelab.experiments.sweep.plan import Pair, Plan
from vaelab.files import read_json, write_json
from vaelab.runs.folder import RunFolder, identity


def match_key(config: Config) -> str:
    """Which pair a run folder belongs to: its config without what a resume may change."""
    values = flatten(identity(config), items=False)
    return repr(sorted((k, repr(v)) for k, v in values.items() if not resume_may_change(k)))


@dataclass
class Found:
    folder: Path
    status: str
    epoch: int
    created: float


def scan_runs(folder: Path) -> dict[str, list[Found]]:
    """Run folders under the sweep folder, by `match_key`."""
    found: dict[str, list[Found]] = {}
    if not folder.is_dir():
        return found
    for child in map(RunFolder, sorted(folder.iterdir())):
        state = child.read_status()
        if not state or not child.config_file.is_file():
            continue
        try:
            key = match_key(load_config(child.config_file))
        except VaelabError:
            continue  # a damaged or foreign folder: not one of ours
        found.setdefault(key, []).append(
            Found(child.path, str(state.get("status")), int(state.get("epoch") or 0), float(state.get("created") or 0)))
    return found


def pair_state(pair: Pair, candidates: list[Found], recorded: Optional[str]) -> tuple[str, Optional[Found]]:
    """(what to do, which folder): finished, diverged, busy, resume or new."""
    def pick(runs: list[Found]) -> Found:  # the folder sweep.json names, else the newest
        return next((r for r in runs if r.folder.name == recorded), max(runs, key=lambda r: (r.created, r.folder.name)))

    planned = pair.config.train.epochs
    done = [r for r in candidates if r.status == "finished" and r.epoch >= planned]
    if done:
        return "finished", pick(done)
    diverged = [r for r in candidates if r.status == "diverged"]
    if diverged:
        return "diverged", pick(diverged)
    busy = [r for r in candidates if RunFolder(r.folder).is_locked()]
    if busy:
        return "busy", busy[0]
    if candidates:  # killed, interrupted, failed, or finished with fewer epochs than planned now
        return "resume", pick(candidates)
    return "new", None


class SweepState:
    """sweep.json: the index of pairs to run folders, rewritten atomically on every change."""

    def __init__(self, plan: Plan):
        self.plan, self.path = plan, plan.folder / "sweep.json"
        old = read_json(self.path) or {}
        self.pairs: dict[str, dict] = old.get("pairs") if isinstance(old.get("pairs"), dict) else {}

    def recorded(self, pair: Pair) -> Optional[str]:
        return (self.pairs.get(pair.key) or {}).get("run")

    def update(self, pair: Pair, status: str, found: Optional[Found], error: Optional[str] = None) -> None:
        self.pairs[pair.key] = {"variant": pair.variant.name, "seed": pair.seed,
                                "run": found.folder.name if found else self.recorded(pair), "status": status,
                                "epoch": found.epoch if found else None, "epochs": pair.config.train.epochs,
                                "error": error}
        self.save()

    def save(self) -> None:
        self.plan.folder.mkdir(parents=True, exist_ok=True)
        ordered = {p.key: self.pairs[p.key] for p in self.plan.pairs if p.key in self.pairs}
        write_json(self.path, {"name": self.plan.name, "plan": str(self.plan.path),
                               "baseline": str(self.plan.baseline), "updated": time.time(), "pairs": ordered})


def pair_states(plan: Plan, state: SweepState) -> dict[str, tuple[str, Optional[Found]]]:
    """Every pair's (action, folder) now, from one scan of the sweep folder."""
    runs = scan_runs(plan.folder)
    return {p.key: pair_state(p, runs.get(match_key(p.config), []), state.recorded(p)) for p in plan.pairs}


def survey(plan: Plan, state: SweepState) -> dict[str, tuple[str, Optional[Found]]]:
    """Every pair's state now, recorded in sweep.json."""
    result = pair_states(plan, state)
    for pair in plan.pairs:
        action, found = result[pair.key]
        status = {"new": "pending", "resume": found.status if found else "pending"}.get(action, action)
        old_error = (state.pairs.get(pair.key) or {}).get("error") if status == "failed" else None
        state.update(pair, status, found, old_error)
    return result
