"""`vaelab sweep PLAN --storage URL [--worker] [--search N]`: the storage queue. A sweep's jobs and
results live in a database, through Optuna's RDB storage (`vaelab.experiments.sweep.database`),
so that worker processes on any machines share one sweep.

Jobs. One Optuna study per plan, named after the plan. Each (variant, seed) pair is a trial,
enqueued WAITING once, with user attrs naming the pair (`job`) and a fingerprint of its config
(a changed plan enqueues its changed pairs anew). A worker claims a WAITING trial (RUNNING),
trains the pair with `train_run` in the plan's sweep folder and tells the trial COMPLETE with
the final val loss (PRUNED for a diverged run, FAIL with the error for a failed one). `--search
N` uses a second study, `<name>/search`: a seeded TPE sampler proposes N configs over the
plan's `search:` ranges (baseline + `set:` + the sampled values, first seed).

Claiming. Every read-then-write on the queue (enqueueing, failing stale trials, claiming,
counting search trials) runs under the study's queue lock (`Storage.lock`): SQLite ignores
Optuna's SELECT ... FOR UPDATE, so two SQLite workers could otherwise claim one trial.

Lost workers. A worker records Optuna's heartbeat for its trial every grace/4 s, from before
the claim. The next worker that looks fails a trial whose heartbeat is older than the grace
period (`optuna.storages.fail_stale_trials`) and Optuna's RetryHeartbeatStaleTrialCallback
enqueues a copy. The run folders, as in a local sweep, say what is done (the job state machine
of `vaelab.experiments.sweep.executor`): the copy's worker tells a finished pair COMPLETE without
training, resumes an unfinished one from its last checkpoint in its own folder, and waits while
a live process still holds the folder's lock. So finished jobs are never rerun and no job trains
twice. Run folders go to the plan's sweep folder (`root:`): workers on several machines must
share that folder (e.g. over NFS).
"""

from __future__ import annotations

import functools
import hashlib
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.experiments.compare import number
from vaelab.experiments.sweep.database import Storage, heartbeat, reason
from vaelab.experiments.sweep.executor import look, say, starting, train_here
from vaelab.experiments.sweep.journal import publish_journal
from vaelab.experiments.sweep.plan import Plan, config_path, load_plan
from vaelab.experiments.sweep.records import match_key
from vaelab.experiments.sweep.search import objective, search_config, search_summary
from vaelab.files import write_text
from vaelab.runs.folder import read_metrics
from vaelab.runs.session import train_run

POLL_S = 1.0

# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    key: str  # the pair (<variant>-s<seed>) or search-<trial>
    config: Config
    number: int = -1  # the trial
    trial_id: int = -1

    @property
    def fingerprint(self) -> str:  # what the run computes and for how long
        text = match_key(self.config) + f"epochs={self.config.train.epochs}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def states():
    from optuna.trial import TrialState

    return TrialState


def ident(trial) -> tuple:
    return trial.user_attrs.get("job"), trial.user_attrs.get("fingerprint")


def holds(trial) -> bool:
    """Whether a trial stands for its job: waiting, running or done (a duplicate pruned at its claim does not)."""
    S = states()
    return trial.state in (S.WAITING, S.RUNNING, S.COMPLETE) or (
        trial.state == S.PRUNED and trial.user_attrs.get("outcome") != "duplicate")


def enqueue_pairs(storage: Storage, study, jobs: list[Job]) -> int:
    """Enqueue each pair that has no trial standing for it (so a failed pair is tried again)."""
    with storage.lock(study.study_name):
        held = {ident(t) for t in study.get_trials(deepcopy=False) if holds(t)}
        new = [job for job in jobs if (job.key, job.fingerprint) not in held]
        for job in new:
            study.enqueue_trial({}, user_attrs={"job": job.key, "fingerprint": job.fingerprint})
    return len(new)


def claim_waiting(storage: Storage, study, accept) -> Optional[tuple[Any, Any]]:
    """(frozen trial, accept's value) for a WAITING trial that this worker now holds, or None.
    The caller holds the queue lock."""
    S = states()
    trials = study.get_trials(deepcopy=False)
    for trial in (t for t in trials if t.state == S.WAITING):
        wanted = accept(trial)
        if wanted is None:
            continue  # a job of another version of the plan: left to its workers
        # Heartbeat first: Optuna never finds a RUNNING trial without one stale, so a worker killed
        # right after the claim would hold its job for ever. FrozenTrial has no public id.
        storage.rdb.record_heartbeat(trial._trial_id)
        if not storage.rdb.set_trial_state_values(trial._trial_id, S.RUNNING):
            continue
        # Two enqueues racing without a lock (another database) or a job given back after it was
        # found stale leave two trials for one job: the later one must not run it again.
        twin = next((t for t in trials if t.number != trial.number and ident(t) == ident(trial)
                     and holds(t) and t.state != S.WAITING), None)
        if twin is None:
            return trial, wanted
        storage.rdb.set_trial_user_attr(trial._trial_id, "outcome", "duplicate")
        study.tell(trial.number, state=S.PRUNED, skip_if_finished=True)
    return None


