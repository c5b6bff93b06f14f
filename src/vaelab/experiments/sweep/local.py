"""`vaelab sweep PLAN.yaml`: the local queue. A plan's pairs (its baseline and one-change variants,
each over several seeds: `vaelab.experiments.sweep.plan`) run in this process one after another, or
in up to --workers worker processes at once, as ordinary run folders in the sweep folder, which
then holds the journal measuring each variant against the baseline.

The sweep folder holds one run folder per (variant, seed) pair, `<time>_<variant>-s<seed>`, and:

    sweep.json             pair -> run folder, status, epoch (rewritten atomically)
    configs/<pair>.yaml    each pair's resolved config: `vaelab train -c` reproduces the pair
    logs/<pair>.log        output of a pair trained by a worker process (--workers > 1)
    journal.md, journal.html

A restart skips finished pairs and resumes unfinished ones in their own folders; how each pair
is matched to its run folder is told in `vaelab.experiments.sweep.records`, and how a pair is
started, resumed and ended in `vaelab.experiments.sweep.executor`. A worker process is
`python -m vaelab.experiments.sweep.local CONFIG [--resume RUN_DIR] [--threads N]` (`child_main`).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from vaelab.config import load_config
from vaelab.errors import VaelabError
from vaelab.experiments.sweep.executor import ended, say, starting, train_here
from vaelab.experiments.sweep.journal import publish_journal
from vaelab.experiments.sweep.plan import Pair, Plan, config_path, load_plan
from vaelab.experiments.sweep.records import Found, SweepState, survey
from vaelab.files import write_text
from vaelab.runs.folder import RunFolder
from vaelab.runs.session import train_run

# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def sweep_command(plan_path: Path, workers: int = 1, journal_only: bool = False) -> Path:
    """Run the plan's missing pairs (unless journal_only), then write and print the journal.

    Returns the sweep folder. Pairs that failed are reported after the journal is written,
    as one VaelabError; a Ctrl-C stops the sweep (the running pairs save and can be resumed).
    """
    if workers < 1:
        raise VaelabError(f"--workers {workers}: give 1 or more")
    plan = load_plan(plan_path)
    problems = [] if journal_only else run_sweep(plan, workers)
    publish_journal(plan, plan_path)
    if problems:
        raise VaelabError(f"{plan.folder}: {len(problems)} pair(s) did not finish: {'; '.join(problems)}; "
                          f"fix the cause and run `vaelab sweep {plan_path}` again to continue")
    return plan.folder


def run_sweep(plan: Plan, workers: int = 1) -> list[str]:
    """Train every pair that is not finished; returns a line per pair that failed or is busy."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    lock = lock_sweep(plan.folder)  # None where the OS has no flock
    try:
        state = SweepState(plan)
        config_path(plan, plan.pairs[0]).parent.mkdir(exist_ok=True)
        for pair in plan.pairs:
            write_text(config_path(plan, pair), pair.config.to_yaml())
        before = survey(plan, state)
        todo = [(p, before[p.key][1]) for p in plan.pairs if before[p.key][0] in ("new", "resume")]
        counts = {a: sum(1 for x, _ in before.values() if x == a) for a in ("finished", "diverged", "busy")}
        say(f"sweep {plan.name}: {len(plan.pairs)} pairs ({len(plan.variants)} groups x {len(plan.seeds)} seeds) "
            f"in {plan.folder}: {counts['finished']} finished, {len(todo)} to run"
            + "".join(f", {n} {a}" for a, n in counts.items() if n and a != "finished"))
        problems = [f"{k}: another process is training {f.folder}" for k, (a, f) in before.items() if a == "busy"]
        if todo:
            runner = run_in_process if workers == 1 else run_in_workers
            problems += runner(plan, state, todo, workers)
        return problems
    finally:
        if lock:
            lock.close()


def run_in_process(plan: Plan, state: SweepState, todo: list, workers: int) -> list[str]:
    """One pair after another in this process: the progress bar shows, and Ctrl-C is train_run's."""
    problems = []
    for number, (pair, found) in enumerate(todo, 1):
        say(f"[{number}/{len(todo)}] {pair.key}: {starting(found)}")
        state.update(pair, "running", found)
        started = time.monotonic()
        error = train_here(functools.partial(train_run, pair.config), found)
        status, problem = finish_pair(plan, state, pair, error, time.monotonic() - started)
        if status == "interrupted" and not error:
            raise KeyboardInterrupt  # train_run saved and returned on Ctrl-C: the user wants the sweep to stop
        if problem:
            problems.append(problem)
        if status == "stopped":
            break  # e.g. the disk is nearly full: the next pair would stop too
    return problems


