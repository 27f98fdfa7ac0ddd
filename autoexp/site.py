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
import re
import socket
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .schema import SITE, Invalid
from .yamlfile import merge, read_yaml, record

if TYPE_CHECKING:
    from .config import Config

FALLBACK = "generic"
META_KEYS = ("description", "extends", "hostnames")
# docker://, oras://, library://, shub://, https://...: fetched when the task starts.
NETWORK_IMAGE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A SIF file starts with a 32-byte launch line, "SIF_MAGIC\0", a 3-byte version and the
# architecture code (sylabs/sif's HdrArch* constants).
SIF_MAGIC = b"SIF_MAGIC\0"
SIF_ARCH = {b"01": "386", b"02": "amd64", b"03": "arm", b"04": "arm64", b"05": "ppc64",
            b"06": "ppc64le", b"11": "s390x"}


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


def check(config: Config, n_runs: int) -> None:
    """Refuse at plan time what the site's machine would refuse or fail on later: more runs than
    ``max_runs``, a network image where compute nodes are ``offline``, an image of another
    ``arch`` (what can be read on this side: a SIF file's header)."""
    site = config["site"]
    limit = config.get("max_runs")
    if limit and n_runs > limit["count"]:
        why = f": {limit['why']}" if limit.get("why") else ""
        raise config.error("max_runs", f"{n_runs} runs, but site {site} takes at most {limit['count']}{why}")
    image = (config.get("container") or {}).get("image")
    if not image:
        return
    if config.get("offline") and NETWORK_IMAGE.match(image):
        raise config.error("container.image", f"{image!r} would be fetched over the network when a task "
                           f"starts, but the compute nodes of site {site} have no internet (offline: true): "
                           f"pull it on a login node (apptainer pull image.sif {image}) and give the .sif")
    arch = config.get("arch")
    found = sif_arch(Path(image).expanduser()) if arch else None
    if found and found != arch:
        raise config.error("container.image", f"{image} is an {found} image, but site {site} runs {arch} "
                           f"(arch: {arch}): build or pull the {arch} variant")


def sif_arch(path: Path) -> str | None:
    """The architecture in a SIF file's header; None for anything else (a directory, no file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(47)
    except OSError:
        return None
    if head[32:42] != SIF_MAGIC:
        return None
    return SIF_ARCH.get(head[45:47])
