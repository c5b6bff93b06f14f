"""PNG curves for `vaelab compare`: each metric by epoch and by wall-clock minutes.

One line per run; a group of several seeds is drawn as its mean with a shaded 95% CI band,
so the spread that decides significance is visible. Figures are built with matplotlib's
object API on the Agg canvas (no pyplot): no global state, no display needed, safe to call
from a server or a test. Files are written to a temporary name and renamed, so a reader (a
report, a browser refreshing) never sees half a PNG.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from vaelab.errors import VaelabError
from vaelab.experiments.stats import format_number
from vaelab.files import atomic_path


def plot_comparison(series: Sequence[dict], metrics: Sequence[str], out_dir: Path, log_scale: bool = False,
                    thresholds: Sequence[tuple[str, float]] = ()) -> tuple[list[Path], list[str]]:
    """Write `<metric>_by_epoch.png` and `<metric>_by_time.png` for each metric under `out_dir`.

    `series` is one dict per group: {"label", "runs": [{"name", "points": {metric: [(epoch,
    time_s, value), ...]}}], "curves": {metric: [{"epoch", "time_s", "n", "mean", "ci_low",
    "ci_high"}, ...]}}. `thresholds` are (key, value) pairs drawn as dashed lines on their
    metric. Returns the written paths and notes (metrics skipped, log scale not possible).
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaelabError(f"{out_dir}: cannot create the plot folder ({error.strerror}); choose another --out") from None
    paths, notes = [], []
    for metric in metrics:
        if not any(run["points"].get(metric) for group in series for run in group["runs"]):
            notes.append(f"{metric}: nothing to plot")
            continue
        values = [p[2] for group in series for run in group["runs"] for p in run["points"].get(metric, [])]
        log = log_scale and min(values) > 0
        if log_scale and not log:
            notes.append(f"{metric}: has values <= 0, plotted on a linear scale")
        lines = [value for key, value in thresholds if key == metric]
        for axis in ("epoch", "time"):
            figure = draw(series, metric, axis, log, lines)
            path = out_dir / f"{safe_name(metric)}_by_{axis}.png"
            save_figure(figure, path)
            paths.append(path)
    return paths, notes


def draw(series: Sequence[dict], metric: str, axis: str, log: bool, lines: Sequence[float]) -> Figure:
    figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(series))]
    for group, color in zip(series, colors):
        runs = group["runs"]
        if len(runs) > 1:
            band(ax, group["curves"].get(metric, []), axis, color, f"{group['label']} (n={len(runs)})")
            continue
        points = runs[0]["points"].get(metric, [])
        xs, ys = xy([(e, t, v) for e, t, v in points], axis)
        if xs:
            ax.plot(xs, ys, color=color, label=group["label"], linewidth=1.5, marker="." if len(xs) < 30 else None)
    for value in lines:
        ax.axhline(value, color="0.4", linestyle="--", linewidth=1, label=f"threshold {format_number(value)}")
    if log:
        ax.set_yscale("log")
        # Journal-style tick labels (60, 1e5) instead of 6×10^1; matplotlib still decides which
        # minor ticks get a label, so a narrow range is labelled and a wide one is not crowded.
        ax.yaxis.set_major_formatter(PlainLogFormatter())
        ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    if axis == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch" if axis == "epoch" else "wall-clock time (minutes)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {'epoch' if axis == 'epoch' else 'wall-clock time'}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return figure


class PlainLogFormatter(LogFormatter):
    def __call__(self, x, pos=None) -> str:
        return format_number(x) if super().__call__(x, pos) else ""


def band(ax, curve: Sequence[dict], axis: str, color: str, label: str) -> None:
    """Mean line and, where at least two seeds have the epoch, the CI band around it."""
    points = [(c["epoch"], c["time_s"], c["mean"]) for c in curve if c["mean"] is not None]
    xs, ys = xy(points, axis)
    ax.plot(xs, ys, color=color, label=label, linewidth=1.8)
    shaded = [c for c in curve if c["ci_low"] is not None and (axis == "epoch" or c["time_s"] is not None)]
    if shaded:
        x = [c["epoch"] if axis == "epoch" else c["time_s"] / 60.0 for c in shaded]
        ax.fill_between(x, [c["ci_low"] for c in shaded], [c["ci_high"] for c in shaded],
                        color=color, alpha=0.2, linewidth=0)


def xy(points: Sequence[tuple[int, Optional[float], float]], axis: str) -> tuple[list[float], list[float]]:
    if axis == "epoch":
        return [p[0] for p in points], [p[2] for p in points]
    kept = [p for p in points if p[1] is not None and math.isfinite(p[1])]
    return [p[1] / 60.0 for p in kept], [p[2] for p in kept]


def safe_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", metric)


def save_figure(figure: Figure, path: Path) -> None:
    """Write a PNG atomically: a temporary file beside it, then a rename."""
    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as file:
            figure.savefig(file, format="png")
    except OSError as error:
        raise VaelabError(f"{path}: cannot write the plot ({error.strerror}); check --out") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
