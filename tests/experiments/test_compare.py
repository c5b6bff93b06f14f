"""`vaelab compare` on run folders written by the tests themselves (no training)."""

import json
import math

import pytest
from PIL import Image

from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.experiments import stats
from vaelab.experiments.compare import compare_command, compare_runs, load_runs
from vaelab.experiments.labels import label_runs

CONV_K5 = ("model.conv=[{filters: 32, kernel: 5, stride: 2}, {filters: 64, kernel: 5, stride: 2},"
           " {filters: 128, kernel: 5, stride: 2}]")


def epoch_rows(val_recon, seconds_per_epoch=60.0, psnr=None, **extra):
    """Per-epoch records with every key the trainer writes; val_loss = val_recon + 400 (the KL)."""
    rows = []
    for i, recon in enumerate(val_recon):
        epoch = i + 1
        rows.append({
            "epoch": epoch, "step": 10 * epoch, "time_s": round(seconds_per_epoch * epoch, 3),
            "train_loss": recon * 1.1 + 400, "train_recon": recon * 1.1, "train_kl": 400.0,
            "val_loss": recon + 400, "val_recon": recon, "val_kl": 400.0, "val_mse": recon / 12288,
            "val_psnr": psnr[i] if psnr else 10 + epoch, "lr": 1e-3, "skipped_steps": 0, "rss_mb": 500.0,
            **{key: values[i] for key, values in extra.items()},
        })
    return rows


def make_run(root, name, rows, overrides=(), tail=""):
    folder = root / name
    folder.mkdir(parents=True)
    overrides = (f"run.name={name}", f"run.root={root}", *overrides)
    (folder / "config.yaml").write_text(load_config(None, overrides).to_yaml())
    text = "".join(json.dumps(row) + "\n" for row in rows) + tail
    (folder / "metrics.jsonl").write_text(text)
    return folder


@pytest.fixture
def three_runs(tmp_path):
    """A baseline, a faster learning rate and a run that never reaches 1e5."""
    base = make_run(tmp_path, "2026-01-01_10h00m00s", epoch_rows([3e5, 2e5, 1.2e5, 0.9e5, 0.7e5], 60.0))
    fast = make_run(tmp_path, "2026-01-01_11h00m00s_lr", epoch_rows([2e5, 0.95e5, 0.8e5, 0.7e5, 0.6e5], 90.0),
                    ["train.lr=1e-4"])
    slow = make_run(tmp_path, "2026-01-01_12h00m00s_relu", epoch_rows([5e5, 4e5, 3e5, 2.5e5, 2e5], 30.0),
                    ["model.activation=relu"])
    return base, fast, slow


def test_threshold_matches_a_hand_computation_from_metrics_jsonl(three_runs):
    base, fast, slow = three_runs
    result = compare_runs([base, fast, slow], thresholds=["val_recon=1e5"])
    # By hand from the rows above: the baseline first has val_recon <= 1e5 at epoch 4 (0.9e5),
    # after 4 x 60 s; the lr run at epoch 2 (0.95e5) after 2 x 90 s; relu never gets below 2e5.
    base_run, fast_run, slow_run = result["runs"]
    assert base_run["threshold"] == {"epoch": 4, "time_s": 240.0}
    assert fast_run["threshold"] == {"epoch": 2, "time_s": 180.0}
    assert slow_run["threshold"] is None
    assert result["thresholds"][0]["best_run"] == str(fast) and result["thresholds"][0]["direction"] == "<="
    # The best run is 4 - 2 = 2 epochs and (240 - 180) / 60 = 1 minute ahead of the runner-up;
    # the baseline is as far behind the best.
    assert fast_run["ahead"] == {"of": str(base), "epochs": 2, "minutes": pytest.approx(1.0)}
    assert base_run["ahead"] == {"of": str(fast), "epochs": -2, "minutes": pytest.approx(-1.0)}
    assert slow_run["ahead"] is None and result["thresholds"][0]["never_crossed"] == [str(slow)]


