"""Config loading: YAML file, site defaults under it, KEY=VALUE overrides over it, then validation.

Every error is an :class:`InputError` naming the file the offending value came from and its dotted
key path, so the user can go straight to the line. Nothing in here touches the disk besides reading.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import shlex
from pathlib import Path
from typing import Any, Callable

import yaml

from . import site as sites
from .errors import InputError

NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SLURM_TIME_RE = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}"
    r"|UNLIMITED|INFINITE)$"
)
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
ACTIONS = ("log", "cancel", "retry")
SIDECAR_MODES = ("job", "chain")

# Long options of sbatch (22.05); a typo in `slurm:` is caught here instead of by a refused job.
SBATCH_OPTIONS = frozenset("""
account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment constraint
container contiguous core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline
delay-boot dependency distribution error exclude exclusive export export-file extra-node-info
get-user-env gid gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags
hint hold ignore-pbs input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem
mem-bind mem-per-cpu mem-per-gpu mincpus network nice no-kill no-requeue nodefile nodelist nodes
ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output overcommit
oversubscribe parsable partition power prefer priority profile propagate qos quiet reboot requeue
reservation signal sockets-per-node spread-job switches test-only thread-spec threads-per-core time
time-min tmp uid use-min-nodes verbose wait wait-all-nodes wckey wrap
""".split())
# Options autoexp sets itself: a value from the user would break how runs find their logs.
SBATCH_MANAGED = frozenset({"array", "output", "error", "parsable", "wrap", "test-only", "wait", "open-mode"})


# --------------------------------------------------------------------------- schema
# A schema node is a callable (value, path) -> normalized value that raises _Invalid(path, msg).

class _Invalid(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


Check = Callable[[Any, str], Any]


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def string(pattern: re.Pattern | None = None, hint: str = "") -> Check:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _Invalid(path, f"expected a string, got {_type_name(value)}")
        value = str(value)
        if pattern is not None and not pattern.match(value):
            raise _Invalid(path, f"{value!r} is not valid ({hint})")
        return value
    return check


def integer(minimum: int = 0) -> Check:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(path, f"expected an integer, got {_type_name(value)} {value!r}")
        if value < minimum:
            raise _Invalid(path, f"must be at least {minimum}, got {value}")
        return value
    return check


def number(minimum: float = 0.0) -> Check:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(path, f"expected a number, got {_type_name(value)} {value!r}")
        if value <= minimum:
            raise _Invalid(path, f"must be greater than {minimum:g}, got {value}")
        return value
    return check


def slurm_time(value, path):
    text = string()(value, path)
    if not SLURM_TIME_RE.match(text):
        raise _Invalid(path, f"{text!r} is not a Slurm time (use MM, HH:MM:SS, D-HH or D-HH:MM:SS)")
    return text


def parse_duration(text: Any) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h``, ``1d`` or ``HH:MM:SS``; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text)
    match = DURATION_RE.match(text)
    if match:
        return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if SLURM_TIME_RE.match(text) and ":" in text:
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    raise ValueError(text)


def slurm_time_seconds(text: Any) -> float | None:
    """Seconds in a Slurm time limit (a bare number is minutes, ``M:S`` is minutes and seconds);
    None for no limit (``UNLIMITED``, empty) or a value Slurm would not read."""
    text = "" if text is None else str(text)
    if not text or text in ("UNLIMITED", "INFINITE"):
        return None
    if text.isdigit():
        return int(text) * 60.0
    if text.count(":") == 1 and "-" not in text:
        minutes, seconds = text.split(":")
        return int(minutes) * 60.0 + int(seconds)
    try:
        return parse_duration(text)
    except ValueError:
        return None


def duration(value, path):
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise _Invalid(path, f"{value!r} is not a duration (use 90s, 30m, 2h, 1d or HH:MM:SS)") from None
    if seconds <= 0:
        raise _Invalid(path, "must be longer than zero")
    return value


def regex(value, path):
    text = string()(value, path)
    try:
        re.compile(text)
    except re.error as err:
        raise _Invalid(path, f"invalid regular expression {text!r}: {err}") from None
    return text


def list_of(item: Check, allow_scalar: bool = False) -> Check:
    def check(value, path):
        if allow_scalar and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise _Invalid(path, f"expected a list, got {_type_name(value)}")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return check


def mapping(fields: dict[str, Check], required: tuple[str, ...] = (), values: Check | None = None,
            keys: Check | None = None) -> Check:
    """A dict with known ``fields`` (typos get a suggestion) or free keys checked by ``values``."""
    def check(value, path):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected a mapping, got {_type_name(value)}")
        out = {}
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in fields:
                out[key] = fields[key](item, sub)
            elif values is not None:
                if keys is not None:
                    key = keys(key, sub)
                out[key] = values(item, sub)
            else:
                guess = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known: {', '.join(fields)})"
                raise _Invalid(sub, f"unknown key{hint}")
        for key in required:
            if key not in out:
                raise _Invalid(f"{path}.{key}" if path else key, "required key is missing")
        return out
    return check


def any_value(value, path):
    return value


def sbatch_key(key, path):
    name = str(key).replace("_", "-")
    if name in SBATCH_MANAGED:
        raise _Invalid(path, f"'{name}' is set by autoexp itself and cannot be given")
    if name not in SBATCH_OPTIONS:
        guess = difflib.get_close_matches(name, sorted(SBATCH_OPTIONS), n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise _Invalid(path, f"unknown sbatch option '{name}'{hint}")
    return name


def sbatch_value(value, path):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, (str, int, float)):
        raise _Invalid(path, f"expected a scalar, got {_type_name(value)}")
    text = str(value)
    if "\n" in text or '"' in text:
        raise _Invalid(path, "newlines and double quotes are not allowed in an sbatch option")
    if path.endswith((".time", ".time-min", ".time_min")):
        slurm_time(text, path)
    return value


def sbatch_options(extra: dict[str, Check] | None = None) -> Check:
    return mapping(extra or {}, values=sbatch_value, keys=sbatch_key)


def env_name(key, path):
    return string(ENV_NAME_RE, "an environment variable name")(key, path)


def scalar(value, path):
    if isinstance(value, (dict, list)):
        raise _Invalid(path, f"expected a scalar, got {_type_name(value)}")
    return value


def shell_words(value, path):
    """A command prefix as words: a list, or a string split the way a shell would."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as err:
            raise _Invalid(path, f"cannot split {value!r} into words: {err}") from None
    return list_of(string())(value, path)


