"""The sections of `vaelab report`'s page: each a function from runs to an HTML fragment, with the
helpers that inline images and plots as PNG data URIs.

Everything that comes from a run folder (tags in the config, paths, run names, metric and
evaluation keys) is user data and goes through `esc` before it reaches the page. A section whose
file is missing or unreadable says "not available" and why (`not_available`).
"""

from __future__ import annotations

import base64
import html
import io
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from PIL import Image

from vaelab.config.keys import flatten, identifying
from vaelab.experiments import compare, compare_tables, labels
from vaelab.experiments.stats import format_number

if TYPE_CHECKING:
    from vaelab.experiments.report import Run

# Drawn when any run has them: val_kl is null for vq runs, the last three exist for vq runs only.
CURVES = ("val_loss", "val_recon", "val_kl", "val_psnr", "val_commitment", "val_codebook_usage", "val_perplexity")
TRAIN_CURVES = ("train_loss", "train_recon", "train_kl")  # when no run has a validation split
STRIP_EPOCHS = 8  # reconstruction rows in the strip, first and last epoch included
MAX_WIDTH = 1100  # px: wider grids are downscaled, so a 128 px, 16-image grid stays a few 100 kB
DISPLAY_WIDTH = 720  # px: tiny grids (32 px images) are shown enlarged, pixelated, up to this
LEGEND_CHARS = 60  # a longer run label is cut short in plot legends
EPOCH_FILE = re.compile(r"^epoch-(\d+)\.png$")
# evaluation.json: what was evaluated (said in one line), and bookkeeping the page leaves out.
CONTEXT_KEYS = ("checkpoint", "epoch", "split", "images", "skipped")
HIDDEN_KEYS = frozenset({"run", "file", "seed", "time_s", "real_subpixels", "checkpoint_requested"})


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def epoch_images(folder: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of `folder/epoch-NNNN.png`, by epoch; temporary files are not matched."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in folder.iterdir() if (m := EPOCH_FILE.match(path.name))]
    return sorted(found)


def spread(items: Sequence, count: int) -> list:
    """Up to `count` evenly spaced items, always the first and the last."""
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def img(image: Image.Image, alt: str, css_class: str = "pixels") -> str:
    """An <img> with the PNG inline; wide images downscaled, tiny ones shown enlarged."""
    if image.width > MAX_WIDTH:
        height = max(1, round(image.height * MAX_WIDTH / image.width))
        image = image.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=True)
    zoom = max(1, min(4, DISPLAY_WIDTH // max(1, image.width)))
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<img class="{css_class}" src="data:image/png;base64,{data}" alt="{esc(alt)}" '
            f'width="{image.width * zoom}" height="{image.height * zoom}">')


def figure_img(figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return img(Image.open(buffer), alt, "figure")


def open_image(path: Path) -> Optional[Image.Image]:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError):  # a truncated or half-written PNG: leave that epoch out
        return None


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def not_available(what: str, why: str) -> str:
    return f'<p class="na">{esc(what)}: not available ({esc(why)}).</p>'


def metrics_table(runs: Sequence[Run]) -> str:
    header = ["run", "label", "status", "epochs", "time", "val loss", "best val loss (epoch)", "val recon",
              "val KL", "PSNR dB", "best PSNR", "train loss", "skipped steps", "peak RSS MB"]
    rows = []
    for run in runs:
        if not run.metrics:
            rows.append([run.name, run.label, run.status or "—", "0"] + ["—"] * (len(header) - 4))
            continue
        last, f = run.metrics[-1], format_number
        value = lambda key: compare.number(last.get(key))  # noqa: E731
        val, psnr = run.points("val_loss"), run.points("val_psnr")
        best = min(val, key=lambda p: p[2]) if val else None
        skipped = [compare.number(m.get("skipped_steps")) or 0 for m in run.metrics]
        rss = [p[2] for p in run.points("rss_mb")]
        rows.append([run.name, run.label, run.status or "—", str(last["epoch"]),
                     compare_tables.format_duration(value("time_s")), f(value("val_loss")),
                     f"{f(best[2])} ({best[0]})" if best else "—", f(value("val_recon")), f(value("val_kl")),
                     f(value("val_psnr")), f(max(p[2] for p in psnr)) if psnr else "—", f(value("train_loss")),
                     f(sum(skipped)), f(max(rss)) if rss else "—"])
    if len(runs) == 1:  # a lone run has no label
        header, rows = [h for h in header if h != "label"], [row[:1] + row[2:] for row in rows]
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table class="metrics"><tr>{head}</tr>{body}</table></div>'
            '<p class="note">Final values at the last epoch; best val loss is the lowest, best PSNR the highest.</p>')


