"""A scaffolded directory (autoexp/scaffolded.py) as a plan the sidecar runs like any other.

The directory becomes a staged experiment in place: stage ``train`` (one unit per fine-tuned
run) and stage ``eval`` (one unit per evaluation script, waiting for its run's training with
Slurm's ``aftercorr``). Runs whose scripts ask for the same resources share an array. Index
layout, which ``aftercorr`` needs (task *p* of an evaluation array follows task *p* of a training
array): with *n* runs, run *p* is task *p* of every array, and each array owns a block of *n*
indices: first one per training shape, then one per evaluation shape × (task, epoch).
The state, the sidecar, status, cancel, retry and logs are autoexp's own; the directory's
``experiment_summary.md`` Status section and ``run-torchtune.log`` are views of that state
(autoexp/seedviews.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import arrayspec, backends, clock, experiment, model, plan, scaffolded, seedviews, statefile
from .config import Config, resolve
from .errors import InputError
from .experiment import LaunchResult
from .jobstates import FAILED
from .scaffolded import EVAL_DIR, TRAIN_SCRIPT, Found, Scaffold, Script
from .scheduler import Scheduler
from .stages import Unit

TRAIN, EVAL = "train", "eval"
START_SPACING = "5s"  # the seed's stagger between starts (the HuggingFace datasets cache race)
CHECKPOINT_WAIT = 120  # s an evaluation waits for its checkpoint directory to appear (a slow file system)
OUT_LOG = re.compile(r"^slurm-(\d+)\.out$")


@dataclass
class Built:
    root: Path
    config: Config
    units: list[Unit]
    skipped: dict[str, str]  # unit name -> why it is not submitted (recorded SKIPPED)
    arrays: list[plan.ArrayPlan]
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # per-run #SBATCH lines an array could not keep
    scheduler: str = "slurm"
    shapes: list[str] = field(default_factory=list)  # each array's sbatch options, for people
    controls: list[str] = field(default_factory=list)  # control runs: never trained

    def submitted(self) -> list[str]:
        return [u.name for u in self.units if u.name not in self.skipped]

    def text(self) -> str:
        """What launch would submit, for --dry-run: each sbatch, its runs, and every skip."""
        by_index = {u.index: u for u in self.units}
        own = {u.name: k for k, a in enumerate(self.arrays) for u in self.units
               if a.offset <= u.index < a.offset + a.count}
        lines = [f"experiment {self.config.name} in {self.root}: {len(self.submitted())} of {len(self.units)} "
                 f"units to submit (+ 1 sidecar)"]
        for array, shape in zip(self.arrays, self.shapes):
            lines.append(f"  {array.script}: {shape}")
            units = [by_index[i] for i in range(array.offset, array.offset + array.count)
                     if i in by_index and by_index[i].name not in self.skipped]
            groups: dict[str, list[Unit]] = {}  # evaluations wait for their training array: one sbatch each
            for unit in units:
                waits = ", ".join(self.arrays[own[a]].script for a in unit.after if a not in self.skipped)
                groups.setdefault(waits, []).append(unit)
            for waits, chosen in groups.items():
                spec = arrayspec.compress(u.index - array.offset for u in chosen)
                after = f" (each task after its run's task of {waits})" if waits else ""
                lines.append(f"    sbatch --array={spec} {shlex.quote(str(self.root / array.script))}{after}: "
                             + ", ".join(u.name for u in chosen))
        lines.append(f"  sbatch {shlex.quote(str(self.root / 'sidecar.sbatch'))}")
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  skipped {name}+{TRAIN}: a control run, evaluated only" for name in self.controls]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def write(self) -> model.State:
        """autoexp's files in the directory, state.json last (its arrays mark it launched)."""
        for rel, content in self.files.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            statefile.atomic_write(self.root / rel, content)
            if rel.endswith(".sbatch"):
                (self.root / rel).chmod(0o755)
        (self.root / "logs").mkdir(exist_ok=True)
        for array in self.arrays:  # where Slurm writes the tasks' logs (see plan.Plan._populate)
            (self.root / model.script_logs(array.script)).mkdir(parents=True, exist_ok=True)
        record = model.new_plan(self.arrays, "sidecar.sbatch", self.config.get("max_parallel"), str(self.root))
        st = model.new_experiment(self.config.name, self.units, self.root, self.scheduler, record)
        st["scaffolded"] = scaffolded.SUMMARY
        log = self.root / seedviews.LOG
        if log.exists():  # an earlier run's log of the seed's: appended to, never replaced
            model.events_mark(st)["bytes"] = log.stat().st_size
        evals = sum(1 for u in self.units if u.stage == EVAL)
        model.log(st, "DISCOVER_EXPERIMENT", str(self.root / scaffolded.SUMMARY),
                  Result=f"{len(self.units) - evals} fine-tuning runs, {len(self.controls)} control runs, "
                         f"{evals} evaluations")
        model.log(st, "IDENTIFY_RUNS", f"{len(self.arrays)} arrays", Result=f"{len(self.submitted())} units to "
                  f"submit ({len(self.skipped)} skipped)")
        for name, why in self.skipped.items():
            model.mark_skipped(st["runs"][name], why, clock.now())
            model.log(st, "SKIP", name, Reason=why)
        statefile.write(self.root, st)
        return st