def _sweep_points(value, path):
    return list_of(mapping({}, values=any_value))(value, path)


def _grid(value, path):
    def axis(v, p):
        if not isinstance(v, list):
            raise _Invalid(p, f"expected a list of values, got {_type_name(v)}")
        return v
    return mapping({}, values=axis)(value, path)


REQUEUE = mapping({"signal": string(re.compile(r"^[A-Z][A-Z0-9]*$"), "a signal name like USR1"),
                   "before": integer(1), "max": integer(0),
                   "by": string(re.compile(r"^(autoexp|command)$"), "autoexp or command")},
                  required=("signal", "before"))


def requeue(value, path):
    """Signal each task ``before`` seconds ahead of its time limit, and requeue it once the command
    has exited (at most ``max`` times; ``by: command`` when the command requeues itself, as
    submitit does). Null or {} turns it off."""
    return REQUEUE(value, path) if value else {}


EVENT = mapping({
    "name": string(NAME_RE, "letters, digits, . _ -"),
    "pattern": regex,
    "action": string(re.compile(rf"^({'|'.join(ACTIONS)})$"), f"one of {', '.join(ACTIONS)}"),
}, required=("name", "pattern"))

COMMON_FIELDS: dict[str, Check] = {
    "output_dir": string(),
    "max_parallel": integer(1),
    "slurm": sbatch_options(),
    "env": mapping({}, values=scalar, keys=env_name),
    "setup": list_of(string(), allow_scalar=True),
    "template": string(),
    "sidecar_template": string(),
    "container": mapping({
        "image": string(),
        "binds": list_of(string(), allow_scalar=True),
        "runtime": string(re.compile(r"^(apptainer|singularity)$"), "apptainer or singularity"),
        "gpu": string(re.compile(r"^(rocm|nv|none)$"), "rocm, nv or none"),
        "options": list_of(string(), allow_scalar=True),
    }),
    "monitor": mapping({
        "interval": number(),
        "stall_after": duration,
        "stall_action": string(re.compile(rf"^({'|'.join(ACTIONS)})$"), f"one of {', '.join(ACTIONS)}"),
        "events": list_of(EVENT),
        "metrics": mapping({}, values=regex),
        "retries": mapping({"max": integer(0), "on": list_of(string())}),
    }),
    "sidecar": sbatch_options({
        "mode": string(re.compile(rf"^({'|'.join(SIDECAR_MODES)})$"), " or ".join(SIDECAR_MODES)),
        "handover": duration,
    }),
    "requeue": requeue,
    "notify": mapping({"mail": string()}),
    "python": string(),
    "launcher": shell_words,
}

