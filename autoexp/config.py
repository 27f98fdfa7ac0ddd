"""Config loading: YAML file, site defaults under it, KEY=VALUE overrides over it, then validation.

Every error is an :class:`InputError` naming the file the offending value came from and its dotted
key path, so the user can go straight to the line. Nothing in here touches the disk besides reading.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from . import site as sites
from .errors import InputError
from .schema import CONFIG, DEFAULTS, Invalid
from .yamlfile import Loader, merge, read_yaml, record, source_of

# Values no shell ever expands (#SBATCH lines, quoted container words, the output path): in them
# ${VAR} and ${VAR:-default} are taken from the environment at plan time. Elsewhere (command,
# setup, env) ${VAR} is left alone for the task's shell.
EXPANDED = ("output_dir", "slurm", "sidecar", "container")
ENV_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\}|:-)")


def parse_override(text: str) -> tuple[str, Any]:
    """``slurm.time=01:00:00`` -> ("slurm.time", "01:00:00"); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or not re.match(r"^[A-Za-z0-9_.-]+$", key):
        raise InputError("expected KEY=VALUE with a dotted key path", f"override {text!r}")
    try:
        value = yaml.load(raw, Loader=Loader) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def set_path(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value



def expand_env(text: str, environ=os.environ) -> str:
    """``${VAR}`` and ``${VAR:-default}`` (defaults may nest) replaced from ``environ``.

    An unset or empty VAR without a default raises KeyError(VAR); a malformed reference ValueError.
    """
    out: list[str] = []
    i = 0
    while True:
        start = text.find("${", i)
        if start < 0:
            return "".join(out) + text[i:]
        out.append(text[i:start])
        match = ENV_REF.match(text, start + 2)
        if not match:
            raise ValueError(f"malformed ${{...}} in {text!r}")
        name, default, i = match.group(1), None, match.end()
        if match.group(2) == ":-":
            close = _closing_brace(text, i)
            default, i = text[i:close], close + 1
        value = environ.get(name)
        if not value:
            if default is None:
                raise KeyError(name)
            value = expand_env(default, environ)
        out.append(value)


def _closing_brace(text: str, i: int) -> int:
    """Where the ``}`` closing a ``${`` whose body starts at ``i`` is (nested ``${...}`` skipped)."""
    depth = 1
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if not depth:
                return i
        i += 1
    raise ValueError(f"no closing brace in {text!r}")


def _expanded(value: Any, path: str, origins: dict, source: str) -> Any:
    """``value`` with the ${VAR} references in its strings replaced (see EXPANDED)."""
    if isinstance(value, dict):
        return {k: _expanded(v, f"{path}.{k}", origins, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expanded(v, path, origins, source) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    try:
        return expand_env(value)
    except KeyError:
        names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", value)
        raise InputError(f"{value!r} needs the environment variable {' or '.join(names)}, which is "
                         f"not set (export it, or set {path} in the config)",
                         source_of(path, origins, source), path) from None
    except ValueError as err:
        raise InputError(str(err), source_of(path, origins, source), path) from None


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
         default_site: str | None = None) -> Config:
    """Read, merge and validate a config; the result is what `plan` writes to config.yaml."""
    path = Path(path)
    return resolve(read_yaml(path), str(path), path.parent, overrides, default_site)


def resolve(user: dict, source: str, base_dir: Path, overrides: list[str] | tuple[str, ...] = (),
            default_site: str | None = None) -> Config:
    """Validate a config's mapping (read from ``source``), overrides over it, a site under it."""
    origins: dict[str, str] = {}
    record(user, origins, source)
    for text in overrides:
        key, value = parse_override(text)
        set_path(user, key, value)
        origins[key] = f"override {text!r}"
        for child in [k for k in origins if k.startswith(key + ".")]:
            del origins[child]

    try:
        user = CONFIG(user, "")
    except Invalid as err:
        raise InputError(err.message, source_of(err.path, origins, source), err.path) from None

    site_name = user.get("site") or default_site or sites.detect()
    site = sites.load(site_name, base_dir=base_dir,
                      where=(source_of("site", origins, source), "site"))
    merged_origins: dict[str, str] = {}
    resolved = merge(copy.deepcopy(DEFAULTS), site.values, merged_origins, site.source)
    merged_origins.update(site.origins)  # a value a site inherited names the file it is in
    resolved = merge(resolved, user, merged_origins, source)
    merged_origins.update(origins)
    resolved.update({key: _expanded(resolved[key], key, merged_origins, source)
                     for key in EXPANDED if key in resolved})
    resolved["site"] = site.name
    return Config(resolved, source=source, origins=merged_origins, site=site)


class Config:
    """A validated, fully resolved config plus where each value came from (for error messages)."""

    def __init__(self, data: dict, source: str, origins: dict, site: sites.Site):
        self.data, self.source, self.origins, self.site = data, source, origins, site

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def exp_dir(self) -> Path:
        return Path(self.data["output_dir"]).expanduser().absolute() / self.name

    def where(self, key: str) -> tuple[str, str]:
        """(file or override that set ``key``, ``key``): the two halves of an error's location."""
        return source_of(key, self.origins, self.source), key

    def error(self, key: str, message: str) -> InputError:
        return InputError(message, *self.where(key))

    def to_yaml(self) -> str:
        # libyaml's emitter when PyYAML has it: the same YAML, several times faster on a long sweep.
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(self.data, Dumper=dumper, sort_keys=False, default_flow_style=None, width=100)

    @classmethod
    def from_experiment(cls, exp_dir: Path) -> Config:
        """The resolved config an experiment was planned with (no site lookup, no validation)."""
        source = str(exp_dir / "config.yaml")
        data = read_yaml(exp_dir / "config.yaml")
        return cls(data, source=source, origins={}, site=sites.Site(data.get("site", ""), {}, source))
