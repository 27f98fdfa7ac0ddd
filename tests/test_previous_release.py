"""An experiment directory written by the previous release still shows in `status` and resumes.

``data/previous_release/previous`` was written by autoexp 0.1.0 (the release before the typed state
model) with the local scheduler: runs ``ok`` (COMPLETED), ``bad`` (FAILED) and ``long`` (RUNNING when
its sidecar was killed with SIGKILL; the task was then cancelled behind autoexp's back). The only
edit is that its absolute paths were replaced by ``@EXP_DIR@`` and ``@PYTHON@``, put back here.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import autoexp
from conftest import autoexp as run_cli, read_state, wait_state_done

FIXTURE = Path(__file__).parent / "data" / "previous_release" / "previous"


def copy_fixture(tmp_path: Path) -> Path:
    exp = tmp_path / "previous"
    shutil.copytree(FIXTURE, exp, symlinks=True)
    for file in exp.rglob("*"):
        if file.is_file() and not file.is_symlink():
            text = file.read_text()
            if "@EXP_DIR@" in text or "@PYTHON@" in text:
                file.write_text(text.replace("@EXP_DIR@", str(exp)).replace("@PYTHON@", sys.executable))
    return exp


def test_previous_release_shows_and_resumes(tmp_path):
    exp = copy_fixture(tmp_path)
    doc = autoexp.status(exp)
    assert {n: r["state"] for n, r in doc["runs"].items()} == {"ok": "COMPLETED", "bad": "FAILED",
                                                               "long": "RUNNING"}
    assert doc["health"]["sidecar"] == "stale" and doc["health"]["fix"].startswith("autoexp resume")
    assert doc["progress"] == {"runs": 3, "finished": 2, "failed": 1, "cancelled": 0, "active": 1, "held": 0}
    shown = run_cli("status", exp, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "STALE" in shown.stdout and all(name in shown.stdout for name in ("ok", "bad", "long"))

    result = autoexp.resume(exp)
    assert result["submitted"] and result["sidecar"] != "1"
    st = wait_state_done(exp, timeout=60)
    assert {n: r["state"] for n, r in st["runs"].items()} == {"ok": "COMPLETED", "bad": "FAILED",
                                                              "long": "CANCELLED"}
    assert st["runs"]["bad"]["metrics"] == {"loss": 2.5}
    assert [e["kind"] for e in st["history"]].count("ALL_COMPLETE") == 1
    assert read_state(exp)["sidecar"]["job_id"] == result["sidecar"]


def test_a_retry_in_a_previous_release_experiment_records_where_its_old_script_writes(tmp_path):
    """The old array script writes its log through .index/ into runs/<run>/ (no task_logs in its plan):
    the retry's attempt records that file, which holds the retry's output."""
    exp = copy_fixture(tmp_path)
    assert "task_logs" not in read_state(exp)["plan"]
    result = autoexp.retry(exp, runs=["bad"])
    st = wait_state_done(exp, timeout=90)
    bad = st["runs"]["bad"]
    assert [a["attempt"] for a in bad["attempts"]] == [1, 2] and bad["state"] == "FAILED"
    (job,) = result["arrays"]
    log = exp / "runs" / "bad" / f"slurm-{job}_1.out"
    assert bad["attempts"][-1]["log"] == str(log)
    assert not log.is_symlink() and "loss: 2.5" in log.read_text()
    assert not (exp / "logs" / "array").exists()
