"""`vaelab report`: one self-contained HTML page, checked as HTML and, where Debian's chromium is
installed (.ci/install-chromium.sh), rendered in headless Chromium.

Most tests write run folders by hand (config.yaml, metrics.jsonl, grids) to stay fast; one
trains a real two-epoch run on 32 px images whose metadata tag is `<script>alert(1)</script>`.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from optional import CHROMIUM, needs
from PIL import Image

from vaelab.config import load_config
from vaelab.data.grid import image_grid, save_png
from vaelab.errors import VaelabError
from vaelab.experiments.report import report_command, write_report
from vaelab.experiments.report_sections import MAX_WIDTH, STRIP_EPOCHS, spread
from vaelab.experiments.stats import format_number

SCRIPT_TAG = "<script>alert(1)</script>"
EVIL_NAME = "2026-01-01_09h00m00s_<img src=x onerror=alert(2)>&\"'"


# --------------------------------------------------------------------------------------------
# run folders by hand
# --------------------------------------------------------------------------------------------


def make_run(root: Path, name: str, overrides=(), epochs=5, size=16, images=4, evaluation=None,
             status="finished") -> Path:
    """A run folder as `vaelab train` leaves it: config, metrics, per-epoch grids, run.json."""
    folder = root / name
    folder.mkdir(parents=True)
    config = load_config(None, [f"data.size=[{size},{size}]", f"run.images={images}", *overrides])
    (folder / "config.yaml").write_text(config.to_yaml())
    rng = np.random.default_rng(len(name))
    rows = []
    for epoch in range(1, epochs + 1):
        recon = 3e5 / epoch
        rows.append({"epoch": epoch, "step": 10 * epoch, "time_s": 60.0 * epoch, "train_loss": recon * 1.1 + 400,
                     "train_recon": recon * 1.1, "train_kl": 400.0, "val_loss": recon + 400, "val_recon": recon,
                     "val_kl": 400.0, "val_mse": recon / 12288, "val_psnr": 10 + epoch, "lr": 1e-3,
                     "skipped_steps": 0, "rss_mb": 500.0 + epoch})
        pixels = rng.integers(0, 255, (2 * images, size, size, 3), dtype=np.uint8)
        save_png(image_grid(pixels, columns=images), folder / "reconstructions" / f"epoch-{epoch:04d}.png")
        save_png(image_grid(pixels, columns=8), folder / "samples" / f"epoch-{epoch:04d}.png")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "run.json").write_text(json.dumps({"status": status}))
    if evaluation is not None:
        (folder / "evaluation.json").write_text(json.dumps(evaluation))
    return folder


class Page(HTMLParser):
    """The parsed page: elements with their attributes, table rows as cell texts, and the text
    as a browser shows it."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self.in_cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self.in_cell:
            self.rows[-1][-1] += data

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.elements if name == tag]

    @property
    def plain(self) -> str:
        return "".join(self.text)


def images_in(page: Page) -> dict[str, Image.Image]:
    """alt text -> decoded inline image."""
    found = {}
    for attrs in page.all("img"):
        assert attrs["src"].startswith("data:image/png;base64,")
        found[attrs["alt"]] = Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1])))
    return found


def assert_self_contained(page: Page) -> None:
    """Nothing to fetch, nothing to run: data: images, in-page links, no script of any kind."""
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    for tag, attrs in page.elements:
        for key, value in attrs.items():
            assert not key.startswith("on"), (tag, key)
            if key in ("src", "href", "action", "srcset"):
                assert value.startswith(("data:image/png;base64,", "#")), (tag, key, value[:60])


# --------------------------------------------------------------------------------------------
# one run, several runs
# --------------------------------------------------------------------------------------------


