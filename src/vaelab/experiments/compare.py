"""`vaelab compare`: read run folders, label them by their config differences, and answer the
journal's questions: who crosses a threshold first and by how much, and whether a difference
between groups of seeds is real.

A run folder only needs `config.yaml` and `metrics.jsonl` (one JSON object per epoch with
`epoch` and `time_s`); nothing else about the trainer is assumed, so runs from older versions
and runs still in progress can be compared. Where `vaelab evaluate --samples` judged a run's
samples, `--metric c2st_<prior>` and `nn_ratio_<prior>` compare them (see `sample_metrics`). The flow:

    load_runs -> label_runs -> per-run summary + thresholds -> groups + Welch tests -> plots

Labels live in `labels.py`, threshold crossings in `thresholds.py` and the terminal tables in
`compare_tables.py`. `compare_runs` builds the result (a JSON-ready dict) and `compare_command`
also prints it and writes the plots; the CLI calls the latter. `load_run` is the one reader of a
run folder: strict for compare, lenient (`lenient=True`) for the report.

images/s is only reported when metrics.jsonl has `train_images` (or `images`): the number of
training images seen in that epoch. It is then the sum over epochs divided by the final
time_s, so it includes validation and logging time: the throughput a user pays for. Without
those keys it is null rather than an estimate from step × batch_size, which overcounts
partial and skipped batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from vaelab.config.keys import changes_loss_unit
from vaelab.errors import VaelabError, did_you_mean
from vaelab.experiments import stats
from vaelab.experiments.compare_tables import print_report
from vaelab.experiments.labels import BASELINE, label_runs
from vaelab.experiments.thresholds import parse_threshold, threshold_results
from vaelab.runs.folder import read_metrics

DEFAULT_METRICS = ("val_loss", "val_recon", "val_psnr")


@dataclass
class RunRecord:
    """One run folder as compare sees it: its config as a plain dict and its epoch records."""

    folder: Path
    config: dict
    metrics: list[dict]  # one dict per epoch, sorted by epoch, non-finite numbers as None
    skipped_lines: int = 0  # unparsable lines (e.g. the last one of a killed run)
    config_text: Optional[str] = None  # config.yaml as written (the report shows it verbatim)
    problems: dict[str, str] = field(default_factory=dict)  # file -> why it could not be used (lenient reading)

    @property
    def name(self) -> str:
        return self.folder.name or str(self.folder)

    @property
    def seed(self) -> Any:
        return (self.config.get("train") or {}).get("seed")

    @property
    def last_epoch(self) -> int:
        return self.metrics[-1]["epoch"]

    def value_at(self, key: str, epoch: int) -> Optional[float]:
        for record in self.metrics:
            if record["epoch"] == epoch:
                return number(record.get(key))
        return None

    def points(self, key: str) -> list[tuple[int, Optional[float], float]]:
        """(epoch, time_s, value) for every epoch where `key` has a number."""
        return [(m["epoch"], number(m.get("time_s")), number(m.get(key)))
                for m in self.metrics if number(m.get(key)) is not None]


def number(value: Any) -> Optional[float]:
    """A finite int or float as float, anything else (None, NaN, text, bool) as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_runs(paths: Sequence[Path | str]) -> list[RunRecord]:
    """Read run folders in the given order; the same folder given twice is read once."""
    if not paths:
        raise VaelabError("compare: no run folders given; pass one or more, e.g. vaelab compare runs/*")
    records, seen = [], set()
    for given in paths:
        folder = Path(given)
        if folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        records.append(load_run(folder))
    return records


