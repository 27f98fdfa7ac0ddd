"""The schema of a config and of a site config, and the defaults a site may change.

Its nodes are the checks of autoexp/checks.py: each raises :class:`Invalid` with the dotted path
of the offending key; :mod:`autoexp.config` turns that into an InputError naming the file the
value came from.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from .checks import (Check, Invalid, any_value, duration, integer, list_of, mapping, number, regex, scalar,
                     shell_words, string, type_name)
from .durations import SLURM_TIME_RE

NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ACTIONS = ("log", "cancel", "retry")
MIN_INTERVAL = 1.0  # s: the shortest monitor.interval (sacct back to back serves nobody)
SIDECAR_MODES = ("job", "chain", "carried")

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
# Options that count something (nodes, tasks, CPUs): a positive whole number, or for --nodes a
# range of them ("2-4"); sbatch would take "-4" as another option or pass a nonsense request on.
SBATCH_COUNTS = frozenset({"nodes", "ntasks", "cpus-per-task", "ntasks-per-node", "ntasks-per-socket",
                           "ntasks-per-core", "ntasks-per-gpu", "cpus-per-gpu", "mincpus",
                           "sockets-per-node", "cores-per-socket", "threads-per-core"})
SBATCH_MANAGED = frozenset({"array", "output", "error", "parsable", "wrap", "test-only", "wait", "open-mode",
                            "chdir"})


def experiment_name(value, path):
    """A name that is one directory under ``output_dir``: not ``.``, ``..`` or an option."""
    text = string(NAME_RE, "letters, digits, . _ -")(value, path)
    if text in (".", "..") or text.startswith("-"):
        raise Invalid(path, f"{text!r} is not valid (it must name a directory of its own, "
                            "and not start with '-')")
    return text


def slurm_time(value, path):
    text = string()(value, path)
    if not SLURM_TIME_RE.match(text):
        raise Invalid(path, f"{text!r} is not a Slurm time (use MM, HH:MM:SS, D-HH or D-HH:MM:SS)")
    return text


def sbatch_key(key, path):
    name = str(key).replace("_", "-")
    if name in SBATCH_MANAGED:
        raise Invalid(path, f"'{name}' is set by autoexp itself and cannot be given")
    if name not in SBATCH_OPTIONS:
        guess = difflib.get_close_matches(name, sorted(SBATCH_OPTIONS), n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise Invalid(path, f"unknown sbatch option '{name}'{hint}")
    return name


def sbatch_value(value, path):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, (str, int, float)):
        raise Invalid(path, f"expected a scalar, got {type_name(value)}")
    text = str(value)
    if "\n" in text or '"' in text:
        raise Invalid(path, "newlines and double quotes are not allowed in an sbatch option")
    if path.rpartition(".")[2].replace("_", "-") in SBATCH_COUNTS and \
            not re.fullmatch(r"0*[1-9]\d*(-0*[1-9]\d*)?", text):
        raise Invalid(path, f"{text!r} is not a count (a whole number of at least 1"
                            f"{', or a range like 2-4' if path.endswith('nodes') else ''})")
    if path.endswith((".time", ".time-min", ".time_min")):
        slurm_time(text, path)
    return value


def sbatch_options(extra: dict[str, Check] | None = None) -> Check:
    return mapping(extra or {}, values=sbatch_value, keys=sbatch_key)


def env_name(key, path):
    return string(ENV_NAME_RE, "an environment variable name")(key, path)


def _sweep_points(value, path):
    return list_of(mapping({}, values=any_value))(value, path)


def _grid(value, path):
    def axis(v, p):
        if not isinstance(v, list):
            raise Invalid(p, f"expected a list of values, got {type_name(v)}")
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


def true_or_false(value, path):
    if not isinstance(value, bool):
        raise Invalid(path, f"expected true or false, got {type_name(value)} {value!r}")
    return value


def failure_class(key, path):
    return string(re.compile(r"^[A-Z][A-Z_]*$"), "a Slurm state in capitals, like OUT_OF_MEMORY")(key, path)


# What the next attempt of a run that failed this way gets (see sidecar/remedies.py).
RETRY_RULE = mapping({
    "mem": number(at_least=1.0),  # mem times this
    "time": number(at_least=1.0),  # time times this, at most the partition's MaxTime
    "params": mapping({}, values=string()),  # templates over the run's parameters
    "exclude_node": true_or_false,  # the node(s) it failed on are excluded
})

EVENT = mapping({
    "name": string(NAME_RE, "letters, digits, . _ -"),
    "pattern": regex,
    "action": string(re.compile(rf"^({'|'.join(ACTIONS)})$"), f"one of {', '.join(ACTIONS)}"),
}, required=("name", "pattern"))

COMMON_FIELDS: dict[str, Check] = {
    "output_dir": string(),
    "max_parallel": integer(1),
    "max_queued": integer(1),  # a cap on queued tasks a site documents but does not enforce (limits.py)
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
        "interval": number(at_least=MIN_INTERVAL),
        "stall_after": duration,
        "stall_action": string(re.compile(rf"^({'|'.join(ACTIONS)})$"), f"one of {', '.join(ACTIONS)}"),
        "events": list_of(EVENT),
        "metrics": mapping({}, values=regex),
        "retries": mapping({"max": integer(0), "on": list_of(string()),
                            "rules": mapping({}, values=RETRY_RULE, keys=failure_class)}),
    }),
    "sidecar": sbatch_options({
        "mode": string(re.compile(rf"^({'|'.join(SIDECAR_MODES)})$"), " or ".join(SIDECAR_MODES)),
        "handover": duration,
        "watchdog": duration,  # carried mode: how far apart the watchdog jobs begin (10 intervals)
    }),
    "requeue": requeue,
    "notify": mapping({"mail": string()}),
    "report": mapping({"metric": string(), "goal": string(re.compile(r"^(min|max)$"), "min or max"),
                       "every": duration}),
    "python": string(),
    "launcher": shell_words,
}

STAGE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# What a stage may set for itself: merged over the top-level keys of the same name (see stages.py).
STAGE = mapping({
    "command": string(),
    "after": string(STAGE_NAME_RE, "the name of another stage"),
    # started per log event of another stage: {stage: train, event: checkpoint, exists: path}
    "on": mapping({"stage": string(STAGE_NAME_RE, "the name of another stage"),
                   "event": string(NAME_RE, "the name of one of that stage's monitor.events"),
                   "exists": string(NAME_RE, "a group of the event's pattern naming a file")},
                  required=("stage", "event")),
    "axis": _grid,
    "only": _sweep_points,
    "skip": _sweep_points,
    "slurm": sbatch_options(),
    "env": COMMON_FIELDS["env"],
    "setup": COMMON_FIELDS["setup"],
    "monitor": COMMON_FIELDS["monitor"],
}, required=("command",))


def stages(value, path):
    """``stages: {train: {...}, eval: {after: train, ...}}``: names in order, each a STAGE."""
    out = mapping({}, values=STAGE, keys=string(STAGE_NAME_RE, "letters, digits, _ -, a letter first"))(
        value, path)
    if not out:
        raise Invalid(path, "give at least one stage")
    if "prepare" in out:
        raise Invalid(f"{path}.prepare", "'prepare' is the top-level prepare step, not a stage name")
    for name, stage in out.items():
        if "on" in stage:
            source = stage["on"]["stage"]
            if "after" in stage or "axis" in stage:
                raise Invalid(f"{path}.{name}.on", "a stage started by events has no after or axis")
            if source not in list(out)[:list(out).index(name)]:
                raise Invalid(f"{path}.{name}.on.stage", f"{source!r} is not a stage written before {name!r}")
        after = stage.get("after")
        if after is None:
            continue
        if after == name or after not in out:
            raise Invalid(f"{path}.{name}.after", f"{after!r} is not another stage (stages: {', '.join(out)})")
        if list(out).index(after) > list(out).index(name):
            raise Invalid(f"{path}.{name}.after", f"stage {after!r} must be written before {name!r}")
        if out[after].get("axis"):
            raise Invalid(f"{path}.{name}.after", f"stage {after!r} has an axis: a stage can only follow "
                          "a stage with one task per run")
    return out


def command_or_stages(value, path):
    """A config runs one ``command`` per point, or ``stages``: exactly one of the two."""
    out = CONFIG_FIELDS(value, path)
    if ("command" in out) == ("stages" in out):
        raise Invalid("stages" if "stages" in out else "command",
                      "give either command or stages, not both" if "command" in out else
                      "required key is missing (or give stages)")
    if "prepare" in out and "stages" not in out:
        raise Invalid("prepare", "a prepare step needs stages (put the command under stages: {train: ...})")
    return out


CONFIG_FIELDS = mapping({
    "name": experiment_name,
    "site": string(),
    "command": string(),
    "run_name": string(),
    "sweep": mapping({"grid": _grid, "list": _sweep_points, "exclude": _sweep_points}),
    "stages": stages,
    "prepare": mapping({"command": string(), "slurm": sbatch_options(), "setup": COMMON_FIELDS["setup"]},
                       required=("command",)),
    "start_spacing": duration,
    **COMMON_FIELDS,
}, required=("name",))
CONFIG = command_or_stages

SITE = mapping({
    "description": string(),
    "extends": string(),
    "hostnames": list_of(string(), allow_scalar=True),
    # What the machine refuses, checked at plan time (site.check): a network image on compute nodes
    # without internet, an image of another CPU architecture, more runs than a partition takes.
    "offline": true_or_false,
    "arch": string(re.compile(r"^(amd64|arm64)$"), "amd64 or arm64"),
    "max_runs": mapping({"count": integer(1), "why": string()}, required=("count",)),
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