def test_one_run_report_has_every_section_inline(tmp_path):
    run = make_run(tmp_path, "2026-01-01_10h00m00s", epochs=20)
    out = report_command([run])
    assert out == run / "report.html"  # default for one run: beside what it reports on
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert_self_contained(page)
    assert "default-src 'none'" in page.all("meta")[1]["content"]  # CSP: no script, no fetch
    assert not list(run.glob(".report.html.*"))  # the temporary file was renamed

    shown = images_in(page)
    for metric in ("val_loss", "val_recon", "val_kl", "val_psnr"):
        assert f"{metric} by epoch" in shown
    # The strip: the originals once, then up to 8 epochs from the first to the last.
    strip = [alt.removeprefix(f"{run.name} ") for alt in shown if alt.startswith(f"{run.name} epoch ")]
    assert strip == [f"epoch {e}" for e in spread(list(range(1, 21)), STRIP_EPOCHS)]
    assert strip[0] == "epoch 1" and strip[-1] == "epoch 20" and len(strip) == STRIP_EPOCHS
    originals = shown[f"{run.name} originals"]
    assert shown[f"{run.name} epoch 20"].size == originals.size == (4 * 18 + 2, 16 + 4)
    assert f"{run.name} samples" in shown and "epoch 20, decoded" in page.plain
    # No evaluation.json: the latent section says how to get one.
    assert "not available" in page.plain and f"vaelab evaluate {run}" in page.plain
    # The metrics table: final and best values.
    assert "best val loss (epoch)" in page.plain and "1.54e4 (20)" in page.plain
    assert "model:" in page.plain and "latent: 32" in page.plain  # the config as YAML


def test_spread_keeps_first_and_last():
    assert spread([1, 2, 3], 8) == [1, 2, 3]
    assert spread(list(range(1, 101)), 8) == [1, 15, 29, 43, 58, 72, 86, 100]


def test_comparison_shows_each_run_against_the_baseline(tmp_path, monkeypatch):
    base = make_run(tmp_path, "2026-01-01_10h00m00s")
    lr = make_run(tmp_path, "2026-01-01_11h00m00s", ["train.lr=1e-4"])
    relu = make_run(tmp_path, "2026-01-01_12h00m00s", ["model.activation=relu", "train.seed=3"])
    monkeypatch.chdir(tmp_path)
    out = report_command([base, lr, relu])
    assert out == Path("report.html")  # default for several runs: the current folder
    page = Page(out.read_text(encoding="utf-8"))
    assert_self_contained(page)
    text = page.plain
    assert "baseline: 2026-01-01_10h00m00s" in text
    for row in (["train.lr", "1e-3", "1e-4"], ["model.activation", "lrelu", "relu"], ["train.seed", "0", "3"]):
        assert row in page.rows  # key, baseline value, this run's value
    assert text.count("full config") == 2  # each non-baseline run's config, folded
    for label in ("train.lr=1e-4", "model.activation=relu"):
        assert label in text
    # Every run gets its own strip and samples.
    shown = images_in(page)
    for run in (base, lr, relu):
        assert f"{run.name} originals" in shown and f"{run.name} samples" in shown


def test_the_run_labelled_baseline_is_the_reference_even_when_given_later(tmp_path):
    lr = make_run(tmp_path, "b", ["train.lr=1e-4"])
    base1 = make_run(tmp_path, "a1")
    base2 = make_run(tmp_path, "a2", ["model.latent=64"])
    text = Page(write_report([lr, base1, base2], tmp_path / "r.html").read_text()).plain
    assert "baseline: a1" in text


def test_user_text_is_escaped(tmp_path):
    """Tags, folder names and evaluation keys are user data: they must show as text, never markup."""
    evaluation = {"<i>psnr</i>": 20.5, "kl_per_dim": [0.5, 0.0], "units": {"<i>psnr</i>": "<b>dB</b>"}}
    run = make_run(tmp_path, EVIL_NAME, [f"data.filter.include=['{SCRIPT_TAG}']"], evaluation=evaluation)
    other = make_run(tmp_path, "plain", ["train.lr=1e-4"])
    text = write_report([run, other], tmp_path / "report.html").read_text(encoding="utf-8")
    assert SCRIPT_TAG not in text and "<img src=x" not in text and "<i>" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert_self_contained(page)
    assert SCRIPT_TAG in page.plain and EVIL_NAME in page.plain and "<i>psnr</i>" in page.plain


