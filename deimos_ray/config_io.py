"""Configs as files and flags: frozen dataclasses from and to plain dicts and YAML, with
type checks, and dotted overrides from the command line (``--set model.lr=1e-3``).

Every job's config is a tree of frozen dataclasses (:mod:`deimos_ray.config` and the
algorithms' own ``*JobConfig``); this module reads, checks, overrides and writes any of
them the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from deimos_ray.files import write_text


def _resolve_type(tp: Any) -> Any:
    """Return the dataclass inside ``X``, ``X | None`` or ``Optional[X]``, else ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _fits(tp: Any, value: Any) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (scalars and tuples checked;
    other annotations are left to the field's own validation)."""
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if typing.get_origin(tp) is tuple:
        return isinstance(value, list | tuple)
    return True


def _checked(path: str, tp: Any, value: Any) -> Any:
    """``value`` for the field ``path`` of annotated type ``tp``, or a one-line
    ValueError naming the key, what it takes and what it got. A float field also takes
    a string that reads as one (YAML reads ``1e-3`` as a string)."""
    options = [tp] if typing.get_origin(tp) not in (typing.Union, types.UnionType) else list(typing.get_args(tp))
    if value is None:
        if type(None) in options:
            return value
    elif any(_fits(option, value) for option in options):
        return float(value) if float in options and int not in options and isinstance(value, int) else value
    elif float in options and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    words = " or ".join(_TYPE_WORDS.get(o, "a list" if typing.get_origin(o) is tuple else "null")
                        for o in options)
    raise ValueError(f"{path} must be {words}, got {value!r} (in --set {path}=VALUE or the --config file)")


def from_dict(cls: type, data: dict[str, Any] | None, _path: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a nested dict, rejecting unknown keys and
    values of the wrong type.

    Args:
        cls: A dataclass type whose fields may themselves be dataclasses.
        data: Plain values as read from YAML; missing keys take the defaults.

    Raises:
        ValueError: A key is not a field of ``cls`` (typos must not pass silently), or
            a value is not of its field's type.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = _resolve_type(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{_path}{name}.")
        else:
            value = _checked(f"{_path}{name}", hints[name], value)
            if isinstance(value, list):
                value = tuple(value)  # YAML lists become tuples so configs stay hashable
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a config dataclass (tuples become lists, for YAML and JSON)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def stored_settings(cls: type, data: dict[str, Any] | None) -> dict[str, Any]:
    """A stored config (a run's ``config.yaml``, a checkpoint's) as :func:`to_dict` of
    ``cls`` gives it today: a field added since it was written counts as its default, so
    it compares equal to a config made now with that default.

    Raises:
        ValueError: It holds a field ``cls`` no longer has.
    """
    return to_dict(from_dict(cls, data))


def override(cfg: Any, path: str, value: Any) -> Any:
    """Return a copy of ``cfg`` with the dotted field ``path`` set to ``value``.

    Example: ``override(cfg, "model.n_clusters", 10)``. Validation runs again on the new
    objects, so a bad value fails here, before any work starts.
    """
    head, _, rest = path.partition(".")
    if head not in {f.name for f in dataclasses.fields(cfg)}:
        raise ValueError(f"{type(cfg).__name__} has no field {head!r} (from {path!r})")
    if rest:
        return dataclasses.replace(cfg, **{head: override(getattr(cfg, head), rest, value)})
    if isinstance(value, list):
        value = tuple(value)
    return dataclasses.replace(cfg, **{head: value})


class UnknownSetting(ValueError):
    """A dotted path that names no config field; ``nearest`` holds the closest valid
    paths, for the message."""

    def __init__(self, path: str, nearest: list[str]):
        self.path, self.nearest = path, nearest
        near = f"; nearest: {', '.join(nearest)}" if nearest else ""
        super().__init__(f"no setting {path!r}{near}")


def setting_paths(cls: type, _prefix: str = "") -> list[str]:
    """Every dotted leaf path of the config dataclass ``cls`` (``model.lr``, ``seed``)."""
    hints = typing.get_type_hints(cls)
    paths = []
    for field in dataclasses.fields(cls):
        tp = _resolve_type(hints[field.name])
        if dataclasses.is_dataclass(tp):
            paths += setting_paths(tp, f"{_prefix}{field.name}.")
        else:
            paths.append(f"{_prefix}{field.name}")
    return paths


def check_paths(cls: type, paths: Iterable[str]) -> None:
    """Raise :class:`UnknownSetting` for the first of ``paths`` that names no leaf
    field of ``cls``."""
    valid = setting_paths(cls)
    sections = {leaf.rsplit(".", i)[0] for leaf in valid for i in range(1, leaf.count(".") + 1)}
    for path in paths:
        if path not in valid and path not in sections:  # a whole section may be set too
            raise UnknownSetting(path, difflib.get_close_matches(path, valid, n=3, cutoff=0.5))


def override_all(cfg: Any, settings: dict[str, Any]) -> Any:
    """Return a copy of ``cfg`` with every dotted field of ``settings`` set, validated
    once, after all of them: rules that tie two fields together (DESOM's restart
    consensus needs ``n_clusters``) must not depend on the order the settings come in.

    Raises:
        UnknownSetting: A path names no field (with the nearest valid ones).
        ValueError: The result is not a valid config.
    """
    check_paths(type(cfg), settings)
    data = to_dict(cfg)
    for path, value in settings.items():
        *heads, leaf = path.split(".")
        node = data
        for head in heads:
            node = node[head]
        node[leaf] = value
    return from_dict(type(cfg), data)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value`` into the path and a YAML-typed value."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key written twice in one mapping.

    PyYAML keeps the last of two equal keys without a word, so a setting written twice
    would silently lose its first value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} is written twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with a clear error when it is missing or
    when a key is written twice in one mapping."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    with p.open() as stream:  # a stream, so that errors name the file and line
        try:
            loaded = yaml.load(stream, Loader=_UniqueKeyLoader) or {}  # a SafeLoader: no arbitrary objects
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark else ""
            raise ValueError(f"config file {p}{where} is not valid YAML: "
                             f"{getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {p} must hold a mapping at the top level")
    return loaded


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (the file a run can be reproduced from)."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

