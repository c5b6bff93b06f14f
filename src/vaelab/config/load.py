"""Loading a config: YAML plus `--set` overrides, each key checked before validation so that an
error names the key (and the nearest real one), the origin (file or --set) and what to do.
Relative paths are resolved against the current directory when the config is loaded, and
the resolved config (absolute paths) is what a run saves next to its results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError

from vaelab.config.sections import MODEL_KINDS, Config, model_kind, section_types
from vaelab.errors import VaelabError, did_you_mean


def load_config(path: Optional[Path] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Load `path` (or the embedded default when None), apply `section.key=value` overrides."""
    origin = str(path) if path is not None else "the default config"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(Path(path))
    parsed = [(override, *parse_override(override)) for override in overrides]
    for override, key, value in parsed:
        if key == "model.kind" and isinstance(raw.get("model"), dict) and value in MODEL_KINDS:
            # Another family: the keys of the file's family that the new one lacks (conv, dense, ...)
            # have no meaning there, so a sweep variant or --set can switch family in one key.
            raw["model"] = {k: v for k, v in raw["model"].items() if k in MODEL_KINDS[value].model_fields}
        set_dotted(raw, key, value, origin=f"--set {override}")
    for override, key, value in parsed:  # each on its own, so that an error names it
        alone: dict[str, Any] = {}
        set_dotted(alone, key, value, origin=f"--set {override}")
        if isinstance(alone.get("model"), dict) and isinstance(raw.get("model"), dict):
            alone["model"].setdefault("kind", model_kind(raw["model"]))  # the family the whole config names
        check_keys(alone, Config, origin=f"--set {override}")
    return validated(raw, origin, [(override, key) for override, key, _ in parsed])


def config_from_text(text: str, origin: str) -> Config:
    """A config.yaml's text that is not in a local file (a run folder's on run.remote)."""
    return validated(yaml_mapping(text, origin), origin)


def validated(raw: dict[str, Any], origin: str, overrides: list[tuple[str, str]] = ()) -> Config:
    """`raw` as a Config. `overrides`: (the --set as given, its key), so that a bad value is blamed
    on the --set that gave it, not on the file (or the default config) it was applied to."""
    check_keys(raw, Config, origin=origin)
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        by_origin: dict[str, list[str]] = {}
        for key, text in describe_validation_error(error):
            by_origin.setdefault(blame(key, origin, overrides), []).append(text)
        raise VaelabError("; ".join(f"{who}: {'; '.join(texts)}" for who, texts in by_origin.items())) from None
    return resolve_paths(config)


def blame(key: str, origin: str, overrides: list[tuple[str, str]] = ()) -> str:
    """Where the failing value of `key` came from: the last --set of that key or of a section above
    it; the file (or default config) with the --set inside it for a check over a whole section
    (`key` a section); else the file."""
    given = [override for override, set_key in overrides
             if key == set_key or key.startswith(f"{set_key}.") or key.startswith(f"{set_key}[")]
    if given:
        return f"--set {given[-1]}"
    inside = [override for override, set_key in overrides if not key or set_key.startswith(f"{key}.")]
    if inside:
        return f"{origin} with " + ", ".join(f"--set {override}" for override in inside)
    return origin


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VaelabError(f"{path}: config file not found; check the path given to -c") from None
    except (OSError, UnicodeDecodeError) as error:
        raise VaelabError(f"{path}: cannot read config ({error})") from None
    return yaml_mapping(text, path)


def yaml_mapping(text: str, path: Union[Path, str]) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise VaelabError(f"{path}: invalid YAML{at}; fix the syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise VaelabError(f"{path}: a config must be a mapping of sections (data:, model:, ...)")
    return raw


def parse_override(override: str) -> tuple[str, Any]:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise VaelabError(f"--set {override!r}: expected section.key=value, e.g. --set train.lr=1e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise VaelabError(f"--set {override!r}: the value is not valid YAML") from None
    if isinstance(value, str):
        value = _yaml_float(value)
    return key.strip(), value


def _yaml_float(text: str) -> Any:
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    try:
        return float(text) if any(c.isdigit() for c in text) and text.strip().lower() not in ("nan",) else text
    except ValueError:
        return text


def set_dotted(raw: dict[str, Any], key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise VaelabError(f"{origin}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def check_keys(raw: Any, model: type[BaseModel], origin: str, prefix: str = "") -> None:
    """Reject unknown keys anywhere in `raw`, suggesting the nearest known key."""
    if not isinstance(raw, dict):
        return
    known = model.model_fields
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            hint = did_you_mean(key, known, prefix) or f"known keys: {', '.join(known)}"
            raise VaelabError(f"{origin}: unknown key '{dotted}'; {hint}")
        child = _section_type(known[key].annotation, value, origin, dotted)
        if child is not None:
            if isinstance(value, list):
                for item in value:
                    check_keys(item, child, origin, prefix=f"{dotted}[].")
            else:
                check_keys(value, child, origin, prefix=f"{dotted}.")


def _section_type(annotation: Any, value: Any = None, origin: str = "", dotted: str = "") -> Optional[type[BaseModel]]:
    """The section class of a field; for the model section, the family that `value` names."""
    candidates = section_types(annotation)
    if len(candidates) > 1 and all("kind" in c.model_fields for c in candidates):
        kind = model_kind(value)
        by_kind = {c.model_fields["kind"].annotation.__args__[0]: c for c in candidates}
        if kind not in by_kind:
            hint = did_you_mean(kind, by_kind)
            raise VaelabError(f"{origin}: {dotted}.kind: unknown family {kind!r}; {hint + ' ' if hint else ''}"
                              f"use one of {', '.join(by_kind)}")
        return by_kind[kind]
    return candidates[0] if candidates else None


def describe_validation_error(error: ValidationError) -> list[tuple[str, str]]:
    """(key, 'key: what it should be') for the first three failing keys. A key that may take one
    of several types (e.g. 'auto' or a number) fails once per type; those messages are joined with 'or'."""
    by_key: dict[str, list[str]] = {}
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        by_key.setdefault(field_path(item["loc"]), [])
        if message not in by_key[field_path(item["loc"])]:
            by_key[field_path(item["loc"])].append(message)
    return [(key, f"{key}: {either(messages)}" if key else either(messages)) for key, messages in list(by_key.items())[:3]]


def either(messages: list[str]) -> str:
    lead = "Input should be "
    if len(messages) > 1 and all(m.startswith(lead) for m in messages):
        return lead + " or ".join(m.removeprefix(lead) for m in messages)
    return " or ".join(messages)


def field_path(loc: tuple) -> str:
    """The config key of a pydantic error location, without the union-member and validator tags."""
    parts: list[str] = []
    model: Optional[type[BaseModel]] = Config
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        elif parts == ["model"] and part in MODEL_KINDS:  # the tag pydantic puts after a union's field
            model = MODEL_KINDS[part]
        elif model is not None and part in model.model_fields:
            parts.append(str(part))
            model = _section_type(model.model_fields[part].annotation)
        else:
            break
    return ".".join(parts)


def resolve_paths(config: Config) -> Config:
    data = config.data
    for name in ("images", "metadata", "cache_dir"):
        value = getattr(data, name)
        if value is not None:
            setattr(data, name, Path(os.path.abspath(Path(value).expanduser())))
    config.run.root = Path(os.path.abspath(config.run.root.expanduser()))
    return config
