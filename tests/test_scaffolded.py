"""Scaffolded experiment directories (issue 12): `autoexp launch DIR` runs the first seed's input
as it is: one array per resource shape, evaluations after their run's training, the directory's
experiment_summary.md Status tables and run-torchtune.log kept current; on the real cluster."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

import autoexp
from autoexp import scaffolded, seedviews
from autoexp.errors import InputError
from autoexp.arrayspec import expand_range
from conftest import autoexp as run_cli, read_state, sacct_rows, wait_for, wait_state_done

slurm_only = pytest.mark.usefixtures("slurm")
MODEL = "Llama-3.2-1B-Instruct"
RUNS = ["rank4_lr1e-5", "rank4_lr5e-5", "rank8_lr1e-5", "rank8_lr5e-5", "rank16_lr1e-5", "rank 16 lr'5e-5"]
BIG = "rank16_lr1e-5"  # asks for more memory: an array of its own
CONTROL = f"{MODEL}_base"
HEAD = """# Experiment: cap_lora_sweep

## Overview
A small sweep, written the way the scaffolding tool writes it.

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Batch Size | Type | Est. Time |
|----------|-------|-----------|---------------|------------|------|-----------|
"""
TAIL = """
## Quick Reference
Submit with run-torchtune; results under `ck-out-*`.

## Notes
Byte for byte: tabs\there, trailing spaces   \n"""
FAST = ["monitor.interval=2", "start_spacing=1s", "slurm.time=00:05:00"]


def train_script(run: str, ckpt: Path, mem: str, body: str = "") -> str:
    out = ckpt / f"ck-out-{run}"
    return f"""#!/bin/bash
#SBATCH --job-name="{run}"
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem={mem}
#SBATCH --time=00:05:00
#SBATCH --mail-type=begin
#SBATCH --mail-type=end
##SBATCH --account=nobody-has-this-account
##SBATCH --partition=no-such-partition

echo {shlex.quote(f"train {run} in")} "$PWD as job $SLURM_JOB_ID"
pwd > where.txt
echo "$SLURM_JOB_NAME" > job_name.txt
{body}
mkdir -p {shlex.quote(f"{out}/epoch_0")} {shlex.quote(f"{out}/epoch_1")}
mv "slurm-${{SLURM_JOB_ID}}.out" {shlex.quote(str(out))}/
"""


def eval_script(run: str, task: str, epoch: int | None, ckpt: Path) -> str:
    reads = f"{ckpt}/ck-out-{run}/epoch_{epoch}" if epoch is not None else "the base model"
    return f"""#!/bin/bash
#SBATCH --job-name="eval-{task}-{run}"
#SBATCH --mem=150M
#SBATCH --time=00:05:00
#SBATCH --output=slurm-%j.out

echo {shlex.quote(f"eval {run} {task} epoch {epoch} reads {reads}")}
pwd > {task}_{epoch}.where
"""


def write_scaffold(root: Path, ckpt: Path, bodies: dict[str, str] | None = None, runs=RUNS, control=True) -> str:
    """The directory the scaffolding tool writes: 6 fine-tuned runs (one asks for more memory),
    one control, evaluation scripts for two epochs. Returns the summary's text."""
    bodies = bodies or {}
    root.mkdir(parents=True)
    rows = [f"| {MODEL}_{r} | {MODEL} | {r.split('_')[0]} | 1e-5 | 4 | Fine-tuned | ~10s |" for r in runs]
    if control:
        rows.append(f"| {CONTROL} | {MODEL} | - | - | - | Control | N/A |")
    status = "\n## Status\n### Fine-tuning\n| Run Name | Status | Job ID | Started | Completed | Notes |\n" \
             "|----------|--------|--------|---------|-----------|-------|\n" + \
             "".join(f"| {r} | pending | - | - | - | - |\n" for r in runs)
    text = HEAD + "\n".join(rows) + "\n" + status + TAIL
    (root / "experiment_summary.md").write_text(text)
    for run in runs:
        (root / run / "eval").mkdir(parents=True)
        (root / run / "finetune.slurm").write_text(
            train_script(run, ckpt, "300M" if run == BIG else "100M", bodies.get(run, "")))
        for epoch in (0, 1):
            (root / run / "eval" / f"capitalization_epoch{epoch}.slurm").write_text(
                eval_script(run, "capitalization", epoch, ckpt))
    if control:
        (root / CONTROL / "eval").mkdir(parents=True)
        (root / CONTROL / "eval" / "capitalization_base.slurm").write_text(
            eval_script(CONTROL, "capitalization", None, ckpt))
    return text