def test_latent_diagnostics_from_evaluation_json(tmp_path):
    # As `vaelab evaluate` writes it (abridged).
    evaluation = {"run": "runs/r", "checkpoint": "best.pt", "epoch": 5, "data": {"images": "x", "filter": {}},
                  "recon": 5.8e4, "kl": 400.0, "elbo": -5.84e4, "mse": 0.01, "psnr": 20.0, "ssim": 0.6,
                  "bits_per_dim": None, "bits_per_dim_note": "not calibrated: mse_sum", "active_units": 3,
                  "latent": 4, "kl_per_dim": [2.0, 0.001, 1.5, 0.7], "units": {"kl": "nats", "psnr": "dB"}}
    run = make_run(tmp_path, "r", evaluation=evaluation)
    page = Page(write_report([run], tmp_path / "out.html").read_text())
    assert "r KL per latent dimension" in images_in(page)
    text = page.plain
    assert ["active_units", "3", ""] in page.rows and ["psnr", "20", "dB"] in page.rows
    assert ["bits_per_dim", "—", "not calibrated: mse_sum"] in page.rows
    assert "checkpoint best.pt, epoch 5" in text and "runs/r" not in text  # bookkeeping left out
    assert "vaelab evaluate" not in text

    # A run evaluated without best.pt: the page says which checkpoint the numbers are of, and why.
    note = "runs/f: no best.pt (no epoch has ended with a finite loss yet), so last.pt is used, after 0 completed epoch(s)"
    fallback = make_run(tmp_path, "f", evaluation={**evaluation, "checkpoint": "last.pt", "epoch": 0,
                                                   "checkpoint_requested": "best", "checkpoint_note": note})
    page = Page(write_report([fallback], tmp_path / "fallback.html").read_text())
    assert f"checkpoint last.pt ({note}), epoch 0" in page.plain
    assert not [row for row in page.rows if row and row[0].startswith("checkpoint")]


def test_missing_and_broken_files_make_sections_not_available(tmp_path):
    started = tmp_path / "started"  # only a config: no epoch finished yet
    started.mkdir()
    (started / "config.yaml").write_text(load_config(None).to_yaml())
    broken = make_run(tmp_path, "broken", epochs=2)
    (broken / "evaluation.json").write_text("{not json")
    (broken / "reconstructions" / "epoch-0002.png").write_bytes(b"\x89PNG\r\n half a file")
    (broken / "metrics.jsonl").open("a").write('{"epoch": 3, "val_lo')  # killed mid-line
    shutil.rmtree(broken / "samples")
    page = Page(write_report([started, broken], tmp_path / "report.html").read_text())
    text = page.plain
    assert "reconstructions: not available" in text and "samples: not available" in text
    assert "evaluation.json: cannot read it (JSONDecodeError)" in text
    assert "1 unparsable line(s) skipped" in text
    shown = images_in(page)
    assert "broken epoch 1" in shown and "broken epoch 2" not in shown  # the truncated grid is left out


def test_no_metrics_at_all_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(None).to_yaml())
    text = Page(write_report([run], tmp_path / "r.html").read_text()).plain
    assert "loss curves: not available" in text


def test_big_grids_are_downscaled(tmp_path):
    run = make_run(tmp_path, "big", size=128, images=16, epochs=2)
    page = Page(write_report([run], tmp_path / "r.html").read_text())
    width = images_in(page)["big epoch 2"].width
    assert width == MAX_WIDTH  # from 16 * 130 + 2 = 2082 px


def test_out_folder_and_bad_input(tmp_path):
    run = make_run(tmp_path / "runs", "r")
    assert write_report([run], tmp_path) == tmp_path / "report.html"
    with pytest.raises(VaelabError, match="not a folder"):
        write_report([tmp_path / "nope"], tmp_path / "x.html")
    with pytest.raises(VaelabError, match=r"holds run folders: pass them instead"):
        write_report([tmp_path / "runs"], tmp_path / "x.html")
    with pytest.raises(VaelabError, match="no run folders"):
        write_report([], tmp_path / "x.html")


