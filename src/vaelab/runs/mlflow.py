"""Optional MLflow tracking: a run's params, per-epoch metrics and image grids, also in MLflow.

Off unless `run.mlflow_uri` is set (`pip install 'vaelab[mlflow]'`). The run folder stays the
record of truth; MLflow gets a copy where a team already looks:
- params: the resolved config, flattened (`train.lr`, `model.latent`, ...), once per MLflow run;
- metrics: every numeric key of each metrics.jsonl record, with step = epoch;
- artifacts: `reconstructions/epoch-NNNN.png` and `samples/epoch-NNNN.png`;
- the run folder's name is the MLflow run name (tag `vaelab.run_dir` holds its path).
An experiment that vaelab creates in a local `sqlite:///` store keeps its artifacts in
`mlartifacts/` beside the database file; an existing experiment keeps its own location.

The MLflow run id is kept in the run folder's `mlflow.json`, so `--resume` (a folder or
`auto`) continues the same MLflow run instead of opening a second one. A resume that changes
a param (more `train.epochs`) cannot overwrite it: MLflow params are immutable, so the new
value goes into a tag `resumed.<key>`.

MLflow failing mid-run (a tracking server gone) never stops training: one warning line, and
this process logs nothing more to MLflow, because the client's retries would otherwise stall
every epoch for minutes. The run folder has everything: a later resume reconnects and logs the
epochs that MLflow missed (from metrics.jsonl and the image files), and turning MLflow on for an
existing run on resume logs all its epochs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from vaelab.errors import VaelabError
from vaelab.files import read_json, write_json
from vaelab.runs.folder import GRIDS, RunFolder, read_metrics

NOT_INSTALLED = "run.mlflow_uri is set but mlflow is not installed; pip install 'vaelab[mlflow]'"
RECORD = "mlflow.json"
# vaelab's run status -> MLflow's. An interrupted or stopped run is resumable: KILLED until
# a resume sets it RUNNING again.
MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
                 "interrupted": "KILLED", "stopped": "KILLED"}
MAX_PARAM = 6000  # MLflow refuses longer param values
PARAM_BATCH = 100  # MLflow's limit per log_batch call


def require_mlflow(run_config) -> None:
    """Refuse, before a run folder exists, a config that asks for MLflow where it is not installed."""
    if run_config.mlflow_uri is not None:
        import_mlflow()


def import_mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise VaelabError(NOT_INSTALLED) from None
    return MlflowClient


class Tracker:
    """Mirrors one vaelab run into one MLflow run; does nothing when run.mlflow_uri is null."""

    def __init__(self, run_dir: Path, run_config, log: Callable[[str], None]):
        self.run_dir, self.uri, self.experiment = Path(run_dir), run_config.mlflow_uri, run_config.mlflow_experiment
        self.log = log
        self.client = None
        self.run_id: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def open(self, params: dict[str, Any]) -> None:
        """Start the MLflow run, or continue the one recorded in mlflow.json; log the params."""
        if self.uri is None:
            return
        client_type = import_mlflow()  # not installed: a VaelabError, as for a new run
        self.guarded("connect", lambda: self._open(client_type, params))

    def _open(self, client_type, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        client = client_type(tracking_uri=self.uri)
        saved = read_json(self.run_dir / RECORD) or {}
        run = None
        if saved.get("tracking_uri") == self.uri and saved.get("run_id"):
            run = recorded_run(client, saved["run_id"])
            if run is None:
                self.log(f"mlflow: run {saved['run_id']} is no longer in {self.uri}; starting another")
            else:
                client.update_run(run.info.run_id, status="RUNNING")
                self.log(f"mlflow: continuing run {run.info.run_id} in {self.uri}")
        if run is None:
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = (found.experiment_id if found is not None
                             else client.create_experiment(self.experiment, artifact_location=artifacts_beside(self.uri)))
            run = client.create_run(experiment_id, run_name=self.run_dir.name,
                                    tags={"vaelab.run_dir": str(self.run_dir.absolute())})
            # Recorded before anything else is logged, so a kill from here on still resumes this run.
            write_json(self.run_dir / RECORD, {"tracking_uri": self.uri, "experiment_id": experiment_id,
                                               "run_id": run.info.run_id})
            self.log(f"mlflow: run {run.info.run_id} in {self.uri} (experiment {self.experiment})")
        self.client, self.run_id = client, run.info.run_id
        logged = run.data.params
        values = {key: param_value(value) for key, value in params.items()}
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        changed = {f"resumed.{k}": v for k, v in values.items() if k in logged and logged[k] != v}
        for start in range(0, len(new), PARAM_BATCH):
            client.log_batch(self.run_id, params=new[start: start + PARAM_BATCH])
        for key, value in changed.items():
            client.set_tag(self.run_id, key, value)
        config = RunFolder(self.run_dir).config_file  # the whole config, to rerun it from MLflow
        if config.is_file():
            client.log_artifact(self.run_id, str(config))
        self._backfill()

    def _backfill(self) -> None:
        """Log the epochs that metrics.jsonl has and the MLflow run lacks: those after an MLflow
        failure in an earlier attempt, or all of them when MLflow is turned on for an existing run."""
        done = {m.step for m in self.client.get_metric_history(self.run_id, "step")}
        missing = [r for r in read_records(self.run_dir) if r.get("epoch") not in done]
        for record in missing:
            self._epoch(record, [path for path in epoch_grids(self.run_dir, record["epoch"]) if path.is_file()])
        if missing:
            self.log(f"mlflow: logged {len(missing)} earlier epoch(s) from metrics.jsonl")

    def epoch(self, record: dict, images: Iterable[Path] = ()) -> None:
        """The record's numeric values at step = its epoch, and the epoch's image files."""
        if not self.active:
            return
        self.guarded("log epoch", lambda: self._epoch(record, list(images)))

    def _epoch(self, record: dict, images: list[Path]) -> None:
        from mlflow.entities import Metric

        now, epoch = int(time.time() * 1000), int(record["epoch"])
        metrics = [Metric(key, float(value), now, epoch) for key, value in record.items()
                   if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)]
        self.client.log_batch(self.run_id, metrics=metrics)
        for path in images:
            self.client.log_artifact(self.run_id, str(path), artifact_path=path.parent.name)

    def close(self, status: str) -> None:
        if not self.active:
            return
        run_id = self.run_id
        self.guarded("end run", lambda: self.client.set_terminated(run_id, status=MLFLOW_STATUS.get(status, "FAILED")))
        self.run_id = None

    def guarded(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as error:  # any tracking failure: training goes on without MLflow
            self.run_id = None
            message = " ".join(str(error).split())[:300] or type(error).__name__
            self.log(f"warning: mlflow {what} failed ({message}); no more MLflow logging in this process, "
                     "the run folder has everything and a resume reconnects")


def epoch_grids(run_dir: Path, epoch: int) -> list[Path]:
    """The image files the run layer writes for an epoch (see `vaelab.runs.session`)."""
    paths = [RunFolder(run_dir).grid_file(grid, epoch) for grid in GRIDS]
    return [path for path in paths if path.is_file()]  # a family without a prior writes no samples


def read_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl's complete records (a line torn by a kill is skipped), NaN kept as the live
    logging of `Tracker.epoch` sends it; none when the file is missing or unreadable."""
    try:
        return read_metrics(RunFolder(run_dir).metrics_file, finite=False)[0]
    except VaelabError:
        return []


def artifacts_beside(uri: str) -> Optional[str]:
    """For a local `sqlite:////path/mlflow.db`: `/path/mlartifacts`, so the database and its images
    stay together (MLflow's default, ./mlruns, depends on the folder vaelab was started from).
    None for a server or another store: the server decides."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return (Path(uri[len("sqlite:///"):]).absolute().parent / "mlartifacts").as_uri()


def recorded_run(client, run_id: str):
    """The MLflow run of a previous attempt, or None when the store no longer has it (deleted,
    or a new database at the same URI). Any other error (the server is down) is raised."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run


def param_value(value: Any) -> str:
    """A config value as MLflow param text: strings as they are, the rest as JSON (lists, null)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_PARAM else text[: MAX_PARAM - 3] + "..."