def config_for(root: Path, overrides=(), site: str | None = None) -> Config:
    """The directory's config: autoexp's defaults (the seed's start spacing), a site, KEY=VALUE."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.name).lstrip(".-") or "experiment"
    user = {"name": name, "output_dir": str(root.parent), "start_spacing": START_SPACING,
            "stages": {TRAIN: {"command": f"bash {TRAIN_SCRIPT}"},
                       EVAL: {"command": f"bash {EVAL_DIR}/<task>_epoch<N>.slurm", "after": TRAIN}}}
    config = resolve(user, str(root / scaffolded.SUMMARY), root, overrides, site)
    # The scripts run as they are: a site's launcher (srun) or container does not wrap them.
    config.data.update(launcher=[], container={})
    return config


def options(config: Config, script: Script) -> dict[str, str | None]:
    """A script's resource options with the config's: a KEY=VALUE override beats the script's
    line, a site's default only fills in what the script does not say."""
    out: dict[str, str | None] = dict(script.resources)
    for key, value in (config.get("slurm") or {}).items():
        if key not in out or config.where(f"slurm.{key}")[0].startswith("override"):
            out[key] = None if value is True else str(value)
    return out


def outside(root: Scaffold, sched: Scheduler) -> dict[str, tuple[str, bool]]:
    """Runs trained outside autoexp: why they are left alone, and whether their training is done
    (their evaluations then run at once): checkpoints there already, or a ``slurm-<job>.out``
    whose job is queued, running or completed (one sacct for all). One whose job failed or was
    cancelled is trained again."""
    why: dict[str, tuple[str, bool]] = {}
    logs: dict[str, str] = {}
    for run in root.runs:
        points = [e.checkpoint for e in run.evals if e.checkpoint]
        if run.train and points and all(Path(p).is_dir() for p in points):
            why[run.name] = (f"trained before: its checkpoint directories exist ({points[-1]})", True)
            continue
        ids = [int(m.group(1)) for p in (root.root / run.dir).glob("slurm-*.out") if (m := OUT_LOG.match(p.name))]
        if run.train and ids:
            logs[run.name] = str(max(ids))
    if logs:
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=60)
        states = {r.job_id: r.state for r in sched.query(sorted(set(logs.values())), since)}
        for name, job in logs.items():
            state = states.get(job)
            if state is None:
                why[name] = (f"slurm-{job}.out is there and accounting does not know job {job} "
                             "(remove it to train again)", False)
            elif state not in FAILED and state != "CANCELLED":
                why[name] = (f"job {job} (submitted outside autoexp) is {state}", state == "COMPLETED")
    return why


