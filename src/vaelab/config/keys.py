"""Every config key's role, read from the fields of `vaelab.config.sections` (see
`vaelab.config.roles`), and the key sets derived from them:

    RESUME_MAY_CHANGE  execution, bookkeeping, length: what `--resume` may change in a run's config
    NOT_AN_EXPERIMENT  execution, bookkeeping, replicate: a sweep variant that changes only these
                       changes nothing
    NOT_IDENTIFYING    execution, bookkeeping, replicate, length: compare groups runs by all other keys
    LOSS_UNIT_KEYS     keys across which val_loss is not in the same unit (compare, sweep verdicts)
    MODEL_INPUT_KEYS   the data keys a trained model fixes (evaluate on other data keeps the run's)

Keys are dotted (`train.lr`); list items are numbered (`model.conv.0.kernel`) and have the role of
their field; a key this vaelab does not know (an older run's) is identity.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from pydantic import BaseModel

from vaelab.config.roles import BOOKKEEPING, EXECUTION, IDENTITY, LENGTH, LOSS_UNIT, MODEL_INPUT, REPLICATE
from vaelab.config.sections import Config, section_types


def flatten(values: dict, prefix: str = "", items: bool = True) -> dict[str, Any]:
    """Nested sections to dotted keys; lists of mappings (model.conv) by index, model.conv.0.kernel,
    or with `items=False` whole, model.conv (a plan's change is the list as written)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{dotted}.", items))
        elif items and isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                out.update(flatten(item, f"{dotted}.{index}.", items))
        else:
            out[dotted] = value
    return out


def declared(extra: Any) -> dict:
    return extra.get("vaelab", {}) if isinstance(extra, dict) else {}


def walk(section: type[BaseModel], prefix: str, role: str, marks: frozenset) -> Iterator[tuple[str, str, frozenset]]:
    """(dotted key, role, marks) for every field under `section`, sections included; a section's
    own declaration is the default of its fields, a field's overrides it."""
    default = declared(section.model_config.get("json_schema_extra"))
    role, marks = default.get("role", role), marks | frozenset(default.get("marks", ()))
    for name, field in section.model_fields.items():
        own = declared(field.json_schema_extra)
        key, key_role, key_marks = f"{prefix}{name}", own.get("role", role), marks | frozenset(own.get("marks", ()))
        yield key, key_role, key_marks
        for child in section_types(field.annotation):  # every model family under `model`
            yield from walk(child, f"{key}.", key_role, key_marks)


KEY_ROLES: dict[str, str] = {}
KEY_MARKS: dict[str, frozenset] = {}
for _key, _role, _marks in walk(Config, "", IDENTITY, frozenset()):
    KEY_ROLES[_key], KEY_MARKS[_key] = _role, _marks | KEY_MARKS.get(_key, frozenset())


def known_key(key: str) -> Optional[str]:
    """The declared key that `key` is or lies under (list indices and free-form mappings such as
    run.remote_options.endpoint_url); None for a key this vaelab does not know."""
    parts = [part for part in key.split(".") if not part.isdigit()]
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in KEY_ROLES:
            return candidate
    return None


def role_of(key: str) -> str:
    known = known_key(key)
    return KEY_ROLES[known] if known else IDENTITY


def marked(key: str, mark: str) -> bool:
    known = known_key(key)
    return bool(known) and mark in KEY_MARKS[known]


def keys_with(*roles: str) -> frozenset[str]:
    return frozenset(key for key, key_role in KEY_ROLES.items() if key_role in roles)


RESUME_MAY_CHANGE = (EXECUTION, BOOKKEEPING, LENGTH)
NOT_AN_EXPERIMENT = (EXECUTION, BOOKKEEPING, REPLICATE)
NOT_IDENTIFYING = (EXECUTION, BOOKKEEPING, REPLICATE, LENGTH)
LOSS_UNIT_KEYS = frozenset(key for key, marks in KEY_MARKS.items() if LOSS_UNIT in marks)
MODEL_INPUT_KEYS = tuple(key.removeprefix("data.") for key, marks in KEY_MARKS.items()
                         if MODEL_INPUT in marks and key.startswith("data."))


def resume_may_change(key: str) -> bool:
    return role_of(key) in RESUME_MAY_CHANGE


def not_an_experiment(key: str) -> bool:
    return role_of(key) in NOT_AN_EXPERIMENT


def identifying(key: str) -> bool:
    return role_of(key) not in NOT_IDENTIFYING


def changes_loss_unit(key: str) -> bool:
    return marked(key, LOSS_UNIT)


def described(roles: tuple[str, ...]) -> str:
    """The keys with these roles for a message: a whole section as `run.*`, other keys by name."""
    chosen = keys_with(*roles)
    whole = sorted({key.split(".")[0] for key in chosen
                    if all(k in chosen for k in KEY_ROLES if k.startswith(key.split(".")[0] + "."))})
    singles = sorted(key for key in chosen if key.count(".") == 1 and key.split(".")[0] not in whole)
    return ", ".join([f"{section}.*" for section in whole] + singles)