CONFIG = mapping({
    "name": string(NAME_RE, "letters, digits, . _ -"),
    "site": string(),
    "command": string(),
    "run_name": string(),
    "sweep": mapping({"grid": _grid, "list": _sweep_points, "exclude": _sweep_points}),
    **COMMON_FIELDS,
}, required=("name", "command"))

SITE = mapping({
    "description": string(),
    "extends": string(),
    "hostnames": list_of(string(), allow_scalar=True),
    **COMMON_FIELDS,
})

DEFAULTS: dict[str, Any] = {
    "output_dir": "experiments",
    "slurm": {},
    "env": {},
    "setup": [],
    "container": {},
    "monitor": {"interval": 60, "events": [], "metrics": {}, "retries": {"max": 0, "on": []},
                "stall_action": "log"},
    "sidecar": {"mode": "job", "time": "1-00:00:00", "handover": "5m", "ntasks": 1,
                "cpus-per-task": 1, "mem": "2G", "requeue": True},
    "notify": {},
    "requeue": {},
}

# Lists that add up across site and config instead of replacing each other.
CONCATENATED = {"setup", "container.binds"}

# Values no shell ever expands (#SBATCH lines, quoted container words, the output path): in them
# ${VAR} and ${VAR:-default} are taken from the environment at plan time. Elsewhere (command,
# setup, env) ${VAR} is left alone for the task's shell.
EXPANDED = ("output_dir", "slurm", "sidecar", "container")
ENV_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\}|:-)")


# --------------------------------------------------------------------------- loading

class Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that ``1e-5`` is a float (as in YAML 1.2), not a string."""


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
        raise InputError(f"the top level must be a mapping, got {_type_name(data)}", str(path))
    return data


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


def _record(data: dict, origins: dict, origin: str, prefix: str = "") -> None:
    for key, value in data.items():
        origins[f"{prefix}{key}"] = origin
        if isinstance(value, dict):
            _record(value, origins, origin, f"{prefix}{key}.")


def _source_of(path: str, origins: dict, fallback: str) -> str:
    probe = path.split("[")[0]
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return fallback


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
                         _source_of(path, origins, source), path) from None
    except ValueError as err:
        raise InputError(str(err), _source_of(path, origins, source), path) from None


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
         default_site: str | None = None) -> "Config":
    """Read, merge and validate a config; the result is what `plan` writes to config.yaml."""
    path = Path(path)
    source = str(path)
    user = read_yaml(path)
    origins: dict[str, str] = {}
    _record(user, origins, source)
    for text in overrides:
        key, value = parse_override(text)
        set_path(user, key, value)
        origins[key] = f"override {text!r}"
        for child in [k for k in origins if k.startswith(key + ".")]:
            del origins[child]

    try:
        user = CONFIG(user, "")
    except _Invalid as err:
        raise InputError(err.message, _source_of(err.path, origins, source), err.path) from None

    site_name = user.get("site") or default_site or sites.detect()
    site = sites.load(site_name, base_dir=path.parent,
                      where=(_source_of("site", origins, source), "site"))
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

    def __init__(self, data: dict, source: str, origins: dict, site: "sites.Site"):
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
        return _source_of(key, self.origins, self.source), key

    def error(self, key: str, message: str) -> InputError:
        return InputError(message, *self.where(key))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None, width=100)

    @classmethod
    def from_experiment(cls, exp_dir: Path) -> "Config":
        """The resolved config an experiment was planned with (no site lookup, no validation)."""
        source = str(exp_dir / "config.yaml")
        data = read_yaml(exp_dir / "config.yaml")
        return cls(data, source=source, origins={}, site=sites.Site(data.get("site", ""), {}, source))
