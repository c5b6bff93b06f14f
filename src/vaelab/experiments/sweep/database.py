"""The database behind a storage sweep (`vaelab.experiments.sweep.storage`): Optuna's RDB storage
opened from a URL, with its heartbeat, and the lock that serialises changes to the job queue.

Lock. Optuna pops a WAITING trial with SELECT ... FOR UPDATE: atomic on PostgreSQL, but SQLite
ignores FOR UPDATE, so two SQLite workers could claim one trial. Every read-then-write on the
queue therefore runs under one lock per study: a PostgreSQL advisory lock, or an flock on a file
beside the SQLite file.

Heartbeat. A worker records Optuna's heartbeat for the trial it holds every grace/4 s; a trial
whose heartbeat is older than the grace period is failed by the next worker that looks, and
Optuna's RetryHeartbeatStaleTrialCallback enqueues a copy (at most MAX_RETRY times).
"""

from __future__ import annotations

import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from vaelab.errors import VaelabError

MAX_RETRY = 3  # a job that takes its worker down every time (out of memory, say) is not retried for ever


class Storage:
    """Optuna's RDB storage with its heartbeat, and the lock that serialises changes to the queue."""

    def __init__(self, url: str, grace: int):
        import optuna
        import sqlalchemy
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except sqlalchemy.exc.ArgumentError:
            raise VaelabError(f"--storage {url}: not a database URL; give e.g. sqlite:///runs/sweeps/NAME/optuna.db "
                              "or postgresql://USER:PASSWORD@HOST:5432/DATABASE") from None
        shown = parsed.render_as_string(hide_password=True)
        self.backend, self.lock_file = parsed.get_backend_name(), None
        kwargs: dict[str, Any] = {}
        if self.backend == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise VaelabError(f"--storage {shown}: give an SQLite file, e.g. sqlite:///runs/sweeps/NAME/optuna.db")
            database = Path(parsed.database).expanduser()
            database.parent.mkdir(parents=True, exist_ok=True)
            self.lock_file = database.with_name(database.name + ".lock")
            kwargs = {"connect_args": {"timeout": 60}}  # writers wait for each other, not fail 'database is locked'
        elif self.backend == "postgresql":
            kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
            if parsed.drivername == "postgresql":  # SQLAlchemy 2.1 picks psycopg 3; the postgres extra has psycopg2
                parsed = parsed.set(drivername="postgresql+psycopg2")
                url = parsed.render_as_string(hide_password=False)
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Optuna marks the heartbeat and fail_stale_trials experimental; the user cannot act on that.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.interval = max(1, grace // 4)
        try:
            # Optuna creates its tables on first use; workers starting at once on a new database collide.
            with self.locked("vaelab-sweep-init", lambda: sqlalchemy.create_engine(
                    url, poolclass=sqlalchemy.pool.NullPool, **kwargs)):
                self.rdb = optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=self.interval, grace_period=grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
        except (ImportError, sqlalchemy.exc.NoSuchModuleError):
            driver = parsed.get_driver_name()
            package = {"psycopg2": "'vaelab[postgres]'", "psycopg": "'psycopg[binary]'", "mysqldb": "mysqlclient"}
            raise VaelabError(f"--storage {shown}: the {self.backend} driver {driver} is not installed; "
                              f"pip install {package.get(driver, driver)}") from None
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise VaelabError(f"--storage {shown}: cannot open the database ({reason(error)}); check the host, port, "
                              "user, password and database name, and that the server is running") from None
        self.shown = shown

    def study(self, name: str, direction: str, sampler=None):
        import optuna

        with self.lock(name):
            study = optuna.create_study(study_name=name, storage=self.rdb, direction=direction, sampler=sampler,
                                        load_if_exists=True)
        if study.direction.name.lower() != direction:
            raise VaelabError(f"--storage {self.shown}: study '{name}' was made to {study.direction.name.lower()} "
                              f"and this plan's search would {direction}; rename the plan (name:) to start afresh")
        return study

    def lock(self, name: str):
        """The queue lock of one study."""
        return self.locked(f"vaelab-sweep:{name}", lambda: self.rdb.engine)

    @contextmanager
    def locked(self, name: str, engine) -> Iterator[None]:
        if self.lock_file is not None:
            try:
                import fcntl  # SQLite is for one machine, so a file lock reaches every worker
            except ImportError:  # Windows: one worker per SQLite file there
                yield
                return
            with open(self.lock_file, "a") as file:
                fcntl.flock(file, fcntl.LOCK_EX)
                yield  # closing the file releases the lock, also when the process dies
        elif self.backend == "postgresql":
            from sqlalchemy import text

            key = zlib.crc32(name.encode()) - 2**31  # advisory locks are keyed by a bigint
            with engine().connect() as connection:  # the server drops the lock if this process dies
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
        else:
            yield  # another database: Optuna's row lock (SELECT ... FOR UPDATE) alone guards a claim


@contextmanager
def heartbeat(storage: Storage, trial_id: int) -> Iterator[None]:
    """Optuna's heartbeat for a trial, from a thread, while this process holds the job."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(storage.interval):
            try:
                storage.rdb.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a database hiccup shorter than the grace period is harmless
                pass

    thread = threading.Thread(target=beat, name="vaelab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reason(error: Exception) -> str:
    """The driver's own words, on one line."""
    return " ".join(str(getattr(error, "orig", None) or error).split())[:200]