def pending(study, accept) -> int:
    S = states()
    return sum(1 for t in study.get_trials(deepcopy=False, states=(S.WAITING, S.RUNNING)) if accept(t) is not None)


def run_job(plan: Plan, job: Job, storage: Storage, metric: str) -> tuple[str, Optional[float], dict]:
    """Train the job's run (or find it done) while heartbeating: (trial state, value, user attrs)."""
    with heartbeat(storage, job.trial_id):
        action, found = look(plan.folder, job)
        if action == "busy":  # e.g. the worker whose trial was found stale is alive after all
            say(f"{job.key}: {found.folder.name} is being trained by another process; waiting for it")
        while action == "busy":
            time.sleep(max(POLL_S, storage.interval))
            action, found = look(plan.folder, job)
        if action in ("new", "resume"):
            say(f"{job.key} (trial {job.number}): {starting(found)}")
            error = train_here(functools.partial(train_run, job.config, progress=False), found)
            if error:  # a failed trial, whatever its run folder says
                return "FAIL", None, {"error": error[:500]}
            action, found = look(plan.folder, job)
    attrs = {"run": found.folder.name} if found else {}
    if action == "diverged":
        return "PRUNED", None, {**attrs, "outcome": "diverged"}
    if action != "finished":
        return "INTERRUPTED", None, {**attrs, "outcome": found.status if found else "not started"}
    records, _ = read_metrics(found.folder / "metrics.jsonl")
    record = next((r for r in records if r["epoch"] == job.config.train.epochs), {})
    value = number(record.get(metric))
    if value is None:
        epoch = job.config.train.epochs
        return "FAIL", None, {**attrs, "error": f"no {metric} at epoch {epoch} (no validation split?)"}
    return "COMPLETE", value, {**attrs, "outcome": "finished"}


def work(plan: Plan, storage: Storage, study, metric: str, next_job, accept) -> list[str]:
    """Take jobs until none is waiting or running anywhere; a line per job that failed here."""
    S = states()
    problems, done = [], 0
    main = threading.current_thread() is threading.main_thread()  # only there can signals be handled
    previous = signal.signal(signal.SIGTERM, interrupt) if main else None  # between jobs SIGTERM acts as Ctrl-C
    try:
        while True:
            with storage.lock(study.study_name):
                from optuna.storages import fail_stale_trials

                fail_stale_trials(study)  # a killed worker's job: FAIL, and a WAITING copy to resume it
                job = next_job()
            if job is None:
                if not pending(study, accept):
                    break
                time.sleep(POLL_S)  # jobs run elsewhere: wait, to retry any whose worker dies
                continue
            try:
                state, value, attrs = run_job(plan, job, storage, metric)
            except BaseException:
                give_back(storage, study, job, {"outcome": "interrupted"})
                raise
            if state == "INTERRUPTED":  # train_run saved on Ctrl-C or SIGTERM, or the disk is full
                give_back(storage, study, job, attrs)
                if attrs.get("outcome") == "interrupted":
                    raise KeyboardInterrupt
                raise VaelabError(f"{job.key}: {attrs.get('outcome')} in {attrs.get('run')} (see its log.txt); "
                                  "the job is back in the queue for any worker to resume")
            for key, text in attrs.items():
                storage.rdb.set_trial_user_attr(job.trial_id, key, text)
            study.tell(job.number, value, state=None if state == "COMPLETE" else S[state], skip_if_finished=True)
            done += 1
            shown = f"{metric} {value:.6g}" if value is not None else attrs.get("error") or attrs.get("outcome")
            say(f"{job.key} (trial {job.number}): {state.lower()}, {shown}")
            if state == "FAIL":
                problems.append(f"{job.key}: {attrs.get('error')}")
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    say(f"worker: {done} job(s) done here; none left in {study.study_name}")
    return problems


def interrupt(signum, frame):
    raise KeyboardInterrupt


def give_back(storage: Storage, study, job: Job, attrs: dict) -> None:
    """A job this worker stops holding unfinished: FAIL, and enqueued again for any worker to resume
    (unless it was found stale meanwhile: then Optuna's retry callback enqueued it already)."""
    with storage.lock(study.study_name):
        trial = storage.rdb.get_trial(job.trial_id)
        if trial.state == states().RUNNING:
            study.tell(job.number, state=states().FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, user_attrs={**trial.user_attrs, **attrs})


def job_of(plan: Plan, study):
    """A trial -> its Job if it belongs to this plan (the pairs' study or the search study), else None."""
    pairs = {p.key: Job(p.key, p.config) for p in plan.pairs}
    fingerprints = {job.fingerprint: job for job in pairs.values()}
    if not study.study_name.endswith("/search"):
        return lambda t: fingerprints.get(t.user_attrs.get("fingerprint"))
    return lambda t: t.user_attrs.get("job") if str(t.user_attrs.get("job", "")).startswith("search-") else None