def test_psnr_threshold_means_reaching_up_and_several_thresholds_are_kept(three_runs):
    base, fast, slow = three_runs
    result = compare_runs([base, fast, slow], thresholds=["val_psnr=13", "val_recon<=2e5"])
    first, second = result["thresholds"]
    assert (first["direction"], second["direction"]) == (">=", "<=")
    base_run = result["runs"][0]
    assert base_run["threshold"] == {"epoch": 3, "time_s": 180.0}  # psnr = 10 + epoch reaches 13 at epoch 3
    assert [t and t["epoch"] for t in base_run["thresholds"]] == [3, 2]
    assert result["runs"][2]["thresholds"][1]["epoch"] == 5


def test_labels_come_from_config_differences_and_seeds_form_groups(tmp_path):
    rows = epoch_rows([2e5, 1e5])
    folders = [
        make_run(tmp_path, "a0", rows, ["train.seed=0", "data.workers=0"]),
        make_run(tmp_path, "a1", rows, ["train.seed=1", "data.workers=4", "run.checkpoint_every=2"]),
        make_run(tmp_path, "b0", rows, ["train.seed=0", "train.lr=1e-4"]),
        make_run(tmp_path, "b1", rows, ["train.seed=1", "train.lr=1e-4"]),
        make_run(tmp_path, "k5", rows, [CONV_K5]),
        make_run(tmp_path, "moved", rows, ["data.images=/elsewhere/figures", "train.seed=3"]),
        make_run(tmp_path, "same-data", rows, ["data.images=/mnt/disk/elsewhere/figures", "train.seed=4"]),
    ]
    labels, differing = label_runs(load_runs(folders))
    assert labels[:5] == ["baseline", "baseline", "train.lr=1e-4", "train.lr=1e-4", "model.conv.*.kernel=5"]
    # The same data folder in two places is one data set; a null (built-in) set is the baseline.
    assert labels[5] == labels[6] == "data.images=elsewhere/figures"
    assert "train.seed" not in differing and "data.workers" not in differing
    assert not any(key.startswith("run.") for key in differing)

    result = compare_runs(folders)
    groups = {g["label"]: g for g in result["groups"]}
    assert groups["baseline"]["n"] == 2 and groups["baseline"]["seeds"] == [0, 1]
    assert groups["train.lr=1e-4"]["runs"] == [str(folders[2]), str(folders[3])]


def test_more_seeds_do_not_make_a_variant_the_baseline(tmp_path):
    rows = epoch_rows([2e5, 1e5])
    folders = [make_run(tmp_path, "base", rows)]
    folders += [make_run(tmp_path, f"lr{s}", rows, [f"train.seed={s}", "train.lr=1e-4"]) for s in range(3)]
    labels, _ = label_runs(load_runs(folders))
    assert labels == ["baseline"] + ["train.lr=1e-4"] * 3


def test_groups_of_seeds_get_a_ci_per_epoch_and_a_welch_test(tmp_path):
    base = [[3e5, 1.00e5, 0.80e5], [3e5, 1.05e5, 0.82e5], [3e5, 0.98e5, 0.79e5]]
    better = [[2e5, 0.70e5, 0.60e5], [2e5, 0.72e5, 0.61e5], [2e5, 0.69e5, 0.58e5]]
    folders = [make_run(tmp_path, f"base{s}", epoch_rows(r), [f"train.seed={s}"]) for s, r in enumerate(base)]
    folders += [make_run(tmp_path, f"lr{s}", epoch_rows(r), [f"train.seed={s}", "train.lr=1e-4"])
                for s, r in enumerate(better)]
    result = compare_runs(folders, metrics=["val_recon"], at_epoch=2)
    groups = {g["label"]: g for g in result["groups"]}
    epoch2 = groups["baseline"]["curves"]["val_recon"][1]
    assert epoch2 == {**epoch2, "epoch": 2, "n": 3, "time_s": 120.0}
    assert epoch2["mean"] == pytest.approx(stats.mean_ci([1.00e5, 1.05e5, 0.98e5])["mean"])
    assert epoch2["ci_low"] == pytest.approx(stats.mean_ci([1.00e5, 1.05e5, 0.98e5])["ci_low"])
    (test,) = result["tests"]
    assert (test["group"], test["reference"], test["epoch"]) == ("train.lr=1e-4", "baseline", 2)
    expected = stats.compare_groups([r[1] for r in better], [r[1] for r in base], higher_is_better=False)
    assert test["p"] == pytest.approx(expected["p"]) and test["delta"] == pytest.approx(expected["delta"])
    assert test["verdict"] == "better" and test["method"] == "Welch's t-test"
    # Without --at-epoch the test is at the last epoch that every run reached.
    assert compare_runs(folders, metrics=["val_recon"])["at_epoch"] == 3


