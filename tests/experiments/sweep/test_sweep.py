"""`vaelab sweep`: plan validation, running pairs, skipping finished ones, resuming unfinished
ones, --workers, and the journal.

Trained runs are tiny (16 px images from `photo_folder`, a 2-layer model, 2 epochs of 2
batches). Journal tests use hand-written run folders, so their numbers are known exactly.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from vaelab.errors import VaelabError
from vaelab.experiments.sweep import local as sweep
from vaelab.experiments.sweep.local import sweep_command
from vaelab.experiments.sweep.plan import load_plan
from vaelab.experiments.sweep.records import match_key, pair_state, scan_runs
from vaelab.runs.session import train_run

VERDICTS = ("better", "worse", "no significant difference", "not assessable")


def write_base(folder: Path, images: Path) -> Path:
    path = folder / "base.yaml"
    path.write_text(textwrap.dedent(f"""\
        data: {{images: {images}, size: [16, 16], val_fraction: 0.25, workers: 0}}
        model:
          conv: [{{filters: 4, kernel: 3, stride: 2}}, {{filters: 8, kernel: 3, stride: 2}}]
          dense: 16
          latent: 4
        train: {{epochs: 2, batch_size: 4, lr: 0.003, device: cpu}}
        run: {{checkpoint_minutes: null, tensorboard: false, images: 0}}
        """))
    return path


def write_plan(folder: Path, text: str, name: str = "plan.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


PLAN = """\
    baseline: base.yaml
    root: {root}
    seeds: {seeds}
    set: {{train.epochs: 2}}
    variants:
      - name: sigmoid
        set: {{model.output_activation: sigmoid}}
        hypothesis: a bounded <script>alert(1)</script> output | fits unit pixels
    """


@pytest.fixture
def base(tmp_path, photo_folder) -> Path:
    return write_base(tmp_path, photo_folder)


def plan_file(tmp_path: Path, root: str = "sweep", seeds: str = "[0, 1]") -> Path:
    return write_plan(tmp_path, PLAN.format(root=tmp_path / root, seeds=seeds))


def run_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "run.json").is_file())


def pair_names(runs: list[Path]) -> list[str]:
    """Run folder names without their start time: the sweep's pair keys."""
    return sorted(re.sub(r"^\d{4}-\d\d-\d\d_\d\dh\d\dm\d\ds_", "", p.name) for p in runs)


def status(folder: Path) -> str:
    return json.loads((folder / "run.json").read_text())["status"]


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("baseline: base.yaml\nseeds: [0]\nvariant: []\n", r"unknown key 'variant'; did you mean 'variants'\?"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: a, set: {train.lr: 0.01}, hypotesis: x}\n",
     r"variants\[0\]: unknown key 'hypotesis'; did you mean 'hypothesis'\?"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: ok, set: {train.lr: 0.01}}\n"
     "  - {name: fast, set: {train.lrr: 0.01}}\n",
     r"variant 'fast': set: unknown key 'train.lrr'; did you mean 'train.lr'\?"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: neg, set: {train.lr: -1}}\n",
     r"variant 'neg': .*train\.lr"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: same, set: {model.latent: 4}}\n",
     r"variant 'same': set \{model\.latent: 4\} changes nothing relative to the baseline"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: io, set: {run.images: 8, data.workers: 1}}\n",
     r"variant 'io': .*changes nothing"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: a, set: {train.lr: 0.01}}\n"
     "  - {name: a, set: {train.lr: 0.02}}\n", r"variant 'a': the name is used twice"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: a, set: {train.lr: 0.01}}\n"
     "  - {name: b, set: {train: {lr: 0.01}}}\n",
     r"variant 'b': runs exactly the same config as variant 'a'"),
    ("baseline: base.yaml\nseeds: []\nvariants:\n  - {name: a, set: {train.lr: 0.01}}\n", r"seeds: give a non-empty list"),
    ("baseline: base.yaml\nseeds: [0]\nset: {train.seed: 3}\nvariants:\n  - {name: a, set: {train.lr: 0.01}}\n",
     r"set: train\.seed is set by the sweep; list seeds under 'seeds:'"),
    ("baseline: nowhere.yaml\nseeds: [0]\nvariants:\n  - {name: a, set: {train.lr: 0.01}}\n",
     r"baseline: nowhere\.yaml not found"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: baseline, set: {train.lr: 0.01}}\n",
     r"'baseline' is the name of the baseline group"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: 'a b', set: {train.lr: 0.01}}\n", r"must be a plain name"),
    ("baseline: base.yaml\nseeds: [0]\nvariants:\n  - {name: a}\n", r"variant 'a': no 'set:'"),
])
def test_plan_errors_name_the_problem(tmp_path, base, text, message):
    plan = write_plan(tmp_path, text)
    with pytest.raises(VaelabError, match=message):
        load_plan(plan)


