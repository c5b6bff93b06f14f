"""`vaelab compare --threshold KEY=VALUE`: the first epoch and wall time at which each run's metric
crosses a value, and by how much the first run to cross it leads the others."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from vaelab.errors import VaelabError
from vaelab.experiments import stats

if TYPE_CHECKING:
    from vaelab.experiments.compare import RunRecord


@dataclass(frozen=True)
class Threshold:
    key: str
    value: float
    direction: str  # "<=" or ">="


_THRESHOLD = re.compile(r"^\s*(?P<key>[^<>=\s]+)\s*(?P<op><=|>=|=)\s*(?P<value>\S+)\s*$")


def parse_threshold(text: str) -> Threshold:
    """`val_recon=1e5` -> crossing means <= for losses, >= for PSNR-like keys (see
    `stats.higher_is_better`); `KEY<=VALUE` or `KEY>=VALUE` states the direction explicitly."""
    match = _THRESHOLD.match(text)
    if not match:
        raise VaelabError(f"--threshold {text!r}: expected KEY=VALUE, e.g. --threshold val_recon=1e5")
    try:
        value = float(match["value"])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise VaelabError(f"--threshold {text!r}: {match['value']!r} is not a finite number, e.g. 1e5 or 28.5")
    op = match["op"]
    if op == "=":
        op = ">=" if stats.higher_is_better(match["key"]) else "<="
    return Threshold(match["key"], value, op)


def threshold_results(records: Sequence[RunRecord], threshold: Threshold) -> tuple[list[Optional[dict]], dict]:
    """Per run {"epoch", "time_s", "ahead"} (or None: never crosses) and a summary naming the best."""
    crossings = [stats.first_crossing(r.points(threshold.key), threshold.value, threshold.direction)
                 for r in records]
    best, leads = stats.ahead(crossings)
    per_run: list[Optional[dict]] = []
    for crossing, lead in zip(crossings, leads):
        if crossing is None:
            per_run.append(None)
            continue
        if lead is not None:
            lead = {"of": str(records[lead["of"]].folder), "epochs": lead["epochs"], "minutes": lead["minutes"]}
        per_run.append({**crossing, "ahead": lead})
    summary = {"key": threshold.key, "value": threshold.value, "direction": threshold.direction,
               "best_run": str(records[best].folder) if best is not None else None,
               "never_crossed": [str(r.folder) for r, c in zip(records, crossings) if c is None]}
    return per_run, summary
