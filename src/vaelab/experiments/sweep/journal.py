"""The sweep's journal: every variant measured against the baseline, from the finished runs that
`records` finds, written as journal.md, a self-contained journal.html (every text escaped: names,
hypotheses and values come from user files) and a rich table on the terminal.

`journal_groups` collects each group's runs, `build_journal` turns them into a JSON-ready dict
and the writers render it. Per variant: the mean (± sd over seeds) of val_loss and val_psnr at
each run's final planned epoch, Δ = variant − baseline with a 95% CI, the p-value (Welch's
t-test, `stats.compare_groups`) and a verdict. The verdict is read from val loss, the trained
objective, except where the change alters the loss's unit (a different loss, image size, fit,
crop or pixel scale: see vaelab.config.keys); there val losses are not comparable and the verdict is
read from PSNR, which counts real pixels only, in image space. A PSNR verdict that contradicts a
significant val-loss verdict is shown beside it. A storage search's best trials
(`search.search_summary`) follow the table.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Optional

from vaelab.errors import VaelabError
from vaelab.experiments import stats
from vaelab.experiments.compare import number
from vaelab.experiments.labels import format_value
from vaelab.experiments.stats import format_number
from vaelab.experiments.sweep.plan import Plan
from vaelab.experiments.sweep.records import SweepState, pair_states
from vaelab.files import write_text
from vaelab.runs.folder import read_metrics

# --------------------------------------------------------------------------------------------
# a plan's journal, from its run folders
# --------------------------------------------------------------------------------------------


def publish_journal(plan: Plan, plan_path: Path, search: Optional[dict] = None) -> None:
    """Write journal.md/.html from the plan's runs (and a storage search's trials) and print it."""
    journal = build_journal(plan.name, plan.folder, journal_groups(plan), search=search)
    if not any(row["runs"] for row in journal["rows"]) and not (search and search["trials"]):
        raise VaelabError(f"{plan.folder}: no finished runs of this plan yet; run `vaelab sweep {plan_path}` first")
    write_journal(journal, plan.folder)
    print_journal(journal)


def journal_groups(plan: Plan) -> list[dict]:
    """Per group (the baseline first): its change, hypothesis and finished runs, for the journal."""
    state = SweepState(plan)
    states = pair_states(plan, state)
    groups = []
    for variant in plan.variants:
        pairs = []
        for pair in (p for p in plan.pairs if p.variant is variant):
            action, found = states[pair.key]
            status = {"new": "not run", "resume": "unfinished"}.get(action, action)
            if action in ("new", "resume") and (state.pairs.get(pair.key) or {}).get("status") == "failed":
                status = "failed"  # only sweep.json knows of a pair that failed before its folder existed
            pairs.append({"seed": pair.seed, "epoch": pair.config.train.epochs, "status": status,
                          "run": found.folder if action == "finished" else None,
                          "stopped_at": found.epoch if found else None})
        groups.append({"variant": variant.name, "hypothesis": variant.hypothesis, "changes": variant.changes,
                       "loss_comparable": variant.loss_comparable, "pairs": pairs})
    return groups


# --------------------------------------------------------------------------------------------
# the journal
# --------------------------------------------------------------------------------------------

# (metrics.jsonl key, column title, higher is better)
METRICS = (("val_loss", "val loss", False), ("val_psnr", "PSNR dB", True))
COLUMNS = ("variant", "change", "hypothesis", "seeds", "val loss (mean ± sd)", "Δ val loss [95% CI]", "p",
           "PSNR dB (mean ± sd)", "Δ PSNR dB [95% CI]", "p", "verdict")


def build_journal(name: str, folder: Path, groups: list[dict], search: Optional[dict] = None) -> dict:
    """groups[0] is the baseline. Each group: variant, hypothesis, changes [(key, old, new)],
    loss_comparable, pairs [{seed, epoch, status, run (finished folder or None), stopped_at}].
    search: a hyperparameter search's trials (`search.search_summary`), shown after the table."""
    notes: list[str] = []
    values = [group_values(group, notes) for group in groups]
    rows = []
    for index, (group, vals) in enumerate(zip(groups, values)):
        finished = [p for p in group["pairs"] if p["run"] is not None]
        row: dict[str, Any] = {
            "variant": group["variant"], "hypothesis": group["hypothesis"],
            "changes": [describe(k, old, new) for key, a, b in group["changes"] for k, old, new in expand(key, a, b)],
            "seeds": [p["seed"] for p in finished], "planned": len(group["pairs"]),
            "runs": [str(p["run"]) for p in finished],
            **{key: stats.mean_ci(vals[key]) for key, _, _ in METRICS},
        }
        if index > 0:
            row["tests"] = {key: stats.compare_groups(vals[key], values[0][key], hib) for key, _, hib in METRICS}
            row["verdict"], row["decided_by"] = verdict(row["tests"], group["loss_comparable"])
            if not group["loss_comparable"]:
                notes.append(f"{group['variant']}: the change alters what val loss sums (loss, size, fit, crop or "
                             "scale), so its val loss is not comparable; the verdict is read from PSNR")
        rows.append(row)
    epochs = sorted({p["epoch"] for group in groups for p in group["pairs"]})
    return {"name": name, "folder": str(folder), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
            "epochs": epochs, "method": stats.METHOD, "alpha": stats.ALPHA, "confidence": stats.CONFIDENCE,
            "rows": rows, "notes": notes, "search": search}


