"""Site configs: the stock sites give the scripts their users submit, sites extend each other
exactly, are found by name, path or hostname, and take accounts from the environment."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from autoexp import config as configmod, plan as planmod, site as sitemod
from autoexp.errors import InputError
from conftest import autoexp, read_state, sacct_rows, wait_for, wait_state_done, write_config

ACCOUNT = "project_465000123"
LUMI_MASKS = ("mask_cpu:0xfe000000000000,0xfe00000000000000,0xfe0000,0xfe000000,0xfe,0xfe00,"
              "0xfe00000000,0xfe0000000000")


@pytest.fixture
def account(monkeypatch):
    for name in ("SLURM_ACCOUNT", "SBATCH_ACCOUNT", "BUDGET_ACCOUNTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_ACCOUNT", ACCOUNT)
    return ACCOUNT


def planned(workdir: Path, site: str, **extra) -> dict[str, str]:
    data = {"name": "s", "site": site, "command": "python train.py --lr {{ lr }}",
            "sweep": {"grid": {"lr": [0.1, 0.2]}}, **extra}
    built = planmod.build(configmod.load(write_config(workdir, data)), "slurm", 1000)
    return built.files


def sbatch_options(script: str) -> list[str]:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --------------------------------------------------------------------------- what users submit

def test_lumi_runs_take_a_whole_node_bound_to_its_gcds(workdir, account):
    files = planned(workdir, "lumi", container={"image": "/appl/local/laifs/containers/pytorch.sif"})
    options = sbatch_options(files["array.sbatch"])
    for expected in (f"--account={ACCOUNT}", "--partition=standard-g", "--nodes=1", "--gpus-per-node=8",
                     "--ntasks-per-node=8", "--cpus-per-task=7", "--mem=480G"):
        assert expected in options
    launch = files["array.sbatch"].split("set +a\n")[1].split("status=$?")[0]
    # select_gpu, which also makes the MIOpen cache directory on every node of the run
    assert launch.startswith(f"srun --cpu-bind={LUMI_MASKS} bash -c 'mkdir -p \"$MIOPEN_USER_DB_PATH\" && "
                             "ROCR_VISIBLE_DEVICES=$SLURM_LOCALID exec \"$@\"' select_gpu \\\n")
    # no --rocm: the image's own ROCm, not the host's
    assert "/exec.sh --image /appl/local/laifs/containers/pytorch.sif --runtime singularity" \
           " --bind /var/spool/slurmd --bind /opt/cray --bind /usr/lib64/libcxi.so.1 --bind /pfs" in launch
    assert "--gpu" not in launch
    assert 'export NCCL_SOCKET_IFNAME="hsn0,hsn1,hsn2,hsn3"' in files["tasks.sh"]
    assert 'export MIOPEN_USER_DB_PATH="/tmp/${USER}-miopen-cache-${SLURM_JOB_ID}"' in files["tasks.sh"]
    sidecar = sbatch_options(files["sidecar.sbatch"])
    for expected in (f"--account={ACCOUNT}", "--partition=small", "--ntasks=1", "--cpus-per-task=1"):
        assert expected in sidecar
    assert not any(o.startswith(("--gpus", "--gres")) for o in sidecar)


def test_lumi_small_runs_use_one_gcd_of_a_shared_node(workdir, account):
    files = planned(workdir, "lumi-small")
    options = sbatch_options(files["array.sbatch"])
    for expected in ("--partition=small-g", "--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=7",
                     "--mem-per-gpu=60G", f"--account={ACCOUNT}"):
        assert expected in options
    assert not any(o.startswith("--mem=") for o in options)
    assert "set +a\nautoexp_command\nstatus=$?" in files["array.sbatch"]  # no srun, no container


def test_juwels_runs_take_a_booster_node_and_the_tasks_carry_the_sidecar(workdir, account):
    files = planned(workdir, "juwels", container={"image": "/p/project/x/pytorch.sif"})
    options = sbatch_options(files["array.sbatch"])
    for expected in (f"--account={ACCOUNT}", "--partition=booster", "--gres=gpu:4", "--nodes=1",
                     "--ntasks-per-node=4", "--cpus-per-task=12", "--threads-per-core=1"):
        assert expected in options  # 4 tasks x 12 physical cores: the node's 48
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert f'export {variable}="1"' in files["tasks.sh"]
    assert "srun \\\n  " in files["array.sbatch"]
    assert "/exec.sh --image /p/project/x/pytorch.sif --runtime apptainer --gpu nv --bind /p --" in files["array.sbatch"]
    sidecar = sbatch_options(files["sidecar.sbatch"])
    assert "--partition=booster" in sidecar and "--time=00:05:00" in sidecar
    resolved = yaml.safe_load(files["config.yaml"])
    assert resolved["sidecar"]["mode"] == "carried" and resolved["monitor"]["interval"] == 60
    assert "autoexp.sidecar.carried carry" in files["array.sbatch"]  # the tasks poll; the job is the watchdog
    assert "autoexp.sidecar.carried watchdog" in files["sidecar.sbatch"]


@pytest.mark.parametrize("site, shape", [
    ("juwels-dev", ("--partition=develbooster", "--gres=gpu:4", "--ntasks-per-node=4", "--cpus-per-task=12")),
    ("jureca", ("--partition=dc-gpu", "--gres=gpu:4", "--ntasks-per-node=4", "--cpus-per-task=32")),
    ("jupiter", ("--partition=booster", "--gres=gpu:4", "--ntasks-per-node=4", "--cpus-per-task=72")),
])
def test_the_other_jsc_sites_take_whole_nodes_one_task_per_gpu(workdir, account, site, shape):
    files = planned(workdir, site)
    options = sbatch_options(files["array.sbatch"])
    for expected in (f"--account={ACCOUNT}", "--nodes=1", "--threads-per-core=1", *shape):
        assert expected in options
    assert 'export HF_HUB_OFFLINE="1"' in files["tasks.sh"]
    resolved = yaml.safe_load(files["config.yaml"])
    assert resolved["offline"] is True
    assert resolved["sidecar"]["mode"] == ("carried" if site == "juwels-dev" else "chain")


def test_juwels_takes_the_budget_jutil_activated(workdir, monkeypatch):
    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    monkeypatch.setenv("BUDGET_ACCOUNTS", "exalab")
    assert "--account=exalab" in sbatch_options(planned(workdir, "juwels")["array.sbatch"])


# --------------------------------------------------------------------------- accounts from the environment

def test_a_missing_lumi_account_is_an_input_error_at_plan_time(workdir, monkeypatch):
    for name in ("SLURM_ACCOUNT", "SBATCH_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    path = write_config(workdir, {"name": "noacct", "site": "lumi", "command": "true"})
    proc = autoexp("plan", path, "--scheduler", "slurm", cwd=workdir)
    assert proc.returncode == 2 and proc.stdout == ""
    lumi = sitemod.load("lumi").source
    assert proc.stderr.startswith(f"autoexp: error: {lumi}: slurm.account: ")
    assert "SLURM_ACCOUNT or SBATCH_ACCOUNT, which is not set" in proc.stderr
    assert not (workdir / "experiments" / "noacct").exists()


def test_the_account_can_come_from_sbatch_account_or_the_config(workdir, monkeypatch):
    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    monkeypatch.setenv("SBATCH_ACCOUNT", "project_1")
    assert "--account=project_1" in sbatch_options(planned(workdir, "lumi")["array.sbatch"])
    monkeypatch.delenv("SBATCH_ACCOUNT")
    files = planned(workdir, "lumi", slurm={"account": "project_2"})
    assert "--account=project_2" in sbatch_options(files["array.sbatch"])
    assert "--account=project_2" in sbatch_options(files["sidecar.sbatch"])  # billed together
    assert yaml.safe_load(files["config.yaml"])["slurm"]["account"] == "project_2"


@pytest.mark.usefixtures("slurm")
def test_slurm_bills_the_account_autoexp_records_whatever_sbatch_account_says(workdir, cleanup, monkeypatch):
    """The LUMI/JUWELS way of taking the account (SLURM_ACCOUNT first), with SBATCH_ACCOUNT naming
    another account of the same user: sbatch alone would bill SBATCH_ACCOUNT over the script's
    #SBATCH line; autoexp passes the recorded account on the command line, which beats both."""
    (workdir / "acct.yaml").write_text("extends: local\nslurm: {account: '${SLURM_ACCOUNT:-${SBATCH_ACCOUNT}}'}\n")
    monkeypatch.setenv("SLURM_ACCOUNT", "autoexp")
    monkeypatch.setenv("SBATCH_ACCOUNT", "autoexp-other")
    name = f"acct-{uuid.uuid4().hex[:8]}"
    path = write_config(workdir, {"name": name, "site": "acct.yaml", "command": "sleep 1"})
    proc = autoexp("launch", path, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "experiments" / name
    cleanup(exp)
    assert yaml.safe_load((exp / "config.yaml").read_text())["slurm"]["account"] == "autoexp"
    st = read_state(exp)
    jobs = [st["arrays"][0]["job_id"], st["sidecar"]["job_id"]]
    rows = wait_for(lambda: (lambda r: r if len(r) >= 2 else None)(sacct_rows(jobs, "JobID,Account")),
                    timeout=60, what="both jobs in sacct")
    assert {row[1] for row in rows} == {"autoexp"}, rows
    # The check can fail: the same script submitted by plain sbatch is billed to SBATCH_ACCOUNT.
    plain = subprocess.run(["sbatch", "--parsable", "--hold", "--array=0", str(exp / "array.sbatch")],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    held = plain.stdout.strip().split(";")[0]
    try:
        account = subprocess.run(["squeue", "-h", "-o", "%a", "-j", held], capture_output=True, text=True,
                                 timeout=60).stdout.split()
    finally:
        subprocess.run(["scancel", held], capture_output=True, timeout=60)
    assert account == ["autoexp-other"]


def test_environment_references_expand_only_where_no_shell_would(workdir, monkeypatch):
    monkeypatch.setenv("IMAGES", "/scratch/images")
    files = planned(workdir, "local", command="echo ${HOME} {{ lr }}", setup=["cd ${SCRATCH:-/tmp}"],
                    container={"image": "${IMAGES}/pt.sif", "binds": ["${MISSING:-/data}"]},
                    slurm={"comment": "by ${USER:-nobody}"})
    assert "echo ${HOME} 0.1" in files["tasks.sh"] and "cd ${SCRATCH:-/tmp}" in files["tasks.sh"]
    assert "--image /scratch/images/pt.sif" in files["array.sbatch"] and "--bind /data" in files["array.sbatch"]
    resolved = yaml.safe_load(files["config.yaml"])
    assert resolved["container"]["image"] == "/scratch/images/pt.sif"
    assert resolved["slurm"]["comment"] == f"by {os.environ.get('USER') or 'nobody'}"


def test_a_missing_variable_in_the_config_names_the_config(workdir, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    path = write_config(workdir, {"name": "x", "site": "local", "command": "true",
                                  "container": {"image": "${NO_SUCH_VAR}/a.sif"}})
    with pytest.raises(InputError) as err:
        configmod.load(path)
    assert (err.value.source, err.value.key) == (str(path), "container.image")
    assert "needs the environment variable NO_SUCH_VAR" in str(err.value)


# --------------------------------------------------------------------------- what sites refuse at plan time

def refused(proc: subprocess.CompletedProcess, source: str, key: str, words: str) -> None:
    """Exit 2, one line naming the file and key, nothing planned or submitted."""
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"autoexp: error: {source}: {key}: "), proc.stderr
    assert words in proc.stderr


@pytest.mark.usefixtures("slurm")
def test_lumi_dev_refuses_a_sweep(workdir, account):
    """dev-g takes 2 jobs per user and no production: 3 runs are refused before anything is
    submitted (sbatch is right there), 2 are planned."""
    name = f"dev-{uuid.uuid4().hex[:8]}"
    path = write_config(workdir, {"name": name, "site": "lumi-dev", "command": "echo {{ x }}",
                                  "sweep": {"grid": {"x": [1, 2, 3]}}})
    proc = autoexp("launch", path, cwd=workdir)
    refused(proc, sitemod.load("lumi-dev").source, "max_runs",
            "3 runs, but site lumi-dev takes at most 2: dev-g allows 2 jobs per user (1 running) and no "
            "production runs")
    assert not (workdir / "experiments" / name).exists()
    assert not subprocess.run(["squeue", "-h", "-o", "%i", f"--name=autoexp-{name}"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    assert autoexp("plan", path, "sweep.grid.x=[1,2]", cwd=workdir).returncode == 0


@pytest.mark.usefixtures("slurm")
@pytest.mark.parametrize("image", ["docker://nvcr.io/nvidia/pytorch:24.10-py3", "oras://ghcr.io/x/y:1",
                                   "library://sylabs/examples/ruby"])
def test_an_offline_site_refuses_a_network_image(workdir, account, image):
    name = f"off-{uuid.uuid4().hex[:8]}"
    path = write_config(workdir, {"name": name, "site": "juwels", "command": "true",
                                  "container": {"image": image}})
    proc = autoexp("launch", path, cwd=workdir)
    refused(proc, str(path), "container.image", "the compute nodes of site juwels have no internet")
    assert f"apptainer pull image.sif {image}" in proc.stderr
    assert not (workdir / "experiments" / name).exists()


def test_an_image_of_another_architecture_is_refused_where_it_can_be_read(workdir, account):
    """JUPITER is aarch64: a SIF file's header names its architecture; other images pass."""
    def sif(name: str, code: bytes) -> Path:
        path = workdir / name
        path.write_bytes(b"#!/usr/bin/env run-singularity\n".ljust(32) + b"SIF_MAGIC\0" + b"01\0" + code + b"\0"
                         + bytes(64))
        return path

    data = {"name": "arch", "site": "jupiter", "command": "true"}
    proc = autoexp("plan", write_config(workdir, {**data, "container": {"image": str(sif("x86.sif", b"02"))}}),
                   "--scheduler", "slurm", cwd=workdir)
    refused(proc, str(workdir / "config.yaml"), "container.image", "is an amd64 image, but site jupiter runs arm64")
    for image in (sif("arm.sif", b"04"), workdir):  # an arm64 SIF, a sandbox directory
        proc = autoexp("plan", write_config(workdir, {**data, "container": {"image": str(image)}}),
                       "--scheduler", "slurm", cwd=workdir)
        assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- extends, paths, hostnames

def test_a_site_that_extends_another_inherits_and_overrides_exactly(workdir):
    sites = workdir / "sites"
    sites.mkdir()
    (sites / "parent.yaml").write_text(yaml.safe_dump({
        "description": "parent", "hostnames": ["parent-*"],
        "slurm": {"partition": "a", "time": "02:00:00", "qos": "normal"}, "setup": ["module load p"],
        "container": {"runtime": "apptainer", "binds": ["/a"]}, "env": {"A": 1}, "launcher": ["srun"]}))
    (sites / "child.yaml").write_text(yaml.safe_dump({
        "extends": "parent.yaml", "slurm": {"partition": "b", "qos": None}, "setup": ["module load c"],
        "container": {"binds": ["/b"]}, "env": {"B": 2}, "monitor": {"interval": 7}}))
    child = sitemod.load(str(sites / "child.yaml"))
    assert child.values == {
        "slurm": {"partition": "b", "time": "02:00:00", "qos": None}, "setup": ["module load p", "module load c"],
        "container": {"runtime": "apptainer", "binds": ["/a", "/b"]}, "env": {"A": 1, "B": 2},
        "launcher": ["srun"], "monitor": {"interval": 7}}
    cfg = configmod.load(write_config(workdir, {"name": "x", "site": "sites/child.yaml", "command": "true",
                                                "setup": ["echo mine"], "launcher": []}))
    assert cfg["setup"] == ["module load p", "module load c", "echo mine"]
    assert cfg["launcher"] == [] and cfg["slurm"]["qos"] is None and cfg["monitor"]["interval"] == 7
    assert cfg.where("slurm.time")[0] == str(sites / "parent.yaml")
    assert cfg.where("slurm.partition")[0] == str(sites / "child.yaml")


def test_the_stock_lumi_variants_differ_from_lumi_only_where_they_say(account):
    lumi = flatten(sitemod.load("lumi").values)
    for variant in ("lumi-small", "lumi-dev"):
        own = flatten(configmod.read_yaml(Path(sitemod.stock_dir()) / f"{variant}.yaml"))
        merged = flatten(sitemod.load(variant).values)
        changed = {k for k in set(lumi) | set(merged) if lumi.get(k, "<unset>") != merged.get(k, "<unset>")}
        assert changed == {k for k in own if k not in ("description", "extends") and own[k] != lumi.get(k)}


def test_a_cycle_of_sites_is_refused(workdir):
    (workdir / "a.yaml").write_text("extends: b.yaml\n")
    (workdir / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(InputError, match="cycle"):
        sitemod.load(str(workdir / "a.yaml"))


def test_every_stock_site_loads(account):
    assert {"generic", "local", "lumi", "lumi-small", "lumi-dev", "jsc", "juwels", "juwels-dev", "jureca",
            "jupiter"} <= set(sitemod.available())
    for name in sitemod.available():
        assert sitemod.load(name).values


@pytest.mark.parametrize("host, site", [("uan01", "lumi"), ("uan03.lumi.csc", "lumi"), ("nid005123", "lumi"),
                                        ("jwlogin22.juwels", "juwels"), ("jwb0042.juwels", "juwels"),
                                        ("my-laptop", "generic")])
def test_the_site_is_detected_from_the_hostname(host, site):
    assert sitemod.detect(host) == site


def test_a_config_without_site_gets_the_detected_one(workdir, account, monkeypatch):
    monkeypatch.setattr(sitemod.socket, "gethostname", lambda: "uan02")
    cfg = configmod.load(write_config(workdir, {"name": "x", "command": "true"}))
    assert cfg["site"] == "lumi" and cfg["slurm"]["partition"] == "standard-g"


def test_your_own_sites_are_detected_before_the_stock_ones(workdir, monkeypatch):
    mine = workdir / "my sites"
    mine.mkdir()
    (mine / "mylumi.yaml").write_text("extends: lumi\nhostnames: [uan*]\nslurm: {account: project_9}\n")
    monkeypatch.setenv("AUTOEXP_SITE_PATH", str(mine))
    assert sitemod.detect("uan01") == "mylumi" and sitemod.detect("nid000001") == "lumi"
    assert sitemod.load("mylumi").values["slurm"]["partition"] == "standard-g"


# --------------------------------------------------------------------------- the chain sidecar

@pytest.mark.usefixtures("slurm")
def test_a_chain_sidecar_keeps_the_state_current_without_holding_an_allocation(workdir, cleanup):
    """Mode chain (JUWELS): each sidecar job polls once and submits the next one to begin after the
    interval. The state still follows the runs, and no sidecar allocation outlives its poll."""
    interval = 6
    name = f"chain-{uuid.uuid4().hex[:8]}"
    path = write_config(workdir, {
        "name": name, "site": "local", "command": "sleep {{ s }}; echo finished {{ s }}",
        "sweep": {"list": [{"s": 6}, {"s": 24}]}, "run_name": "s{{ s }}",
        "sidecar": {"mode": "chain"}, "monitor": {"interval": interval}})
    proc = autoexp("launch", path, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "experiments" / name
    cleanup(exp)
    try:
        # Current: the short run is seen COMPLETED while the long one still runs.
        wait_for(lambda: (lambda r: r["s6"]["state"] == "COMPLETED" and r["s24"]["state"] == "RUNNING")(
            read_state(exp)["runs"]), timeout=120, interval=0.5, what="s6 COMPLETED while s24 RUNNING")
        final = wait_state_done(exp, timeout=180)
        assert {r["state"] for r in final["runs"].values()} == {"COMPLETED"}
        # The job that saw the end may still be writing the report: the chain stops by itself.
        wait_for(lambda: not queued_sidecars(name), timeout=60, what="the chain to stop once the experiment is done")
    finally:
        if leftover := queued_sidecars(name):  # only when the test failed: do not leave a chain behind
            subprocess.run(["scancel", *leftover], capture_output=True, timeout=30)
    rows = sidecar_allocations(name)
    assert len(rows) >= 3, rows  # a chain, not one long job
    for job, state, elapsed, start, end in rows:
        assert state == "COMPLETED" and int(elapsed) < interval, rows  # one poll: seconds, not the interval
    for (_, _, _, _, end), (_, _, _, start, _) in zip(rows, rows[1:]):
        assert to_epoch(start) - to_epoch(end) >= interval - 1, rows  # the wait is spent outside an allocation


def queued_sidecars(name: str) -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i", f"--name=autoexp-sidecar-{name}"],
                          capture_output=True, text=True, timeout=30).stdout.split()


def sidecar_allocations(name: str) -> list[list[str]]:
    proc = subprocess.run(["sacct", "-X", "-n", "-P", f"--name=autoexp-sidecar-{name}", "--starttime=now-1hour",
                           "--format=JobID,State,ElapsedRaw,Start,End"], capture_output=True, text=True,
                          timeout=60, check=True, env={**os.environ, "TZ": "UTC"})
    return sorted((line.split("|") for line in proc.stdout.splitlines() if line), key=lambda r: r[3])


def to_epoch(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
