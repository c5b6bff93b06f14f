"""`vaelab report`: one self-contained HTML page for a run or a comparison of runs.

The page is meant to be mailed, archived next to a journal or opened from a laptop, so it
carries everything: plots and image grids as PNG data URIs, CSS inline, no JavaScript and no
external URL at all. A Content-Security-Policy meta tag states that too: even if some text
slipped past escaping, the browser would refuse to run or fetch anything.

Everything that comes from a run folder (tags in the config, paths, run names, metric and
evaluation keys) is user data and goes through `esc` before it reaches the page.

A run folder is read leniently, by compare's reader (`compare.load_run(folder, lenient=True)`):
config.yaml, metrics.jsonl, the image grids, run.json and evaluation.json may each be missing (a
run still starting, or one never evaluated); the section that needs it then says "not available"
and why, instead of the report failing. The sections are in `report_sections.py`.

    read_run (per folder) -> labels and baseline (labels.label_runs) -> sections -> atomic write

Every model family (`model.kind` in config.yaml) is reported: a spatial run's KL chart is per
latent channel; a vq run has no KL (its val_kl is null, so no KL curve is drawn for it), and
shows its codebook usage and perplexity instead (curves and the evaluation's numbers); its
samples come from the PixelCNN prior that `vaelab prior` fits. Where `vaelab evaluate --samples`
judged a run's samples, each prior's grid is shown beside its C2ST and nearest-neighbour numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import vaelab
from vaelab.errors import VaelabError
from vaelab.experiments import compare, labels
from vaelab.experiments.report_sections import (
    config_section,
    curves_section,
    esc,
    latent_section,
    metrics_table,
    reconstructions_section,
    samples_section,
)
from vaelab.files import write_text


@dataclass
class Run(compare.RunRecord):
    """A run folder as the report reads it: compare's record (config.yaml as written, its metrics,
    and `problems`: file -> why it could not be used) plus what only the report shows."""

    status: Optional[str] = None  # from run.json: running, finished, diverged, ...
    evaluation: Optional[dict] = None
    label: str = ""  # how its config differs from the others' (labels.label_runs); "" for a lone run

    @property
    def family(self) -> str:
        """model.kind from config.yaml: vector (also when the config does not say), spatial or vq."""
        model = self.config.get("model")
        kind = model.get("kind", "vector") if isinstance(model, dict) else "vector"
        return kind if isinstance(kind, str) else "vector"


# --------------------------------------------------------------------------------------------
# reading run folders
# --------------------------------------------------------------------------------------------


def read_run(folder: Path) -> Run:
    run = Run(**vars(compare.load_run(folder, lenient=True)))  # compare's record, as the report's Run
    if not run.config:
        run.label = "no config"  # cannot say how it differs from the others
    run.status = (read_json(folder / "run.json", run.problems) or {}).get("status")
    run.evaluation = read_json(folder / "evaluation.json", run.problems)
    return run


def read_json(path: Path, problems: dict[str, str]) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problems[path.name] = f"cannot read it ({type(error).__name__})"
        return None
    if not isinstance(loaded, dict):
        problems[path.name] = "not a JSON object"
        return None
    return loaded


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;max-width:1240px;
  padding:0 24px 48px;color:#1d2330;background:#fbfbfc}h1{font-size:24px;margin:24px 0 4px}
h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #d7dbe2;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 6px}
.meta,.note{color:#5b6475;font-size:13px}.na{color:#8a5a00;font-style:italic}nav a{margin-right:12px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d7dbe2;padding:3px 8px;text-align:left}
th{background:#eef1f5;font-weight:600}.scroll{overflow-x:auto}tr.bookkeeping td{color:#8a93a3}
table.metrics td{text-align:right;white-space:nowrap}table.metrics td:nth-child(-n+3){text-align:left}
table.metrics td:first-child{white-space:normal}table.evaluation td:nth-child(2){text-align:right}
pre{background:#f1f3f6;border:1px solid #d7dbe2;padding:8px 12px;overflow:auto;max-height:480px;font-size:13px}
code{background:#f1f3f6;padding:1px 4px}section.run{border-top:3px solid #d7dbe2;margin-top:36px}
.label{font-weight:normal;font-size:13px;background:#e5ecfb;border-radius:4px;padding:1px 6px;word-break:break-all}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}.plots img{width:100%}
img{max-width:100%;height:auto}img.pixels{image-rendering:pixelated}img.figure{background:#fff;border:1px solid #d7dbe2}
table.strip th{white-space:nowrap;font-weight:500}table.strip td{padding:0;line-height:0}
"""
# default-src 'none': the page can neither run scripts nor fetch anything; only inline styles
# and data: images are allowed, which is all it needs.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render(runs: Sequence[Run], baseline: Run) -> str:
    chip = (lambda run: f" <span class=label>{esc(run.label)}</span>") if len(runs) > 1 else (lambda run: "")
    title = f"vaelab report: {runs[0].name}" if len(runs) == 1 else f"vaelab report: {len(runs)} runs"
    listed = "".join(f'<li><a href="#run-{i}">{esc(run.name)}</a>{chip(run)} '
                     f'<span class=meta>{esc(run.folder)}</span></li>' for i, run in enumerate(runs, 1))
    problems = "".join(f"<li>{esc(run.name)}: {esc(name)}: {esc(why)}</li>"
                       for run in runs for name, why in run.problems.items())
    per_run = "".join(
        f'<section class="run" id="run-{i}"><h2>{esc(run.name)}{chip(run)}</h2>'
        f"<h3>reconstructions over the epochs</h3>{reconstructions_section(run)}"
        f"<h3>samples</h3>{samples_section(run)}"
        f"<h3>evaluation and latent diagnostics</h3>{latent_section(run)}</section>"
        for i, run in enumerate(runs, 1))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head><body>