def test_one_seed_per_group_says_significance_cannot_be_assessed(three_runs):
    result = compare_runs(list(three_runs))
    assert result["tests"] and all(t["verdict"] == "not assessable" for t in result["tests"])
    assert any("n=1" in note for note in result["notes"])


def test_json_shape_and_only_json_on_stdout(three_runs, capsys):
    result = compare_command(list(three_runs), ["val_recon=1e5"], None, True, [], None, False)
    assert capsys.readouterr().out == ""
    decoded = json.loads(json.dumps(result, allow_nan=False))
    assert [set(("run", "label", "threshold")) <= set(entry) for entry in decoded["runs"]] == [True] * 3
    assert decoded["runs"][2]["threshold"] is None
    assert decoded["runs"][0]["label"] == "baseline" and decoded["runs"][1]["label"] == "train.lr=1e-4"
    assert decoded["runs"][0]["run"] == str(three_runs[0])
    for key in ("best_val_loss", "best_epoch", "final_val_psnr", "epochs", "time_s", "images_per_s"):
        assert key in decoded["runs"][0]
    assert decoded["runs"][0]["best_epoch"] == 5 and decoded["runs"][0]["images_per_s"] is None
    assert {"groups", "tests", "thresholds"} <= set(decoded)


def test_human_output_names_the_method_and_the_lead(three_runs, capsys):
    compare_command(list(three_runs), ["val_recon=1e5"], None, False, [], None, False)
    out = capsys.readouterr().out
    assert "baseline" in out and "train.lr=1e-4" in out
    assert "2 epochs / 1.0 min ahead of" in out and "never" in out


def test_images_per_second_when_the_trainer_logs_image_counts(tmp_path):
    run = make_run(tmp_path, "r", epoch_rows([2e5, 1e5], 10.0, train_images=[1000, 1000]))
    (entry,) = compare_runs([run])["runs"]
    assert entry["images_per_s"] == pytest.approx(2000 / 20.0)


def test_plots_are_valid_pngs_by_epoch_and_time(tmp_path, three_runs):
    seeds = [make_run(tmp_path / "seeds", f"s{s}", epoch_rows([3e5 + s, 2e5, 1e5 - s]), [f"train.seed={s}"])
             for s in range(2)]
    out = tmp_path / "plots"
    result = compare_command([*three_runs, *seeds], ["val_recon=1e5"], out, True, [], None, True)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{m}_by_{axis}.png" for m in ("val_loss", "val_recon", "val_psnr")
                           for axis in ("epoch", "time"))
    assert sorted(result["plots"]) == sorted(str(out / name) for name in names)
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as image:
            image.verify()


def test_truncated_last_line_is_skipped(tmp_path):
    run = make_run(tmp_path, "killed", epoch_rows([3e5, 2e5, 1e5]), tail='{"epoch": 4, "step": 40, "val_lo')
    (record,) = load_runs([run])
    assert record.last_epoch == 3 and record.skipped_lines == 1
    result = compare_runs([run], thresholds=["val_recon=1e5"])
    assert result["runs"][0]["threshold"] == {"epoch": 3, "time_s": 180.0}
    assert any("skipped 1 unparsable line" in note for note in result["notes"])


def test_nan_values_are_ignored(tmp_path):
    rows = epoch_rows([3e5, 2e5, 1e5])
    rows[1]["val_recon"] = math.nan
    run = make_run(tmp_path, "nan", rows)
    result = compare_runs([run], thresholds=["val_recon=2.5e5"])
    assert result["runs"][0]["threshold"]["epoch"] == 3
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize("threshold, message", [
    ("val_recon", "expected KEY=VALUE"),
    ("val_recon=lots", "not a finite number"),
    ("val_recn=1e5", "did you mean 'val_recon'"),
])
def test_bad_threshold_is_a_one_line_error(three_runs, threshold, message):
    with pytest.raises(VaelabError, match=message) as error:
        compare_runs(list(three_runs), thresholds=[threshold])
    assert "\n" not in str(error.value)