def load_run(folder: Path, lenient: bool = False) -> RunRecord:
    """A run folder's config.yaml and metrics.jsonl, with what `sample_metrics` finds added to the last epoch.

    Strict (compare): both files must be there and usable, else the error says
    what to do. Lenient (the report, which shows whatever a run has): only a folder with neither is
    an error; a file that is missing or unusable is named in `problems` with why, and the record
    holds what could be read (config {}, metrics [] when there is none).
    """
    if not folder.is_dir():
        raise VaelabError(f"{folder}: not a folder; pass run folders such as runs/2026-11-26_21h33m47s")
    missing = [name for name in ("config.yaml", "metrics.jsonl") if not (folder / name).is_file()]
    if len(missing) == 2 or (missing and not lenient):
        has_runs = any((child / "metrics.jsonl").is_file() for child in folder.iterdir() if child.is_dir())
        if has_runs:
            hint = f"it holds run folders: pass them instead, e.g. {folder}/*"
        elif missing == ["metrics.jsonl"]:
            hint = "the run has no finished epoch yet: wait for its first epoch or leave it out"
        else:
            hint = "pass a folder written by vaelab train"
        raise VaelabError(f"{folder}: no {' and no '.join(missing)}; {hint}")
    record = RunRecord(folder, {}, [])
    read_config(record, lenient)
    if "metrics.jsonl" not in missing:
        record.metrics, record.skipped_lines = read_metrics(folder / "metrics.jsonl")
    if record.skipped_lines:
        record.problems["metrics.jsonl"] = f"{record.skipped_lines} unparsable line(s) skipped"
    if not record.metrics and not lenient:
        raise VaelabError(f"{folder}: metrics.jsonl has no finished epoch yet; "
                          "wait for the first epoch or leave the run out")
    if record.metrics:
        record.metrics[-1] = {**record.metrics[-1], **sample_metrics(folder)}
    return record


def read_config(record: RunRecord, lenient: bool) -> None:
    """config.yaml into record.config_text and record.config. Lenient reading replaces bytes that
    are not UTF-8, so that the report can still show the file, and notes what is wrong in
    record.problems where strict reading raises."""
    path = record.folder / "config.yaml"
    why, advice = None, "leave the run out"
    try:
        record.config_text = path.read_text(encoding="utf-8", errors="replace" if lenient else "strict")
        config = yaml.safe_load(record.config_text)
        if isinstance(config, dict):
            record.config = config
        else:
            why = "not a config mapping"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        missing = lenient and isinstance(error, FileNotFoundError)  # strict reading checked it is there
        why = "missing" if missing else f"cannot read it ({type(error).__name__})"
        advice = "restore it from the run's source/ snapshot or leave the run out"
    if why is not None and not lenient:
        raise VaelabError(f"{path}: {why}; {advice}") from None
    if why is not None:
        record.problems[path.name] = why


def sample_metrics(folder: Path) -> dict:
    """What `vaelab evaluate --samples` measured, as metrics of the run's last epoch: c2st_<prior>
    and c2st_decoded_<prior> (C2ST accuracies, lower is better) and nn_ratio_<prior> for each prior it judged (normal,
    mixture, pixelcnn). They describe the evaluated checkpoint (the best one), so compare them at
    the final epoch (no --at-epoch)."""
    from vaelab.files import read_json

    evaluation = read_json(folder / "evaluation.json")
    judged = evaluation.get("samples") if isinstance(evaluation, dict) else None
    out = {}
    for prior, result in (judged.items() if isinstance(judged, dict) else ()):
        if isinstance(result, dict) and isinstance(result.get("c2st"), dict):
            out[f"c2st_{prior}"] = number(result["c2st"].get("accuracy"))
            decoded = result.get("c2st_decoded")
            if isinstance(decoded, dict):
                out[f"c2st_decoded_{prior}"] = number(decoded.get("accuracy"))
            out[f"nn_ratio_{prior}"] = number(result.get("nn_ratio"))
    return out


# --------------------------------------------------------------------------------------------
# one run's summary, and the keys --threshold and --metric name
# --------------------------------------------------------------------------------------------