def task_command(script: Script, checkpoint: str | None = None) -> str:
    """What a unit's task runs in its directory: its own script, with the environment it expects
    (SLURM_SUBMIT_DIR its directory, SLURM_JOB_NAME its --job-name, its log as slurm-$SLURM_JOB_ID.out)."""
    lines = []
    if checkpoint:
        q = shlex.quote(checkpoint)
        missing = shlex.quote(f"autoexp: no checkpoint directory {checkpoint}: the evaluation does not run")
        lines += [f"for autoexp_i in $(seq {CHECKPOINT_WAIT // 2}); do [ -d {q} ] && break; sleep 2; done",
                  f"[ -d {q} ] || {{ echo {missing} >&2; return 1; }}"]
    lines += ['ln -sfn "$PWD/slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out" "slurm-${SLURM_JOB_ID}.out"'
              " 2>/dev/null",
              'export SLURM_SUBMIT_DIR="$PWD"']
    if script.per_run.get("job-name"):
        lines.append(f"export SLURM_JOB_NAME={shlex.quote(script.per_run['job-name'])}")
    lines.append(shlex.join([*script.interpreter, str(script.path)]))
    return "\n    ".join(lines)


def build(found: Scaffold, config: Config, sched: Scheduler) -> Built:
    root, runs, n = found.root, found.runs, len(found.runs)
    if any(c in str(root) for c in '%"\n'):
        raise InputError("Slurm cannot write logs under a path with %, \" or a newline in it", str(root))
    if n > sched.max_array_size():
        raise InputError(f"{n} runs: more than one array holds (MaxArraySize {sched.max_array_size()})",
                         str(root / scaffolded.SUMMARY), "All Runs")
    before = outside(found, sched)
    skipped = {f"{name}+{TRAIN}": why for name, (why, _) in before.items()}
    train: dict[tuple, list[tuple[int, Found, Script]]] = {}
    evals: dict[tuple, list[tuple[int, Found, scaffolded.Evaluation]]] = {}
    for p, run in enumerate(runs):
        if run.train:
            train.setdefault(tuple(sorted(options(config, run.train).items())), []).append((p, run, run.train))
        for ev in run.evals:
            key = (tuple(sorted(options(config, ev.script).items())), ev.task, "base" if ev.epoch is None else ev.epoch)
            evals.setdefault(key, []).append((p, run, ev))
    units: list[Unit] = []
    arrays: list[plan.ArrayPlan] = []
    scripts: list[list[Script]] = []
    tasks: list[dict] = []
    throttle = f"%{config['max_parallel']}" if config.get("max_parallel") else ""

    def block(stage: str, members: list) -> int:
        offset = len(arrays) * n
        count = sum(1 for a in arrays if a.stage == stage)
        arrays.append(plan.ArrayPlan(f"{stage}_{count}.sbatch", offset, n,
                                     arrayspec.compress(p for p, _, _ in members) + throttle, stage=stage))
        scripts.append([m[2] if stage == TRAIN else m[2].script for m in members])
        return offset

    for shape in train.values():
        offset = block(TRAIN, shape)
        for p, run, script in shape:
            units.append(Unit(offset + p, f"{run.name}+{TRAIN}", run.params, TRAIN, run.name, run.dir))
            tasks.append(task_entry(root, units[-1], task_command(script)))
    trained = {u.point: u.name for u in units}
    for (_, task, epoch), slot in evals.items():
        offset = block(EVAL, slot)
        for p, run, ev in slot:
            after = [trained[run.name]] if run.name in trained and run.name not in before else []
            unit = Unit(offset + p, f"{run.name}+{EVAL}+task={task}+epoch={epoch}", run.params, EVAL, run.name,
                        str(Path(run.dir, EVAL_DIR)), after, {"task": task, "epoch": epoch})
            if run.name in before and not before[run.name][1]:
                skipped[unit.name] = f"its training is not autoexp's ({before[run.name][0]}): run it with " \
                    f"`autoexp retry` once that has completed"
            units.append(unit)
            tasks.append(task_entry(root, unit, task_command(ev.script, ev.checkpoint if run.train else None)))
    built = Built(root, config, units, skipped, arrays, scheduler=sched.name,
                  controls=[run.name for run in runs if run.control])
    render(built, scripts, tasks)
    return built


