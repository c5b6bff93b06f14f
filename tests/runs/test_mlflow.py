"""MLflow logging (`run.mlflow_uri`) against a real local SQLite-backed tracking store.

The tiny 16 px runs of test_session; the store and the artifacts live in tmp_path and are read
back with MlflowClient, so these tests check what a user would see in the MLflow UI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny_runs import make_images, metrics, write_config

from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.runs.session import train_command, train_run

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install 'vaelab[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One SQLite tracking store for the module: creating its tables takes seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


@pytest.fixture
def store(tmp_path, database, request):
    """(config path, tracking uri, client, --set overrides for this test's experiment); artifacts in tmp_path."""
    uri, client = database
    images = make_images(tmp_path / "images", count=20)
    config = write_config(tmp_path, images, tmp_path / "runs")
    experiment = request.node.name[:100]
    # Without an artifact location MLflow would write ./mlruns in the current folder.
    client.create_experiment(experiment, artifact_location=(tmp_path / "artifacts").as_uri())
    return config, uri, client, [f"run.mlflow_uri={uri}", f"run.mlflow_experiment={experiment}"]


def mlflow_run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "mlflow.json").read_text())["run_id"]


def test_params_metrics_and_grids_reach_mlflow_and_a_resume_continues_the_run(store):
    config_path, uri, client, overrides = store
    run_dir = train_run(load_config(config_path, [*overrides, "train.epochs=2"]))

    run_id = mlflow_run_id(run_dir)
    run = client.get_run(run_id)
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.tags["vaelab.run_dir"] == str(run_dir)
    params = run.data.params
    assert params["train.lr"] == "0.003" and params["train.epochs"] == "2" and params["model.latent"] == "4"
    assert json.loads(params["data.size"]) == [16, 16]
    assert params["run.mlflow_uri"] == uri
    recorded = metrics(run_dir)
    history = client.get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["val_loss"]) for r in recorded]
    assert [m.step for m in client.get_metric_history(run_id, "val_psnr")] == [1, 2]
    assert "best" not in run.data.metrics and "val_kl_per_dim" not in run.data.metrics  # not single numbers
    for folder in ("reconstructions", "samples"):
        files = sorted(Path(f.path).name for f in client.list_artifacts(run_id, folder))
        assert files == ["epoch-0001.png", "epoch-0002.png"]
    local = Path(client.download_artifacts(run_id, "reconstructions/epoch-0002.png", str(run_dir.parent)))
    assert local.read_bytes() == (run_dir / "reconstructions" / "epoch-0002.png").read_bytes()
    assert "config.yaml" in [f.path for f in client.list_artifacts(run_id)]

    # More epochs on the same run folder: the same MLflow run goes on from epoch 3.
    assert train_command(None, ["train.epochs=3"], resume=str(run_dir)) == run_dir
    assert mlflow_run_id(run_dir) == run_id
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2, 3]
    assert resumed.data.params["train.epochs"] == "2" and resumed.data.tags["resumed.train.epochs"] == "3"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert "mlflow: continuing run" in (run_dir / "log.txt").read_text()

    # The MLflow run deleted meanwhile: the next resume logs into a new one, from epoch 1 on.
    client.delete_run(run_id)
    train_command(None, ["train.epochs=4"], resume=str(run_dir))
    replacement = mlflow_run_id(run_dir)
    assert replacement != run_id and client.get_run(replacement).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(replacement, "val_loss")] == [1, 2, 3, 4]


def test_a_tracking_failure_mid_run_does_not_stop_training_and_a_resume_fills_the_gap(store, monkeypatch):
    config_path, uri, client, overrides = store
    real = MlflowClient.log_batch

    def server_gone(self, run_id, metrics=(), **kwargs):
        if any(m.step == 2 for m in metrics):  # epoch 2's metrics: the server has gone away
            raise mlflow.exceptions.MlflowException("API request failed: Connection refused")
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", server_gone)
    # An experiment vaelab creates itself: its artifacts go beside the SQLite file, not to ./mlruns.
    run_dir = train_run(load_config(config_path, [*overrides, "run.mlflow_experiment=made-by-vaelab"]))

    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2, 3]
    log = (run_dir / "log.txt").read_text()
    assert log.count("warning: mlflow") == 1 and "Connection refused" in log
    run_id = mlflow_run_id(run_dir)
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1]  # then it stopped trying
    assert client.get_run(run_id).info.status == "RUNNING"  # not closed: the server was gone
    database = Path(uri.removeprefix("sqlite:///"))
    assert client.get_experiment_by_name("made-by-vaelab").artifact_location == (database.parent / "mlartifacts").as_uri()
    assert (database.parent / "mlartifacts").is_dir()

    # The server is back: a resume (here of the finished run: nothing to train) logs what was missed.
    monkeypatch.undo()
    assert train_command(None, [], resume=str(run_dir)) == run_dir and mlflow_run_id(run_dir) == run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")] == \
        [(r["epoch"], r["val_loss"]) for r in metrics(run_dir)]
    files = sorted(Path(f.path).name for f in client.list_artifacts(run_id, "reconstructions"))
    assert files == ["epoch-0001.png", "epoch-0002.png", "epoch-0003.png"]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_mlflow_not_installed_is_one_line_before_any_run_folder(tmp_path, monkeypatch, capsys):
    from vaelab.cli import main

    images = make_images(tmp_path / "images", count=10)
    config_path = write_config(tmp_path, images, tmp_path / "runs")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` raise ImportError
    message = "run.mlflow_uri is set but mlflow is not installed; pip install 'vaelab[mlflow]'"
    with pytest.raises(VaelabError) as raised:
        train_run(load_config(config_path, [f"run.mlflow_uri=sqlite:///{tmp_path / 'm.db'}"]))
    assert str(raised.value) == message
    with pytest.raises(SystemExit) as exited:
        main(["train", "-c", str(config_path), "--set", "run.mlflow_uri=http://localhost:5000", "--resume", "auto"])
    assert exited.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "runs").exists()


def test_a_relative_sqlite_uri_is_resolved_like_other_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["run.mlflow_uri=sqlite:///store/mlflow.db"])
    assert config.run.mlflow_uri == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    for kept in ("sqlite:////abs/m.db", "http://host:5000", "databricks"):
        assert load_config(None, [f"run.mlflow_uri={kept}"]).run.mlflow_uri == kept