def run_in_workers(plan: Plan, state: SweepState, todo: list, workers: int) -> list[str]:
    """Up to `workers` pairs at once, each a child process with cores // workers torch threads.

    Children run in their own sessions, so a Ctrl-C reaches them once, forwarded from here
    (twice would make train_run abort without saving); a second Ctrl-C is forwarded as well.
    """
    threads = max(1, cpu_count() // workers)
    queue, running, problems, stop = list(todo), {}, [], []

    def forward(signum, frame):
        stop.append(signum)
        say(f"{signal.Signals(signum).name}: stopping {len(running)} running pair(s) once they have saved")
        for process, *_ in running.values():
            process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        total = len(queue)
        while queue or running:
            while queue and len(running) < workers and not stop:
                pair, found = queue.pop(0)
                say(f"[{total - len(queue)}/{total}] {pair.key}: {starting(found)} in a worker "
                    f"({threads} thread{'s' * (threads > 1)}), log: {log_path(plan, pair)}")
                state.update(pair, "running", found)
                running[pair.key] = (start_child(plan, pair, found, threads), pair, time.monotonic())
            for key, (process, pair, started) in list(running.items()):
                if process.poll() is not None:
                    del running[key]
                    code = process.returncode
                    error = None if code == 0 else f"exit status {code}; {tail(log_path(plan, pair))}"
                    status, problem = finish_pair(plan, state, pair, error, time.monotonic() - started)
                    if problem and not (stop and status == "interrupted"):
                        problems.append(problem)
                    if status == "stopped":
                        stop.append(None)  # e.g. the disk is nearly full: start no more pairs
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if any(s is not None for s in stop):
        raise KeyboardInterrupt
    return problems


def start_child(plan: Plan, pair: Pair, found: Optional[Found], threads: int) -> subprocess.Popen:
    log = log_path(plan, pair)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "vaelab.experiments.sweep.local", str(config_path(plan, pair)),
               "--threads", str(threads)]
    if found:
        command += ["--resume", str(found.folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "a", encoding="utf-8") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True,
                                preexec_fn=stop_with_parent if sys.platform.startswith("linux") else None)


def stop_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the sweep dies, even by SIGKILL, so that it saves and
    stops instead of training on unwatched in its own session (Linux's PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # the worst case is the old behaviour: the child finishes its run on its own


def finish_pair(plan: Plan, state: SweepState, pair: Pair, error: Optional[str],
                seconds: float) -> tuple[str, Optional[str]]:
    """Record how a pair ended, as its run folder says: (status, a problem line unless it finished)."""
    status, found = ended(plan.folder, pair, error, state.recorded(pair))
    state.update(pair, status, found, error)
    where = f" -> {found.folder.name}" if found else ""
    say(f"    {pair.key}: {status} after {seconds:.0f} s{where}" + (f" ({error})" if error else ""))
    if status in ("finished", "diverged"):
        return status, None
    return status, f"{pair.key}: {status}" + (f" ({error})" if error else "")


def lock_sweep(folder: Path):
    """One `vaelab sweep` per sweep folder, so that two never write sweep.json or train one pair twice."""
    try:
        return RunFolder(folder).lock()
    except VaelabError:
        raise VaelabError(f"{folder}: another vaelab sweep is running this plan; wait for it or stop it") from None


def log_path(plan: Plan, pair: Pair) -> Path:
    return plan.folder / "logs" / f"{pair.key}.log"


def tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) if text else "empty log"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# a worker process: python -m vaelab.experiments.sweep.local CONFIG [--resume RUN_DIR] [--threads N]
# --------------------------------------------------------------------------------------------


def child_main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaelab.experiments.sweep.local",
                                     description="Train one sweep pair (what `vaelab sweep --workers N` starts).")
    parser.add_argument("config", type=Path, help="the pair's resolved config")
    parser.add_argument("--resume", type=Path, default=None, help="the pair's unfinished run folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        train_run(load_config(args.config), resume=args.resume, progress=False)
    except VaelabError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
