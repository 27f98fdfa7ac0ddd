"""Site configs: what differs between clusters (partitions, accounts, modules, container runtime).

A site is a YAML file with the same keys as a config (minus the experiment's own), found by name
in ``$AUTOEXP_SITE_PATH`` directories, then ``~/.config/autoexp/sites``, then the stock
``site_configs/``; or given as a path. ``extends: other`` merges this site over another one.
With no site named, the first site (in that search order) whose ``hostnames`` globs match this
host is used. Values written as ``${VAR}`` are resolved from the environment by the config loader.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import socket
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import InputError
from .schema import SITE, Invalid
from .yamlfile import merge, read_yaml, record

FALLBACK = "generic"
META_KEYS = ("description", "extends", "hostnames")


@dataclass
class Site:
    name: str
    values: dict  # config keys this site sets (already merged over what it extends)
    source: str  # the file that defined it, for error messages
    origins: dict = field(default_factory=dict)  # dotted key -> the site file that set it


def stock_dir() -> Path:
    return Path(str(resources.files("autoexp.site_configs")))


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("AUTOEXP_SITE_PATH", "").split(os.pathsep) if p]
    return [*extra, Path.home() / ".config" / "autoexp" / "sites", stock_dir()]


def available() -> list[str]:
    names = {p.stem for d in search_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def _is_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.sep in name


def _find(name: str, base_dir: Path, where: tuple[str, str]) -> Path:
    if _is_path(name):
        for candidate in (base_dir / name, Path(name)):
            if candidate.expanduser().is_file():
                return candidate.expanduser()
        raise InputError(f"site file {name!r} not found", *where)
    for directory in search_dirs():
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    guess = difflib.get_close_matches(name, available(), n=1)
    hint = f"did you mean '{guess[0]}'?" if guess else f"known sites: {', '.join(available())}"
    raise InputError(f"unknown site {name!r} ({hint})", *where)


def load(name: str, base_dir: Path = Path("."), where: tuple[str, str] = ("", "site"),
         _seen: tuple[str, ...] = ()) -> Site:
    """The site ``name`` (a name or a path) with everything it extends merged under it."""
    path = _find(name, base_dir, where)
    resolved = str(path.resolve())
    if resolved in _seen:
        raise InputError(f"site {name!r} extends itself in a cycle", str(path), "extends")
    raw = read_yaml(path, "site config")
    try:
        values = SITE(raw, "")
    except Invalid as err:
        raise InputError(err.message, str(path), err.path) from None
    parent_name = values.get("extends")
    own = {k: v for k, v in values.items() if k not in META_KEYS}
    origins: dict = {}
    if parent_name:
        parent = load(parent_name, path.parent, (str(path), "extends"), (*_seen, resolved))
        origins = dict(parent.origins)
        own = merge(parent.values, own, origins, str(path))
    else:
        record(own, origins, str(path))
    return Site(str(path.resolve()) if _is_path(name) else name, own, str(path), origins)


def detect(hostname: str | None = None) -> str:
    """The site whose ``hostnames`` globs match this machine, else the generic one.

    Sites are tried in search order (your own directories before the stock ones, a name found
    twice only where it is first found), alphabetically within a directory.
    """
    hosts = {hostname} if hostname else {socket.gethostname(), socket.getfqdn()}
    hosts |= {h.split(".")[0] for h in hosts}
    seen: set[str] = set()
    for directory in search_dirs():
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else ():
            if path.stem in seen:
                continue
            seen.add(path.stem)
            try:
                patterns = read_yaml(path, "site config").get("hostnames") or []
            except InputError:
                continue
            if isinstance(patterns, str):
                patterns = [patterns]
            if any(fnmatch.fnmatch(h, str(p)) for p in patterns for h in hosts):
                return path.stem
    return FALLBACK
