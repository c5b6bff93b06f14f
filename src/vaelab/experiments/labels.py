"""Labels for runs: how each run's config differs from the others' (`train.lr=1e-4`).

Configs are flattened to dotted keys; keys that never identify an experiment (execution,
bookkeeping, the seed, the planned length: `vaelab.config.keys`) are ignored, so runs that differ
only by seed, device or precision share a label and form a group.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vaelab.config import Config
from vaelab.config.keys import flatten
from vaelab.config.keys import identifying as identifying_key
from vaelab.experiments.stats import format_number

if TYPE_CHECKING:
    from vaelab.experiments.compare import RunRecord

# Which keys never identify an experiment (execution, bookkeeping, the seed and the planned
# length) is declared on the config fields: `vaelab.config.keys`.
# Resolved configs hold absolute paths; the same data set checked out in two places must not
# count as a difference, so these are compared (and shown) by their last two path parts.
PATH_KEYS = frozenset({"data.images", "data.metadata"})
UNSET = "<unset>"  # a key that a run's config lacks (e.g. written by an older vaelab)
BASELINE = "baseline"


# --------------------------------------------------------------------------------------------


def with_defaults(config: dict) -> dict:
    """The config with every key this vaelab knows, so that a run written before a key existed
    (model.kind, train.ema) compares equal to one that has the key at its default. A config that
    no longer validates is compared as it is."""
    try:
        return Config.model_validate(config).to_dict()
    except Exception:  # noqa: BLE001 - any older or damaged config: compare what it says
        return config


def identifying(config: dict) -> dict[str, Any]:
    """The flattened keys that can tell experiments apart, path keys shortened."""
    flat = {}
    for key, value in flatten(with_defaults(config)).items():
        if not identifying_key(key):
            continue
        if key in PATH_KEYS and isinstance(value, str):
            value = "/".join(Path(value).parts[-2:])
        flat[key] = value
    return flat


def canonical(value: Any) -> str:
    """Exact, type-insensitive comparison form: 1 and 1.0 are equal, 1e-4 and 1.0001e-4 are not."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return json.dumps(value, sort_keys=True)


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def label_runs(records: Sequence[RunRecord]) -> tuple[list[str], list[str]]:
    """A label per run and the config keys that differ between runs.

    A run's label lists the differing keys where it does not have the most common value,
    e.g. `train.lr=1e-4`; a run with the most common value everywhere is `baseline`. "Most
    common" counts each distinct config once, so giving a variant more seeds does not make it
    the baseline; ties go to the run given first. Runs that differ only in ignored keys
    (seed, run.*, caches) get the same label and form a group of replicates.
    """
    idents = [identifying(r.config) for r in records]
    keys = list(dict.fromkeys(key for ident in idents for key in ident))  # config order
    forms = [{key: canonical(ident[key]) if key in ident else UNSET for key in keys} for ident in idents]
    differing = [key for key in keys if len({form[key] for form in forms}) > 1]
    distinct = list(dict.fromkeys(tuple(form[key] for key in differing) for form in forms))
    mode = {key: Counter(config[i] for config in distinct).most_common(1)[0][0]
            for i, key in enumerate(differing)}
    if "model.kind" in differing:  # the other model keys' baseline is that of the baseline's family
        kind = differing.index("model.kind")
        family = [config for config in distinct if config[kind] == mode["model.kind"]]
        mode.update({key: Counter(config[i] for config in family).most_common(1)[0][0]
                     for i, key in enumerate(differing) if key.startswith("model.") and key != "model.kind"})
    labels = []
    for record, ident, form in zip(records, idents, forms):
        other_family = "model.kind" in differing and form["model.kind"] != mode["model.kind"]
        items = [(key, format_value(ident[key]) if key in ident else "unset")
                 for key in differing if form[key] != mode[key]
                 # a run of another model family: its kind says it; keys the other family lacks add nothing
                 and not (other_family and key.startswith("model.") and key != "model.kind"
                          and UNSET in (form[key], mode[key]))]
        items = merge_list_items(items, record.config)
        labels.append(", ".join(f"{key}={value}" for key, value in items) or BASELINE)
    return labels, differing


_LIST_ITEM = re.compile(r"^(?P<list>.+?)\.(?P<index>\d+)\.(?P<field>.+)$")


def merge_list_items(items: list[tuple[str, str]], config: dict) -> list[tuple[str, str]]:
    """`model.conv.0.kernel=5, model.conv.1.kernel=5, model.conv.2.kernel=5` -> `model.conv.*.kernel=5`
    when every layer of this run has the same differing value; otherwise keep them apart."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for key, value in items:
        match = _LIST_ITEM.match(key)
        if match:
            groups.setdefault((match["list"], match["field"]), []).append((int(match["index"]), value))
    merged, done = [], set()
    for key, value in items:
        match = _LIST_ITEM.match(key)
        if not match:
            merged.append((key, value))
            continue
        group_key = (match["list"], match["field"])
        members = groups[group_key]
        length = len(lookup(config, match["list"]) or [])
        if len(members) >= 2 and sorted(i for i, _ in members) == list(range(length)) \
                and len({v for _, v in members}) == 1:
            if group_key not in done:
                merged.append((f"{group_key[0]}.*.{group_key[1]}", value))
                done.add(group_key)
        else:
            merged.append((key, value))
    return merged


def lookup(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# --------------------------------------------------------------------------------------------
# per-run table and thresholds