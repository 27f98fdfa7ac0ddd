"""The container path: the array script runs the command through apptainer/exec.sh.

Apptainer is not installable here, so tests/standin/apptainer stands in for it: it checks its
arguments as the runtime would (image and bind sources exist, --pwd is a directory), records
them in $STANDIN_LOG, and runs the command with the environment the runtime would give it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import pytest

from autoexp.jobstates import TERMINAL
from conftest import REPO, autoexp, read_state, sacct_rows, wait_for, write_config

STANDIN = Path(__file__).parent / "standin"
EXEC = Path(str(resources.files("autoexp.apptainer"))) / "exec.sh"
PROBE = REPO / "tests" / "argv_probe.py"


@pytest.fixture
def box(workdir):
    """An image, a site bind and a config bind (all with spaces), and a site extending local."""
    image = workdir / "images dir" / "py torch.sif"
    image.parent.mkdir()
    image.write_text("not really an image\n")
    site_bind, data_bind = workdir / "site scratch", workdir / "data set"
    site_bind.mkdir()
    data_bind.mkdir()
    (workdir / "site.yaml").write_text(json.dumps({
        "extends": "local", "container": {"runtime": "apptainer", "gpu": "rocm", "binds": [str(site_bind)]}}))
    return {"image": image, "site_bind": site_bind, "data_bind": data_bind, "log": workdir / "standin.jsonl"}


def container_config(workdir, box, **container) -> Path:
    return write_config(workdir, {
        "name": "boxed", "site": str(workdir / "site.yaml"), "output_dir": str(workdir / "out $x 'q'"),
        "command": f"{sys.executable} {PROBE} --value {{{{ value }}}}",
        "sweep": {"list": [{"value": "two words"}, {"value": "it's $HOME"}]}, "run_name": "r{{ run_index }}",
        "env": {"MY_SETTING": "{{ run_name }} set"},
        "container": {"image": str(box["image"]), "binds": [str(box["data_bind"])], **container}})


def standin_env(box, path_dir: Path = STANDIN) -> dict:
    return {**os.environ, "PATH": f"{path_dir}{os.pathsep}{os.environ['PATH']}", "STANDIN_LOG": str(box["log"])}


def run_task(exp: Path, task: int, env: dict) -> subprocess.CompletedProcess:
    """One array task started the way Slurm starts it (minus Slurm)."""
    env = {**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "99", "SLURM_JOB_ID": "100"}
    return subprocess.run(["bash", str(exp / "array.sbatch")], env=env, capture_output=True, text=True,
                          timeout=60, cwd=exp)


def records(box) -> list[dict]:
    return [json.loads(line) for line in box["log"].read_text().splitlines()]


def plan(workdir, box, **container) -> Path:
    proc = autoexp("plan", container_config(workdir, box, **container), "--scheduler", "local", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    return workdir / "out $x 'q'" / "boxed"


def test_the_command_runs_in_the_image_with_binds_gpu_env_and_workdir(workdir, box):
    exp = plan(workdir, box)
    for task, value in enumerate(["two words", "it's $HOME"]):
        proc = run_task(exp, task, standin_env(box))
        assert proc.returncode == 0, proc.stderr
        run_dir = exp / "runs" / f"r{task}"
        call = records(box)[task]
        assert call["runtime"] == "apptainer"
        assert call["argv"][:-3] == ["exec", "--rocm", "--bind", str(box["site_bind"]), "--bind", str(box["data_bind"]),
                                     "--bind", str(exp), "--pwd", str(run_dir), str(box["image"])]
        assert call["argv"][-3:-1] == ["bash", "-c"]
        probe = json.loads((run_dir / "probe.json").read_text())
        assert probe["argv"] == ["--value", value] and probe["cwd"] == str(run_dir)
        expected = {"AUTOEXP_EXP_DIR": str(exp), "AUTOEXP_RUN_NAME": f"r{task}", "AUTOEXP_RUN_INDEX": str(task),
                    "AUTOEXP_RUN_DIR": str(run_dir), "AUTOEXP_ATTEMPT": "1", "MY_SETTING": f"r{task} set"}
        assert {k: probe["env"].get(k) for k in expected} == expected


def test_autoexp_variables_reach_the_command_under_cleanenv(workdir, box):
    exp = plan(workdir, box, options=["--cleanenv"])
    proc = run_task(exp, 1, {**standin_env(box), "AUTOEXP_ATTEMPTS": "*:3"})
    assert proc.returncode == 0, proc.stderr
    assert "--cleanenv" in records(box)[0]["flags"]
    probe = json.loads((exp / "runs" / "r1" / "probe.json").read_text())
    assert probe["env"]["AUTOEXP_RUN_NAME"] == "r1" and probe["env"]["AUTOEXP_ATTEMPT"] == "3"
    assert "MY_SETTING" not in probe["env"]  # --cleanenv means it: only what is handed over


def test_singularity_is_used_where_it_is_the_runtime(workdir, box, tmp_path):
    only_singularity = tmp_path / "bin"
    only_singularity.mkdir()
    (only_singularity / "singularity").symlink_to(STANDIN / "apptainer")
    exp = plan(workdir, box, runtime="singularity", options=["--cleanenv"])
    proc = run_task(exp, 0, standin_env(box, only_singularity))
    assert proc.returncode == 0, proc.stderr
    assert records(box)[0]["runtime"] == "singularity"
    assert json.loads((exp / "runs" / "r0" / "probe.json").read_text())["env"]["AUTOEXP_RUN_DIR"] == \
        str(exp / "runs" / "r0")


@pytest.mark.parametrize("args, message", [
    (["--image", "/no/such.sif", "--", "true"], "container image '/no/such.sif' does not exist"),
    (["--image", "{image}", "--bind", "/no/such/dir:/data", "--", "true"], "bind source '/no/such/dir' does not exist"),
    (["--image", "{image}", "--runtime", "podman", "--", "true"], "container runtime 'podman' is not on PATH"),
    (["--image", "{image}", "--gpu", "cuda", "--", "true"], "--gpu must be rocm, nv or none"),
    (["--image", "{image}"], "no command after --"),
    (["--image", "{image}", "--mount", "x", "--", "true"], "unknown argument '--mount'"),
])
def test_exec_sh_explains_what_is_wrong(box, args, message):
    argv = [str(EXEC), *(a.format(image=box["image"]) for a in args)]
    proc = subprocess.run(argv, env=standin_env(box), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr
    assert not box["log"].exists()  # the runtime was never started


def test_exec_sh_without_any_runtime_says_so(box):
    proc = subprocess.run([str(EXEC), "--image", str(box["image"]), "--", "true"], capture_output=True, text=True,
                          env={**os.environ, "PATH": "/usr/bin:/bin"}, timeout=30)
    assert proc.returncode == 2 and "neither apptainer nor singularity is on PATH" in proc.stderr


@pytest.mark.usefixtures("slurm")
def test_the_container_path_runs_end_to_end_on_the_cluster(workdir, box, cleanup):
    proc = autoexp("launch", container_config(workdir, box), cwd=workdir, env=standin_env(box))
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "out $x 'q'" / "boxed"
    cleanup(exp)
    array = read_state(exp)["arrays"][0]["job_id"]
    rows = wait_for(lambda: (lambda r: r if len(r) == 2 and all(s in TERMINAL for _, s, _ in r) else None)(
        [row for row in sacct_rows([array]) if row[0].startswith(f"{array}_")]), timeout=120, what="both tasks")
    logs = {r[0]: (exp / "runs" / f"r{r[0].split('_')[1]}" / f"slurm-{r[0]}.out").read_text() for r in rows}
    assert all(r[1] == "COMPLETED" for r in rows), logs
    calls = sorted(records(box), key=lambda c: c["pwd"])
    assert [c["pwd"] for c in calls] == [str(exp / "runs" / "r0"), str(exp / "runs" / "r1")]
    for task, value in enumerate(["two words", "it's $HOME"]):
        probe = json.loads((exp / "runs" / f"r{task}" / "probe.json").read_text())
        assert probe["argv"] == ["--value", value]
        assert probe["env"]["AUTOEXP_RUN_NAME"] == f"r{task}" and probe["env"]["MY_SETTING"] == f"r{task} set"
        assert "probe {" in logs[f"{array}_{task}"]


# --------------------------------------------------------------------------- container/build.sh

BUILD = REPO / "container" / "build.sh"


@pytest.fixture
def shared_dir():
    """A directory the test user can use too (pytest's tmp_path is private to whoever runs it)."""
    path = Path(tempfile.mkdtemp(prefix="autoexp-build-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def build(directory: Path, *args: str, unshare_works: bool, as_user: str | None = None) -> subprocess.CompletedProcess:
    """build.sh --dry-run with stand-ins deciding whether fakeroot is possible: no subordinate
    ids (getsubids fails), and user namespaces as given."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, works in (("getsubids", False), ("unshare", unshare_works), ("apptainer", True)):
        (bin_dir / name).write_text(f"#!/bin/sh\nexit {0 if works else 1}\n")
        (bin_dir / name).chmod(0o755)
    argv = ["env", f"PATH={bin_dir}{os.pathsep}{os.environ['PATH']}", str(BUILD), *args, "--dry-run"]
    if as_user:
        argv = ["runuser", "-u", as_user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=directory)


def non_root() -> str | None:
    """Run build.sh as the test user when the tests run as root (as themselves otherwise)."""
    return "autoexp-test" if os.geteuid() == 0 else None


def test_build_uses_fakeroot_when_this_machine_allows_it(shared_dir):
    proc = build(shared_dir, "cuda", "-o", "img.sif", unshare_works=True, as_user=non_root())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"+ apptainer build --fakeroot --build-arg REQUIREMENTS={REPO}/container/requirements.txt"
                                  f" img.sif {REPO}/container/pytorch-cuda.def")


def test_build_without_fakeroot_says_what_to_do_instead(shared_dir):
    proc = build(shared_dir, "rocm", unshare_works=False, as_user=non_root())
    assert proc.returncode == 3 and proc.stdout == ""
    assert "cannot build images" in proc.stderr and "cotainr" in proc.stderr
    assert "container/build.sh rocm -o pytorch-rocm.sif" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="building as root needs root")
def test_build_as_root_needs_no_fakeroot(shared_dir):
    proc = build(shared_dir, "rocm", "--build-arg", "BASE=rocm/pytorch:latest", unshare_works=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("+ apptainer build --build-arg BASE=rocm/pytorch:latest --build-arg REQUIREMENTS=")
