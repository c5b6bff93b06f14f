"""`vaelab prior` and the samples it gives: a PixelCNN over a vq run's codes (exact resume, tag
conditioning, --fresh keeps the old one), a Gaussian mixture over a vector run's latents, and
`vaelab sample` saying which prior it used. Tiny runs (16 px, one epoch) trained once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import cli
from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.experiments import prior as priors
from vaelab.experiments import sampling, use
from vaelab.runs.loaded import load_run

SIZE = 16
SMALL_PRIOR = ["prior.channels=8", "prior.layers=2", "prior.kernel=3", "prior.batch_size=8"]


def make_images(folder: Path, count: int = 40) -> Path:
    """Gradients with a bright block; tagged 'red' or 'blue' by the block's colour."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        pixels = np.linspace(0, 1, 24)[None, :, None] * rng.integers(60, 220, 3)[None, None, :]
        pixels = np.repeat(pixels, 32, axis=0)
        red = i % 2 == 0
        pixels[:10, :10] = (230, 20, 20) if red else (20, 20, 230)
        name = f"figure-{i:03d}.png"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
        records.append({"file": name, "tags": ["red" if red else "blue", "figure"]})
    (folder / "metadata.json").write_text(json.dumps(records))
    return folder


def train(tmp: Path, images: Path, model: str, name: str) -> Path:
    from vaelab.runs.session import train_run

    config = load_config(None, [
        f"data.images={images}", f"data.metadata={images / 'metadata.json'}", f"data.size=[{SIZE}, {SIZE}]",
        "data.fit=pad", "data.workers=0", "data.val_fraction=0.3", f"data.cache_dir={tmp / 'cache'}",
        f"model={model}", "train.epochs=1", "train.batch_size=4", f"run.root={tmp / name}",
        "run.tensorboard=false", "run.images=2"])
    return train_run(config, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("prior")
    images = make_images(tmp / "images")
    return {
        "vq": train(tmp, images, "{kind: vq, channels: [8, 16], norm_groups: 8, code_dim: 4, codebook_size: 16}", "vq"),
        "vector": train(tmp, images, "{conv: [{filters: 8, kernel: 3, stride: 2}], dense: 16, latent: 4}", "vector"),
        "spatial": train(tmp, images, "{kind: spatial, channels: [8, 16], norm_groups: 8, z_channels: 1}", "spatial"),
    }


def copy_of(run_dir: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_a_pixelcnn_prior_over_vq_codes_and_sampling_from_it(runs, tmp_path, capsys):
    run_dir = copy_of(runs["vq"], tmp_path)
    summary = priors.fit_prior(run_dir, SMALL_PRIOR + ["prior.epochs=2"], device="cpu", progress=False, log=lambda m: None)
    folder = run_dir / "prior"
    for name in ("config.yaml", "latents.safetensors", "metrics.jsonl", "pixelcnn.safetensors", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (folder / name).is_file(), name
    assert summary["kind"] == "pixelcnn" and summary["codes"] == 16 and summary["code_shape"] == [8, 8]
    assert summary["train_images"] + summary["val_images"] == 40 and summary["val_images"] >= 10
    assert summary["epochs"] == 2
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 < r["val_bits_per_code"] < 8 for r in records)
    assert summary["val_bits_per_code"] == min(r["val_bits_per_code"] for r in records)
    assert json.loads((folder / "summary.json").read_text()) == summary

    cli.main(["sample", str(run_dir), "-n", "4", "--seed", "2", "--out", str(tmp_path / "a.png"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "prior: the gated PixelCNN over the codes" in out and "bits/code" in out
    b, description = use.sample(run_dir, tmp_path / "b.png", count=4, seed=2, device="cpu")
    c, _ = use.sample(run_dir, tmp_path / "c.png", count=4, seed=3, device="cpu")
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(b)) and not np.array_equal(pixels(b), pixels(c))
    # The decoded codes are the PixelCNN's own draw, decoded by the vq model.
    run = load_run(run_dir, device="cpu")
    draw = sampling.draw_latents(run, 4, seed=2)
    fitted = sampling.load_prior(run)
    expected = fitted.network.sample(4, (8, 8), torch.Generator().manual_seed(2))
    assert draw.codes and draw.prior == "pixelcnn" and torch.equal(draw.latents, expected)
    greedy = sampling.draw_latents(run, 2, seed=0, top_k=1).latents
    assert torch.equal(greedy, sampling.draw_latents(run, 2, seed=5, top_k=1).latents)

    with pytest.raises(VaelabError, match="not conditioned on tags"):
        sampling.draw_latents(run, 2, tags=["red"])
    damaged = copy_of(run_dir, tmp_path, "damaged")
    (damaged / "prior" / "pixelcnn.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(VaelabError, match="pixelcnn.safetensors: not readable"):
        sampling.draw_latents(load_run(damaged, device="cpu"), 2)
    (damaged / "prior" / "config.yaml").write_text("prior: [")
    with pytest.raises(VaelabError, match="config.yaml: not a readable prior config"):
        sampling.draw_latents(load_run(damaged, device="cpu"), 2)
    with pytest.raises(VaelabError, match=r"--prior normal: a vq run's latent is a map of codes, where N\(0, I\) has no meaning"):
        sampling.draw_latents(run, 2, prior="normal")  # N(0, I) means nothing for codes


def test_the_pixelcnn_prior_resumes_exactly(runs, tmp_path):
    straight = copy_of(runs["vq"], tmp_path, "straight")
    resumed = copy_of(runs["vq"], tmp_path, "resumed")
    quiet = dict(device="cpu", progress=False, log=lambda m: None)
    priors.fit_prior(straight, SMALL_PRIOR + ["prior.epochs=3"], **quiet)
    priors.fit_prior(resumed, SMALL_PRIOR + ["prior.epochs=1"], **quiet)
    # A kill after epoch 2 of 3: the last epoch's line and checkpoint never happened.
    priors.fit_prior(resumed, ["prior.epochs=2"], **quiet)
    priors.fit_prior(resumed, ["prior.epochs=3"], **quiet)
    a = torch.load(straight / "prior/checkpoints/last.pt", weights_only=True)
    b = torch.load(resumed / "prior/checkpoints/last.pt", weights_only=True)
    assert a["network"].keys() == b["network"].keys()
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"])
    lines = lambda run: [{k: v for k, v in json.loads(line).items() if k != "time_s"}  # noqa: E731
                         for line in (run / "prior/metrics.jsonl").read_text().splitlines()]
    assert lines(straight) == lines(resumed) and len(lines(straight)) == 3
    # Running it again when it is done trains nothing more.
    before = (resumed / "prior/metrics.jsonl").read_text()
    priors.fit_prior(resumed, (), **quiet)
    assert (resumed / "prior/metrics.jsonl").read_text() == before


def test_other_settings_need_fresh_and_fresh_keeps_the_old_prior(runs, tmp_path):
    run_dir = copy_of(runs["vq"], tmp_path)
    quiet = dict(device="cpu", progress=False, log=lambda m: None)
    priors.fit_prior(run_dir, SMALL_PRIOR + ["prior.epochs=1"], **quiet)
    with pytest.raises(VaelabError, match=r"holds a prior with other settings \(channels\); add --fresh"):
        priors.fit_prior(run_dir, ["prior.channels=16"], **quiet)
    (run_dir / "prior" / "config.yaml").write_text("channels: [")
    with pytest.raises(VaelabError, match=r"prior/config.yaml: not a prior config; add --fresh"):
        priors.fit_prior(run_dir, (), **quiet)
    priors.fit_prior(run_dir, SMALL_PRIOR + ["prior.epochs=1", "prior.tags=true"], fresh=True, **quiet)
    kept = list(run_dir.glob("prior-replaced-*"))
    assert len(kept) == 1 and (kept[0] / "pixelcnn.safetensors").is_file()

    run = load_run(run_dir, device="cpu")
    tags = sampling.load_prior(run).summary["tags"]
    assert tags[0] == "figure" and sorted(tags) == ["blue", "figure", "red"]  # the most frequent first
    red = sampling.draw_latents(run, 3, seed=0, tags=["red"])
    assert red.latents.shape == (3, 8, 8) and "tags red" in red.description
    network = sampling.load_prior(run).network
    as_red, as_blue = (sampling.tag_condition(tags, [name], 3) for name in ("red", "blue"))
    assert not torch.allclose(network(red.latents, as_red), network(red.latents, as_blue))
    with pytest.raises(VaelabError, match=r"--tag 'rde': not a tag the prior was trained with; did you mean 'red'\?"):
        sampling.draw_latents(run, 2, tags=["rde"])


def test_a_mixture_prior_for_a_vector_run(runs, tmp_path, capsys):
    run_dir = copy_of(runs["vector"], tmp_path)
    normal_before, said = use.sample(run_dir, tmp_path / "before.png", count=4, seed=0, device="cpu")
    assert said.startswith("N(0, I) (no learned prior")

    cli.main(["prior", str(run_dir), "--set", "prior.components=[1, 2]", "--device", "cpu"])
    captured = capsys.readouterr()
    assert "prior: Gaussian mixture of" in captured.out and "nats per latent float" in captured.out
    summary = json.loads((run_dir / "prior/summary.json").read_text())
    assert summary["kind"] == "mixture" and summary["latent_shape"] == [4]
    assert {(c["components"], c["covariance"]) for c in summary["candidates"]} == {(1, "full"), (2, "full"), (1, "diag"), (2, "diag")}
    best = max(summary["candidates"], key=lambda c: c["val_nats_per_float"])
    assert (summary["components"], summary["covariance"]) == (best["components"], best["covariance"])

    run = load_run(run_dir, device="cpu")
    draw = sampling.draw_latents(run, 5, seed=0)
    assert draw.prior == "mixture" and draw.latents.shape == (5, 4) and not draw.codes
    expected = sampling.load_prior(run).mixture.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(draw.latents, expected)
    after, said = use.sample(run_dir, tmp_path / "after.png", count=4, seed=0, device="cpu")
    assert said.startswith("a Gaussian mixture of")
    normal, said = use.sample(run_dir, tmp_path / "normal.png", count=4, seed=0, device="cpu", prior="normal")
    assert said == "N(0, I)" and np.array_equal(pixels(normal), pixels(normal_before))
    assert not np.array_equal(pixels(after), pixels(normal))
    with pytest.raises(VaelabError, match="--top-k: only an autoregressive prior"):
        sampling.draw_latents(run, 2, top_k=3)


def test_bad_prior_requests_are_one_line_errors(runs, tmp_path, capsys):
    vector = copy_of(runs["vector"], tmp_path)
    for args, expected in [
        (["prior", str(vector), "--set", "prior.kind=pixelcnn"], "a PixelCNN models codes (vq runs)"),
        (["prior", str(vector), "--set", "prior.chanels=8"], "unknown key 'prior.chanels'; did you mean 'prior.channels'?"),
        (["prior", str(vector), "--set", "epochs=8"], "a prior's keys start with 'prior.'"),
        (["prior", str(vector), "--set", "prior.kernel=4"], "prior.kernel: must be odd"),
        (["sample", str(vector), "--prior", "learned", "--out", str(tmp_path / "s.png")], "no learned prior in"),
        (["sample", str(vector), "--tag", "red", "--out", str(tmp_path / "s.png")], "not conditioned on tags"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args + ["--device", "cpu"])
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert exit_info.value.code == 2, args
        assert "Traceback" not in captured.err and len(err.splitlines()) == 1 and expected in err, (args, err)
    assert not (vector / "prior").exists() and not (tmp_path / "s.png").exists()


def test_evaluate_samples_judges_each_prior_and_keeps_the_others(runs, tmp_path, capsys):
    run_dir = copy_of(runs["vector"], tmp_path)
    priors.fit_prior(run_dir, ["prior.components=[1, 2]"], device="cpu", progress=False, log=lambda m: None)
    cli.main(["evaluate", str(run_dir), "--samples", "16", "--prior", "normal", "--device", "cpu"])
    assert "C2ST" in capsys.readouterr().out
    cli.main(["evaluate", str(run_dir), "--samples", "16", "--device", "cpu", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert set(result["samples"]) == {"normal", "mixture"}  # the first evaluation's is kept
    assert json.loads((run_dir / "evaluation.json").read_text())["samples"] == result["samples"]
    val_images = result["images"]
    for name, judged in result["samples"].items():
        c2st = judged["c2st"]
        assert judged["prior"] == name and judged["samples"] == 16 and Path(judged["grid"]).is_file()
        assert c2st["tested"] == 2 * min(16, val_images) and 0 <= c2st["accuracy"] <= 1
        assert c2st["ci95"][0] <= c2st["accuracy"] <= c2st["ci95"][1]
        assert judged["c2st_decoded"]["tested"] == c2st["tested"]
        assert judged["nn_sample_to_train"]["min"] <= judged["nn_sample_to_train"]["median"]
        assert judged["nn_ratio"] == pytest.approx(judged["nn_sample_to_train"]["median"] / judged["nn_val_to_train"]["median"])
    # Samples of one seed are the same however often they are judged: the same C2ST.
    cli.main(["evaluate", str(run_dir), "--samples", "16", "--prior", "normal", "--device", "cpu", "--json"])
    again = json.loads(capsys.readouterr().out)["samples"]["normal"]
    assert again["c2st"] == result["samples"]["normal"]["c2st"]
    # The region is the content box every real image shares (portrait 24x32 letterboxed: 12 x 16).
    assert result["samples"]["normal"]["region"] == {"top": 0, "left": 2, "height": 16, "width": 12}

    # The report shows each prior's grid beside its numbers.
    from vaelab.experiments.report import report_command

    page = report_command([run_dir]).read_text(encoding="utf-8")
    for prior in ("normal", "mixture"):
        assert f'alt="{run_dir.name} samples, {prior} prior"' in page and f"<th>{prior} prior</th>" in page
    accuracy = result["samples"]["mixture"]["c2st"]["accuracy"]
    assert "C2ST accuracy (0.5 = indistinguishable)" in page and f"{accuracy:.4g}"[:4] in page

    # compare reads them as metrics of the last epoch.
    from vaelab.experiments import compare

    last = compare.load_run(run_dir).metrics[-1]
    assert last["c2st_decoded_mixture"] == result["samples"]["mixture"]["c2st_decoded"]["accuracy"]
    assert last["c2st_mixture"] == accuracy and last["nn_ratio_normal"] == result["samples"]["normal"]["nn_ratio"]
    compared = compare.compare_runs([run_dir], metrics=["c2st_mixture", "c2st_normal"])
    assert json.dumps(compared).count(str(accuracy)) >= 1

    # A plain evaluation keeps the sample results; too few samples for 5 folds is one line.
    cli.main(["evaluate", str(run_dir), "--device", "cpu", "--json"])
    assert set(json.loads(capsys.readouterr().out)["samples"]) == {"normal", "mixture"}
    with pytest.raises(SystemExit):
        cli.main(["evaluate", str(run_dir), "--samples", "4", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "need at least 10" in err


def test_a_mixture_prior_over_a_spatial_latent_map(runs, tmp_path):
    run_dir = copy_of(runs["spatial"], tmp_path)
    summary = priors.fit_prior(run_dir, ["prior.components=[1, 2]"], device="cpu", progress=False, log=lambda m: None)
    assert summary["kind"] == "mixture" and summary["latent_shape"] == [1, 8, 8]
    run = load_run(run_dir, device="cpu")
    draw = sampling.draw_latents(run, 3, seed=0)
    assert draw.prior == "mixture" and draw.latents.shape == (3, 1, 8, 8)
    path, said = use.sample(run_dir, tmp_path / "s.png", count=3, seed=0, device="cpu")
    assert said.startswith("a Gaussian mixture of") and path.is_file()