def task_entry(root: Path, unit: Unit, command: str) -> dict:
    """A case of tasks.sh (see templates/tasks.sh.j2)."""
    return {"index": unit.index, "name": unit.name, "dir": str(root / unit.dir), "command": command,
            "env": [], "setup": []}


def render(built: Built, scripts: list[list[Script]], tasks: list[dict]) -> None:
    """The array scripts (each with its shape's #SBATCH lines), tasks.sh, the sidecar, config.yaml."""
    config, root = built.config, built.root
    env = plan.environment()
    common = {"name": config.name, "exp_dir": str(root), "chdir": plan.slurm_path(root, config),
              "python": config.get("python") or sys.executable}
    template = env.get_template(plan.ARRAY_TEMPLATE)
    mode = plan.sidecar_mode(config, built.scheduler)
    for array, members in zip(built.arrays, scripts):
        slurm = options(config, members[0])
        mail = {(s.per_run.get("mail-type"), s.per_run.get("mail-user")) for s in members}
        if len(mail) == 1 and next(iter(mail))[0]:  # one mail setting for all its runs: the array's
            slurm.update(zip(("mail-type", "mail-user"), next(iter(mail))))
        elif len(mail) > 1:
            built.notes.append(f"{array.script}: its runs' scripts ask for different mail (--mail-type, "
                               "--mail-user): the array sends none")
        built.shapes.append(" ".join(plan.sbatch_lines(slurm)) or "(no #SBATCH lines)")
        built.files[array.script] = template.render(plan.array_context(config, common, array, slurm,
                                                                       len(built.units), mode))
    built.files["tasks.sh"] = env.get_template(plan.TASKS_TEMPLATE).render({**common, "tasks": tasks})
    built.files["sidecar.sbatch"] = plan.render_sidecar(env, config, common, mode)
    built.files["config.yaml"] = config.to_yaml()
    built.files["runs.json"] = json.dumps([u.to_json(root) for u in built.units], indent=1) + "\n"


def launched_text(root: Path, st: model.State) -> str:
    """A directory launched before: nothing is submitted again; what each unit is."""
    lines = [f"{root} was launched by autoexp already (state.json): nothing submitted again"]
    lines += [f"  skipped {name}: already {run['state']}" + (f" (job {run['job_id']})" if run["job_id"] else "")
              for name, run in sorted(st["runs"].items(), key=lambda item: item[1]["index"])]
    lines.append(f"  follow it: autoexp status {root}; failed runs: autoexp retry {root} --failed")
    return "\n".join(lines)


def launch_directory(directory: str | Path, overrides=(), site: str | None = None, dry_run: bool = False,
                     scheduler: str | None = None) -> LaunchResult:
    """Launch a scaffolded directory as it is; a directory launched before submits nothing."""
    root = Path(directory).expanduser().absolute()
    if (root / statefile.STATE).is_file():
        st = statefile.read(root)
        if st["arrays"]:  # (a launch killed before its first sbatch was accepted is planned again)
            return LaunchResult(root, st["scheduler"], dry_run=dry_run, text=launched_text(root, st))
    found = scaffolded.read(root)
    config = config_for(root, overrides, site)
    sched = backends.get(scheduler or backends.default_name(), root)
    built = build(found, config, sched)
    result = LaunchResult(root, sched.name, dry_run=dry_run, text=built.text())
    if dry_run or not built.submitted():
        return result
    experiment.check_python(config)
    st = built.write()
    result.sidecar, result.arrays = experiment.submit_planned(
        root, sched, sorted(built.submitted(), key=lambda name: st["runs"][name]["index"]))
    return result

