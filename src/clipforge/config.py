"""Options as nested dataclasses: YAML/JSON files with ``key=value`` overrides, type coercion, and the
``--help-config`` listing. Below every task (CLIP training, SSL, the ones to come).

Every field carries its help text in ``metadata["help"]`` (:func:`opt`); :func:`describe` lists them,
so the documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from clipforge.errors import ConfigError


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML: 3, 1e-4, true, [a, b])."""
    d = json.loads(json.dumps(d))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = d
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return d


def build_config(klass: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {d!r}")
    hints = get_type_hints(klass)
    known = {f.name for f in fields(klass)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(where + k for k in unknown)}; known in "
                          f"{where.rstrip('.') or 'the top level'}: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return klass(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value or {}, name + ".")
    origin, args = get_origin(hint), get_args(hint)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [build_config(args[0], v, f"{name}[{i}].") for i, v in enumerate(value)]
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name}: may not be null")
    base = [a for a in args if a is not type(None)][0] if args and origin is not list and origin is not dict else hint
    base = get_origin(base) or base
    if base in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = base(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is bool and isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    if base in (list, dict) and isinstance(value, base):
        return value
    raise ConfigError(f"{name}: expected {getattr(base, '__name__', base)}, got {value!r}")


def describe(klass: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(option, default, help) for every option, for --help-config and the docs."""
    rows = []
    hints = get_type_hints(klass)
    for f in fields(klass):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{prefix}{f.name}.")
            continue
        args = get_args(hints[f.name])
        if get_origin(hints[f.name]) is list and args and dataclasses.is_dataclass(args[0]):
            rows.append((prefix + f.name, "[]", f"{f.metadata.get('help', '')}; each entry holds:"))
            rows += describe(args[0], f"{prefix}{f.name}[].")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((prefix + f.name, json.dumps(default if not dataclasses.is_dataclass(default)
                                                 else dataclasses.asdict(default)), f.metadata.get("help", "")))
    return rows


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file of options as a dict, or a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level")
    return d