def outside_status(text: str) -> str:
    """The summary without its Status section: what must stay byte-identical."""
    return re.sub(r"\n## Status\n.*?(?=\n## )", "", text, flags=re.S)


# --------------------------------------------------------------------------- reading the directory

def test_reads_the_runs_their_shapes_and_checkpoints(tmp_path):
    write_scaffold(tmp_path / "exp", tmp_path / "ck")
    found = scaffolded.read(tmp_path / "exp")
    assert found.title == "cap_lora_sweep"
    names = [r.name for r in found.runs]
    assert names == [f"{MODEL}_{r}" for r in RUNS] + [CONTROL]  # table names, directories matched by suffix
    assert [r.dir for r in found.runs][:6] == RUNS
    control = found.runs[-1]
    assert control.control and control.train is None and control.evals[0].epoch is None
    shapes = {r.train.resources for r in found.runs if r.train}
    assert len(shapes) == 2  # the big run's --mem differs
    first = found.runs[0].train
    assert ("mem", "100M") in first.resources and ("account", "nobody-has-this-account") not in first.resources
    assert not any(k == "partition" for k, _ in first.resources)  # ##SBATCH lines are comments
    assert first.per_run == {"job-name": RUNS[0], "mail-type": "begin,end"}
    ev = found.runs[0].evals[1]
    assert (ev.task, ev.epoch, ev.checkpoint) == ("capitalization", 1, f"{tmp_path}/ck/ck-out-{RUNS[0]}/epoch_1")


def test_sbatch_lines_short_options_and_where_they_stop(tmp_path):
    path = tmp_path / "x.slurm"
    text = "#!/bin/bash -l\n#SBATCH -N 1 -c4\n#SBATCH --mem 2G  # a comment\n##SBATCH --qos=x\necho\n#SBATCH --time=9\n"
    assert scaffolded.sbatch_options(path, text) == [("nodes", "1"), ("cpus-per-task", "4"), ("mem", "2G")]
    path.write_text(text)
    assert scaffolded.read_script(path).interpreter == ["/bin/bash", "-l"]


@pytest.mark.parametrize("change,where", [
    (lambda root: (root / "experiment_summary.md").unlink(), ("experiment_summary.md", "cannot read")),
    (lambda root: (root / "experiment_summary.md").write_text("# Experiment: x\n\n## Overview\n"), ("All Runs",)),
    (lambda root: (root / "experiment_summary.md").write_text(HEAD + "| a | b |\n"), ("All Runs", "row 1")),
    (lambda root: (root / RUNS[0] / "finetune.slurm").write_text("#!/bin/bash\n#SBATCH --array=0-3\n"),
     ("finetune.slurm", "#SBATCH --array")),
    (lambda root: (root / RUNS[1] / "finetune.slurm").write_text("#!/bin/bash\n#SBATCH --memory=1G\n"),
     ("finetune.slurm", "#SBATCH --memory", "unknown sbatch option")),
])
def test_bad_directory_is_one_line_exit_2_naming_file_and_key(tmp_path, change, where):
    root = tmp_path / "exp"
    write_scaffold(root, tmp_path / "ck")
    change(root)
    with pytest.raises(InputError) as err:
        scaffolded.read(root)
    assert all(w in str(err.value) for w in where), str(err.value)
    proc = run_cli("launch", root, "--dry-run", "--scheduler", "local")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and all(w in proc.stderr for w in where)
    assert not (root / "state.json").exists() and not (root / "tasks.sh").exists()


def test_a_directory_slurm_cannot_log_under_is_refused(tmp_path):
    root = tmp_path / "50%done"
    write_scaffold(root, tmp_path / "ck")
    proc = run_cli("launch", root, "--dry-run", "--scheduler", "local")
    assert proc.returncode == 2 and str(root) in proc.stderr and proc.stderr.count("\n") == 1


