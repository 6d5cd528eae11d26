"""The small schema engine under TrainConfig: nested dataclass sections read from plain mappings.

A section is a dataclass whose fields carry a help string (`key_field`) and whose
`__post_init__` calls `check_types` then states its rules with `require`. From a
mapping (parsed YAML, a job row's JSON):
- every unknown key, at any depth, is reported at once by its dotted path with the
  closest valid key (`unknown_keys`);
- a missing required key names itself and its help (`build_section`);
- a value of the wrong type names the key, the value and the expected type; ints
  become floats, lists become tuples (`check_types`);
- `to_plain` gives back nested plain dicts and lists, so build(to_plain(c)) == c.
YAML is read with YAML 1.2 floats (`1e-4` is a number) and duplicate keys refused.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Hashable, Mapping
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config key is unknown, missing, of the wrong type or out of range; the message says which and what to do."""


def key_field(help_text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A dataclass field carrying its help string in metadata['help']."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help_text})


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError("<key>: <message>") unless `condition`."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def field_hints(cls) -> dict:
    """Field name -> resolved type annotation of a section class (its base classes' fields included)."""
    return typing.get_type_hints(cls)


def section_help(cls, prefix: str = "") -> dict[str, str]:
    """Dotted key -> help string, for every key of section `cls` and of its nested sections."""
    helps = {}
    for item in dataclasses.fields(cls):
        path = f"{prefix}{item.name}"
        helps[path] = item.metadata["help"]
        if dataclasses.is_dataclass(field_hints(cls)[item.name]):
            helps.update(section_help(field_hints(cls)[item.name], f"{path}."))
    return helps


def check_types(section, prefix: str) -> None:
    """Check every field against its annotation; ints become floats, lists become tuples."""
    for name, hint in field_hints(type(section)).items():
        key = f"{prefix}.{name}" if prefix else name
        setattr(section, name, _coerce(getattr(section, name), hint, key))


def _coerce(value, hint, key: str):
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        raise ConfigError(f"{key}: expected a {hint.__name__} section, got {type(value).__name__} {value!r}")
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return _coerce(value, option, key)
                except ConfigError:
                    pass
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    elif hint is bool and isinstance(value, bool):
        return value
    elif hint in (int, str) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    elif typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        item_hints = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_hints) == len(value):
            return tuple(_coerce(item, item_hint, key) for item, item_hint in zip(value, item_hints))
    raise ConfigError(f"{key}: expected {_describe(hint)}, got {type(value).__name__} {value!r}")


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if args[-1] is Ellipsis:
            return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} {_describe(args[0]).split(' ', 1)[1]}s"
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "a boolean (true or false)",
             type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def unknown_keys(root_cls, values, cls=None, prefix: str = "") -> list[str]:
    """One message per unknown key of `values` at any depth, each with the closest valid key of `root_cls`."""
    cls = root_cls if cls is None else cls
    if not isinstance(values, Mapping):
        return []  # build_section reports the wrong type with the key's name
    hints = field_hints(cls)
    problems = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in hints:
            problems.append(_unknown_key_message(root_cls, path, cls, prefix))
        elif dataclasses.is_dataclass(hints[key]):
            problems.extend(unknown_keys(root_cls, value, hints[key], f"{path}."))
    return problems


def _unknown_key_message(root_cls, path: str, section_cls, prefix: str) -> str:
    leaf = path.rsplit(".", 1)[-1]
    siblings = {f"{prefix}{name}" for name in field_hints(section_cls)}
    best, best_score = None, 0.6  # difflib's usual cutoff
    for candidate in section_help(root_cls):
        # Compare leaf names only: a shared "optim." prefix says nothing about "optim.warmup".
        score = difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1]).ratio()
        score += 0.01 if candidate in siblings else 0.0  # on a tie, prefer the same section
        if score > best_score:
            best, best_score = candidate, score
    if best is not None:
        return f"unknown key '{path}' — did you mean '{best}'?"
    return f"unknown key '{path}'; valid keys here: {', '.join(sorted(siblings))}"


def build_section(cls, values, prefix: str = ""):
    """Section `cls` (and its nested sections) from a mapping; missing required keys are named."""
    section = prefix.rstrip(".") or "the config"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(values).__name__} {values!r}")
    hints = field_hints(cls)
    kwargs = {}
    for item in dataclasses.fields(cls):
        path = f"{prefix}{item.name}"
        if item.name in values:
            value = values[item.name]
            if dataclasses.is_dataclass(hints[item.name]):
                value = build_section(hints[item.name], value, f"{path}.")
            kwargs[item.name] = value
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key '{path}': {item.metadata['help']}")
    return cls(**kwargs)


def to_plain(value):
    """Sections -> nested dicts, tuples -> lists; everything else as is."""
    if dataclasses.is_dataclass(value):
        return {item.name: to_plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (PyYAML's YAML 1.1 rules read it as the
    string "1e-4", a classic lr typo trap) and refuses duplicate keys (it keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader's own error names the unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}; each key may appear once", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml_mapping(path: Path) -> dict:
    """The mapping a YAML file holds; ConfigError naming the file when it is missing, invalid or not a mapping."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of keys (model:, data:, ...), "
                          f"got {type(values).__name__}")
    return values
