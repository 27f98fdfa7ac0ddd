"""The rendered scripts: golden files per site, valid bash, accepted by sbatch, extensible by users.

The golden files in tests/golden/<site>/ are what `autoexp plan` writes for one awkward config
(spaces, quotes and $ in paths and values). When a change to them is intended, regenerate them
with `python tests/regen_golden.py` and review the diff.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from importlib import resources
from pathlib import Path
from unittest import mock

import pytest

from autoexp import config as configmod, plan as planmod
from autoexp.jobstates import TERMINAL
from conftest import REPO, autoexp, read_state, sacct_rows, wait_for, write_config

GOLDEN = Path(__file__).parent / "golden"
SITES = ("generic", "local", "lumi", "lumi-small", "lumi-dev", "jsc", "juwels", "juwels-dev", "jureca", "jupiter")
# sbatch-calls.txt is what `launch --dry-run` prints: the account is on sbatch's command line.
FILES = ("array.sbatch", "sidecar.sbatch", "tasks.sh", "sbatch-calls.txt")
GLUE = str(resources.files("autoexp.apptainer"))
# The environment the goldens are rendered in: a project account, and another one in SBATCH_ACCOUNT
# (which sbatch alone would bill), nothing else site-specific.
ENVIRONMENT = {"SLURM_ACCOUNT": "project_465000123", "SBATCH_ACCOUNT": "project_465000999"}
UNSET = ("BUDGET_ACCOUNTS",)
MULTINODE = REPO / "docs" / "examples" / "multinode.sbatch.j2"


def golden_config(site: str) -> dict:
    return {
        "name": "golden", "site": site, "output_dir": "/scratch/it's a $dir (1)/exp",
        "python": "/opt/py env/bin/python3", "max_parallel": 1,
        "command": "python train.py --lr {{ lr }} --tag {{ tag }} --out {{ run_dir }}",
        "sweep": {"list": [{"lr": 1.0e-4, "tag": "two words"}, {"lr": 3.0e-4, "tag": "it's $HOME `id`"}]},
        "env": {"HF_HOME": "/scratch/hf cache/{{ run_name }}"},
        "setup": ["echo setting up {{ run_name }}"],
        "container": {"image": "/scratch/images/py torch.sif", "binds": ["/scratch/data set"]},
    }


def render_site(site: str, directory: Path) -> dict[str, str]:
    """The files of the golden config planned for ``site``, with the glue path made stable."""
    path = write_config(directory, golden_config(site), name=f"golden-{site}.yaml")
    environ = {k: v for k, v in os.environ.items() if k not in UNSET}
    with mock.patch.dict(os.environ, {**environ, **ENVIRONMENT}, clear=True):
        built = planmod.build(configmod.load(path), "slurm", 1000)
    files = {**built.files, "sbatch-calls.txt": built.submissions_text() + "\n"}
    return {name: files[name].replace(GLUE, "<glue>") for name in FILES}


def bash_n(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.sh"
    script.write_text(text)
    return subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)


@pytest.mark.parametrize("site", SITES)
def test_rendered_scripts_match_the_golden_files(site, tmp_path):
    rendered = render_site(site, tmp_path)
    for name in FILES:
        golden = GOLDEN / site / name
        assert golden.is_file(), f"no golden {golden}: run python tests/regen_golden.py"
        assert rendered[name] == golden.read_text(), \
            f"{site}/{name} differs from its golden file (intended? python tests/regen_golden.py)"
        if name.endswith((".sbatch", ".sh")):
            proc = bash_n(rendered[name], tmp_path)
            assert proc.returncode == 0, f"{site}/{name}: {proc.stderr}"


def test_golden_files_cover_every_stock_site():
    stock = sorted(p.stem for p in Path(str(resources.files("autoexp.site_configs"))).glob("*.yaml"))
    assert sorted(SITES) == stock
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(SITES)


def test_awkward_values_are_quoted_in_every_shell_line(tmp_path):
    array = render_site("local", tmp_path)["array.sbatch"]
    assert "export AUTOEXP_EXP_DIR='/scratch/it'\"'\"'s a $dir (1)/exp/golden'" in array
    assert "--image '/scratch/images/py torch.sif'" in array and "--bind '/scratch/data set'" in array
    assert '#SBATCH --output="/scratch/it\'s a $dir (1)/exp/golden/logs/array/slurm-%A_%a.out"' in array


def plan_cli(workdir: Path, data: dict, *args: str) -> subprocess.CompletedProcess:
    path = write_config(workdir, data)
    return autoexp("plan", path, "--scheduler", "slurm", *args, cwd=workdir)


@pytest.mark.usefixtures("slurm")
def test_sbatch_test_only_accepts_the_local_sites_scripts(workdir):
    data = {**golden_config("local"), "output_dir": str(workdir / "it's a $dir (1)")}
    proc = plan_cli(workdir, data)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "it's a $dir (1)" / "golden"
    for script in ("array.sbatch", "sidecar.sbatch"):
        check = subprocess.run(["sbatch", "--test-only", str(exp / script)], capture_output=True,
                               text=True, timeout=60, cwd=workdir)
        assert check.returncode == 0, f"{script}: {check.stderr}"
        assert "to start at" in check.stderr


# --------------------------------------------------------------------------- user templates

def user_template(workdir: Path, text: str, name: str = "mine.sbatch.j2") -> Path:
    path = workdir / name
    path.write_text(text)
    return path


def simple_config(**extra) -> dict:
    return {"name": "tpl", "site": "local", "command": "echo {{ x }}", "sweep": {"grid": {"x": [1, 2]}},
            **extra}


@pytest.mark.slurm  # plan --scheduler slurm asks scontrol for MaxArraySize
def test_a_user_template_overriding_one_block_changes_only_that_block(workdir):
    assert plan_cli(workdir, simple_config(output_dir="stock")).returncode == 0
    proc = plan_cli(workdir, simple_config(output_dir="mine", template=str(MULTINODE)))
    assert proc.returncode == 0, proc.stderr
    stock = (workdir / "stock" / "tpl" / "array.sbatch").read_text().replace("/stock/", "/X/")
    mine = (workdir / "mine" / "tpl" / "array.sbatch").read_text().replace("/mine/", "/X/")
    head, _, tail = stock.partition("autoexp_command\nstatus=$?")
    assert mine.startswith(head) and mine.endswith("status=$?" + tail)
    middle = mine[len(head):-len("status=$?" + tail)]
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in middle
    assert "srun --ntasks-per-node=1" in middle
    assert subprocess.run(["bash", "-n", str(workdir / "mine" / "tpl" / "array.sbatch")]).returncode == 0


@pytest.mark.slurm
@pytest.mark.parametrize("body, message", [
    ("{% block launch %}{{ containr_exec }} autoexp_command{% endblock %}",
     "undefined variable 'containr_exec' (did you mean 'container_exec'?)"),
    # A branch this plan does not take is checked too.
    ("{% block launch %}{% if container %}{{ lancher }}{% endif %}autoexp_command{% endblock %}",
     "undefined variable 'lancher' (did you mean 'launcher'?)"),
    ("{% block lauch %}srun autoexp_command{% endblock %}",
     "block 'lauch' is not in array.sbatch.j2 (did you mean 'launch'?)"),
    ("{% block launch %}{{ config.slurm.partiton }}{% endblock %}", "has no attribute 'partiton'"),
    ("{% block launch %}{{ x }{% endblock %}", "template syntax error"),
])
def test_mistakes_in_a_user_template_fail_at_plan_time(workdir, body, message):
    template = user_template(workdir, '{% extends "array.sbatch.j2" %}\n' + body + "\n")
    proc = plan_cli(workdir, simple_config(template=template.name))
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith(f"autoexp: error: {template}: template: ") and message in proc.stderr
    assert not (workdir / "experiments" / "tpl").exists()


@pytest.mark.slurm  # plan --scheduler slurm asks scontrol for MaxArraySize
def test_a_template_extending_an_unknown_stock_template_is_refused(workdir):
    template = user_template(workdir, '{% extends "array.sbatch" %}\n')
    proc = plan_cli(workdir, simple_config(template=template.name))
    assert proc.returncode == 2 and "extends unknown template 'array.sbatch'" in proc.stderr
    assert "array.sbatch.j2" in proc.stderr


@pytest.mark.slurm  # plan --scheduler slurm asks scontrol for MaxArraySize
def test_a_sidecar_template_can_override_its_launch_block(workdir):
    template = user_template(workdir, '{% extends "sidecar.sbatch.j2" %}\n{% block launch %}\n'
                             'module load python\n{{ super() }}{% endblock %}\n', "side.j2")
    assert plan_cli(workdir, simple_config(sidecar_template=template.name)).returncode == 0
    text = (workdir / "experiments" / "tpl" / "sidecar.sbatch").read_text()
    assert "module load python\nexec " in text and " -m autoexp sidecar " in text


@pytest.mark.slurm  # plan --scheduler slurm asks scontrol for MaxArraySize
def test_a_template_named_by_a_site_is_found_next_to_the_site_file(workdir):
    sites = workdir / "sites"
    sites.mkdir()
    (sites / "cluster.yaml").write_text("extends: local\ntemplate: cluster.sbatch.j2\n")
    user_template(sites, '{% extends "array.sbatch.j2" %}{% block setup %}module load site-stack\n'
                  '{{ super() }}{% endblock %}', "cluster.sbatch.j2")
    other = workdir / "elsewhere"
    other.mkdir()
    proc = plan_cli(other, simple_config(site=str(sites / "cluster.yaml")))
    assert proc.returncode == 0, proc.stderr
    assert "module load site-stack\n" in (other / "experiments" / "tpl" / "array.sbatch").read_text()


@pytest.mark.usefixtures("slurm")
def test_the_multinode_example_trains_across_two_nodes_with_torchrun(workdir, cleanup):
    """docs/examples/multinode.yaml as documented: one torchrun agent on each of node1 and node2,
    a c10d rendezvous on the first node, gloo all-reduces; both ranks' losses fall."""
    # Needs torch in the interpreter the job finds as `python`: tests/run.sh installs it.
    name = f"ddp-{uuid.uuid4().hex[:8]}"
    proc = autoexp("launch", MULTINODE.with_name("multinode.yaml"), f"name={name}",
                   f"output_dir={workdir / 'out'}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "out" / name
    cleanup(exp)
    array = read_state(exp)["arrays"][0]["job_id"]
    rows = wait_for(lambda: [r for r in sacct_rows([array]) if r[1] in TERMINAL], timeout=240,
                    what="the two-node training to finish")
    (run,) = read_state(exp)["runs"]
    log = (exp / "runs" / run / f"slurm-{array}_0.out").read_text()
    assert rows[0][1] == "COMPLETED", log
    nodes = dict(re.findall(r"^rank (\d) of 2 on (\S+)$", log, re.M))
    assert sorted(nodes.values()) == ["node1", "node2"], log
    for rank in ("0", "1"):
        losses = [float(v) for v in re.findall(rf"^rank {rank} step \d+ loss: (\S+)$", log, re.M)]
        assert len(losses) == 30 and losses[-1] < losses[0] / 10, (rank, losses)


@pytest.mark.usefixtures("slurm")
def test_the_multinode_example_fails_fast_when_a_task_fails(workdir, cleanup):
    """srun --kill-on-bad-exit=1: when one node's task fails, the others are ended at once instead
    of holding the allocation (here: sleeping 300 s)."""
    data = simple_config(name="failfast", output_dir=str(workdir / "out"), template=str(MULTINODE),
                         command='if [ "$SLURM_PROCID" = 1 ]; then exit 3; fi; sleep 300',
                         sweep={"list": [{"x": 1}]}, slurm={"nodes": 2, "ntasks-per-node": 1, "mem": "200M"})
    proc = autoexp("launch", write_config(workdir, data), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "out" / "failfast"
    cleanup(exp)
    array = read_state(exp)["arrays"][0]["job_id"]
    rows = wait_for(lambda: [r for r in sacct_rows([array], "JobID,State,ElapsedRaw") if r[1] in TERMINAL],
                    timeout=120, what="the run to fail")
    assert rows[0][1] == "FAILED" and int(rows[0][2]) < 60, rows
