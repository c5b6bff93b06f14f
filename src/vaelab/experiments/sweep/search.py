"""`vaelab sweep PLAN --search N`: a TPE hyperparameter search over the ranges a plan declares
(`search:`, parsed with the plan in `vaelab.experiments.sweep.plan`).

Each trial trains baseline + the plan's `set:` + the sampled values with the plan's first seed,
as a run folder `search-<trial>` in the sweep folder. The trials live in the study
`<plan name>/search` of the sweep's storage and are taken by workers like the pairs
(`vaelab.experiments.sweep.storage`, whose `search_taker` asks the TPE sampler): retried after a
lost worker, never trained twice. The objective is the final val loss, or PSNR where a searched
key changes the loss's unit (as in the journal's verdicts). Here: a trial's config, the
objective, and the trials as the journal lists them.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from vaelab.config import Config
from vaelab.config.keys import changes_loss_unit
from vaelab.experiments.sweep.plan import Plan, as_override, build_config


def search_config(plan: Plan, key: str, params: dict) -> Config:
    extra = (as_override("train.seed", plan.seeds[0]), as_override("run.root", str(plan.folder)),
             as_override("run.name", key))
    return build_config(plan.baseline, plan.common, params, f"search {key}", extra)


def objective(plan: Plan) -> tuple[str, str]:
    """(metric, direction): val loss, unless a searched key changes its unit; then PSNR (as the journal)."""
    if any(changes_loss_unit(key) for key in plan.search):
        return "val_psnr", "maximize"
    return "val_loss", "minimize"


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
