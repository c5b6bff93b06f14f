"""A sweep's plan: a baseline config plus one-change variants, each run over several seeds, read
and fully validated before any run (every pair's config is built, so a typo fails first).

    name: ccp-things-to-try      # optional title; default: the plan file's stem
    root: runs/sweeps/ccp        # optional sweep folder, relative to the cwd; default runs/sweeps/<plan stem>
    baseline: ccp-64.yaml        # relative to the plan file's folder, else to the cwd
    seeds: [0, 1, 2]
    set: {train.epochs: 8}       # overrides for every run (dotted keys; nested mappings are merged)
    search:                      # optional ranges for --search (vaelab.experiments.sweep.search), one per line
      train.lr: loguniform(1e-5, 1e-3)   # also uniform(a, b)
      model.latent: int(16, 128)         # also logint(a, b)
      model.activation: choice(lrelu, elu)
    variants:                    # optional when the plan has a search
      - name: sigmoid-output     # letters, digits, '.', '_', '-'; 'baseline' is reserved
        set: {model.output_activation: sigmoid}
        hypothesis: a bounded output fits unit-scaled pixels better

Relative paths inside the baseline config (data.images, ...) follow `load_config`: the cwd.
Also here: the key sets that give config keys their role in a sweep (RESERVED, NOT_EXPERIMENTAL,
LOSS_UNIT), how each pair's config is built, and where its resolved config is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from vaelab.config import Config, check_keys, load_config, read_yaml_mapping, set_dotted
from vaelab.config.keys import changes_loss_unit, flatten, not_an_experiment
from vaelab.errors import VaelabError, did_you_mean

PLAN_KEYS = ("name", "root", "baseline", "seeds", "set", "search", "variants")
VARIANT_KEYS = ("name", "set", "hypothesis")
BASELINE = "baseline"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
# Keys the sweep itself sets for every pair.
RESERVED = {"train.seed": "list seeds under 'seeds:'", "run.root": "set the sweep folder with 'root:'",
            "run.name": "runs are named <variant>-s<seed>"}
# Which keys change how a run is executed or stored rather than what it computes (a variant
# changing only these changes nothing), and which change the unit of val_loss (for such a variant
# the verdict uses PSNR, per real pixel in image space): declared on the config fields,
# `vaelab.config.keys` (not_an_experiment, changes_loss_unit).


@dataclass
class Variant:
    name: str
    overrides: dict[str, Any]  # dotted key -> value, as written in the plan
    hypothesis: str = ""
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, baseline value, variant value)

    @property
    def loss_comparable(self) -> bool:
        return not any(changes_loss_unit(key) for key, _, _ in self.changes)


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
    search: dict[str, Any] = field(default_factory=dict)  # dotted key -> Range, for --search


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
            hint = did_you_mean(key, known) or f"known keys: {', '.join(known)}"
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
    return {k: v for k, v in flatten(config.to_dict(), items=False).items() if not not_an_experiment(k)}


def config_path(plan: Plan, pair: Pair) -> Path:
    """The pair's resolved config in the sweep folder: `vaelab train -c` reproduces the pair."""
    return plan.folder / "configs" / f"{pair.key}.yaml"


# --------------------------------------------------------------------------------------------
# the search: ranges, one per dotted key
# --------------------------------------------------------------------------------------------

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
    specs = flatten(raw, items=False)  # dotted key -> its range as written; nested mappings as in `set:`
    out = {}
    for key, spec in specs.items():
        nested: dict[str, Any] = {}
        set_dotted(nested, key, None, origin=where)
        check_keys(nested, Config, origin=where)
        if key in RESERVED:
            raise VaelabError(f"{where}: {key} is set by the sweep; {RESERVED[key]}")
        if not_an_experiment(key):
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
        hint = did_you_mean(kind, KINDS)
        raise VaelabError(f"{where}: unknown distribution '{kind}'" + (f"; {hint}" if hint else "") + f"; {USAGE}")
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
