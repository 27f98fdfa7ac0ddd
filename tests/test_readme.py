"""The README is a test: what it tells a newcomer, done literally, on the real cluster.

A fresh clone, a fresh venv, the README's first command typed from the clone's root as the
unprivileged test user, then waiting for the sidecar to finish — with `pip install .` and with
`pip install -e .`. The notebook example and every config the README shows run as written.
The clone comes from ``$AUTOEXP_ORIGIN`` (tests/run.sh clones the checkout's HEAD there).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoexp.config import read_yaml
from conftest import REPO, sacct_rows, wait_for

pytestmark = pytest.mark.slurm


def readme_blocks(readme: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", readme.read_text(), re.S | re.M)


def quickstart_command(readme: Path) -> str:
    """The README's first command, without its comment: install, then launch the quickstart."""
    first = readme_blocks(readme, "bash")[0].splitlines()[0]
    command = first.split("#")[0].strip()
    assert command.startswith("pip install") and "autoexp launch examples/quickstart.yaml" in command
    return command


@pytest.fixture
def origin(slurm) -> Path:
    source = os.environ.get("AUTOEXP_ORIGIN")
    if not source:
        if os.environ.get("AUTOEXP_REQUIRE_SLURM") == "1":
            pytest.fail("AUTOEXP_ORIGIN is not set: run the suite through tests/run.sh", pytrace=False)
        pytest.skip("AUTOEXP_ORIGIN is not set (tests/run.sh sets it to a clone of the checkout)")
    return Path(source)


class Newcomer:
    """A shell in a fresh clone with a fresh, activated venv, as the README assumes."""

    def __init__(self, origin: Path, home: Path):
        self.clone = home / "autoexp"
        subprocess.run(["git", "clone", "-q", str(origin), str(self.clone)], check=True, timeout=120)
        self.venv = home / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True, timeout=300)
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env.update(VIRTUAL_ENV=str(self.venv), PATH=f"{self.venv}/bin:{os.environ['PATH']}")
        self.env.pop("AUTOEXP_OUTPUT_DIR", None)

    def sh(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", command], cwd=self.clone, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def status(self) -> dict:
        return json.loads(self.sh("autoexp status --json").stdout)


def launch_quickstart_and_wait(newcomer: Newcomer, command: str) -> dict:
    launched = newcomer.sh(command)
    exp = newcomer.clone / "experiments" / "quickstart"
    assert exp.is_dir(), launched.stdout
    doc = wait_for(lambda: (lambda d: d if d["done"] and d["health"]["sidecar"] == "finished" else None)(
        newcomer.status()), timeout=420, interval=3, what="the quickstart's sidecar to finish")
    assert doc["counts"] == {"COMPLETED": 8}
    shown = newcomer.sh("autoexp status").stdout
    assert "8/8 finished" in shown and "8 COMPLETED" in shown and "sidecar: finished" in shown, shown

    # The sidecar job itself ended well: it ran in the experiment directory, not in the checkout.
    sidecar_job = doc["sidecar"]["job_id"]
    wait_for(lambda: [r for r in sacct_rows([sidecar_job]) if r[1] == "COMPLETED"], timeout=120,
             what=f"sidecar job {sidecar_job} COMPLETED in sacct")
    summary = (exp / "experiment_summary.md").read_text()
    assert "8 runs: 8 COMPLETED." in summary and "## Final status" in summary, summary
    assert "✓ COMPLETED: 8 runs" in summary, summary
    events = (exp / "events.log").read_text()
    assert "ALL_COMPLETE" in events and "SIDECAR_STOP" in events
    # `python -m autoexp` from the clone's root imports the checkout: it must be whole.
    assert "8/8 finished" in newcomer.sh("python -m autoexp status").stdout
    return doc


def test_the_quickstart_as_the_readme_says(origin, tmp_path):
    newcomer = Newcomer(origin, tmp_path)
    launch_quickstart_and_wait(newcomer, quickstart_command(newcomer.clone / "README.md"))
    # The status benchmark runs as the README says to run it, from the clone's root.
    bench = newcomer.sh("python bench/status.py --sizes 4 --repeat 1", timeout=600).stdout
    assert "autoexp status --json" in bench


def test_the_quickstart_with_an_editable_install(origin, tmp_path):
    newcomer = Newcomer(origin, tmp_path)
    command = quickstart_command(newcomer.clone / "README.md").replace("pip install .", "pip install -e .")
    launch_quickstart_and_wait(newcomer, command)
    assert str(newcomer.clone) in newcomer.sh("python -c 'import autoexp.sidecar as s; print(s.__file__)'",
                                              timeout=60).stdout


def test_the_notebook_example_runs_as_written(origin, tmp_path):
    newcomer = Newcomer(origin, tmp_path)
    readme = newcomer.clone / "README.md"
    notebook = newcomer.clone / "examples" / "notebook.py"
    assert notebook.read_text() in readme_blocks(readme, "python"), \
        "the README must show examples/notebook.py verbatim"
    newcomer.sh("pip install .")
    out = newcomer.sh("python examples/notebook.py", timeout=600).stdout
    results = re.findall(r"^(\S+) +\{'run': '(\S+)', 'attempt': 1, 'loss': [0-9.]+\}$", out, re.M)
    assert len(results) == 8 and all(name == run for name, run in results), out


def test_every_config_the_readme_shows_plans(origin, tmp_path):
    """The README's experiment configs: each plans as written (a LUMI one needs its account), and
    each launches on the test cluster where its site allows (--dry-run elsewhere: no LUMI here)."""
    newcomer = Newcomer(origin, tmp_path)
    newcomer.sh("pip install .")
    configs = [block for block in readme_blocks(newcomer.clone / "README.md", "yaml") if "\nsweep:" in block]
    assert configs, "no experiment config found in the README"
    newcomer.env["SLURM_ACCOUNT"] = "project_465000123"
    for k, text in enumerate(configs):
        path = newcomer.clone / f"readme_{k}.yaml"
        path.write_text(text)
        newcomer.sh(f"autoexp plan {path.name}")
        dry = newcomer.sh(f"autoexp launch {path.name} --site local site=local --dry-run"
                          if "site:" in text else f"autoexp launch {path.name} --dry-run").stdout
        assert "sbatch" in dry, dry
        planned = newcomer.clone / "experiments" / re.search(r"^name: (\S+)", text, re.M).group(1)
        resolved = read_yaml(planned / "config.yaml")
        if "retries:" in text:  # `on:` is a key, not YAML 1.1's `true`
            assert resolved["monitor"]["retries"]["on"] == ["NODE_FAIL", "PREEMPTED"]


def test_readme_examples_are_the_files_in_the_repository():
    """The quickstart the README names is the file in examples/, and its README test exists."""
    assert (REPO / "examples" / "quickstart.yaml").is_file()
    assert "autoexp launch examples/quickstart.yaml" in quickstart_command(REPO / "README.md")