def test_plan_resolves_baseline_pairs_and_changes(tmp_path, base, monkeypatch):
    (tmp_path / "plans").mkdir()
    plan_path = write_plan(tmp_path / "plans", """\
        baseline: base.yaml          # not beside the plan: found relative to the cwd
        seeds: [3, 5]
        set: {train: {epochs: 1}}    # a nested mapping is merged, not a replacement of train
        variants:
          - name: k5
            set: {model.conv: [{filters: 4, kernel: 5, stride: 2}, {filters: 8, kernel: 5, stride: 2}]}
          - name: lr
            set: {train.lr: 1e-4}    # YAML 1.1 reads this as text; the config makes it a number
        """)
    monkeypatch.chdir(tmp_path)
    plan = load_plan(plan_path)
    assert plan.baseline == base
    assert plan.folder == tmp_path / "runs" / "sweeps" / "plan"  # default root, relative to the cwd
    assert [p.key for p in plan.pairs] == ["baseline-s3", "baseline-s5", "k5-s3", "k5-s5", "lr-s3", "lr-s5"]
    lr5 = plan.pairs[-1].config
    assert (lr5.train.lr, lr5.train.epochs, lr5.train.batch_size, lr5.train.seed) == (1e-4, 1, 4, 5)
    assert (lr5.run.root, lr5.run.name) == (plan.folder, "lr-s5")
    assert plan.variants[1].changes[0][0] == "model.conv"
    assert plan.variants[2].changes == [("train.lr", 0.003, 1e-4)]


# --------------------------------------------------------------------------------------------
# running, restarting, resuming
# --------------------------------------------------------------------------------------------


