"""The parsers of sacct, scontrol and squeue output on outputs captured from the real clusters, Slurm
22.05 (tests/data/) and 24.11 (tests/data/slurm-24.11/); tests/data/README.md says how."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from autoexp import limits
from autoexp.arrayspec import expand_range, spans
from autoexp.slurm import parse_config, parse_end_time, parse_sacct

DATA = Path(__file__).parent / "data"


def records(name: str):
    return parse_sacct((DATA / name).read_text())


def by_id(recs):
    """Each task's records, a collapsed row's under every task it lists."""
    found = {}
    for rec in recs:
        for job_id in [f"{rec.array_job}_{t}" for span in rec.tasks for t in span] if rec.collapsed else [rec.job_id]:
            found.setdefault(job_id, []).append(rec)
    return found


def test_expand_range_drops_the_throttle():
    assert expand_range("3-11%3") == list(range(3, 12))
    assert expand_range("0,2-3") == [0, 2, 3]
    assert expand_range("7") == [7]
    assert spans("0-99999,100001%8") == (range(0, 100000), range(100001, 100002))


def test_every_other_task_waiting_is_a_range_with_a_step():
    """Scattered retries (every other run failed) wait as ``31376_[0-12:2%2]`` in sacct and squeue:
    each waiting task is known, none is taken for vanished, and each counts against the limits."""
    assert expand_range("0-12:2%2") == [0, 2, 4, 6, 8, 10, 12]
    assert expand_range("1,5-11:3") == [1, 5, 8, 11]
    recs = by_id(records("sacct_step_range.txt"))
    assert sorted(recs, key=lambda j: int(j.split("_")[1])) == [f"31376_{t}" for t in range(0, 13, 2)]
    assert all(r[0].state == "PENDING" and r[0].collapsed for r in recs.values())
    queued = limits.queue((DATA / "squeue_step_range.txt").read_text())
    assert [q.tasks for q in queued] == [7]


def test_collapsed_pending_range_is_one_record_listing_its_tasks():
    """100,000 waiting tasks are one row in sacct, and one record: not one per task."""
    (pending,) = [r for r in records("sacct_pending_range.txt") if r.collapsed]
    assert (pending.job_id, pending.state, pending.array_job, pending.task) == ("74_[3-11%3]", "PENDING", "74", None)
    assert pending.tasks == (range(3, 12),) and pending.lists(5) and not pending.lists(2)
    recs = by_id(records("sacct_pending_range.txt"))
    assert sorted(recs, key=lambda j: int(j.split("_")[1])) == [f"74_{t}" for t in range(12)]
    assert pending.started is None and pending.completed is None and pending.nodes is None
    failed = recs["74_1"][0]
    assert (failed.state, failed.exit_code, failed.collapsed) == ("FAILED", "3:0", False)
    assert failed.started == "2026-11-22T07:07:16Z" and failed.completed == "2026-11-22T07:07:16Z"
    running = recs["74_0"][0]
    assert running.state == "RUNNING" and running.completed is None and running.nodes == "node1"


def test_cancelled_by_uid_and_requeued_allocations():
    recs = by_id(records("sacct_requeue_cancel.txt"))
    cancelled = recs["74_3"][0]
    assert (cancelled.state, cancelled.reason) == ("CANCELLED", "by 0")
    first, second = recs["74_2"]
    assert (first.state, second.state) == ("REQUEUED", "PENDING")
    assert first.completed == "2026-11-22T07:07:21Z" and second.submitted == "2026-11-22T07:07:21Z"
    # the collapsed row lags: tasks 4-6 have rows of their own (RUNNING) and are in the range too
    assert [r.state for r in recs["74_4"]] == ["RUNNING", "PENDING"]
    assert [r.collapsed for r in recs["74_4"]] == [False, True]


def test_steps_are_ignored_and_cancelled_ranges_expand():
    recs = by_id(records("sacct_steps_cancelled_ranges.txt"))
    assert not any("." in job_id for job_id in recs)
    assert [r.state for r in recs["74_2"]] == ["REQUEUED", "COMPLETED"]
    assert recs["74_2"][1].elapsed_s == 40
    for task in range(1, 6):  # the whole array cancelled while these waited
        rec = recs[f"150_{task}"][0]
        assert (rec.state, rec.reason, rec.collapsed, rec.started) == ("CANCELLED", "by 0", True, None)
    assert sorted(j for j in recs if j.startswith("152_")) == ["152_0", "152_2", "152_3"]
    assert recs["152_0"][0].started is None  # Start printed as "None"


def test_node_fail_and_timeout():
    recs = by_id(records("sacct_node_fail.txt"))
    assert [r.state for r in recs["137_0"]] == ["NODE_FAIL", "PENDING"]  # requeued by Slurm
    assert [r.state for r in recs["138_0"]] == ["NODE_FAIL"]  # --no-requeue: final
    done = by_id(records("sacct_node_fail_requeued_done.txt"))
    assert [r.state for r in done["137_1"]] == ["NODE_FAIL", "COMPLETED"]
    timeout = by_id(records("sacct_timeout_vanished.txt"))
    assert timeout["141_0"][0].state == "TIMEOUT" and timeout["141_0"][0].elapsed_s == 76
    assert "141_8" not in timeout and "141_9" not in timeout  # cancelled while pending: no row ever


def test_plain_job_and_garbage_lines():
    text = ("12452|12452|RUNNING|2026-11-22T07:16:54|2026-11-22T07:16:55|Unknown|3|0:0|node1\n"
            "sacct: error: something odd\n\n")
    (rec,) = parse_sacct(text)
    assert (rec.job_id, rec.array_job, rec.task, rec.state) == ("12452", None, None, "RUNNING")


# --------------------------------------------------------------------------- Slurm 24.11

V24 = "slurm-24.11/"


def test_24_11_collapsed_range_still_holds_a_task_that_has_started():
    recs = by_id(records(V24 + "sacct_pending_range.txt"))
    assert sorted(recs, key=lambda j: int(j.split("_")[1])) == [f"558_{t}" for t in range(12)]
    # the collapsed row lags (as on 22.05): task 3 is both running and still in the pending range
    assert [(r.state, r.collapsed) for r in recs["558_3"]] == [("RUNNING", False), ("PENDING", True)]
    failed = recs["558_1"][0]
    assert (failed.state, failed.exit_code, failed.elapsed_s) == ("FAILED", "3:0", 1)
    assert failed.completed == "2026-12-02T05:47:13Z" and failed.nodes == "node1"
    assert recs["558_7"][0].started is None and recs["558_7"][0].submitted == "2026-12-02T05:47:12Z"


def test_24_11_requeue_and_a_users_cancel():
    recs = by_id(records(V24 + "sacct_requeue_cancel.txt"))
    assert [(r.state, r.reason) for r in recs["558_3"]] == [("CANCELLED", "by 1000")]  # the user's uid
    first, second = recs["558_2"]
    assert (first.state, second.state, second.raw_id) == ("REQUEUED", "PENDING", "561")
    assert second.submitted == first.completed == "2026-12-02T05:47:14Z"
    done = by_id(records(V24 + "sacct_requeue_done.txt"))
    assert [r.state for r in done["558_2"]] == ["REQUEUED", "COMPLETED"]
    assert all(r.state == "COMPLETED" for t in (0, *range(4, 12)) for r in done[f"558_{t}"])


def test_24_11_timeout_node_fail_and_steps():
    timeout = by_id(records(V24 + "sacct_timeout_vanished.txt"))
    assert sorted(timeout) == ["565_0", "565_1", "565_2", "565_3"]  # 4 and 5, cancelled pending: no row
    assert [(r.state, r.elapsed_s) for r in timeout["565_2"]] == [("TIMEOUT", 60)]
    fail = by_id(records(V24 + "sacct_node_fail.txt"))
    assert [r.state for r in fail["569_0"]] == ["NODE_FAIL", "PENDING"]  # requeued by Slurm
    assert [r.state for r in fail["571_0"]] == ["NODE_FAIL"]  # --no-requeue
    assert fail["571_0"][0].exit_code == "1:0"  # 22.05 says 0:0
    done = by_id(records(V24 + "sacct_node_fail_requeued_done.txt"))
    assert [r.state for r in done["569_1"]] == ["NODE_FAIL", "COMPLETED"]
    steps = by_id(records(V24 + "sacct_steps.txt"))
    assert not any("." in job_id for job_id in steps)
    assert [r.state for r in steps["558_2"]] == ["REQUEUED", "COMPLETED"]


# --------------------------------------------------------------------------- both versions

@pytest.mark.parametrize("version", ["", V24], ids=["22.05", "24.11"])
def test_scontrol_show_config_keeps_every_key_even_after_an_empty_value(version):
    text = (DATA / version / "scontrol_show_config.txt").read_text()
    conf = parse_config(text)
    assert len(conf) == len(re.findall(r"^\w+ *=", text, re.M))
    assert conf["SLURM_VERSION"].startswith("22.05." if not version else "24.11.")
    # the keys autoexp reads; in 22.05 PreemptMode follows the empty "PowerPlugin = "
    assert (conf["PreemptMode"], conf["JobRequeue"], conf["MaxArraySize"]) == ("OFF", "1", "100001")
    assert conf["PowerPlugin" if not version else "PriorityFlags"] == ""
    assert conf["MinJobAge"] == "600 sec" and conf["AuthInfo"] == "cred_expire=10"


@pytest.mark.parametrize("version", ["", V24], ids=["22.05", "24.11"])
def test_squeue_end_time(version):
    rows = [line.split("|") for line in (DATA / version / "squeue_end_time.txt").read_text().splitlines()]
    ends = {job_id: parse_end_time(end) for job_id, _, _, end in rows}
    pending = [job_id for job_id, state, _, _ in rows if state == "PENDING"]
    assert pending and all(ends[job_id] is None for job_id in pending)  # N/A
    running = [ends[job_id] for job_id, state, limit, _ in rows if state == "RUNNING" and limit == "1:00"]
    assert len(running) == 2 and all(end.tzinfo == dt.timezone.utc for end in running)
    # no --time under MaxTime=INFINITE: both versions give a limit of 365 days, not NONE
    (unlimited,) = [ends[job_id] for job_id, _, limit, _ in rows if limit == "365-00:00:00"]
    assert unlimited.year == 2027
    assert parse_end_time("") is None and parse_end_time("NONE\n") is None