def curves_section(runs: Sequence[Run]) -> str:
    from vaelab.experiments.plots import draw

    with_metrics = [run for run in runs if run.metrics]
    chosen = [m for m in CURVES if any(run.points(m) for run in with_metrics)]
    chosen = chosen or [m for m in TRAIN_CURVES if any(run.points(m) for run in with_metrics)]
    if not chosen:
        return not_available("loss curves", "no run has a finished epoch in metrics.jsonl")
    # Runs that differ only by seed share a label and are drawn as one mean curve with a 95% CI
    # band, exactly as `vaelab compare` draws them.
    groups = compare.group_indices([run.label for run in with_metrics])
    single = len(with_metrics) == 1  # one run: name it in the legend; "baseline" would say nothing
    # matplotlib reads $...$ in a legend as math and fails on an unbalanced $; a tag may hold one.
    series = [{"label": legend(with_metrics[0].name if single else label).replace("$", r"\$"),
               "curves": {m: compare.curve(with_metrics, members, m) for m in chosen},
               "runs": [{"name": with_metrics[i].name, "points": {m: with_metrics[i].points(m) for m in chosen}}
                        for i in members]}
              for label, members in groups.items()]
    plots = []
    for metric in chosen:
        values = [p[2] for run in with_metrics for p in run.points(metric)]
        # Losses fall over orders of magnitude (the journal's 1e5 -> 5.8e4): log when they span 10x.
        log = "psnr" not in metric and min(values) > 0 and max(values) >= 10 * min(values)
        figure = draw(series, metric, "epoch", log, [])
        if not log:  # PSNR 7.4801 vs 7.4803 should read as such, not as "+7.48" and 1e-4 ticks
            figure.axes[0].ticklabel_format(axis="y", useOffset=False)
        plots.append(figure_img(figure, f"{metric} by epoch"))
    return f'<div class="plots">{"".join(plots)}</div>'


def legend(label: str) -> str:
    """A label short enough for a plot's legend: runs of different model families differ in every
    family-specific key, and a label listing them all would cover the plot (the page's run
    headings show it whole)."""
    return label if len(label) <= LEGEND_CHARS else label[:LEGEND_CHARS - 1].rstrip(", ") + "…"


def config_section(runs: Sequence[Run], baseline: Run) -> str:
    def yaml_block(run: Run) -> str:
        if run.config_text is None:
            return not_available("config.yaml", run.problems.get("config.yaml", "missing"))
        return f"<pre>{esc(run.config_text)}</pre>"

    if len(runs) == 1:
        return yaml_block(runs[0])
    parts = [f"<h3>baseline: {esc(baseline.name)}</h3>", yaml_block(baseline)]
    base = flatten(baseline.config)
    for run in runs:
        if run is baseline:
            continue
        flat = flatten(run.config)
        keys = [k for k in dict.fromkeys([*base, *flat])
                if k not in base or k not in flat or labels.canonical(base[k]) != labels.canonical(flat[k])]
        shown = lambda cfg, k: labels.format_value(cfg[k]) if k in cfg else "unset"  # noqa: E731
        rows = "".join(
            f'<tr{"" if identifying(k) else " class=bookkeeping"}>'
            f"<td>{esc(k)}</td>"
            f"<td>{esc(shown(base, k))}</td><td>{esc(shown(flat, k))}</td></tr>" for k in keys)
        table = (f"<table><tr><th>key</th><th>baseline</th><th>this run</th></tr>{rows}</table>" if keys
                 else "<p>same config as the baseline.</p>")
        parts.append(f"<h3>{esc(run.name)} <span class=label>{esc(run.label)}</span></h3>{table}"
                     f"<details><summary>full config</summary>{yaml_block(run)}</details>")
    parts.append('<p class="note">Grey rows are keys that do not make a run a different experiment: the seed, how long, '
                 "where and how it ran (device, precision, caches) and what it recorded (run.*).</p>")
    return "".join(parts)


