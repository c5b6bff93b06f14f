"""`vaelab sweep PLAN --search N`: a TPE hyperparameter search over the ranges a plan declares.

    search:                              # in the plan, one dotted config key per line
      train.lr: loguniform(1e-5, 1e-3)   # also uniform(a, b)
      model.latent: int(16, 128)         # also logint(a, b)
      model.activation: choice(lrelu, elu)

Each trial trains baseline + the plan's `set:` + the sampled values with the plan's first seed,
as a run folder `search-<trial>` in the sweep folder. The trials live in the study
`<plan name>/search` of the sweep's storage and are taken by workers like the pairs
(`vaelab.experiments.sweep.storage`): retried after a lost worker, never trained twice. The
objective is the final val loss, or PSNR where a searched key changes the loss's unit (as in
the journal's verdicts).
"""

from __future__ import annotations

import difflib
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from vaelab.config import Config, check_keys, set_dotted
from vaelab.errors import VaelabError
from vaelab.experiments.sweep.local import LOSS_UNIT, NOT_EXPERIMENTAL, RESERVED, Plan, as_override, build_config, say

KINDS = {"uniform": "uniform(0.1, 0.9)", "loguniform": "loguniform(1e-5, 1e-3)", "int": "int(16, 128)",
         "logint": "logint(8, 256)", "choice": "choice(lrelu, elu)"}
USAGE = "use " + ", ".join(KINDS.values())


@dataclass(frozen=True)
class Range:
    kind: str  # one of KINDS
    values: tuple  # (low, high), or the choices

    def suggest(self, trial, key: str) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(key, list(self.values))
        low, high = self.values
        if self.kind in ("int", "logint"):
            return trial.suggest_int(key, low, high, log=self.kind == "logint")
        return trial.suggest_float(key, low, high, log=self.kind == "loguniform")

    def text(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.values))})"


def parse_search(raw: Any, baseline: Path, common: dict, where: str) -> dict[str, Range]:
    """The plan's `search:` as dotted key -> Range; every bound and choice is built into a config,
    so a value the config refuses fails here, naming its key, before any run."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise VaelabError(f"{where}: expected dotted keys with ranges, one per line, e.g. "
                          "'train.lr: loguniform(1e-5, 1e-3)'")
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:  # nested mappings as in `set:`
        for key, value in node.items():
            walk(value, f"{prefix}{key}.") if isinstance(value, dict) else flat.__setitem__(f"{prefix}{key}", value)

    walk(raw, "")
    out = {}
    for key, spec in flat.items():
        nested: dict[str, Any] = {}
        set_dotted(nested, key, None, origin=where)
        check_keys(nested, Config, origin=where)
        if key in RESERVED:
            raise VaelabError(f"{where}: {key} is set by the sweep; {RESERVED[key]}")
        if key.startswith(NOT_EXPERIMENTAL):
            raise VaelabError(f"{where}: {key} changes how a run is executed, not what it computes; search another key")
        out[key] = parse_range(spec, f"{where}: {key}")
        for value in out[key].values:  # int and float bounds alike: the extremes the sampler may draw
            build_config(baseline, common, {key: value}, f"{where}: {key}={value}")
    return out


def parse_range(spec: Any, where: str) -> Range:
    head, _, rest = spec.partition("(") if isinstance(spec, str) else ("", "", "")
    kind = head.strip().lower()
    if not rest.rstrip().endswith(")") or not kind:
        cut = " (a comma inside {...} ends the value: write one key per line)" if rest and ")" not in rest else ""
        raise VaelabError(f"{where}: {spec!r} is not a range{cut}; {USAGE}")
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.5)
        raise VaelabError(f"{where}: unknown distribution '{kind}'" + (f"; did you mean '{close[0]}'?" if close else "")
                          + f"; {USAGE}")
    example = f"e.g. {KINDS[kind]}"
    try:
        args = yaml.safe_load(f"[{rest.rstrip()[:-1]}]")
    except yaml.YAMLError:
        raise VaelabError(f"{where}: cannot read the values of {spec}; {example}") from None
    if kind == "choice":
        if len(args) < 2 or any(a is None or isinstance(a, (list, dict)) for a in args):
            raise VaelabError(f"{where}: choice() takes two or more single values (words or numbers), {example}")
        if len({repr(a) for a in args}) != len(args):
            raise VaelabError(f"{where}: {spec} lists a value twice; list each once")
        return Range(kind, tuple(args))
    args = [to_number(a) for a in args]  # YAML reads 1e-5 (no dot) as text
    integral = kind in ("int", "logint")
    if len(args) != 2 or any(a is None or (integral and not isinstance(a, int)) for a in args):
        numbers = "integers" if integral else "numbers"
        raise VaelabError(f"{where}: {kind}() takes two {numbers}, low and high, {example}")
    low, high = args
    if not low < high:
        raise VaelabError(f"{where}: {spec}: low must be below high, {example}")
    if kind.startswith("log") and low <= 0:
        raise VaelabError(f"{where}: {spec}: a log range needs low > 0, {example}")
    return Range(kind, (low, high) if integral else (float(low), float(high)))


def to_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def search_config(plan: Plan, key: str, params: dict) -> Config:
    extra = (as_override("train.seed", plan.seeds[0]), as_override("run.root", str(plan.folder)),
             as_override("run.name", key))
    return build_config(plan.baseline, plan.common, params, f"search {key}", extra)


def objective(plan: Plan) -> tuple[str, str]:
    """(metric, direction): val loss, unless a searched key changes its unit; then PSNR (as the journal)."""
    if any(key.startswith(LOSS_UNIT) for key in plan.search):
        return "val_psnr", "maximize"
    return "val_loss", "minimize"


def search_taker(plan: Plan, storage, study, count: int, accept):
    """Given-back and retried trials first (same params), then new TPE trials until the search has
    `count` jobs (a job keeps its key, search-<first trial>, through retries)."""
    from optuna import Trial
    from optuna.samplers import TPESampler

    from vaelab.experiments.sweep.storage import Job, claim_waiting, states  # which imports this module

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


def search_summary(plan: Plan, storage) -> Optional[dict]:
    """The search's trials for the journal, best first; None when the storage has no search."""
    import optuna

    metric, direction = objective(plan)
    try:
        study = optuna.load_study(study_name=f"{plan.name}/search", storage=storage.rdb)
    except KeyError:
        return None
    trials = study.get_trials(deepcopy=False)
    done = sorted((t for t in trials if t.state.name == "COMPLETE"),
                  key=lambda t: t.value if direction == "minimize" else -t.value)
    rows = [{"number": t.number, "value": t.value, "params": dict(t.params), "run": t.user_attrs.get("run")}
            for t in done]
    counts = Counter(t.state.name for t in trials)
    order = ("COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED")
    return {"metric": metric, "direction": direction, "ranges": {k: r.text() for k, r in plan.search.items()},
            "trials": rows, "counts": {k.lower(): counts[k] for k in order if counts[k]}}