def test_a_directory_the_table_does_not_name(tmp_path):
    root = tmp_path / "exp"
    write_scaffold(root, tmp_path / "ck", control=False)
    (root / "extra_base" / "eval").mkdir(parents=True)
    (root / "extra_base" / "eval" / "arc_base.slurm").write_text("#!/bin/bash\necho\n")
    found = {r.name: r for r in scaffolded.read(root).runs}
    assert found["extra_base"].control and found["extra_base"].evals[0].task == "arc"
    assert len(found) == len(RUNS) + 1


def test_status_section_is_rewritten_in_place():
    text = "# T\n\n## Status\n### Fine-tuning\n| Run Name | Status |\n|--|--|\n| a | pending |\n\nkept\n## Next\nx"
    state = {"runs": {"a+train": {"index": 0, "stage": "train", "point": "a", "state": "RUNNING", "job_id": "7_0",
                                  "started": "2026-01-02T03:04:05Z", "completed": None, "elapsed_s": 3,
                                  "attempts": []},
                      "a+eval+task=t+epoch=0": {"index": 1, "stage": "eval", "point": "a", "state": "PLANNED",
                                                "job_id": None, "axis": {"task": "t", "epoch": 0}, "attempts": []}},
             "plan": {"arrays": [{"count": 1}]}}
    out = seedviews.with_status(text, state)
    assert out.startswith("# T\n\n## Status\n### Fine-tuning\n| Run Name | Status | Job ID |")
    assert "| a | RUNNING | 7_0 | 2026-01-02 03:04:05 | - | 3s |\n\nkept\n" in out
    assert "### Evaluations\n| Run Name | Task | Epoch |" in out and "| a | t | 0 | pending | - | - | - |" in out
    assert out.endswith("\n## Next\nx")
    assert seedviews.with_status("# T\n", state).startswith("# T\n\n## Status\n\n### Fine-tuning\n")


def test_dry_run_prints_arrays_runs_and_skips(tmp_path):
    root = tmp_path / "my exp"  # a space in the directory's path
    write_scaffold(root, tmp_path / "ck")
    before = sorted(p.name for p in root.iterdir())
    (root / RUNS[0] / "finetune.slurm").write_text(
        (root / RUNS[0] / "finetune.slurm").read_text().replace("#SBATCH --nodes=1", "#SBATCH --partition=debug\n"
                                                                "#SBATCH --nodes=1"))
    proc = run_cli("launch", root, "--dry-run", "--scheduler", "local", *FAST, "slurm.partition=small", check=True)
    out = proc.stdout
    shapes = re.findall(r"^  \w+_\d\.sbatch: (.*)$", out, re.M)
    assert len(shapes) == 5 and all("--partition=small" in s for s in shapes)  # an override beats a script's line
    assert "dry run, nothing submitted" in out
    assert len(re.findall(r"^    sbatch --array=\S+ .*/train_\d\.sbatch': ", out, re.M)) == 2
    assert re.search(rf"train_1\.sbatch': {MODEL}_{BIG}\+train$", out, re.M)
    assert re.search(r"^  train_1\.sbatch: .*--mem=300M", out, re.M) and "--account" not in out
    assert f"skipped {CONTROL}+train: a control run" in out
    assert f"{CONTROL}+eval+task=capitalization+epoch=base" in out
    assert "after its run's task of train_0.sbatch" in out
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written
    assert run_cli("plan", root).returncode == 2 and sorted(p.name for p in root.iterdir()) == before
    api = autoexp.launch_directory(root, [*FAST, "slurm.partition=small"], dry_run=True, scheduler="local")
    assert api.dry_run and api.text.splitlines() == out.splitlines()[1:] and not api.arrays  # the API says the same


# --------------------------------------------------------------------------- on the cluster

def units(st: dict, stage: str) -> dict:
    return {n: r for n, r in st["runs"].items() if r.get("stage") == stage}


