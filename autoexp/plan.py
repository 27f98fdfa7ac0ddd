"""Planning: a config becomes an experiment directory with every script rendered, nothing submitted.

:func:`build` renders everything in memory (so errors surface before anything is written) and
:meth:`Plan.write` creates the directory in one step: it is assembled under a temporary name
and renamed into place, so an error or a kill never leaves a half-written experiment.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2

from . import arrayspec, model, render, site, stages, statefile, sweep, usertemplates
from .config import Config
from .durations import parse_duration

ARRAY_TEMPLATE = "array.sbatch.j2"
SIDECAR_TEMPLATE = "sidecar.sbatch.j2"
TASKS_TEMPLATE = "tasks.sh.j2"


@dataclass
class ArrayPlan:
    """One Slurm array: runs ``offset`` .. ``offset + count - 1`` as task ids ``0 .. count - 1``."""

    script: str
    offset: int
    count: int
    spec: str  # the --array value, "0-7%4"
    after_previous: bool = False  # split arrays run one after the other to keep max_parallel exact
    stage: str = ""  # the stage whose units it runs ("" in a single-stage experiment)
    trigger: dict | None = None  # a stage started per log event (stages.expand)


@dataclass
class Plan:
    config: Config
    exp_dir: Path
    scheduler: str
    runs: list  # sweep.Run, or stages.Unit in a staged experiment
    arrays: list[ArrayPlan]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> content
    state: model.State | None = None  # as write() wrote it: launch goes on from it without reading it back

    def write(self) -> Path:
        """Create the experiment directory atomically; refuse to replace a launched experiment."""
        final = self.exp_dir
        self._check_output_dir()
        final.parent.mkdir(parents=True, exist_ok=True)
        old_state = final / statefile.STATE
        if final.exists():
            if not old_state.exists():
                if any(final.iterdir()):
                    raise self.config.error(
                        "name", f"{final} exists and is not an autoexp experiment; choose another name")
            elif launched(statefile.read(final)):
                raise self.config.error(
                    "name", f"experiment {final} was already launched; use another name, or "
                    "`autoexp retry`/`autoexp resume` on it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.planning-", dir=final.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)
            self._populate(tmp)
            if final.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.replaced-", dir=final.parent))
                final.rename(trash / "old")
                tmp.rename(final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _check_output_dir(self) -> None:
        """``output_dir`` must be, or be creatable as, a directory this user may write in: found
        before anything is created, so a refusal leaves nothing behind."""
        probe = self.exp_dir.parent
        while not os.path.lexists(probe):
            probe = probe.parent
        problem = "is not a directory" if not probe.is_dir() else \
            "is not writable by you" if not os.access(probe, os.W_OK | os.X_OK) else ""
        if problem:
            raise self.config.error("output_dir", f"{probe} {problem}")

    def _populate(self, root: Path) -> None:
        for rel, content in self.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content)
            if rel.endswith(".sbatch"):
                (root / rel).chmod(0o755)
        # Nothing per run: metadata operations are slow on a shared file system (Lustre's metadata
        # server) and a launch of 100,000 runs must not wait for 100,000 of them. Slurm writes each
        # task's log to its array's directory logs/<script>/; the task makes its run's directory and
        # links the log there (templates/array.sbatch.j2).
        (root / "runs").mkdir(exist_ok=True)
        (root / "logs").mkdir(exist_ok=True)
        for array in self.arrays:
            (root / model.script_logs(array.script)).mkdir(parents=True, exist_ok=True)
        if any(array.trigger for array in self.arrays):
            (root / "triggers").mkdir()  # what the sidecar writes for each unit it makes
        plan = model.new_plan(self.arrays, "sidecar.sbatch", self.config.get("max_parallel"),
                              str(Path(self.config.source).absolute().parent), self.config.get("max_queued"))
        st = model.new_experiment(self.config.name, self.runs, self.exp_dir, self.scheduler, plan)
        statefile.write(root, st)
        self.state = st

    def submissions_text(self) -> str:
        """What launch would run, for --dry-run."""
        lines = [f"experiment {self.config.name}: {len(self.runs)} runs in {len(self.arrays)} "
                 f"array(s) + 1 sidecar, directory {self.exp_dir}"]
        def account(options: dict) -> str:  # as the Slurm scheduler passes it (see slurm.submit)
            return f" --account={shlex.quote(str(options['account']))}" if options.get("account") else ""
        runs, sidecar = account(self.config["slurm"]), account(sidecar_options(self.config))
        for array in self.arrays:
            if array.trigger:  # submitted by the sidecar as the events appear
                lines.append(f"  (by the sidecar, per {array.trigger['event']} of {array.trigger['stage']}) "
                             f"sbatch --parsable{runs} --array=... {self.exp_dir / array.script}")
                continue
            lines.append(f"  sbatch --parsable{runs} --array={array.spec} {self.exp_dir / array.script}")
        lines.append(f"  sbatch --parsable{sidecar} {self.exp_dir / 'sidecar.sbatch'}")
        return "\n".join(lines)


def launched(st: model.State) -> bool:
    """An experiment with a submitted array, or runs held for room in the queue (launched, with
    nothing submitted yet but its sidecar)."""
    return bool(st.get("arrays") or st.get("held"))


# --------------------------------------------------------------------------- rendering

def sbatch_lines(options: dict) -> list[str]:
    """``{"cpus-per-task": 8, "exclusive": True, "qos": None}`` -> ``["--cpus-per-task=8", "--exclusive"]``."""
    lines = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            lines.append(f"--{key}")
            continue
        text = str(value)
        lines.append(f'--{key}="{text}"' if any(c.isspace() for c in text) else f"--{key}={text}")
    return lines


def slurm_path(directory: Path, config: Config, pattern: str = "") -> str:
    """A path for an ``#SBATCH`` line (--output, --chdir): ``directory`` must be literal for Slurm,
    ``pattern`` may use %A, %a, %j."""
    text = str(directory)
    if any(c in text for c in '%"\n'):
        raise config.error("output_dir", f"{text!r}: Slurm cannot write logs to a path with %, \" "
                           "or a newline in it")
    text = f"{text}/{pattern}" if pattern else text
    return f'"{text}"' if any(c.isspace() for c in text) else text


def environment() -> jinja2.Environment:
    stock = str(resources.files("autoexp.templates"))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(stock), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def run_dir(run) -> str:
    """A run's directory relative to the experiment: ``runs/<name>``, or a stage unit's own (both
    normalized already: sweep.check_name refuses a name with '/' or that is '.' or '..')."""
    return getattr(run, "dir", None) or f"runs/{run.name}"


ATTEMPT = render.ShellVar("AUTOEXP_ATTEMPT")  # known when the task starts


def task_context(config: Config, run, exp_dir: Path) -> dict:
    """What ``command``, ``env`` and ``setup`` templates see for one run (or stage unit: then
    ``run_name`` and ``run_dir`` are its sweep point's, shared by its stages, and ``stage`` is set)."""
    exp = str(exp_dir)
    context = {**run.params, "run_name": getattr(run, "point", run.name), "run_index": run.index,
               "run_dir": f"{exp}/{run_dir(run)}", "exp_dir": exp, "config_dir": directory_of(config.source),
               "attempt": ATTEMPT}
    if hasattr(run, "stage"):
        context["stage"] = run.stage
    return context


@lru_cache(maxsize=8)
def directory_of(source: str) -> str:
    """The config file's directory (once per plan, not once per run)."""
    return str(Path(source).absolute().parent)


def render_task(config: Config, run, exp_dir: Path, own: dict | None = None, key: str = "",
                extra: dict | None = None) -> dict:
    """One case of tasks.sh; ``own`` is a stage's config (see stages.settings) under key ``key``;
    ``extra`` adds to what the templates see (the groups of the event that starts the stage)."""
    own = own if own is not None else config.data
    context = {**task_context(config, run, exp_dir), **(extra or {})}
    command = render.render(own["command"], context, "line", config.where(f"{key}command")).strip()
    if not command:
        raise config.error(f"{key}command", "renders to an empty command")
    return {
        "index": run.index, "name": run.name, "dir": context["run_dir"] if not hasattr(run, "stage")
        else f"{exp_dir}/{run_dir(run)}", "command": command,
        "env": [(name, render.render(str(value), context, "word", config.where(f"{key}env.{name}")))
                for name, value in (own.get("env") or {}).items()],
        "setup": [render.render(line, context, "line", config.where(f"{key}setup[{i}]"))
                  for i, line in enumerate(own.get("setup") or [])],
    }


def split(n_runs: int, max_array_size: int, max_parallel: int | None) -> list[ArrayPlan]:
    """One array if it fits under MaxArraySize, else consecutive arrays of at most that size."""
    throttle = f"%{max_parallel}" if max_parallel else ""
    arrays = []
    for k, offset in enumerate(range(0, n_runs, max_array_size)):
        count = min(max_array_size, n_runs - offset)
        arrays.append(ArrayPlan(script="", offset=offset, count=count, spec=f"0-{count - 1}{throttle}",
                                after_previous=bool(max_parallel) and k > 0))
    for k, array in enumerate(arrays):
        array.script = "array.sbatch" if len(arrays) == 1 else f"array_{k}.sbatch"
    return arrays


def staged(config: Config, exp_dir: Path, max_array_size: int) -> tuple[list, list, list[ArrayPlan], list[dict]]:
    """A staged config's units, the cases of its stages started per event (in runs.json too, so
    that current_run() finds them), their arrays (one per stage and axis value) and tasks.sh."""
    runs, units, blocks, cases = stages.expand(config, exp_dir, max_array_size)
    if len(runs) > max_array_size:
        raise config.error("sweep", f"{len(runs)} points: a staged sweep must fit in one array "
                           f"(MaxArraySize {max_array_size})")
    throttle = f"%{config['max_parallel']}" if config.get("max_parallel") else ""
    arrays = [ArrayPlan(script=f"{b.stage}{b.suffix}.sbatch", offset=b.offset,
                        count=max(b.tasks) + 1 if b.tasks else max_array_size,
                        spec=arrayspec.compress(b.tasks) + (throttle if b.stage != stages.PREPARE else ""),
                        stage=b.stage, trigger=b.trigger) for b in blocks]
    own = {stage: stages.settings(config.data, stage) for stage in {u.stage for u in units + cases}}
    events = {b.stage: {g: render.ShellVar(stages.event_variable(g)) for g in b.trigger["groups"]}
              for b in blocks if b.trigger}
    tasks = [render_task(config, unit, exp_dir, {**own[unit.stage], "command": (
        config["prepare"] if unit.stage == stages.PREPARE else config["stages"][unit.stage])["command"]},
        "prepare." if unit.stage == stages.PREPARE else f"stages.{unit.stage}.", events.get(unit.stage))
        for unit in units + cases]
    return units, cases, arrays, tasks


def build(config: Config, scheduler_name: str, max_array_size: int) -> Plan:
    """Render every file of the experiment in memory; raises InputError on any template problem."""
    exp_dir = config.exp_dir
    cases: list = []
    if config.get("stages"):
        runs, cases, arrays, tasks = staged(config, exp_dir, max_array_size)
        site.check(config, sum(1 for unit in runs if unit.stage != stages.PREPARE))
    else:
        runs = sweep.expand(config, exp_dir)
        site.check(config, len(runs))
        tasks = [render_task(config, run, exp_dir) for run in runs]
        arrays = split(len(runs), max_array_size, config.get("max_parallel"))
    sweep.check_retry_params(config, runs)
    env = environment()
    plan = Plan(config, exp_dir, scheduler_name, runs, arrays)
    # Jobs start in the experiment directory (--chdir), never where `autoexp launch` was run.
    common = {"name": config.name, "exp_dir": str(exp_dir), "chdir": slurm_path(exp_dir, config),
              "python": config.get("python") or sys.executable}
    mode = sidecar_mode(config, scheduler_name)

    tasks_template = env.get_template(TASKS_TEMPLATE)
    plan.files["tasks.sh"] = usertemplates.render_template(tasks_template, {**common, "tasks": tasks}, ("", "tasks.sh"))

    array_template, where, names = usertemplates.load(env, config, "template", ARRAY_TEMPLATE)
    for array in arrays:
        slurm = stages.settings(config.data, array.stage)["slurm"] if array.stage else config["slurm"]
        context = array_context(config, common, array, slurm, len(runs), mode)
        plan.files[array.script] = usertemplates.render_template(array_template, context, where, names)

    plan.files["sidecar.sbatch"] = render_sidecar(env, config, common, mode)
    plan.files["config.yaml"] = config.to_yaml()
    # One run a line: json's C encoder (indent= would take its Python one, 10 times slower).
    plan.files["runs.json"] = "[\n" + ",\n".join(json.dumps(run.to_json(exp_dir)) for run in runs + cases) + "\n]\n"
    return plan


def array_context(config: Config, common: dict, array: ArrayPlan, slurm: dict, n_runs: int,
                  mode: str) -> dict:
    """What the array template of ``array`` sees; ``slurm`` holds its sbatch options."""
    job_name = slurm.get("job-name") or f"autoexp-{config.name}" + (f"-{array.stage}" if array.stage else "")
    return {**common, **launch_context(config), "config": config.data,
            "job_name": job_name, "array": array.spec, "offset": array.offset,
            "output": slurm_path(Path(common["exp_dir"]) / model.script_logs(array.script), config, "slurm-%A_%a.out"),
            "log_dir": model.script_logs(array.script),
            "sbatch_lines": sbatch_lines({key: v for key, v in slurm.items() if key != "job-name"}),
            "n_runs": n_runs, "requeue": config.get("requeue") or {},
            "start_spacing": parse_duration(config["start_spacing"]) if config.get("start_spacing")
            and array.stage != stages.PREPARE else 0, "triggered": bool(array.trigger),
            "carried": mode == "carried"}


def sidecar_options(config: Config) -> dict:
    """The sidecar's sbatch options; it is billed to the runs' account unless it names its own."""
    options = {k: v for k, v in config["sidecar"].items() if k not in ("mode", "handover", "watchdog")}
    if config["slurm"].get("account") and "account" not in options:
        options = {"account": config["slurm"]["account"], **options}
    mail = (config.get("notify") or {}).get("mail")
    if mail:
        options.update({"mail-type": "END", "mail-user": mail})
    return {"job-name": f"autoexp-sidecar-{config.name}", **options}


def sidecar_mode(config: Config, scheduler_name: str) -> str:
    """``sidecar.mode``; carried needs --begin (the watchdog) and array tasks: on Slurm only, else a job."""
    mode = config["sidecar"].get("mode", "job")
    return "job" if mode == "carried" and scheduler_name != "slurm" else mode


def render_sidecar(env: jinja2.Environment, config: Config, common: dict, mode: str) -> str:
    options = sidecar_options(config)
    context = {**common, "job_name": options.pop("job-name"),
               "output": slurm_path(Path(common["exp_dir"]) / "logs", config, "sidecar-%j.out"),
               "sbatch_lines": sbatch_lines(options), "sidecar_args": "",
               "mode": mode}
    template, where, names = usertemplates.load(env, config, "sidecar_template", SIDECAR_TEMPLATE)
    return usertemplates.render_template(template, context, where, names)


def launch_context(config: Config) -> dict:
    """How the array template starts the command, as shell text with every word quoted:

    * ``launcher``: the config's ``launcher`` words (``srun --cpu-bind=...``), or "";
    * ``container_exec``: the runtime glue ``<glue>/exec.sh --image IMG ... --`` when
      ``container.image`` is set, or "" (``container`` is then None);
    * ``launch_prefix``: both, one per line; the command follows it as ``bash -c "..."``.
    """
    glue = Path(str(resources.files("autoexp.apptainer")))
    launcher = shlex.join(config.get("launcher") or [])
    container = config.get("container") or {}
    container_exec = ""
    if container.get("image"):
        words = [str(glue / "exec.sh"), "--image", container["image"]]
        if container.get("runtime"):
            words += ["--runtime", container["runtime"]]
        if container.get("gpu") and container["gpu"] != "none":
            words += ["--gpu", container["gpu"]]
        for bind in container.get("binds") or []:
            words += ["--bind", bind]
        for option in container.get("options") or []:
            words += ["--option", option]
        container_exec = shlex.join(words) + " --"
    return {"container": container if container_exec else None, "container_exec": container_exec,
            "launcher": launcher, "launch_prefix": " \\\n  ".join(filter(None, (launcher, container_exec))),
            "glue": str(glue)}