def group_values(group: dict, notes: list[str]) -> dict[str, list[float]]:
    """Each finished run's metrics at its final planned epoch; notes for the pairs left out."""
    out: dict[str, list[float]] = {key: [] for key, _, _ in METRICS}
    for pair in group["pairs"]:
        label = f"{group['variant']} seed {pair['seed']}"
        if pair["run"] is None:
            at = f" at epoch {pair['stopped_at']}" if pair.get("stopped_at") else ""
            notes.append(f"{label}: {pair['status']}{at}; left out")
            continue
        records, _ = read_metrics(Path(pair["run"]) / "metrics.jsonl")
        record = next((r for r in records if r["epoch"] == pair["epoch"]), None)
        if record is None:
            notes.append(f"{label}: {Path(pair['run']).name} has no epoch {pair['epoch']} in metrics.jsonl; left out")
            continue
        for key, _, _ in METRICS:
            value = number(record.get(key))
            if value is None:
                notes.append(f"{label}: no {key} at epoch {pair['epoch']} (no validation split?)")
            else:
                out[key].append(value)
    return out


def verdict(tests: dict, loss_comparable: bool) -> tuple[str, str]:
    """(verdict text, the metric it is read from)."""
    key = "val_loss" if loss_comparable else "val_psnr"
    test = tests[key]
    text = test["verdict"]
    if text == "not assessable":
        n = min(test["n_a"], test["n_b"])
        text = ("not assessable: no finished runs" if n == 0 else "not assessable with one seed" if n == 1
                else f"not assessable: {test['reason']}")
    if not loss_comparable:
        return f"{text} (on PSNR)", key
    other = tests["val_psnr"]["verdict"]
    if other in ("better", "worse") and other != test["verdict"]:
        text += f" (PSNR {other})"
    return text, key


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def expand(key: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """A changed list of layers as the fields that changed: model.conv[*].kernel 4 -> 5."""
    if not (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and all(isinstance(item, dict) for item in old + new)):
        return [(key, old, new)]
    out = []
    for name in dict.fromkeys(f for item in old + new for f in item):
        pairs = [(a.get(name), b.get(name)) for a, b in zip(old, new)]
        differ = [i for i, (a, b) in enumerate(pairs) if a != b]
        if len(pairs) > 1 and len(differ) == len(pairs) and all(p == pairs[0] for p in pairs):
            out.append((f"{key}[*].{name}", *pairs[0]))
        else:
            out += [(f"{key}[{i}].{name}", *pairs[i]) for i in differ]
    return out or [(key, old, new)]


def describe(key: str, old: Any, new: Any) -> str:
    return f"{key}: {format_value(old)} → {format_value(new)}"


def signed(value: Optional[float]) -> str:
    return "—" if value is None else ("+" if value > 0 else "") + format_number(value)


def spread(summary: dict) -> str:
    if summary["mean"] is None:
        return "—"
    return format_number(summary["mean"]) + ("" if summary["sd"] is None else f" ± {summary['sd']:.2g}")


def p_value(p: Optional[float]) -> str:
    return "—" if p is None else "<1e-4" if p < 1e-4 else f"{p:.2g}"


def delta(test: dict) -> str:
    if test["delta"] is None:
        return "—"
    if test["ci_low"] is None:
        return signed(test["delta"])
    return f"{signed(test['delta'])} [{signed(test['ci_low'])}, {signed(test['ci_high'])}]"


def cells(row: dict) -> list[str]:
    """The table cells of one row, as plain text (each writer escapes them its own way)."""
    base = row["variant"] == "baseline"
    tests = row.get("tests", {})
    per_metric = []
    for key, _, _ in METRICS:
        test = tests.get(key)
        per_metric += [spread(row[key]), "" if base else delta(test), "" if base else p_value(test["p"])]
    change = "; ".join(row["changes"]) or ("(reference)" if base else "—")
    return [row["variant"], change, row["hypothesis"] or "—", f"{len(row['seeds'])}/{row['planned']}",
            *per_metric, "reference" if base else row["verdict"]]


def method_text(journal: dict) -> str:
    epochs = journal["epochs"]
    at = f"epoch {epochs[0]}, the final epoch" if len(epochs) == 1 else "each run's final planned epoch"
    return (f"Measured at {at}, on the validation split. Δ = variant − baseline, in the means over seeds; "
            f"{journal['confidence']:.0%} CI and two-sided p from {journal['method']} (α = {journal['alpha']}). "
            "Lower val loss and higher PSNR are better. The verdict is read from val loss (PSNR where the "
            "change makes val losses incomparable); a PSNR verdict that disagrees is shown in brackets.")


SEARCH_SHOWN = 20  # the best trials in the journal files; the terminal shows fewer


def search_table(search: dict, limit: int) -> tuple[str, list[str], list[list[str]]]:
    """(heading, columns, rows of plain text) of a search's best finished trials."""
    keys = list(search["ranges"])
    metric = search["metric"].replace("_", " ")
    counts = ", ".join(f"{n} {state}" for state, n in search["counts"].items()) or "no trials yet"
    heading = (f"Search: {'lowest' if search['direction'] == 'minimize' else 'highest'} {metric} first "
               f"({counts}); ranges: " + "; ".join(f"{k}: {r}" for k, r in search["ranges"].items()))
    rows = [[str(i), str(t["number"]), format_number(t["value"]),
             *[format_value(t["params"].get(k)) for k in keys], t.get("run") or "—"]
            for i, t in enumerate(search["trials"][:limit], 1)]
    return heading, ["rank", "trial", metric, *keys, "run"], rows


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------


def write_journal(journal: dict, folder: Path) -> tuple[Path, Path]:
    md, page = folder / "journal.md", folder / "journal.html"
    write_text(md, to_markdown(journal))
    write_text(page, to_html(journal))
    return md, page


def to_markdown(journal: dict) -> str:
    def cell(text: str) -> str:  # a '|' or a line break would end the cell
        return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")

    lines = [f"# Sweep journal: {cell(journal['name'])}", "",
             f"Sweep folder `{journal['folder']}`, written {journal['written']}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in cells(row)) + " |" for row in journal["rows"]]
    lines += ["", method_text(journal), ""]
    if journal["notes"]:
        lines += ["Notes:", *[f"- {cell(n)}" for n in journal["notes"]], ""]
    lines += ["Runs:", *[f"- {cell(row['variant'])}: " + (", ".join(f"`{Path(r).name}`" for r in row["runs"]) or "none")
                         for row in journal["rows"]], ""]
    if journal.get("search"):
        heading, columns, rows = search_table(journal["search"], SEARCH_SHOWN)
        lines += [cell(heading), "", "| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns),
                  *["| " + " | ".join(cell(c) for c in row) + " |" for row in rows], ""]
    return "\n".join(lines)


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.baseline { background: #fafafa; }
.better { color: #176b2c; font-weight: 600; } .worse { color: #a21d1d; font-weight: 600; }
code { font-size: 90%; }
"""


def to_html(journal: dict) -> str:
    e = html.escape
    numeric = {3, 4, 5, 6, 7, 8, 9}
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = []
    for row in journal["rows"]:
        texts = cells(row)
        tds = [f'<td class="num">{e(t)}</td>' if i in numeric else f"<td>{e(t)}</td>" for i, t in enumerate(texts[:-1])]
        word = texts[-1].split(" (")[0]
        kind = word if word in ("better", "worse") else "other"
        tds.append(f'<td class="{kind}">{e(texts[-1])}</td>')
        body.append(f'<tr class="{"baseline" if row["variant"] == "baseline" else "variant"}">{"".join(tds)}</tr>')
    notes = "".join(f"<li>{e(n)}</li>" for n in journal["notes"])
    runs = "".join(f"<li>{e(row['variant'])}: " + (", ".join(f"<code>{e(Path(r).name)}</code>" for r in row["runs"])
                                                    or "none") + "</li>" for row in journal["rows"])
    search = ""
    if journal.get("search"):
        heading, columns, rows = search_table(journal["search"], SEARCH_SHOWN)
        search = (f"<h2>Search</h2><p>{e(heading)}</p><table><thead><tr>"
                  + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr></thead><tbody>"
                  + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
                  + "</tbody></table>\n")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Sweep journal: {e(journal['name'])}</title><style>{STYLE}</style></head><body>\n"
            f"<h1>Sweep journal: {e(journal['name'])}</h1>\n"
            f"<p>Sweep folder <code>{e(journal['folder'])}</code>, written {e(journal['written'])}.</p>\n"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>\n"
            f"<p>{e(method_text(journal))}</p>\n"
            + (f"<h2>Notes</h2><ul>{notes}</ul>\n" if notes else "")
            + f"<h2>Runs</h2><ul>{runs}</ul>\n{search}</body></html>\n")


def print_journal(journal: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Narrower than the files' table: hypotheses stay in journal.md, the p-value joins its Δ.
    table = Table(title=f"sweep {escape(journal['name'])}", title_justify="left", show_lines=True)
    for index, column in enumerate(("variant / change", "seeds", "val loss", "Δ val loss [95% CI], p",
                                    "PSNR dB", "Δ PSNR dB [95% CI], p", "verdict")):
        table.add_column(column, justify="right" if 1 <= index <= 5 else "left", overflow="fold")
    for row in journal["rows"]:
        c = [escape(t) for t in cells(row)]
        style = {"better": "green", "worse": "red"}.get(c[-1].split(" (")[0])
        tested = lambda d, p: f"{d}, p={p}" if d else ""  # noqa: E731
        table.add_row(f"[bold]{c[0]}[/]\n[dim]{c[1]}[/]", c[3], c[4], tested(c[5], c[6]), c[7], tested(c[8], c[9]),
                      f"[{style}]{c[-1]}[/]" if style else c[-1])
    console = Console(stderr=False)
    console.print(table)
    console.print(escape(method_text(journal)))
    for note in journal["notes"]:
        console.print(f"note: {escape(note)}")
    if journal.get("search"):
        heading, columns, rows = search_table(journal["search"], 5)
        best = Table(title=escape(heading), title_justify="left")
        # The last column, the run folder's long name, stays in journal.md: it folds a terminal table.
        for column in columns[:-1]:
            best.add_column(escape(column), overflow="fold")
        for row in rows:
            best.add_row(*[escape(c) for c in row[:-1]])
        console.print(best)
    console.print(f"journal: {escape(str(Path(journal['folder']) / 'journal.md'))} and journal.html")