def summarize(record: RunRecord) -> dict:
    """The table values of one run. best_val_loss is the minimum val_loss, with its epoch."""
    last = record.metrics[-1]
    val = record.points("val_loss")
    best_val = min(val, key=lambda p: p[2]) if val else None
    train = record.points("train_loss")
    time_s = number(last.get("time_s"))
    counts = [number(m.get("train_images", m.get("images"))) for m in record.metrics]
    images_per_s = None
    if time_s and all(c is not None for c in counts):
        images_per_s = sum(counts) / time_s
    return {
        "epochs": record.last_epoch,
        "time_s": time_s,
        "final_train_loss": number(last.get("train_loss")),
        "best_train_loss": min(p[2] for p in train) if train else None,
        "final_val_loss": number(last.get("val_loss")),
        "best_val_loss": best_val[2] if best_val else None,
        "best_epoch": best_val[0] if best_val else None,
        "final_val_psnr": number(last.get("val_psnr")),
        "images_per_s": images_per_s,
    }


def check_keys(keys: Sequence[str], known: set[str], flag: str) -> None:
    for key in keys:
        if key not in known:
            hint = did_you_mean(key, sorted(known)) or f"known: {', '.join(sorted(known))}"
            raise VaelabError(f"{flag} {key!r}: not a key of any run's metrics.jsonl; {hint}")


# --------------------------------------------------------------------------------------------
# groups of seeds and the tests between them
# --------------------------------------------------------------------------------------------


