"""The sacct parser on outputs captured from the real cluster (tests/data/README.md says how)."""

from __future__ import annotations

from pathlib import Path

from autoexp.slurm import expand_range, parse_sacct

DATA = Path(__file__).parent / "data"


def records(name: str):
    return parse_sacct((DATA / name).read_text())


def by_id(recs):
    found = {}
    for rec in recs:
        found.setdefault(rec.job_id, []).append(rec)
    return found


def test_expand_range_drops_the_throttle():
    assert expand_range("3-11%3") == list(range(3, 12))
    assert expand_range("0,2-3") == [0, 2, 3]
    assert expand_range("7") == [7]


def test_collapsed_pending_range_becomes_one_record_per_task():
    recs = by_id(records("sacct_pending_range.txt"))
    assert sorted(recs, key=lambda j: int(j.split("_")[1])) == [f"74_{t}" for t in range(12)]
    pending = recs["74_5"][0]
    assert (pending.state, pending.collapsed, pending.array_job, pending.task) == ("PENDING", True, "74", 5)
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
