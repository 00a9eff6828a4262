"""A settings dataclass from a TOML file, environment overrides and keyword overrides.

Values are coerced to each field's type (int, float, str, bool); a field with
`metadata={"parse": fn}` is parsed by fn instead, and `metadata={"env": "NAME"}` adds an env
variable to its `<PREFIX><FIELD>` one. Every unknown, mistyped or missing field is reported in
one ValueError line, prefixed with the file's path; range checks stay in each `__post_init__`.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import Mapping, TypeVar

T = TypeVar("T")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class Mistyped(ValueError):
    """A value of the wrong type; `expected` says what would do ("an integer")."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


def read_toml(path: str | Path, table: str | None = None, *,
              table_required: bool = False) -> dict:
    """The file's [table] when it has one, else its top-level keys (or, with table_required,
    a ValueError); one-line errors for every role's config file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {e} (invalid TOML)") from None
    if table is not None and isinstance(data.get(table), dict):
        return data[table]
    if table_required:
        raise ValueError(f"{path}: [{table}]: table missing")
    return data


def load_settings(cls: type[T], path: str | Path | None = None, *, env_prefix: str,
                  table: str | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, object] | None = None) -> T:
    """TOML file (optional) < environment < overrides, as a `cls`; errors name the field."""
    data = read_toml(path, table) if path is not None else {}
    return settings_from_dict(cls, data, env_prefix=env_prefix, env=env, overrides=overrides,
                              where=path)


def settings_from_dict(cls: type[T], data: Mapping[str, object], *, env_prefix: str | None,
                       env: Mapping[str, str] | None = None,
                       overrides: Mapping[str, object] | None = None,
                       where: str | Path | None = None, text_values: bool = True) -> T:
    """`data` (a parsed file) < environment < overrides, as a `cls`; errors name the field.

    env_prefix None: no environment overrides. text_values False: a number or a bool must be
    one in the file too (the VRRP agent's rule); True also parses text, as env values are.
    """
    raw = dict(data)
    if env_prefix is not None:
        env = os.environ if env is None else env
        for f in dataclasses.fields(cls):
            for name in (env_prefix + f.name.upper(), f.metadata.get("env")):
                if name and name in env:
                    raw[f.name] = env[name]
    raw.update(overrides or {})
    at = f"{where}: " if where is not None else ""
    settings, problems = _table(cls, raw, text_values, "")
    if problems:
        raise ValueError(f"{at}{'; '.join(problems)}")
    return settings


def _table(cls: type[T], raw: object, text_values: bool, prefix: str) -> tuple[T | None, list]:
    """`raw` as a `cls`, or the problems (each starting with its prefixed field name)."""
    if not isinstance(raw, Mapping):
        return None, [f"{prefix[:-1]}: expected a table, got {raw!r}"]
    values, problems = _coerce(cls, raw, text_values, prefix)
    if problems:
        return None, problems
    try:
        return cls(**values), []
    except ValueError as e:  # __post_init__ names the field (with the prefix it knows)
        return None, [str(e)]


def _coerce(cls: type, raw: Mapping[str, object], text_values: bool,
            prefix: str) -> tuple[dict, list[str]]:
    """Each value as its field's type, and a line per unknown, mistyped or missing field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values, problems = {}, []
    for name, value in raw.items():
        if name not in fields:
            problems.append(f"{prefix}{name}: unknown field")
            continue
        parse, table = fields[name].metadata.get("parse"), _table_type(hints[name])
        try:
            if table is not None:
                values[name], inner = _table(table, value, text_values, f"{prefix}{name}.")
                problems += inner
            else:
                values[name] = parse(value) if parse else convert(hints[name], value, text_values)
        except Mistyped as e:
            problems.append(f"{prefix}{name}: expected {e.expected}, got {value!r}")
        except (TypeError, ValueError) as e:
            problems.append(f"{prefix}{name}: {e}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in raw:
            problems.append(f"{prefix}{name}: missing")
    return values, problems


def _table_type(kind) -> type | None:
    """The settings dataclass a field holds as a [table] (`X` or `X | None`), else None."""
    args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def convert(kind: type, value: object, text_values: bool = True) -> object:
    """`value` as an int, float, str, bool or a tuple of those; else Mistyped. Text is parsed
    only with text_values (env values are text; a TOML number is already one)."""
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise Mistyped("a list")
        return tuple(convert(typing.get_args(kind)[0], v, text_values) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text_values and isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
            return value.lower() in TRUE_WORDS
        raise Mistyped("true or false")
    if kind is str:
        if not isinstance(value, str):
            raise Mistyped("a string")
        return value
    if kind not in (int, float):
        raise TypeError(f"no converter for {kind}")
    accepted = (int,) if kind is int else (int, float)
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, accepted + (str,) * text_values):
        raise Mistyped(expected)
    try:
        return kind(value)
    except ValueError:
        raise Mistyped(expected) from None
