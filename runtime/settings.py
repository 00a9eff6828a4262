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


def settings_from_dict(cls: type[T], data: Mapping[str, object], *, env_prefix: str,
                       env: Mapping[str, str] | None = None,
                       overrides: Mapping[str, object] | None = None,
                       where: str | Path | None = None) -> T:
    """`data` (a parsed file) < environment < overrides, as a `cls`; errors name the field."""
    env = os.environ if env is None else env
    raw = dict(data)
    for f in dataclasses.fields(cls):
        for name in (env_prefix + f.name.upper(), f.metadata.get("env")):
            if name and name in env:
                raw[f.name] = env[name]
    raw.update(overrides or {})
    at = f"{where}: " if where is not None else ""
    values, problems = _coerce(cls, raw)
    if problems:
        raise ValueError(f"{at}{'; '.join(problems)}")
    try:
        return cls(**values)
    except ValueError as e:
        raise ValueError(f"{at}{e}") from None


def _coerce(cls: type, raw: dict[str, object]) -> tuple[dict, list[str]]:
    """Each value as its field's type, and a line per unknown, mistyped or missing field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values, problems = {}, []
    for name, value in raw.items():
        if name not in fields:
            problems.append(f"{name}: unknown field")
            continue
        parse = fields[name].metadata.get("parse")
        try:
            values[name] = parse(value) if parse else convert(hints[name], value)
        except Mistyped as e:
            problems.append(f"{name}: expected {e.expected}, got {value!r}")
        except (TypeError, ValueError) as e:
            problems.append(f"{name}: {e}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in raw:
            problems.append(f"{name}: missing")
    return values, problems


def convert(kind: type, value: object) -> object:
    """`value` (from TOML or an env string) as an int, float, str or bool; else Mistyped."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
            return value.lower() in TRUE_WORDS
        raise Mistyped("true or false")
    if kind is str:
        if not isinstance(value, str):
            raise Mistyped("a string")
        return value
    if kind not in (int, float):
        raise TypeError(f"no converter for {kind}")
    accepted = (int, str) if kind is int else (int, float, str)
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise Mistyped(expected)
    try:
        return kind(value)
    except ValueError:
        raise Mistyped(expected) from None