def reconstructions_section(run: Run) -> str:
    grids = epoch_images(run.folder / "reconstructions")
    if not grids:
        return not_available("reconstructions", "no reconstructions/epoch-NNNN.png; run.images may be 0")
    loaded = [(epoch, image) for epoch, path in spread(grids, STRIP_EPOCHS) if (image := open_image(path))]
    if not loaded:
        return not_available("reconstructions", "the grid files cannot be read")
    size = (run.config.get("data") or {}).get("size")
    height = size[0] if isinstance(size, list) and size and isinstance(size[0], int) else None
    # The trainer's grid is originals above reconstructions with a 2 px gap: 2H + 6 px high.
    # Then the originals (the same fixed batch every epoch) are shown once and each epoch adds
    # one row; any other layout is shown whole, one grid per epoch.
    split = height is not None and all(image.height == 2 * height + 6 for _, image in loaded)
    rows = []
    if split:
        latest = loaded[-1][1]
        rows.append(("originals", latest.crop((0, 0, latest.width, height + 4))))
    for epoch, image in loaded:
        rows.append((f"epoch {epoch}", image.crop((0, height + 2, image.width, image.height)) if split else image))
    body = "".join(f"<tr><th>{esc(name)}</th><td>{img(image, f'{run.name} {name}')}</td></tr>"
                   for name, image in rows)
    note = f"{len(loaded)} of {len(grids)} epochs, evenly spaced from the first to the last."
    return f'<table class="strip">{body}</table><p class="note">{esc(note)}</p>'


def samples_section(run: Run) -> str:
    grids = epoch_images(run.folder / "samples")
    image = open_image(grids[-1][1]) if grids else None
    judged = sample_quality_section(run)
    if image is None and run.family == "vq":
        return judged or not_available(
            "samples", "a model.kind vq run samples from a prior over its codes, which training does not fit; run"
            f" 'vaelab prior {run.folder}', then 'vaelab evaluate {run.folder} --samples 128'")
    if image is None:
        return judged or not_available("samples", "no readable samples/epoch-NNNN.png")
    return f'<p>epoch {grids[-1][0]}, decoded from the same N(0, I) noise every epoch:</p>' \
           f'<div class="grid">{img(image, f"{run.name} samples")}</div>{judged}'


SAMPLE_PRIORS = ("normal", "mixture", "pixelcnn")  # the names evaluate --samples keeps results under


def sample_quality_section(run: Run) -> str:
    """`evaluate --samples` per prior: the C2ST and nearest-neighbour numbers beside the sample grid."""
    judged = (run.evaluation or {}).get("samples")
    if not isinstance(judged, dict):
        return ""
    parts = []
    for prior in SAMPLE_PRIORS:  # a fixed set: the grid's file name is never taken from the JSON
        result = judged.get(prior)
        if not isinstance(result, dict) or not isinstance(result.get("c2st"), dict):
            continue
        c2st, ci = result["c2st"], result["c2st"].get("ci95") or [None, None]
        value = lambda v: esc(format_number(v) if isinstance(v, float) else "—" if v is None else v)  # noqa: E731
        nn = lambda key: (result.get(key) or {}).get("median")  # noqa: E731
        table = (f'<table class="evaluation"><tr><th>{esc(prior)} prior</th><th>value</th></tr>'
                 f"<tr><td>C2ST accuracy (0.5 = indistinguishable)</td><td>{value(c2st.get('accuracy'))}"
                 f" [{value(ci[0])}, {value(ci[1])}]</td></tr>"
                 f"<tr><td>C2ST accuracy against the model's reconstructions (the prior alone)</td>"
                 f"<td>{value((result.get('c2st_decoded') or {}).get('accuracy'))}</td></tr>"
                 f"<tr><td>NN distance sample → train (median)</td><td>{value(nn('nn_sample_to_train'))}</td></tr>"
                 f"<tr><td>NN distance validation → train (median)</td><td>{value(nn('nn_val_to_train'))}</td></tr>"
                 f"<tr><td>ratio (well below 1 = copies)</td><td>{value(result.get('nn_ratio'))}</td></tr></table>")
        grid = open_image(run.folder / f"samples-{prior}.png")
        shown = img(grid, f"{run.name} samples, {prior} prior") if grid else not_available("grid", f"no samples-{prior}.png")
        parts.append(f"<p>{esc(result.get('prior_description') or prior)}; {value(result.get('samples'))} samples:</p>"
                     f'<div class="grid">{shown}</div>{table}')
    return "".join(parts)


