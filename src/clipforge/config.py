"""Options as nested dataclasses: YAML/JSON files with ``key=value`` overrides, type coercion, and the
``--help-config`` listing. Below every task (CLIP training, SSL, the ones to come) and the model
configs.

Every field carries its help text in ``metadata["help"]`` (:func:`opt`); :func:`describe` lists them,
so the documentation cannot drift from the code. A ``Literal[...]`` field only takes its values, and
:func:`choices` hands them to the CLI, so a command's ``choices=`` cannot drift from the config
either. A field typed as a union of dataclasses (a model's ``vision: ViTConfig | ResNetConfig``) is
built from the one whose ``type`` field matches the mapping's ``"type"`` (the first when absent).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

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


def build_config(klass: type, d: dict[str, Any], where: str, strict: bool = False) -> Any:
    """``klass(**d)`` with every key checked and every value coerced to its field's type.

    ``strict``: numbers must be numbers (a model file's ``"128"`` is a mistake, not 128); otherwise
    strings are read as numbers where one is expected (YAML 1.1 reads ``1e-3`` as a string).
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    hints = get_type_hints(klass)
    known = {f.name for f in fields(klass)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(where + k for k in unknown)}; known in "
                          f"{where.rstrip('.') or 'the top level'}: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}", strict)
    return klass(**kwargs)


def choices(klass: type, name: str) -> tuple[Any, ...]:
    """The values a ``Literal`` field of ``klass`` accepts (for argparse's ``choices=``)."""
    hint = get_type_hints(klass)[name]
    args = [a for a in get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    literal = next((a for a in args if get_origin(a) is Literal), None)
    if literal is None:
        raise TypeError(f"{klass.__name__}.{name} is not a Literal field")
    return get_args(literal)


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(base: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
            dict: "a mapping", tuple: "a list"}.get(base, getattr(base, "__name__", str(base)))


def _coerce(hint: Any, value: Any, name: str, strict: bool = False) -> Any:
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value or {}, name + ".", strict)
    origin, args = get_origin(hint), get_args(hint)
    if _is_union(hint):
        options = [a for a in args if a is not type(None)]
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{name} may not be null")
        if all(dataclasses.is_dataclass(a) for a in options):  # pick the dataclass by its "type"
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a mapping, got {value!r}")
            by_type = {get_args(get_type_hints(a)["type"])[0]: a for a in options}
            kind = value.get("type", next(iter(by_type)))
            if kind not in by_type:
                raise ConfigError(f"{name}.type must be one of {', '.join(map(repr, by_type))}, got {kind!r}")
            return build_config(by_type[kind], value, name + ".", strict)
        if len(options) == 1:
            return _coerce(options[0], value, name, strict)
        for option in options:  # e.g. int | str: the first that takes the value
            try:
                return _coerce(option, value, name, strict)
            except ConfigError:
                continue
        raise ConfigError(f"{name} must be one of {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if value not in args or isinstance(value, bool) != isinstance(args[0], bool):
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [build_config(args[0], v, f"{name}[{i}].", strict) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ConfigError(f"{name} must list {len(item_types)} values, got {value!r}")
        return tuple(_coerce(t, v, f"{name}[{i}]", strict) for i, (t, v) in enumerate(zip(item_types, value)))
    if value is None:
        raise ConfigError(f"{name} may not be null")
    base = origin or hint
    if base in (int, float) and isinstance(value, str) and not strict:
        try:  # YAML 1.1 reads "1e-3" as a string
            value = base(value)
        except ValueError:
            raise ConfigError(f"{name} must be {_type_name(base)}, got {value!r}") from None
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
    raise ConfigError(f"{name} must be {_type_name(base)}, got {value!r}")


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


class StoredConfig:
    """Mixin of a model config that is saved with the model: ``to_dict`` gives its JSON, ``from_dict``
    reads it back strictly (a model file's ``"128"`` is a mistake, not 128). ``where`` prefixes the keys
    named in errors."""

    where: typing.ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return build_config(cls, dict(d), cls.where, strict=True)


class TaskOptions:
    """Mixin of a command's option dataclass (``caption train``, ``generate train``, ``ssl train``):
    built from a mapping, loaded from a config file plus ``key=value`` overrides, saved as JSON."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return build_config(cls, d, "")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str]) -> Any:
        return cls.from_dict(apply_overrides(read_config_file(path) if path else {}, overrides))

    def save(self, path: str | Path) -> None:
        import json
        from dataclasses import asdict

        Path(path).write_text(json.dumps(asdict(self), indent=2))  # type: ignore[call-overload]
