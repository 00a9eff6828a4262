"""runtime/settings: what both host configs rely on beyond their own tests — a table or the top
level, a field's own parser and extra env variable, and every problem in one line."""
import types
from dataclasses import dataclass, field
from typing import Mapping

import pytest

from runtime.settings import load_settings


def _upper_tags(value) -> Mapping[str, str]:
    if not isinstance(value, str):
        raise ValueError("expected 'a,b,...'")
    return types.MappingProxyType({t: t.upper() for t in value.split(",")})


@dataclass(frozen=True)
class Demo:
    """A config with every kind of field the loader coerces."""

    name: str
    count: int = 1
    ratio_s: float = 0.5
    verbose: bool = False
    tags: Mapping[str, str] = field(default_factory=dict,
                                    metadata={"parse": _upper_tags, "env": "DEMO_TAGS"})

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"count: expected >= 1, got {self.count}")


def test_table_then_env_then_overrides(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('[demo]\nname = "a"\ncount = 2\nverbose = true\n')
    env = {"X_COUNT": "3", "X_RATIO_S": "1.5", "DEMO_TAGS": "p,q", "OTHER": "1"}
    d = load_settings(Demo, path, env_prefix="X_", table="demo", env=env, overrides={"name": "b"})
    assert (d.name, d.count, d.ratio_s, d.verbose) == ("b", 3, 1.5, True)
    assert dict(d.tags) == {"p": "P", "q": "Q"}


def test_top_level_keys_when_the_table_is_absent(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('name = "top"\n')
    assert load_settings(Demo, path, env_prefix="X_", table="demo", env={}).name == "top"


def test_every_problem_named_in_one_line_after_the_path(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('count = 2.5\nverbose = "maybe"\ncolour = "red"\ntags = 3\n')
    with pytest.raises(ValueError) as e:
        load_settings(Demo, path, env_prefix="X_", env={"X_RATIO_S": "fast"})
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    for part in ("count: expected an integer, got 2.5", "verbose: expected true or false",
                 "colour: unknown field", "tags: expected 'a,b,...'",
                 "ratio_s: expected a number, got 'fast'", "name: missing"):
        assert part in msg


def test_range_checks_are_the_callers():
    with pytest.raises(ValueError, match="^count: expected >= 1, got 0$"):
        load_settings(Demo, env_prefix="X_", env={}, overrides={"name": "n", "count": 0})


def test_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="nope.toml: cannot read"):
        load_settings(Demo, tmp_path / "nope.toml", env_prefix="X_", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ValueError, match="bad.toml: .*line 1"):
        load_settings(Demo, bad, env_prefix="X_", env={})
