"""`vaelab sweep PLAN.yaml`: a baseline and its one-change variants, each over several seeds,
run as ordinary run folders and measured against the baseline (the journal's checklist).

The plan (format in ../shared/PRODUCT.md):

    name: ccp-things-to-try      # optional title; default: the plan file's stem
    root: runs/sweeps/ccp        # optional sweep folder, relative to the cwd; default runs/sweeps/<plan stem>
    baseline: ccp-64.yaml        # relative to the plan file's folder, else to the cwd
    seeds: [0, 1, 2]
    set: {train.epochs: 8}       # overrides for every run (dotted keys; nested mappings are merged)
    search:                      # optional ranges for --search (vaelab.experiments.sweep.search), one per line
      train.lr: loguniform(1e-5, 1e-3)
    variants:                    # optional when the plan has a search
      - name: sigmoid-output     # letters, digits, '.', '_', '-'; 'baseline' is reserved
        set: {model.output_activation: sigmoid}
        hypothesis: a bounded output fits unit-scaled pixels better

Relative paths inside the baseline config (data.images, ...) follow `load_config`: the cwd.

The sweep folder holds one run folder per (variant, seed) pair, `<time>_<variant>-s<seed>`, and:

    sweep.json             pair -> run folder, status, epoch (rewritten atomically)
    configs/<pair>.yaml    each pair's resolved config: `vaelab train -c` reproduces the pair
    logs/<pair>.log        output of a pair trained by a worker process (--workers > 1)
    journal.md, journal.html

A restart skips finished pairs and resumes unfinished ones in their own folders; how each pair
is matched to its run folder is told in `vaelab.experiments.sweep.journal` (the sweep's records).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from vaelab.config import Config, check_keys, load_config, read_yaml_mapping, set_dotted
from vaelab.errors import VaelabError
from vaelab.experiments.sweep.journal import (
    Found,
    SweepState,
    build_journal,
    journal_groups,
    match_key,
    pair_state,
    print_journal,
    scan_runs,
    survey,
    write_journal,
)
from vaelab.files import write_text
from vaelab.runs.folder import flat, lock_run
from vaelab.runs.session import train_run

PLAN_KEYS = ("name", "root", "baseline", "seeds", "set", "search", "variants")
VARIANT_KEYS = ("name", "set", "hypothesis")
BASELINE = "baseline"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
# Keys the sweep itself sets for every pair.
RESERVED = {"train.seed": "list seeds under 'seeds:'", "run.root": "set the sweep folder with 'root:'",
            "run.name": "runs are named <variant>-s<seed>"}
# Keys that change how a run is executed or stored, not what it computes: a variant changing
# only these changes nothing.
NOT_EXPERIMENTAL = ("run.", "train.seed", "data.workers", "data.prefetch", "data.cache", "train.device", "train.amp",
                    "train.channels_last", "train.compile")
# Keys that change the unit of val_loss (what is summed, over which pixels, in which scale):
# for such a variant the verdict uses PSNR, which is per real pixel in image space.
LOSS_UNIT = ("loss.", "data.size", "data.fit", "data.bbox_crop", "data.scale", "data.pad_value")
STOP_SWEEP = ("interrupted", "stopped")  # Ctrl-C, SIGTERM or a full disk: later pairs would fare no better


@dataclass
class Variant:
    name: str
    overrides: dict[str, Any]  # dotted key -> value, as written in the plan
    hypothesis: str = ""
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, baseline value, variant value)

    @property
    def loss_comparable(self) -> bool:
        return not any(key.startswith(LOSS_UNIT) for key, _, _ in self.changes)


@dataclass
class Pair:
    variant: Variant
    seed: int
    config: Config

    @property
    def key(self) -> str:
        return f"{self.variant.name}-s{self.seed}"


@dataclass
class Plan:
    path: Path
    name: str
    folder: Path  # the sweep folder, absolute
    baseline: Path
    seeds: list[int]
    variants: list[Variant]  # the baseline first
    pairs: list[Pair]
    common: dict[str, Any] = field(default_factory=dict)  # the plan's `set:`, dotted
    search: dict[str, Any] = field(default_factory=dict)  # dotted key -> sweep_search.Range, for --search


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------


def load_plan(path: Path) -> Plan:
    """Read and fully validate a plan: every pair's config is built, so a typo fails before any run."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    unknown_keys(raw, PLAN_KEYS, f"{path}")
    if "baseline" not in raw:
        raise VaelabError(f"{path}: no 'baseline:'; name the config every variant changes, e.g. baseline: demo.yaml")
    baseline = find_baseline(path, raw["baseline"])
    seeds = raw.get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)):
        raise VaelabError(f"{path}: seeds: give a non-empty list of integers, e.g. seeds: [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise VaelabError(f"{path}: seeds: {seeds} repeats a seed; each seed runs once per variant")
    common = overrides_of(raw.get("set"), f"{path}: set")
    base_config = build_config(baseline, common, {}, f"{path}: set")
    reference = experiment(base_config)

    from vaelab.experiments.sweep.search import parse_search  # imports this module

    search = parse_search(raw.get("search"), baseline, common, f"{path}: search")
    entries = raw.get("variants")
    if search and entries is None:
        entries = []  # a search-only plan: its pairs are the baseline's seeds
    elif not isinstance(entries, list) or not entries:
        raise VaelabError(f"{path}: variants: give a list of one-change variants, each with name and set")
    variants, seen, computed = [Variant(BASELINE, {})], {}, {}
    for index, entry in enumerate(entries):
        where = f"{path}: variants[{index}]"
        if not isinstance(entry, dict):
            raise VaelabError(f"{where}: expected a mapping with name, set and hypothesis")
        unknown_keys(entry, VARIANT_KEYS, where)
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise VaelabError(f"{where}: name {name!r} must be a plain name of letters, digits, '.', '_' and '-'")
        where = f"{path}: variant '{name}'"
        if name == BASELINE:
            raise VaelabError(f"{where}: 'baseline' is the name of the baseline group; rename the variant")
        if name in seen:
            raise VaelabError(f"{where}: the name is used twice (variants[{seen[name]}] and [{index}]); rename one")
        seen[name] = index
        hypothesis = entry.get("hypothesis") or ""
        if not isinstance(hypothesis, str):
            raise VaelabError(f"{where}: hypothesis must be one line of text")
        if not entry.get("set"):
            raise VaelabError(f"{where}: no 'set:'; a variant must change something, e.g. set: {{train.lr: 1e-4}}")
        overrides = overrides_of(entry["set"], f"{where}: set")
        config = build_config(baseline, common, overrides, f"{where}: set")
        mine = experiment(config)
        changes = [(k, reference.get(k), mine.get(k)) for k in dict.fromkeys([*reference, *mine])
                   if reference.get(k) != mine.get(k)]
        if not changes:
            shown = ", ".join(f"{k}: {v!r}" for k, v in overrides.items())
            raise VaelabError(f"{where}: set {{{shown}}} changes nothing relative to the baseline "
                              f"({baseline.name}{' plus the common set' if common else ''}); change a value")
        same = next((other for other, theirs in computed.items() if theirs == mine), None)
        if same:
            raise VaelabError(f"{where}: runs exactly the same config as variant '{same}'; drop one of them")
        computed[name] = mine
        variants.append(Variant(name, overrides, " ".join(hypothesis.split()), changes))

    folder = Path(raw.get("root") or Path("runs") / "sweeps" / path.stem).expanduser().absolute()
    pairs = [Pair(v, seed, pair_config(baseline, common, v, seed, folder)) for v in variants for seed in seeds]
    name = str(raw.get("name") or path.stem)
    return Plan(path.absolute(), name, folder, baseline, list(seeds), variants, pairs, common, search)


def unknown_keys(raw: dict, known: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise VaelabError(f"{where}: unknown key '{key}'; {hint}")


def find_baseline(plan: Path, value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise VaelabError(f"{plan}: baseline: give the path of a config file, e.g. baseline: demo.yaml")
    given = Path(value).expanduser()
    tried = [given] if given.is_absolute() else [plan.parent / given, Path.cwd() / given]
    for candidate in tried:
        if candidate.is_file():
            return candidate.absolute()
    raise VaelabError(f"{plan}: baseline: {value} not found (looked at {' and '.join(map(str, dict.fromkeys(tried)))});"
                      " give a path relative to the plan's folder or to the current directory")


def overrides_of(raw: Any, where: str) -> dict[str, Any]:
    """The `set:` mapping as dotted key -> value. A nested mapping is merged key by key, so that
    `data.filter: {include: [standing]}` keeps the baseline's other filter settings."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise VaelabError(f"{where}: expected a mapping of dotted keys, e.g. {{train.lr: 1e-4}}")
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{dotted}.")
            else:
                out[dotted] = value

    walk(raw, "")
    for key in out:
        if key in RESERVED:
            raise VaelabError(f"{where}: {key} is set by the sweep; {RESERVED[key]}")
    nested: dict[str, Any] = {}
    for key, value in out.items():  # unknown keys named in the plan's terms, not as a --set
        set_dotted(nested, key, value, origin=where)
    check_keys(nested, Config, origin=where)
    return out


def as_override(key: str, value: Any) -> str:
    """`key=value` for `load_config`, which parses the value back as YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def build_config(baseline: Path, common: dict, overrides: dict, where: str, extra: tuple[str, ...] = ()) -> Config:
    items = [as_override(k, v) for k, v in {**common, **overrides}.items()]
    try:
        return load_config(baseline, [*items, *extra])
    except VaelabError as error:
        raise VaelabError(f"{where}: {error}") from None


def pair_config(baseline: Path, common: dict, variant: Variant, seed: int, folder: Path) -> Config:
    extra = (as_override("train.seed", seed), as_override("run.root", str(folder)),
             as_override("run.name", f"{variant.name}-s{seed}"))
    return build_config(baseline, common, variant.overrides, f"variant '{variant.name}'", extra)


def experiment(config: Config) -> dict[str, Any]:
    """The flattened config keys that decide what a run computes."""
    return {k: v for k, v in flat(config.to_dict()).items() if not k.startswith(NOT_EXPERIMENTAL)}


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


def publish_journal(plan: Plan, plan_path: Path, search: Optional[dict] = None) -> None:
    """Write journal.md/.html from the plan's runs (and a storage search's trials) and print it."""
    journal = build_journal(plan.name, plan.folder, journal_groups(plan), search=search)
    if not any(row["runs"] for row in journal["rows"]) and not (search and search["trials"]):
        raise VaelabError(f"{plan.folder}: no finished runs of this plan yet; run `vaelab sweep {plan_path}` first")
    write_journal(journal, plan.folder)
    print_journal(journal)


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
        say(f"[{number}/{len(todo)}] {pair.key}: {'resuming ' + found.folder.name if found else 'starting'}")
        state.update(pair, "running", found)
        started, error = time.monotonic(), None
        try:
            train_run(pair.config, resume=found.folder if found else None)
        except Exception as exc:  # noqa: BLE001 - one failed pair must not stop the others
            error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, VaelabError) else str(exc)
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
                what = f"resuming {found.folder.name}" if found else "starting"
                say(f"[{total - len(queue)}/{total}] {pair.key}: {what} in a worker "
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
    runs = scan_runs(plan.folder).get(match_key(pair.config), [])
    action, found = pair_state(pair, runs, state.recorded(pair))
    status = found.status if action == "resume" and found else action
    if error and status not in STOP_SWEEP:
        status = "failed"
    state.update(pair, status, found, error)
    where = f" -> {found.folder.name}" if found else ""
    say(f"    {pair.key}: {status} after {seconds:.0f} s{where}" + (f" ({error})" if error else ""))
    if status in ("finished", "diverged"):
        return status, None
    return status, f"{pair.key}: {status}" + (f" ({error})" if error else "")


def lock_sweep(folder: Path):
    """One `vaelab sweep` per sweep folder, so that two never write sweep.json or train one pair twice."""
    try:
        return lock_run(folder)
    except VaelabError:
        raise VaelabError(f"{folder}: another vaelab sweep is running this plan; wait for it or stop it") from None


def config_path(plan: Plan, pair: Pair) -> Path:
    return plan.folder / "configs" / f"{pair.key}.yaml"


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


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