def test_sweep_runs_every_pair_writes_the_journal_and_skips_finished_pairs_on_restart(tmp_path, base, monkeypatch):
    plan_path = plan_file(tmp_path)
    folder = sweep_command(plan_path)

    runs = run_folders(folder)
    names = pair_names(runs)
    assert names == ["baseline-s0", "baseline-s1", "sigmoid-s0", "sigmoid-s1"]
    assert all(status(p) == "finished" for p in runs)
    state = json.loads((folder / "sweep.json").read_text())["pairs"]
    assert {k: v["status"] for k, v in state.items()} == dict.fromkeys(names, "finished")
    assert {v["run"] for v in state.values()} == {p.name for p in runs}

    table = [line for line in (folder / "journal.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in table] == ["| baseline", "| sigmoid"]
    sigmoid = table[1]
    assert "model.output_activation: none → sigmoid" in sigmoid and "2/2" in sigmoid
    assert "\\|" in sigmoid  # the hypothesis' pipe does not split the row
    assert re.search(r"\[[-+][\d.e-]+, [-+][\d.e-]+\]", sigmoid)  # a delta with its CI
    assert sigmoid.rstrip(" |").split(" | ")[-1].startswith(VERDICTS)
    assert "Welch's t-test" in (folder / "journal.md").read_text()
    page = (folder / "journal.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page

    # Restart: every pair is finished, so nothing trains and no folder appears.
    def no_training(*args, **kwargs):
        raise AssertionError("train_run called for a finished pair")

    monkeypatch.setattr(sweep, "train_run", no_training)
    before = {p.name: (p / "metrics.jsonl").read_text() for p in runs}
    assert sweep_command(plan_path) == folder
    assert sweep_command(plan_path, journal_only=True) == folder
    assert {p.name: (p / "metrics.jsonl").read_text() for p in run_folders(folder)} == before


def test_an_unfinished_pair_is_resumed_in_its_own_folder(tmp_path, base, monkeypatch):
    plan = load_plan(plan_file(tmp_path, seeds="[0]"))
    # What a sweep killed during baseline-s0's second epoch leaves: a folder with epoch 1 saved
    # and run.json still saying "running" (a SIGKILL gives the run no chance to say more).
    first = plan.pairs[0].config.model_copy(deep=True)
    first.train.epochs = 1
    killed = train_run(first)
    run_json = json.loads((killed / "run.json").read_text())
    (killed / "run.json").write_text(json.dumps({**run_json, "status": "running"}))
    assert pair_state(plan.pairs[0], scan_runs(plan.folder)[match_key(plan.pairs[0].config)], None)[0] == "resume"

    calls = []

    def spy(config, resume=None, **kwargs):
        calls.append((config.run.name, resume))
        return train_run(config, resume=resume, **kwargs)

    monkeypatch.setattr(sweep, "train_run", spy)
    sweep_command(plan.path)
    assert calls == [("baseline-s0", killed), ("sigmoid-s0", None)]
    assert len(run_folders(plan.folder)) == 2
    assert status(killed) == "finished"
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert "resumed at epoch 2" in (killed / "log.txt").read_text()


def test_workers_run_pairs_in_parallel_processes(tmp_path, base):
    folder = sweep_command(plan_file(tmp_path, root="parallel"), workers=2)
    runs = run_folders(folder)
    assert pair_names(runs) == ["baseline-s0", "baseline-s1", "sigmoid-s0", "sigmoid-s1"]
    assert all(status(p) == "finished" for p in runs)
    state = json.loads((folder / "sweep.json").read_text())["pairs"]
    assert all(v["status"] == "finished" for v in state.values()) and len(state) == 4
    env = json.loads((runs[0] / "env.json").read_text())
    assert env["torch_threads"] == max(1, sweep.cpu_count() // 2)
    assert "finished: 2/2 epochs" in (folder / "logs" / "baseline-s0.log").read_text()
    assert "| sigmoid |" in (folder / "journal.md").read_text()


def test_a_failed_pair_is_reported_after_the_others_ran(tmp_path, base, monkeypatch):
    plan = load_plan(plan_file(tmp_path, seeds="[0, 1]"))
    trained = []

    def fake_train(config, resume=None, **kwargs):
        trained.append(config.run.name)
        if config.run.name == "sigmoid-s0":
            raise RuntimeError("out of memory")
        return fake_folder(config, 100.0 + config.train.seed, 20.0)

    monkeypatch.setattr(sweep, "train_run", fake_train)
    with pytest.raises(VaelabError, match=r"1 pair\(s\) did not finish: sigmoid-s0: failed \(RuntimeError: out of memory\)"):
        sweep_command(plan.path)
    assert trained == ["baseline-s0", "baseline-s1", "sigmoid-s0", "sigmoid-s1"]
    state = json.loads((plan.folder / "sweep.json").read_text())["pairs"]
    assert state["sigmoid-s0"]["status"] == "failed" and "out of memory" in state["sigmoid-s0"]["error"]
    assert journal_rows(plan.folder)["sigmoid"][3] == "1/2"  # the journal is written with what finished
    assert "sigmoid seed 0: failed; left out" in (plan.folder / "journal.md").read_text()


# --------------------------------------------------------------------------------------------
# the journal, from hand-written run folders
# --------------------------------------------------------------------------------------------


def fake_run(pair, val_loss: float, psnr: float, run_status: str = "finished") -> Path:
    """A run folder as train_run leaves it, as far as the sweep reads it."""
    return fake_folder(pair.config, val_loss, psnr, run_status)


def fake_folder(config, val_loss: float, psnr: float, run_status: str = "finished") -> Path:
    folder = config.run.root / f"2026-01-01_00h00m00s_{config.run.name}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config.to_yaml())
    epochs = config.train.epochs
    (folder / "run.json").write_text(json.dumps({"status": run_status, "epoch": epochs, "created": 1.0}))
    lines = [{"epoch": e, "time_s": float(e), "val_loss": val_loss + (epochs - e), "val_psnr": psnr}
             for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def journal_rows(folder: Path) -> dict[str, list[str]]:
    rows = [line.strip("| ").split(" | ") for line in (folder / "journal.md").read_text().splitlines()
            if line.startswith("| ")][1:]
    return {row[0]: row for row in rows}


def test_journal_measures_each_variant_against_the_baseline(tmp_path, base):
    plan = load_plan(write_plan(tmp_path, f"""\
        baseline: base.yaml
        root: {tmp_path / 'sweep'}
        seeds: [0, 1, 2]
        variants:
          - {{name: good, set: {{model.latent: 8}}, hypothesis: more latents help}}
          - {{name: same, set: {{model.dense: 32}}}}
          - {{name: stretch, set: {{data.fit: stretch}}}}
          - {{name: blowup, set: {{train.lr: 0.5}}}}
        """))
    values = {"baseline": [(100, 20.0), (102, 20.2), (104, 19.8)], "good": [(90, 21.0), (91, 21.2), (92, 21.1)],
              "same": [(99, 20.1), (103, 19.9), (105, 20.3)], "stretch": [(500, 18.0), (502, 18.1), (501, 17.9)]}
    for pair in plan.pairs:
        if pair.variant.name == "blowup":
            fake_run(pair, 1e9, 1.0, run_status="diverged")
        else:
            fake_run(pair, *values[pair.variant.name][pair.seed])

    sweep_command(plan.path, journal_only=True)
    rows = journal_rows(plan.folder)
    assert rows["baseline"][3:5] == ["3/3", "102 ± 2"]
    good = rows["good"]
    assert good[1] == "model.latent: 4 → 8" and good[2] == "more latents help"
    assert good[5].startswith("-11 [") and good[-1] == "better"  # PSNR agrees, so nothing is added
    assert rows["same"][-1] == "no significant difference"
    # Val loss is not comparable across fits: the verdict comes from PSNR (2 dB lower: worse).
    assert rows["stretch"][-1] == "worse (on PSNR)"
    assert rows["blowup"][3] == "0/3" and rows["blowup"][-1] == "not assessable: no finished runs"
    text = (plan.folder / "journal.md").read_text()
    assert "blowup seed 0: diverged" in text
    # A diverged pair is final: a restart does not train it again.
    blowup = next(p for p in plan.pairs if p.key == "blowup-s0")
    assert pair_state(blowup, scan_runs(plan.folder)[match_key(blowup.config)], None)[0] == "diverged"


def test_journal_with_one_seed_says_it_cannot_judge(tmp_path, base):
    plan = load_plan(plan_file(tmp_path, seeds="[0]"))
    fake_run(plan.pairs[0], 100.0, 20.0)
    fake_run(plan.pairs[1], 80.0, 22.0)
    sweep_command(plan.path, journal_only=True)
    row = journal_rows(plan.folder)["sigmoid"]
    assert row[5] == "-20" and row[-1] == "not assessable with one seed"


def test_journal_only_without_runs_is_a_clear_error(tmp_path, base):
    with pytest.raises(VaelabError, match="no finished runs of this plan yet"):
        sweep_command(plan_file(tmp_path), journal_only=True)
