"""Reading the YAML files a config is layered from (defaults, a site and what it extends, the
user's file), and merging the layers while remembering which file set each key."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .errors import InputError
from .schema import type_name

# Lists that add up across layers instead of the top one replacing the rest.
CONCATENATED = {"setup", "container.binds"}


class Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, with two YAML 1.2 rules: ``1e-5`` is a float, not a string, and only
    ``true``/``false`` are booleans, so ``on:`` (retries.on) is a key and ``yes``/``no``/``off``
    are strings, not YAML 1.1's booleans."""


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
        text = Path(path).read_text()
    except OSError as err:
        raise InputError(f"cannot read {what}: {err.strerror}", str(path)) from None
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
    return data



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