def test_unknown_metric_and_bad_epoch_are_errors(three_runs):
    with pytest.raises(VaelabError, match="did you mean 'val_psnr'"):
        compare_runs(list(three_runs), metrics=["val_psnt"])
    with pytest.raises(VaelabError, match="--at-epoch 9"):
        compare_runs(list(three_runs), at_epoch=9)


def test_folder_without_run_files_is_an_error_naming_it(tmp_path, three_runs):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(VaelabError, match="not-a-run: no config.yaml and no metrics.jsonl"):
        load_runs([empty])
    with pytest.raises(VaelabError, match="holds run folders"):
        load_runs([tmp_path])
    (three_runs[0] / "metrics.jsonl").write_text("")
    with pytest.raises(VaelabError, match="no finished epoch"):
        load_runs([three_runs[0]])


def test_cli_compare_when_registered(three_runs, capsys):
    from vaelab import cli

    if "compare" not in cli.cli.commands:
        pytest.skip("vaelab compare is not registered in cli.py yet")
    cli.main(["compare", *map(str, three_runs), "--threshold", "val_recon=1e5", "--json"])
    decoded = json.loads(capsys.readouterr().out)
    assert decoded["runs"][1]["threshold"] == {"epoch": 2, "time_s": 180.0}


def test_runs_without_validation_still_compare(tmp_path):
    rows = epoch_rows([2e5, 1e5])
    for row in rows:
        row.update(val_loss=None, val_recon=None, val_kl=None, val_mse=None, val_psnr=None)
    run = make_run(tmp_path, "noval", rows)
    result = compare_command([run], ["train_recon=1.5e5"], tmp_path / "plots", False, [], None, False)
    entry = result["runs"][0]
    assert entry["best_val_loss"] is None and entry["final_train_loss"] == pytest.approx(1.1e5 + 400)
    assert entry["threshold"] == {"epoch": 2, "time_s": 120.0}
    assert any("val_loss: no run has a value" in note for note in result["notes"])
    assert result["plots"] == []


def test_runs_of_other_model_families_are_labelled_by_their_kind(tmp_path):
    rows = epoch_rows([2e5, 1e5])
    folders = [
        make_run(tmp_path, "vector", rows),
        make_run(tmp_path, "spatial", rows, ["model.kind=spatial"]),
        make_run(tmp_path, "spatial-z8", rows, ["model.kind=spatial", "model.z_channels=8"]),
        make_run(tmp_path, "vq", rows, ["model.kind=vq", "model.output_activation=sigmoid", "data.scale=unit"]),
    ]
    labels, _ = label_runs(load_runs(folders))
    # Two spatial configs make spatial the most common family: the baseline. Keys that only one
    # family has (conv, dense; channels, z_channels) do not clutter another family's label.
    assert labels == ["model.kind=vector", "baseline", "model.z_channels=8", "model.kind=vq, model.output_activation=sigmoid"]


def test_a_run_written_before_a_key_existed_compares_equal_to_its_default(tmp_path):
    import yaml

    rows = epoch_rows([2e5, 1e5])
    new = make_run(tmp_path, "new", rows)
    old = make_run(tmp_path, "old", rows, ["train.seed=1"])
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["model"]["kind"], config["train"]["ema"]  # as an older vaelab wrote it
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    labels, differing = label_runs(load_runs([new, old]))
    assert labels == ["baseline", "baseline"] and differing == []


def test_execution_keys_do_not_split_groups_and_every_loss_unit_key_is_noted(tmp_path):
    # Runs that differ only in how they were executed (device, precision, compile) are replicates of
    # one experiment, as the sweep counts them; fit and beta change the loss's unit, as the sweep says.
    rows = epoch_rows([2e5, 1e5])
    folders = [make_run(tmp_path, "cpu", rows, ["train.seed=0"]),
               make_run(tmp_path, "gpu", rows, ["train.seed=1", "train.device=cuda", "train.amp=bf16",
                                                "train.compile=true", "train.channels_last=true"])]
    result = compare_runs(folders)
    assert [g["label"] for g in result["groups"]] == ["baseline"] and result["groups"][0]["n"] == 2
    unit = [make_run(tmp_path, "fit", rows, ["data.fit=stretch"]), make_run(tmp_path, "beta", rows, ["loss.beta=0.5"])]
    notes = " ".join(compare_runs([folders[0], *unit])["notes"])
    assert "data.fit" in notes and "loss.beta" in notes and "not in the same unit" in notes