def latent_section(run: Run) -> str:
    evaluation = run.evaluation
    if evaluation is None:
        why = run.problems.get("evaluation.json", "the run has no evaluation.json")
        return (not_available("evaluation and latent diagnostics", why)
                + f"<p>Compute them with <code>vaelab evaluate {esc(shlex.quote(str(run.folder)))}</code>, "
                "then rerun the report.</p>")
    # What was evaluated in one line, then every other scalar evaluate wrote, in its order, with
    # its unit or note (e.g. why bits/dim is null); keys it may add later show up too.
    # checkpoint_note: the numbers are not of the checkpoint asked for (a run with no best.pt); said beside it.
    said = {"checkpoint": f" ({evaluation['checkpoint_note']})" if evaluation.get("checkpoint_note") else ""}
    context = ", ".join(f"{k} {evaluation[k]}{said.get(k, '')}" for k in CONTEXT_KEYS if k in evaluation)
    units = evaluation.get("units") if isinstance(evaluation.get("units"), dict) else {}
    shown = lambda v: format_number(v) if isinstance(v, float) else "—" if v is None else v  # noqa: E731
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(shown(v))}</td>"
                   f"<td>{esc(evaluation.get(f'{k}_note') or units.get(k) or '')}</td></tr>"
                   for k, v in evaluation.items() if not isinstance(v, (list, dict)) and not k.endswith("_note")
                   and k not in CONTEXT_KEYS and k not in HIDDEN_KEYS)
    parts = [f"<p>{esc(context)}</p>" if context else "",
             f'<table class="evaluation"><tr><th>metric</th><th>value</th><th>unit / note</th></tr>{rows}</table>']
    family = evaluation.get("family") if isinstance(evaluation.get("family"), str) else run.family
    if family == "vq":
        parts.append(codebook_summary(evaluation))
        return "".join(parts)
    kl = evaluation.get("kl_per_dim")
    latent = evaluation.get("latent")
    # spatial: the latent is [channels, h, w] and kl_per_dim has one entry per channel
    unit = "channel" if family == "spatial" or isinstance(latent, list) else "dimension"
    if isinstance(kl, list) and kl and all(compare.number(v) is not None for v in kl):
        count = latent if isinstance(latent, int) else len(kl)
        parts.append(kl_chart([float(v) for v in kl], evaluation.get("active_units"), count, run.name, unit))
    else:
        parts.append(not_available(f"KL per latent {unit}", "no finite kl_per_dim list in evaluation.json"))
    return "".join(parts)


def codebook_summary(evaluation: dict) -> str:
    """A vq run's latent diagnostics: how much of the codebook it uses (it has no KL)."""
    usage, perplexity = compare.number(evaluation.get("codebook_usage")), compare.number(evaluation.get("perplexity"))
    if usage is None and perplexity is None:
        return not_available("codebook usage", "no codebook_usage or perplexity in evaluation.json")
    latent = evaluation.get("latent")
    shape = f" (latent {'x'.join(map(str, latent))})" if isinstance(latent, list) else ""
    said = []
    if usage is not None:
        said.append(f"codebook usage {format_number(usage)}: {usage:.1%} of the codes used on the split")
    if perplexity is not None:
        said.append(f"perplexity {format_number(perplexity)} codes (exp of the entropy of the code frequencies)")
    return (f'<p class="codebook">Quantized latent{esc(shape)}: {esc("; ".join(said))}. '
            "A quantized latent has no KL, so there is no KL chart.</p>")


def kl_chart(kl: list[float], active, latent: int, name: str, unit: str = "dimension") -> str:
    """Bars of the KL of each latent dimension (vector) or channel (spatial, summed over positions)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.bar(range(len(kl)), kl, width=0.8, color="C0")
    counted = f"; active units {active} of {latent}" if isinstance(active, int) else ""
    ax.set(xlabel=f"latent {unit}", ylabel="KL (nats)", title=f"KL per latent {unit}{counted}")
    if unit == "channel":
        ax.set_xticks(range(len(kl)))
    ax.grid(True, axis="y", alpha=0.3)
    return figure_img(figure, f"{name} KL per latent {unit}")