# --------------------------------------------------------------------------------------------
# a real run, and the page in a browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """Two epochs on 12 tiny JPEGs whose every tag list holds SCRIPT_TAG, kept by data.filter.include."""
    from vaelab.runs.session import train_run

    root = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        width, height = [(48, 64), (64, 48), (56, 56)][i % 3]
        path = root / "photos" / f"set-{i // 4}" / f"standing-{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        records.append({"file": str(path.relative_to(root / "photos")), "tags": ["standing", SCRIPT_TAG],
                        "width": width, "height": height})
    (root / "metadata.json").write_text(json.dumps(records))
    config = load_config(None, [
        f"data.images={root / 'photos'}", f"data.metadata={root / 'metadata.json'}",
        f"data.filter.include=['{SCRIPT_TAG}']", "data.size=[32,32]", "data.val_fraction=0.25",
        "data.workers=0", "data.cache=false",
        "model.conv=[{filters: 4, kernel: 3, stride: 2}, {filters: 8, kernel: 3, stride: 2}]",
        "model.dense=16", "model.latent=4", "train.epochs=2", "train.batch_size=4",
        f"run.root={root / 'runs'}", "run.tensorboard=false", "run.images=4"])
    with pytest.MonkeyPatch.context() as patch:  # module scope: conftest's per-test cache is not set up yet
        patch.setenv("VAELAB_CACHE_DIR", str(root / "cache"))
        return train_run(config, progress=False)


def test_report_on_a_real_run(trained_run):
    out = report_command([trained_run])
    assert out == trained_run / "report.html"
    page = Page(out.read_text(encoding="utf-8"))
    assert_self_contained(page)
    shown = images_in(page)
    name = trained_run.name
    assert {f"{name} originals", f"{name} epoch 1", f"{name} epoch 2", f"{name} samples"} <= set(shown)
    assert "val_loss by epoch" in shown
    assert f"- {SCRIPT_TAG}" in page.plain  # the include filter, in the YAML, as text
    assert "finished" in page.plain