def group_indices(labels: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    return groups


def curve(records: Sequence[RunRecord], members: Sequence[int], metric: str) -> list[dict]:
    """Per epoch: mean and 95% CI of `metric` over the group's runs, and their mean time_s."""
    return stats.curve_stats([records[i].points(metric) for i in members])


def group_tests(records: Sequence[RunRecord], groups: dict[str, list[int]], metric: str,
                epoch: int) -> list[dict]:
    """Every group against the baseline group (else the best group) on `metric` at `epoch`."""
    values = {label: [v for v in (records[i].value_at(metric, epoch) for i in members) if v is not None]
              for label, members in groups.items()}
    hib = stats.higher_is_better(metric)
    return [{"metric": metric, "epoch": epoch, "higher_is_better": hib, **test}
            for test in stats.compare_to_reference(values, hib, BASELINE)]


# --------------------------------------------------------------------------------------------
# the whole comparison
# --------------------------------------------------------------------------------------------


def compare_runs(run_dirs: Sequence[Path | str], thresholds: Sequence[str] = (), metrics: Sequence[str] = (),
                 at_epoch: Optional[int] = None) -> dict:
    """Load the runs and compute everything `vaelab compare` shows, as a JSON-ready dict."""
    return compare_records(load_runs(run_dirs), thresholds, metrics, at_epoch)


def compare_records(records: Sequence[RunRecord], thresholds: Sequence[str] = (), metrics: Sequence[str] = (),
                    at_epoch: Optional[int] = None) -> dict:
    parsed = [parse_threshold(text) for text in thresholds]
    known = {key for r in records for m in r.metrics for key in m}
    check_keys([t.key for t in parsed], known, "--threshold")
    check_keys(list(metrics), known, "--metric")
    chosen = list(dict.fromkeys(metrics)) or [m for m in DEFAULT_METRICS if m in known] or ["train_loss"]
    notes = [f"{r.folder}: skipped {r.skipped_lines} unparsable line(s) in metrics.jsonl"
             for r in records if r.skipped_lines]

    common = min(r.last_epoch for r in records)
    epoch = common if at_epoch is None else at_epoch
    if not 1 <= epoch <= max(r.last_epoch for r in records):
        raise VaelabError(f"--at-epoch {epoch}: no run has that epoch; choose one from 1 to "
                          f"{max(r.last_epoch for r in records)} (every run reached {common})")
    if epoch > common:
        short = [r.name for r in records if r.last_epoch < epoch]
        notes.append(f"at epoch {epoch}: left out of the tests, as they stop earlier: {', '.join(short)}")

    labels, differing = label_runs(records)
    runs = [{"run": str(r.folder), "name": r.name, "label": label, "seed": r.seed, **summarize(r)}
            for r, label in zip(records, labels)]
    summaries = []
    for position, threshold in enumerate(parsed):
        per_run, summary = threshold_results(records, threshold)
        summaries.append(summary)
        for entry, result in zip(runs, per_run):
            entry.setdefault("thresholds", []).append(result)
            if position == 0:
                entry["threshold"] = None if result is None else {"epoch": result["epoch"], "time_s": result["time_s"]}
                entry["ahead"] = None if result is None else result["ahead"]
    for entry in runs:
        entry.setdefault("threshold", None)
        entry.setdefault("thresholds", [])

    groups_by_label = group_indices(labels)
    groups = []
    for label, members in groups_by_label.items():
        seeds = [records[i].seed for i in members]
        if len(set(map(repr, seeds))) < len(seeds):
            notes.append(f"group {label!r} has runs with the same seed; they are not independent samples")
        at = {}
        for metric in chosen:
            values = [v for v in (records[i].value_at(metric, epoch) for i in members) if v is not None]
            at[metric] = {**stats.mean_ci(values), "values": values}
        groups.append({"label": label, "runs": [str(records[i].folder) for i in members], "seeds": seeds,
                       "n": len(members), "at_epoch": at,
                       "curves": {metric: curve(records, members, metric) for metric in chosen}})
    tests = [test for metric in chosen for test in group_tests(records, groups_by_label, metric, epoch)]
    if len(groups) == 1:
        notes.append("all runs have the same config apart from ignored keys (seed, run.*): one group, no tests")
    elif tests and all(t["verdict"] == "not assessable" for t in tests) and all(g["n"] < 2 for g in groups):
        notes.append("one run per group (n=1): differences are shown but their significance cannot be "
                     "assessed; run each config with 3 or more seeds (train.seed)")
    unit_keys = [k for k in differing if changes_loss_unit(k)]
    if unit_keys:
        notes.append(f"the runs differ in {', '.join(unit_keys)}, so their losses are not in the same unit; "
                     "compare val_psnr (or val_mse) across them")
    for metric in chosen:
        if not any(r.points(metric) for r in records):
            notes.append(f"{metric}: no run has a value for it (no validation split?)")
    return {"runs": runs, "differing_keys": differing, "metrics": chosen, "at_epoch": epoch,
            "thresholds": summaries, "groups": groups, "tests": tests,
            "method": {"test": stats.METHOD, "alpha": stats.ALPHA, "confidence": stats.CONFIDENCE},
            "plots": [], "notes": notes}


def compare_command(run_dirs: Sequence[Path | str], thresholds: list[str], out: Optional[Path], as_json: bool,
                    metrics: list[str], at_epoch: Optional[int], log_scale: bool) -> dict:
    """What `vaelab compare` does: compute, plot under `out` when given, print unless `as_json`.

    Returns the result dict; in JSON mode the caller prints it (nothing else goes to stdout).
    """
    records = load_runs(run_dirs)
    result = compare_records(records, thresholds, metrics, at_epoch)
    if out is not None:
        from vaelab.experiments.plots import plot_comparison

        by_label = group_indices([entry["label"] for entry in result["runs"]])
        series = [{"label": group["label"], "curves": group["curves"],
                   "runs": [{"name": records[i].name,
                             "points": {m: records[i].points(m) for m in result["metrics"]}}
                            for i in by_label[group["label"]]]}
                  for group in result["groups"]]
        lines = [(t["key"], t["value"]) for t in result["thresholds"]]
        paths, notes = plot_comparison(series, result["metrics"], Path(out), log_scale, lines)
        result["plots"] = [str(path) for path in paths]
        result["notes"].extend(notes)
    if not as_json:
        print_report(result)
    return result
