"""Reading the YAML files a config is layered from (defaults, a site and what it extends, the
user's file), and merging the layers while remembering which file set each key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .schema import type_name

# Lists that add up across layers instead of the top one replacing the rest.
CONCATENATED = {"setup", "container.binds"}


# libyaml's parser when PyYAML was built with it (about ten times faster on a long sweep list); the
# constructors and resolvers below are the same Python ones either way.
_BASE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Loader(_BASE):
    """YAML as PyYAML reads it, with two YAML 1.2 rules: ``1e-5`` is a float, not a string, and only
    ``true``/``false`` are booleans, so ``on:`` (retries.on) is a key and ``yes``/``no``/``off``
    are strings, not YAML 1.1's booleans."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A key written twice is refused: the later one would silently win (and drop, say, the
        retries the earlier one set)."""
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the base class says so
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


# What one config may hold once its aliases are expanded: far more than any real config, far less
# than a "billion laughs" document that would take gigabytes to walk.
MAX_VALUES = 200_000


Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: Path, what: str = "config") -> dict:
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {what}: {err.strerror}", str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text: byte 0x{raw[err.start]:02x} on line {line}", str(path)) from None
    try:
        data = yaml.load(text, Loader=Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"malformed YAML: {where}{problem}", str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"the top level must be a mapping, got {type_name(data)}", str(path))
    check_values(data, str(path))
    return data


def check_values(data: dict, source: str) -> None:
    """Refuse what YAML can hold but a config must not: more than :data:`MAX_VALUES` values with
    the aliases expanded (walked once per distinct node, so a bomb costs nothing to measure), a
    recursive alias, and a NUL character (a shell would silently drop it)."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(value: Any, key: str) -> int:
        if isinstance(value, str):
            if "\0" in value:
                raise InputError("a NUL character is not allowed (a shell would drop it)", source, key)
            return 1
        if not isinstance(value, (dict, list)):
            return 1
        if id(value) in sizes:
            return sizes[id(value)]
        if id(value) in busy:
            raise InputError("a recursive alias (the value contains itself)", source, key)
        busy.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        total = 1
        for k, v in items:
            sub = f"{key}.{k}" if isinstance(value, dict) and key else (str(k) if isinstance(value, dict)
                                                                        else f"{key}[{k}]")
            if isinstance(value, dict):
                total += size(k, sub)
            total += size(v, sub)
            if total > MAX_VALUES:
                raise InputError(f"more than {MAX_VALUES:,} values (aliases expanded): too large "
                                 "for a config", source, key)
        busy.discard(id(value))
        sizes[id(value)] = total
        return total

    size(data, "")



def merge(base: dict, top: dict, origins: dict, top_origin: str, prefix: str = "") -> dict:
    """Deep-merge ``top`` over ``base``; records in ``origins`` where each leaf came from."""
    out = dict(base)
    for key, value in top.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, origins, top_origin, f"{path}.")
            continue
        if path in CONCATENATED and isinstance(out.get(key), list):
            value = list(out[key]) + (value if isinstance(value, list) else [value])
        out[key] = value
        origins[path] = top_origin
    return out


def record(data: dict, origins: dict, origin: str, prefix: str = "") -> None:
    for key, value in data.items():
        origins[f"{prefix}{key}"] = origin
        if isinstance(value, dict):
            record(value, origins, origin, f"{prefix}{key}.")


def source_of(path: str, origins: dict, fallback: str) -> str:
    probe = path.split("[")[0]
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return fallback