def headless(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium with nothing in the background, its console written to stderr."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    # Chromium logs every console message and uncaught exception of the page as
    # `...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)`.
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@needs("chromium")
def test_report_renders_in_headless_chromium_with_no_console_errors(trained_run, tmp_path):
    # A second, hand-made run beside the real one, in a folder whose name is markup, so the
    # comparison page (labels, config diff) is rendered too.
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    config["train"]["lr"] = 1e-4
    other = tmp_path / EVIL_NAME
    shutil.copytree(trained_run, other, ignore=shutil.ignore_patterns("checkpoints", "source", "report.html"))
    (other / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = write_report([trained_run, other], tmp_path / "report.html")

    # The detector must see a console error on this build of chromium, or its silence below means nothing.
    canary = tmp_path / "canary.html"
    canary.write_text("<!DOCTYPE html><p>x</p><script>console.error('canary'); missing();</script>")
    seen = console_messages(headless(canary, tmp_path / "profile-canary", "--dump-dom").stderr)
    assert any("canary" in line for line in seen) and any("Uncaught" in line for line in seen)

    rendered = headless(out, tmp_path / "profile", "--dump-dom")
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert console_messages(rendered.stderr) == []
    dom = Page(rendered.stdout)  # the DOM after the browser parsed the page
    assert not dom.all("script"), "a tag or name was parsed as an element"
    assert all(attrs["src"].startswith("data:image/png;base64,") for attrs in dom.all("img"))
    assert SCRIPT_TAG in dom.plain and EVIL_NAME in dom.plain  # shown as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.stdout
    assert len(dom.all("img")) >= 10  # curves, two strips, two sample grids


# --------------------------------------------------------------------------------------------
# the spatial and vq families
# --------------------------------------------------------------------------------------------

FAMILY_MODELS = {
    "spatial": "{kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 2}",
    "vq": "{kind: vq, channels: [8, 16], norm_groups: 8, code_dim: 4, codebook_size: 16}",
}


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny spatial and vq run (16 px, two epochs), each evaluated."""
    from vaelab.experiments.evaluate import evaluate_run
    from vaelab.runs.session import train_run

    root = tmp_path_factory.mktemp("families")
    rng = np.random.default_rng(1)
    for i in range(12):
        width, height = [(48, 64), (64, 48), (56, 56)][i % 3]
        path = root / "photos" / f"set-{i // 4}" / f"standing-{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    runs = {}
    with pytest.MonkeyPatch.context() as patch:  # module scope: conftest's per-test cache is not set up yet
        patch.setenv("VAELAB_CACHE_DIR", str(root / "cache"))
        for family, model in FAMILY_MODELS.items():
            config = load_config(None, [
                f"data.images={root / 'photos'}", "data.size=[16,16]", "data.val_fraction=0.25", "data.workers=0",
                "data.cache=false", f"model={model}", "train.epochs=2", "train.batch_size=4",
                f"run.root={root / family}", "run.tensorboard=false", "run.images=4"])
            runs[family] = train_run(config, progress=False)
            evaluate_run(runs[family], device="cpu")
    return runs


def test_report_on_a_spatial_run_charts_kl_per_latent_channel(family_runs):
    run = family_runs["spatial"]
    page = Page(report_command([run]).read_text(encoding="utf-8"))
    assert_self_contained(page)
    shown = images_in(page)
    assert f"{run.name} KL per latent channel" in shown and f"{run.name} samples" in shown
    assert {"val_loss by epoch", "val_kl by epoch", f"{run.name} epoch 2"} <= set(shown)
    assert "val_codebook_usage by epoch" not in shown  # a vq run's curve only
    evaluation = json.loads((run / "evaluation.json").read_text())
    active = next(row for row in page.rows if row and row[0] == "active_units")
    assert active[1] == str(evaluation["active_units"]) and "latent channels" in active[2]
    assert len(evaluation["kl_per_dim"]) == 2
    assert "not available" not in page.plain


def test_report_on_a_vq_run_shows_the_codebook_and_no_samples(family_runs):
    run = family_runs["vq"]
    assert not (run / "samples").exists()  # no prior, so training writes no sample grids
    page = Page(report_command([run]).read_text(encoding="utf-8"))
    assert_self_contained(page)
    shown = images_in(page)
    assert {"val_loss by epoch", "val_codebook_usage by epoch", "val_perplexity by epoch",
            "val_commitment by epoch"} <= set(shown)
    assert "val_kl by epoch" not in shown  # val_kl is null for every epoch
    assert not any("KL per latent" in alt for alt in shown) and f"{run.name} epoch 2" in shown
    text = " ".join(page.plain.split())
    assert "samples: not available (a model.kind vq run samples from a prior over its codes" in text
    assert f"'vaelab prior {run}'" in text
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert 0 < evaluation["codebook_usage"] <= 1
    assert f"codebook usage {format_number(evaluation['codebook_usage'])}" in text and "perplexity" in text
    assert "A quantized latent has no KL" in text
    kl_row = next(row for row in page.rows if row and row[0] == "kl")
    assert kl_row[1] == "—" and "no density" in kl_row[2]


def test_report_compares_runs_of_different_families(family_runs, tmp_path):
    import warnings

    runs = [family_runs["spatial"], family_runs["vq"]]
    with warnings.catch_warnings():
        # The runs differ in every family-specific key; a legend listing them all left matplotlib
        # no room for the axes ("constrained_layout not applied"): the legend is cut short.
        warnings.simplefilter("error")
        page = Page(write_report(runs, tmp_path / "report.html").read_text(encoding="utf-8"))
    assert_self_contained(page)
    shown = images_in(page)
    assert f"{runs[0].name} KL per latent channel" in shown and f"{runs[0].name} samples" in shown
    assert "val_kl by epoch" in shown and "val_codebook_usage by epoch" in shown  # each family's own curves
    assert "model.kind" in page.plain  # the config difference between the two
    # Both runs may start in the same second and share a folder name (in different roots): the label tells them apart.
    metrics = [row for row in page.rows if row and row[0] == runs[1].name and row[1] == "model.kind=vq"]
    assert metrics and metrics[0][8] == "—"  # the vq run's val KL column