@slurm_only
@pytest.mark.core  # run on Slurm 24.11 too
def test_scaffolded_directory_on_the_cluster(tmp_path, cleanup):
    root = tmp_path / "cap sweep"
    ckpt = tmp_path / "ck"
    flaky = RUNS[1]
    text = write_scaffold(root, ckpt, {flaky: 'if [ ! -e failed_once ]; then touch failed_once; exit 3; fi'})
    earlier = "[2025-10-24 00:05:00] DISCOVER_EXPERIMENT: Found experiment\nResult: by hand\n\n"
    (root / "run-torchtune.log").write_text(earlier)  # a log the seed's workflow left: kept, appended to
    cleanup(root)
    proc = run_cli("launch", root, *FAST, check=True)
    assert "launched" in proc.stdout
    st = wait_state_done(root, timeout=240)
    # one sbatch per training shape, all at launch; the control's evaluation in the launch too
    launch = [a for a in st["arrays"] if a["reason"] == "launch"]
    train_arrays = [a for a in launch if a["script"].startswith("train_")]
    assert len(train_arrays) == 2 and sorted(len(expand_range(a["tasks"])) for a in train_arrays) == [1, 5]
    trains = units(st, "train")
    assert {r["job_id"].split("_")[0] for r in trains.values()} == {a["job_id"] for a in train_arrays}
    assert len({trains[f"{MODEL}_{r}+train"]["job_id"].split("_")[0] for r in RUNS if r != BIG}) == 1
    rows = sacct_rows([a["job_id"] for a in st["arrays"]], "JobID,State,JobName")
    assert rows and all(r[2].startswith("autoexp-cap-sweep-") and r[1] not in ("PENDING", "RUNNING") for r in rows)
    base = st["runs"][f"{CONTROL}+eval+task=capitalization+epoch=base"]
    assert base["state"] == "COMPLETED" and not base.get("after")
    assert any(a["job_id"] == base["job_id"].split("_")[0] for a in launch)
    # each task in its own directory, running its own script; evaluations after their training
    for run in RUNS:
        train = trains[f"{MODEL}_{run}+train"]
        if run == flaky:
            assert train["state"] == "FAILED"
            continue
        assert train["state"] == "COMPLETED", train
        assert (root / run / "where.txt").read_text().strip() == str(root / run)
        assert (root / run / "job_name.txt").read_text().strip() == run
        log = Path(train["attempts"][-1]["log"])
        moved = list((ckpt / f"ck-out-{run}").glob("slurm-*.out"))  # the script's mv of slurm-$SLURM_JOB_ID.out
        assert len(moved) == 1 and moved[0].is_symlink() and moved[0].resolve() == log.resolve()
        assert log.parent.parent == root / "logs" and f"train {run} in {root / run}" in log.read_text()
        assert (root / run / log.name).resolve() == log.resolve()  # the task's link in its directory
        for epoch in (0, 1):
            ev = st["runs"][f"{MODEL}_{run}+eval+task=capitalization+epoch={epoch}"]
            assert ev["state"] == "COMPLETED" and ev["started"] >= train["completed"]
            assert (root / run / "eval" / f"capitalization_{epoch}.where").read_text().strip() == str(root / run / "eval")
            assert f"eval {run} capitalization epoch {epoch}" in Path(ev["attempts"][-1]["log"]).read_text()
    assert {r["state"] for n, r in st["runs"].items() if n.startswith(f"{MODEL}_{flaky}+eval")} == {"SKIPPED"}
    # the directory's own files: Status tables current, the rest byte-identical, the seed's log
    summary = (root / "experiment_summary.md").read_text()
    assert outside_status(summary) == outside_status(text)
    # rows named as the file's table named them (by directory here, the All Runs names carry a prefix)
    assert re.search(rf"\| {RUNS[0]} \| COMPLETED \| \d+_\d+ \| \d{{4}}-\S+ \S+ \| \d{{4}}-\S+ \S+ \| \d+s \|",
                     summary)
    assert re.search(rf"\| {flaky} \| FAILED \| .*Check slurm-\d+_\d+\.out", summary)
    assert re.search(rf"\| {RUNS[0]} \| capitalization \| 1 \| COMPLETED \|", summary)
    assert f"| {CONTROL} | capitalization | - | COMPLETED |" in summary and "Base model" in summary
    assert summary.count("| COMPLETED |") == 5 + 10 + 1
    log = (root / "run-torchtune.log").read_text()
    assert log.startswith(earlier + "[")
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] SUBMIT_ARRAY: train_0\.sbatch$", log, re.M)
    assert re.search(r"^\[[-\d :]+\] STATE_CHANGE: .*\nPrevious: \w+\nCurrent: COMPLETED$", log, re.M)
    assert "ALL_COMPLETE" in log and not (root / "events.log").exists()
    assert (root / "autoexp_summary.md").exists()

    # launching again submits nothing
    again = run_cli("launch", root, *FAST, check=True)
    assert "nothing to submit" in again.stdout and len(read_state(root)["arrays"]) == len(st["arrays"])

    # retry --failed: only the failed run's training; its evaluations follow it
    retried = run_cli("retry", root, "--failed", check=True)
    assert f"{MODEL}_{flaky}+train" in retried.stdout
    wait_for(lambda: read_state(root)["arrays"] != st["arrays"] and read_state(root)["done"], timeout=180,
             what="the retry to end")
    st2 = read_state(root)
    new = [a for a in st2["arrays"] if a["reason"] != "launch"]
    assert new[0]["script"].startswith("train_") and new[0]["tasks"] == str(RUNS.index(flaky))
    assert st2["runs"][f"{MODEL}_{flaky}+train"]["state"] == "COMPLETED"
    assert all(r["state"] == "COMPLETED" for n, r in st2["runs"].items() if n.startswith(f"{MODEL}_{flaky}+"))
    assert outside_status((root / "experiment_summary.md").read_text()) == outside_status(text)


