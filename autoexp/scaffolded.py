"""A scaffolded experiment directory, read as it is (docs/CONTRACT.md, "Scaffolded directories").

Such a directory was written by a scaffolding tool, not by autoexp: ``experiment_summary.md``
(its All Runs table names the runs and says which are controls), one directory per run holding
a ready ``finetune.slurm``, and evaluation scripts under ``<run>/eval/``. This module only reads
it: the runs, their scripts' ``#SBATCH`` lines (split into the resource lines that decide which
runs share an array, and the per-run lines an array task cannot have) and the checkpoint
directory each evaluation reads. :mod:`autoexp.scaffoldplan` turns the result into a plan.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .schema import SBATCH_OPTIONS

SUMMARY = "experiment_summary.md"
TRAIN_SCRIPT = "finetune.slurm"
EVAL_DIR = "eval"
# #SBATCH options an array task cannot have per run: the array has one name, one log pattern
# (autoexp's), one mail setting; kept per run where they can be (see scaffoldplan).
PER_RUN = ("job-name", "mail-type", "mail-user", "output", "error", "chdir", "open-mode")
# Options that would change what autoexp submits: refused rather than silently dropped.
REFUSED = ("array", "dependency", "wrap", "parsable", "test-only", "wait", "hold")
SHORT = {"N": "nodes", "n": "ntasks", "c": "cpus-per-task", "t": "time", "p": "partition", "A": "account",
         "J": "job-name", "o": "output", "e": "error", "G": "gpus", "w": "nodelist", "x": "exclude",
         "C": "constraint", "q": "qos", "D": "chdir", "a": "array", "d": "dependency", "H": "hold",
         "W": "wait"}
EVAL_NAME = re.compile(r"^(?P<task>.+?)_(?:epoch(?P<epoch>\d+)|(?P<base>base))$")


@dataclass
class Script:
    """One batch script of the directory."""

    path: Path  # absolute
    resources: tuple[tuple[str, str | None], ...]  # the #SBATCH resource options, sorted: the array key
    per_run: dict[str, str]  # job-name, mail-type, ... (PER_RUN): not part of the key
    interpreter: list[str]  # from its #! line: how the task runs it
    text: str

    def shape(self) -> str:
        """The resource lines as sbatch options, for people: ``--mem=8G --time=00:15:00``."""
        return " ".join(f"--{k}" if v is None else f"--{k}={v}" for k, v in self.resources) or "(no #SBATCH lines)"


@dataclass
class Evaluation:
    task: str
    epoch: int | None  # None: a control's base evaluation (or a script named otherwise)
    script: Script
    checkpoint: str | None  # the checkpoint directory it reads, when its script names it literally


@dataclass
class Found:
    """One run of the directory: trained (``train``) unless a control, then evaluated."""

    name: str  # as the All Runs table names it
    dir: str  # its directory, relative to the experiment
    control: bool
    params: dict[str, str]  # its All Runs row (besides the name)
    train: Script | None
    evals: list[Evaluation] = field(default_factory=list)


@dataclass
class Scaffold:
    root: Path
    title: str
    runs: list[Found]


def cells(line: str) -> list[str]:
    """A markdown table row's cells (``\\|`` is a | inside a cell)."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    if parts and not parts[0].strip():
        parts = parts[1:]
    if parts and not parts[-1].strip():
        parts = parts[:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def all_runs(text: str, source: str) -> list[dict[str, str]]:
    """The All Runs table's rows, as {column: cell}; its Run Name column is required."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^#+\s*All Runs\s*$", line.strip(), re.I)), None)
    if start is None:
        raise InputError("no 'All Runs' section: the runs cannot be named", source, "All Runs")
    table = []
    for line in lines[start + 1:]:
        if line.lstrip().startswith("#"):
            break
        if line.lstrip().startswith("|"):
            table.append(line)
        elif table:
            break
    if len(table) < 2 or not re.fullmatch(r"[\s|:-]+", table[1]):
        raise InputError("the All Runs section has no table (a header row and a |---| row)", source, "All Runs")
    head = cells(table[0])
    if "Run Name" not in head:
        raise InputError(f"the All Runs table has no 'Run Name' column (its columns: {', '.join(head)})",
                         source, "All Runs")
    rows = []
    for n, line in enumerate(table[2:], 1):
        row = cells(line)
        if len(row) != len(head):
            raise InputError(f"row {n} has {len(row)} cells, the header {len(head)}", source, "All Runs")
        rows.append(dict(zip(head, row)))
    return rows


def sbatch_options(path: Path, text: str) -> list[tuple[str, str | None]]:
    """The script's ``#SBATCH`` options in order, in their long form; ``##SBATCH`` lines are
    comments, and sbatch stops reading them at the first line that is not a comment."""
    options: list[tuple[str, str | None]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if number == 1 and stripped.startswith("#!"):
            continue
        if stripped and not stripped.startswith("#"):
            break
        if not stripped.startswith("#SBATCH"):
            continue
        try:
            words = shlex.split(stripped[len("#SBATCH"):], comments=True)
        except ValueError as err:
            raise InputError(f"line {number}: {err}", str(path), "#SBATCH") from None
        i = 0
        while i < len(words):
            word = words[i]
            if word.startswith("--"):
                key, eq, value = word[2:].partition("=")
                takes = bool(eq)
            elif re.match(r"^-[A-Za-z]", word):  # -N 1, -N1, -c4
                key, value, takes = SHORT.get(word[1], word[1]), word[2:], len(word) > 2
            else:
                raise InputError(f"line {number}: {word!r} is not an option", str(path), "#SBATCH")
            if key not in SBATCH_OPTIONS:
                raise InputError(f"line {number}: unknown sbatch option '{word}'", str(path), f"#SBATCH --{key}")
            if key in REFUSED:
                raise InputError(f"line {number}: autoexp submits the runs as arrays itself and cannot keep "
                                 f"--{key}", str(path), f"#SBATCH --{key}")
            if not takes and i + 1 < len(words) and not words[i + 1].startswith("-"):
                value, takes, i = words[i + 1], True, i + 1
            options.append((key, value if takes else None))
            i += 1
    return options


def read_script(path: Path) -> Script:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read it: {getattr(err, 'strerror', None) or err}", str(path)) from None
    resources: dict[str, str | None] = {}
    per_run: dict[str, str] = {}
    for key, value in sbatch_options(path, text):
        if key in PER_RUN:
            per_run[key] = f"{per_run[key]},{value}" if key == "mail-type" and key in per_run else str(value)
        else:
            resources[key] = value
    first = text.splitlines()[0] if text else ""
    interpreter = shlex.split(first[2:]) if first.startswith("#!") else []
    return Script(path, tuple(sorted(resources.items(), key=lambda kv: (kv[0], kv[1] or ""))), per_run,
                  interpreter or ["bash"], text)


def checkpoint_of(text: str, epoch: int | None) -> str | None:
    """The checkpoint directory an evaluation script reads: the first absolute path ending in
    ``epoch_<N>`` it names literally (a path built from variables is not guessed)."""
    if epoch is None:
        return None
    match = re.search(rf"(?<![\w$}}])(/[^\s\"'$`;|&<>]*epoch_{epoch})/?(?![\w])", text)
    return match.group(1) if match else None


def evaluations(run_dir: Path) -> list[Evaluation]:
    found = []
    for path in sorted((run_dir / EVAL_DIR).glob("*.slurm")):
        match = EVAL_NAME.match(path.stem)
        task = match.group("task") if match else path.stem
        epoch = int(match.group("epoch")) if match and match.group("epoch") is not None else None
        script = read_script(path)
        found.append(Evaluation(task, epoch, script, checkpoint_of(script.text, epoch)))
    return found


def directory_of(name: str, dirs: list[str]) -> str | None:
    """A table name's directory: the same name, or the one it ends with (a model prefix)."""
    if name in dirs:
        return name
    tails = [d for d in dirs if name.endswith(f"_{d}") or name.endswith(f"-{d}")]
    return max(tails, key=len) if tails else None


def read(root: Path) -> Scaffold:
    """The directory's runs, in the All Runs table's order (directories it does not name after:
    with a finetune.slurm a fine-tuned run, else a control)."""
    root = Path(root).absolute()
    source = root / SUMMARY
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read it: {getattr(err, 'strerror', None) or err} (a scaffolded experiment "
                         "directory has one)", str(source)) from None
    title = next((line.split(":", 1)[1].strip() for line in text.splitlines()[:5]
                  if line.startswith("# Experiment:")), root.name)
    rows = all_runs(text, str(source))
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and ((p / TRAIN_SCRIPT).is_file() or (p / EVAL_DIR).is_dir()))
    runs: list[Found] = []
    used: set[str] = set()
    for row in rows:
        name = row["Run Name"]
        control = row.get("Type", "").strip().lower() == "control"
        directory = directory_of(name, dirs)
        if directory is None:
            if control:
                continue  # a control with no evaluation scripts: nothing to run
            raise InputError(f"run {name!r} has no directory with a {TRAIN_SCRIPT} (directories: "
                             f"{', '.join(dirs) or 'none'})", str(source), "All Runs")
        if directory in used:
            raise InputError(f"two runs of the table name the directory {directory!r}", str(source), "All Runs")
        used.add(directory)
        train = None if control or not (root / directory / TRAIN_SCRIPT).is_file() else \
            read_script(root / directory / TRAIN_SCRIPT)
        params = {k: v for k, v in row.items() if k != "Run Name"}
        runs.append(Found(name, directory, control, params, train, evaluations(root / directory)))
    for directory in (d for d in dirs if d not in used):  # not in the table: a control without a finetune.slurm
        trained = (root / directory / TRAIN_SCRIPT).is_file()
        runs.append(Found(directory, directory, not trained, {},
                          read_script(root / directory / TRAIN_SCRIPT) if trained else None,
                          evaluations(root / directory)))
    if not any(run.train or run.evals for run in runs):
        raise InputError(f"no run has a {TRAIN_SCRIPT} or {EVAL_DIR}/*.slurm: nothing to run", str(source),
                         "All Runs")
    return Scaffold(root, title, runs)
