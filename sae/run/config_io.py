"""Typed dataclass configs from YAML, with dotted command-line overrides.

Every config in the project is a tree of dataclasses. ``load_config`` reads YAML, applies
``--set a.b=value`` overrides and checks every key and type against the dataclass fields; an
unknown key or a wrong type raises ``UsageError`` with a one-line message (and the nearest valid
key). ``config_to_dict`` gives back plain data that, saved as YAML and fed back, rebuilds the same
config.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from sae.run.errors import UsageError

T = TypeVar("T")


class _YamlLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that also reads ``1e-3`` (a float without a dot) as a number, as YAML
    1.2 does; PyYAML's YAML 1.1 rules leave it a string, so ``lr: 1e-3`` would be rejected."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class Config:
    """Base of every config dataclass: it validates itself when built, so a config made in code
    is checked exactly like one read from YAML (``from_dict`` turns the ValueError into a
    one-line UsageError that names the key)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending key (``section.key must ...``)."""


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from a YAML file (or the defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
    source = str(path) if path else "config"
    checked = []
    for override in overrides:
        key, value = parse_override(override)
        # Checked on its own first, so that a bad override is blamed on the --set, not the file.
        checked.append((override, key, check_override(cls, override, key, value)))
    merged = copy.deepcopy(data)
    for _, key, value in checked:
        set_dotted(merged, key, value)
    try:
        return from_dict(cls, merged, source=source, root=cls)
    except UsageError:
        if not checked:
            raise
        _blame(cls, data, source, checked)
        raise


def _blame(cls: type, data: dict[str, Any], source: str, checked: list[tuple[str, str, Any]]):
    """A merged config failed its checks: raise the error of the file alone if it has one, else
    that of the first ``--set`` whose addition makes it fail."""
    from_dict(cls, data, source=source, root=cls)
    for override, key, value in checked:
        set_dotted(data, key, value)
        from_dict(cls, data, source=f"--set {override}", root=cls)


def check_override(cls: type, text: str, key: str, value: Any) -> Any:
    """The value of the override ``text`` (``key=value``) coerced to its field's type; an
    unknown key or a wrong type raises UsageError naming the ``--set``."""
    source = f"--set {text}"
    tp: Any = cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            above = ".".join(parts[:i])
            raise UsageError(f"{source}: '{above}' is a value, not a section")
        fields = {f.name: f for f in dataclasses.fields(tp)}
        prefix = "".join(f"{p}." for p in parts[:i])
        if part not in fields:
            hint = _suggest(part, fields, prefix, cls)
            raise UsageError(f"{source}: unknown key '{prefix}{part}'{hint}")
        tp = typing.get_type_hints(tp)[part]
    return _coerce(value, tp, source, key, cls)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {path}: {e}") from None
    try:
        data = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"config file {path} must hold a mapping of keys, not {type(data).__name__}"
        )
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.n_hidden=5"`` -> ``("model.n_hidden", 5)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"override {text!r} must look like key.sub=value")
    try:
        value = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def from_dict(
    cls: type[T], data: Any, source: str = "config", prefix: str = "", root: type | None = None
) -> T:
    """Recursively build dataclass ``cls`` from ``data``, checking keys and types; ``root``, the
    config the whole tree belongs to, widens the did-you-mean search to every section."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the top level"
        raise UsageError(f"{source}: {where} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UsageError(
                f"{source}: unknown key '{prefix}{key}'{_suggest(key, fields, prefix, root)}"
            )
        kwargs[key] = _coerce(value, hints[key], source, f"{prefix}{key}", root)
    try:
        return cls(**kwargs)
    except ValueError as e:  # Config.validate, run by the constructor
        raise UsageError(f"{source}: {_qualify(str(e), prefix)}") from None
    except TypeError as e:
        raise UsageError(f"{source}: {e}") from None


def _qualify(message: str, prefix: str) -> str:
    """A section's validate() names its keys from the section down ('data.x must ...'): put
    only the part of ``prefix`` above that section in front, so no name appears twice."""
    parent, _, section = prefix.rstrip(".").rpartition(".")
    if section and message.startswith((f"{section}.", f"{section} ")):
        return f"{parent}.{message}" if parent else message
    return prefix + message


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dicts and lists: what ``from_dict`` reads back."""
    return dataclasses.asdict(config)


def config_to_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _suggest(key: str, fields: dict[str, Any], prefix: str, root: type | None = None) -> str:
    """The nearest valid key: the same name in another section of ``root``
    (``sae.l1_coefficient`` -> ``sweep.l1_coefficient``), else a close name in the same section,
    else a close dotted key anywhere in ``root``."""
    paths = _key_paths(root) if root is not None else []
    same = [p for p in paths if p.rpartition(".")[2] == key]
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
    if same:
        return f" (did you mean '{same[0]}'?)"
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    elsewhere = [p for p in paths if not prefix.startswith(f"{p}.")]  # not a section above
    close = difflib.get_close_matches(f"{prefix}{key}", elsewhere, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _key_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of config ``cls``, sections and values, outermost first."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        paths.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            paths.extend(_key_paths(hints[f.name], f"{prefix}{f.name}."))
    return paths


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, source: str, key: str, root: type | None = None) -> Any:
    """Check ``value`` against annotation ``tp``; allow int -> float and a single value where a
    list is expected (``3`` -> ``[3]``), nothing else implicit."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, source, f"{key}.", root)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, source, key, root)
            except UsageError as e:
                errors.append(e)
        names = " or ".join(_type_name(o) for o in options if o is not type(None))
        raise UsageError(f"{source}: '{key}' must be {names}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise UsageError(f"{source}: '{key}' must be one of {listed}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if value is not None and not isinstance(value, (list, dict)):
            value = [value]
        if not isinstance(value, list):
            raise UsageError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_tp, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")