# --------------------------------------------------------------------------------------------
# what a worker takes next: a waiting pair, or a search trial
# --------------------------------------------------------------------------------------------


def pair_taker(storage: Storage, study, accept):
    def take() -> Optional[Job]:
        claimed = claim_waiting(storage, study, accept)
        if claimed is None:
            return None
        trial, job = claimed
        return Job(job.key, job.config, trial.number, trial._trial_id)

    return take


def search_taker(plan: Plan, storage: Storage, study, count: int, accept):
    """Given-back and retried trials first (same params), then new TPE trials until the search has
    `count` jobs (a job keeps its key, search-<first trial>, through retries)."""
    from optuna import Trial
    from optuna.samplers import TPESampler

    def take() -> Optional[Job]:
        claimed = claim_waiting(storage, study, accept)
        if claimed is not None:
            frozen, key = claimed
            trial = Trial(study, frozen._trial_id)
        else:
            trials = study.get_trials(deepcopy=False)
            if len({accept(t) for t in trials} - {None}) >= count:
                return None
            # Seeded by the trial count, not once per process: workers started alike draw different configs.
            study.sampler = TPESampler(seed=plan.seeds[0] * 1_000_003 + len(trials))
            with warnings.catch_warnings():  # "Heartbeat ... used with Study.optimize": we beat ourselves
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask()
            storage.rdb.record_heartbeat(trial._trial_id)
            key = f"search-{trial.number}"
            trial.set_user_attr("job", key)
        params = {k: r.suggest(trial, k) for k, r in plan.search.items()}
        try:
            config = search_config(plan, key, params)
        except VaelabError as error:  # a sampled combination the config refuses: a failed trial, not a stop
            trial.set_user_attr("error", str(error)[:500])
            study.tell(trial, state=states().FAIL)
            say(f"{key} (trial {trial.number}): failed, {error}")
            return take()
        return Job(key, config, trial.number, trial._trial_id)

    return take


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def storage_command(plan_path: Path, url: Optional[str], worker: bool = False, search: Optional[int] = None,
                    grace: int = 120, journal_only: bool = False) -> Path:
    """Enqueue the plan's jobs (pairs, or `search` TPE trials) in the storage, work on them until none
    is left, then (unless `worker`) write and print the journal."""
    plan = load_plan(plan_path)
    if search is not None and not plan.search:
        raise VaelabError(f"{plan_path}: --search needs ranges in the plan: a 'search:' section with one "
                          "dotted key per line, e.g. 'train.lr: loguniform(1e-5, 1e-3)'")
    plan.folder.mkdir(parents=True, exist_ok=True)
    storage = Storage(url or f"sqlite:///{plan.folder / 'optuna.db'}", grace)
    import sqlalchemy

    try:
        problems = run_jobs(plan, storage, search, journal_only)
        summary = search_summary(plan, storage) if plan.search and not worker else None
    except sqlalchemy.exc.SQLAlchemyError as error:  # e.g. the server went away mid-sweep
        raise VaelabError(f"--storage {storage.shown}: lost the database ({reason(error)}); run this again once it "
                          "is back (a job held here is retried by any worker after --grace seconds)") from None
    if not worker:
        publish_journal(plan, plan_path, summary)
    if problems:
        raise VaelabError(f"{storage.shown}: {len(problems)} job(s) failed: {'; '.join(problems)}; fix the cause "
                          f"and run `vaelab sweep {plan_path} --storage URL` again to retry them")
    return plan.folder


def run_jobs(plan: Plan, storage: Storage, search: Optional[int], journal_only: bool) -> list[str]:
    """Enqueue and work on the pairs, or the search's trials; a line per job that failed here."""
    metric, direction = objective(plan) if search else ("val_loss", "minimize")
    problems: list[str] = []
    if search is None:
        study = storage.study(plan.name, "minimize")
        jobs = [Job(p.key, p.config) for p in plan.pairs]
        if not journal_only:
            for job in jobs:
                write_text(config_path(plan, job), job.config.to_yaml())
            added = enqueue_pairs(storage, study, jobs)
            say(f"sweep {plan.name}: {len(jobs)} pairs in {storage.shown} ({added} newly enqueued); "
                f"run folders in {plan.folder}")
            accept = job_of(plan, study)
            problems = work(plan, storage, study, metric, pair_taker(storage, study, accept), accept)
    else:
        from optuna.samplers import TPESampler

        study = storage.study(f"{plan.name}/search", direction, TPESampler(seed=plan.seeds[0]))
        if not journal_only:
            ranges = ", ".join(f"{k}: {r.text()}" for k, r in plan.search.items())
            say(f"search {plan.name}: {search} trials of {ranges}, {direction} {metric}, in {storage.shown}")
            accept = job_of(plan, study)
            problems = work(plan, storage, study, metric, search_taker(plan, storage, study, search, accept), accept)
    return problems
