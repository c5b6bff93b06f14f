"""The terminal output of `vaelab compare`: rich tables of runs, thresholds and group tests."""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from vaelab.experiments import stats
from vaelab.experiments.stats import format_number

# --------------------------------------------------------------------------------------------
# human output
# --------------------------------------------------------------------------------------------


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def describe_lead(lead: Optional[dict], who: dict[str, str]) -> str:
    if lead is None:
        return "—"
    epochs, minutes = lead["epochs"], lead["minutes"]
    word = "ahead of" if (epochs, minutes or 0) > (0, 0) else "behind"
    if epochs == 0 and not minutes:
        word = "level with"
    time = f" / {abs(minutes):.1f} min" if minutes is not None else ""
    return f"{abs(epochs)} epoch{'s' if abs(epochs) != 1 else ''}{time} {word} {who[lead['of']]}"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2, caption=None):
    """A rich table whose first `left` columns are names (folded, never squeezed to '…' on a
    narrow terminal) and the rest right-aligned values; a final "lead" column is text."""
    from rich.table import Table
    from rich.text import Text

    out = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for index, column in enumerate(columns):
        name = index < left
        out.add_column(column, justify="left" if name or column == "lead" else "right",
                       min_width=8 if name else None, overflow="fold" if name else "ellipsis")
    for row in rows:
        out.add_row(*(Text(cell) for cell in row))  # Text: a label like data.size=[128,128] is not markup
    return out


def print_report(result: dict, console=None) -> None:
    """The human view of a `compare_records` result: runs, thresholds, groups, tests, notes."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or pipe has no width to fit: don't wrap at 80
            console = Console(width=200)
    f = format_number
    runs = result["runs"]
    columns = ["run", "label", "seed", "epochs", "time", "train", "train best", "val", "val best (epoch)",
               "PSNR", "images/s"]
    rows = [[e["name"], e["label"], str(e["seed"]), str(e["epochs"]), format_duration(e["time_s"]),
             f(e["final_train_loss"]), f(e["best_train_loss"]), f(e["final_val_loss"]),
             f"{f(e['best_val_loss'])} ({e['best_epoch']})" if e["best_epoch"] else "—",
             f(e["final_val_psnr"]), f(e["images_per_s"])] for e in runs]
    # Columns that say nothing here (one seed for all, no image counts logged) only cost width.
    keep = [i for i, c in enumerate(columns) if not (c == "seed" and len({r[i] for r in rows}) == 1)
            and not (c == "images/s" and all(r[i] == "—" for r in rows))]
    console.print(table("runs (final values; best = lowest)", [columns[i] for i in keep],
                        [[r[i] for i in keep] for r in rows]))
    plain = {"markup": False, "highlight": False}
    console.print("labelled by the config keys that differ: "
                  + (", ".join(result["differing_keys"]) or "none (the runs differ only by seed or bookkeeping)"), **plain)

    # Name the run a lead is measured against by its label when that is unambiguous.
    counts = Counter(e["label"] for e in runs)
    who = {e["run"]: e["label"] if counts[e["label"]] == 1 else e["name"] for e in runs}
    for position, s in enumerate(result["thresholds"]):
        rows = [[e["name"], e["label"], "never", "—", "—"] if e["thresholds"][position] is None else
                [e["name"], e["label"], str(e["thresholds"][position]["epoch"]),
                 format_duration(e["thresholds"][position]["time_s"]),
                 describe_lead(e["thresholds"][position]["ahead"], who)] for e in runs]
        console.print(table(f"first epoch where {s['key']} {s['direction']} {f(s['value'])}",
                            ["run", "label", "epoch", "time", "lead"], rows))

    groups = result["groups"]
    if len(groups) > 1 or any(g["n"] > 1 for g in groups):
        def cell(s: dict) -> str:
            return f(s["mean"]) + (f" [{f(s['ci_low'])}, {f(s['ci_high'])}]" if s["ci_low"] is not None else "")

        rows = [[g["label"], str(g["n"]), *(cell(g["at_epoch"][m]) for m in result["metrics"])] for g in groups]
        console.print(table(f"groups at epoch {result['at_epoch']}: mean [95% CI]", ["group", "n", *result["metrics"]],
                            rows, left=1))
    if result["tests"]:
        rows = [[t["metric"], t["group"], t["reference"], f(t["delta"]),
                 f"{f(t['ci_low'])} .. {f(t['ci_high'])}" if t["ci_low"] is not None else "—",
                 f"{t['p']:.3g}" if t["p"] is not None else "—",
                 t["verdict"] if t["p"] is not None else "not assessable "
                 + (f"(n={min(t['n_a'], t['n_b'])})" if min(t["n_a"], t["n_b"]) < 2 else "(no spread)")]
                for t in result["tests"]]
        caption = ("Δ = group - reference; 95% CI with Welch–Satterthwaite df; "
                   "p-values are not corrected for testing several metrics")
        console.print(table(f"{stats.METHOD} at epoch {result['at_epoch']}, alpha {stats.ALPHA}",
                            ["metric", "group", "reference", "Δ", "95% CI", "p", "verdict"], rows, left=3,
                            caption=caption))
    for path in result["plots"]:
        console.print(f"wrote {path}", **plain)
    for note in result["notes"]:
        console.print(f"note: {note}", style="yellow", **plain)