@slurm_only
def test_cuda_out_of_memory_is_an_out_of_memory_failure(tmp_path, cleanup):
    root = tmp_path / "oom"
    write_scaffold(root, tmp_path / "ck", {"r1": "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to "
                                                "allocate 2.00 GiB' >&2; exit 1"}, runs=["r1"], control=False)
    cleanup(root)
    run_cli("launch", root, *FAST, check=True)
    st = wait_state_done(root, timeout=120)
    train = st["runs"][f"{MODEL}_r1+train"]
    assert train["state"] == "FAILED" and train["attempts"][-1]["failure"] == "OUT_OF_MEMORY"
    assert "out of memory" in (root / "experiment_summary.md").read_text()


@slurm_only
def test_runs_trained_outside_autoexp_are_found(tmp_path, cleanup):
    """No state.json: what the runs' slurm-*.out files, sacct and the checkpoints say decides."""
    root = tmp_path / "outside"
    runs = ["done", "failed", "kept"]
    write_scaffold(root, tmp_path / "ck", {"failed": "exit 4", "kept": "exit 0"}, runs=runs, control=False)
    jobs = [subprocess.run(["sbatch", "--parsable", "finetune.slurm"], cwd=root / run, capture_output=True,
                           text=True, check=True, timeout=60).stdout.strip() for run in runs]
    wait_for(lambda: [r[1] for r in sacct_rows(jobs)] == ["COMPLETED", "FAILED", "COMPLETED"], timeout=120,
             what="the jobs submitted outside autoexp to end")
    out = run_cli("launch", root, "--dry-run", *FAST, check=True).stdout
    assert re.search(rf"skipped {MODEL}_done\+train: trained before: its checkpoint directories exist", out), out
    assert f"skipped {MODEL}_kept+train: job {jobs[2]} (submitted outside autoexp) is COMPLETED" in out, out
    assert re.search(rf"sbatch --array=1 .*/train_0\.sbatch'?: {MODEL}_failed\+train$", out, re.M), out
    # the evaluations of the runs trained already run at once, the failed run's after its training
    assert re.search(rf"eval_0\.sbatch'?: {MODEL}_done\+eval\S+, {MODEL}_kept\+eval\S+$", out, re.M), out
    assert re.search(rf"eval_0\.sbatch'? \(each task after .*train_0\.sbatch\): {MODEL}_failed\+eval", out), out