<h1>{esc(title)}</h1><p class="meta">written {esc(stamp)} by vaelab {esc(vaelab.__version__)}</p>
<ul>{listed}</ul>{f'<p class="na">Some files could not be used:</p><ul>{problems}</ul>' if problems else ''}
<nav><a href="#metrics">metrics</a><a href="#curves">loss curves</a><a href="#config">config</a></nav>
<h2 id="metrics">metrics</h2>{metrics_table(runs)}
<h2 id="curves">loss curves</h2>{curves_section(runs)}
<h2 id="config">config{'' if len(runs) == 1 else ' and differences from the baseline'}</h2>
{config_section(runs, baseline)}
{per_run}
</body></html>
"""


def write_report(run_dirs: Sequence[Path | str], out: Path) -> Path:
    """Write the report on `run_dirs` to `out` (a folder gets report.html) and return its path."""
    if not run_dirs:
        raise VaelabError("report: no run folders given; pass one or more, e.g. vaelab report runs/*")
    folders = list(dict.fromkeys(Path(d).absolute() for d in run_dirs))  # the same folder once
    runs = [read_run(folder) for folder in folders]
    labelled = [r for r in runs if r.config]
    if len(labelled) > 1:
        names, _ = labels.label_runs(labelled)
        for run, label in zip(labelled, names):
            run.label = label
    baseline = next((r for r in labelled if r.label == labels.BASELINE), runs[0])
    page = render(runs, baseline)

    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    try:
        write_text(out, page)
    except OSError as error:
        raise VaelabError(f"{out}: cannot write the report ({error.strerror}); choose another --out") from None
    return out


def default_out(run_dirs: Sequence[Path | str]) -> Path:
    """One run: report.html inside it, beside what it reports on; several: in the current folder."""
    if len({Path(d).absolute() for d in run_dirs}) == 1:
        return Path(run_dirs[0]) / "report.html"
    return Path("report.html")


def report_command(run_dirs: Sequence[Path | str], out: Optional[Path] = None) -> Path:
    """What `vaelab report` does: write the page (to the default place when `out` is None)."""
    return write_report(run_dirs, out if out is not None else default_out(run_dirs))
