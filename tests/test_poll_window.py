"""What a poll asks the scheduler, and when it may skip the state: real ``sacct`` outputs
(tests/data) given as the answers of narrow windows, without a cluster (tests/test_sidecar_window.py
runs the same on the cluster)."""

from __future__ import annotations

import datetime as dt
import time

from autoexp import clock, model, statefile
from autoexp.sidecar import quiet, records
from autoexp.sidecar.work import Watch
from autoexp.slurm import parse_sacct
from test_sidecar_apply import DATA, Requeues, apply, changes, experiment


def lines(name: str, *keep: int) -> str:
    rows = (DATA / name).read_text().splitlines()
    return "\n".join(rows[k] for k in keep)


def test_the_query_asks_only_for_arrays_with_a_task_not_seen_ended(tmp_path):
    st = experiment(tmp_path, {"74": 12, "141": 10})
    ids, since = records.window(st, time.time())
    assert ids == ["74", "141"] and since == records.since(st)  # never asked yet: from the beginning
    apply(tmp_path, st, "sacct_requeue_running.txt")
    asked = model.query_of(st)["asked"]
    ids, since = records.window(st, time.time())
    assert ids == ["74", "141"]  # 74_2 still runs; 141 was never listed: watched
    assert since == dt.datetime.fromtimestamp(asked - records.WINDOW_MARGIN, dt.timezone.utc)
    apply(tmp_path, st, "sacct_steps_cancelled_ranges.txt")
    assert all(phase_ended(a) for r in st["runs"].values() if r["attempts"][0]["job_id"].startswith("74_")
               for a in r["attempts"])
    assert "74" in records.window(st, time.time())[0]  # just ended: accounting may still correct an exit code
    assert "74" not in records.window(st, time.time() + records.WINDOW_MARGIN + 1)[0]  # then never asked again


def phase_ended(attempt) -> bool:
    return bool(attempt.get("ended_seen")) and attempt["state"] != "RUNNING"


def test_a_requeued_tasks_latest_allocation_alone_updates_its_latest_attempt(tmp_path):
    st = experiment(tmp_path, {"74": 12})
    apply(tmp_path, st, "sacct_pending_range.txt")
    apply(tmp_path, st, "sacct_requeue_cancel.txt")
    run = st["runs"]["r74_2"]
    assert [a["state"] for a in run["attempts"]] == ["REQUEUED", "PENDING"]
    # a narrow window leaves out the first allocation (ended before it): only the second is listed
    apply(tmp_path, st, lines("sacct_requeue_running.txt", -1))
    assert [a["state"] for a in run["attempts"]] == ["REQUEUED", "RUNNING"]
    assert run["attempts"][0]["completed"] == "2026-11-22T07:07:21Z"  # the first one untouched
    assert changes(st, "r74_2")[-1] == ("PENDING", "RUNNING")


def test_slurms_requeue_seen_only_through_a_narrow_window_is_a_new_attempt(tmp_path):
    st = experiment(tmp_path, {"137": 2})
    sched = Requeues(tmp_path, requeueing={"137.sbatch"})
    apply(tmp_path, st, lines("sacct_node_fail.txt", 0, 1), sched=sched)
    assert "137" in records.window(st, time.time())[0]  # NODE_FAIL: Slurm may bring it back
    apply(tmp_path, st, lines("sacct_node_fail.txt", 4, 5), sched=sched)  # the new allocations only
    assert [a["state"] for a in st["runs"]["r137_0"]["attempts"]] == ["NODE_FAIL", "PENDING"]
    assert changes(st, "r137_0")[-1] == ("NODE_FAIL", "PENDING")
    apply(tmp_path, st, lines("sacct_node_fail_requeued_done.txt", 4, 5), sched=sched)
    assert [a["state"] for a in st["runs"]["r137_1"]["attempts"]] == ["NODE_FAIL", "COMPLETED"]
    apply(tmp_path, st, lines("sacct_node_fail_requeued_done.txt", 4), sched=sched)
    later = time.time() + records.WINDOW_MARGIN + 1
    assert records.window(st, later)[0] == []  # both completed: an earlier NODE_FAIL is not watched


def test_a_task_a_narrow_answer_leaves_out_widens_the_next_window_and_is_never_cancelled(tmp_path):
    st = experiment(tmp_path, {"74": 12})
    apply(tmp_path, st, "sacct_requeue_cancel.txt")
    assert st["runs"]["r74_4"]["state"] == "RUNNING"
    # accounting was late: 74_4 ended before the next window began, which then lists 74_2 only
    narrow = dt.datetime(2026, 11, 22, 7, 30, tzinfo=dt.timezone.utc)
    for late in (0, records.VANISH_GRACE + 1):
        work = apply(tmp_path, st, lines("sacct_requeue_running.txt", -1), now=time.time() + late, window=narrow)
        assert st["runs"]["r74_4"]["state"] == "RUNNING"  # not taken for cancelled while pending
    assert st["runs"]["r74_4"]["attempts"][0]["missing_since"]
    ids, since = records.window(st, time.time())
    submitted = clock.parse_time(st["runs"]["r74_4"]["attempts"][0]["submitted"])
    assert "74" in ids and since == submitted - dt.timedelta(seconds=records.WINDOW_MARGIN)
    assert quiet.due(st, work.settings, time.time()) <= time.time()  # the next poll is a full one
    apply(tmp_path, st, "sacct_requeue_running.txt", window=since)  # the wide answer: it completed
    assert st["runs"]["r74_4"]["state"] == "COMPLETED"
    assert changes(st, "r74_4") == [("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]
    assert "missing_since" not in st["runs"]["r74_4"]["attempts"][0]


def test_an_answer_that_differs_only_in_elapsed_times_is_unchanged(tmp_path):
    first = parse_sacct((DATA / "sacct_requeue_cancel.txt").read_text())
    later = parse_sacct((DATA / "sacct_requeue_cancel.txt").read_text().replace("|3|0:0|node2", "|9|0:0|node2"))
    assert [r.elapsed_s for r in later if r.state == "RUNNING"] == [9, 9, 9]
    assert quiet.fingerprint(first) == quiet.fingerprint(later)
    assert quiet.fingerprint(first) != quiet.fingerprint(parse_sacct((DATA / "sacct_requeue_running.txt").read_text()))
    # a window that moved past an end leaves that task out on both sides: not news
    moved = dt.datetime(2026, 11, 22, 7, 7, 22, tzinfo=dt.timezone.utc)
    assert [r.job_id for r in quiet.within(first, ["74"], moved)] == ["74_4", "74_5", "74_6", "74_[4-11%3]", "74_2"]
    assert quiet.within(first, ["75"], moved) == []


def test_a_collapsed_row_brings_news_only_of_the_tasks_that_did_not_wait_so_before():
    """100,000 waiting tasks are one row, shrinking as tasks start: the tasks still in it are not
    news (a poll applies only what changed), a task new to it is, and so is every task of a row
    whose state changed (the whole array cancelled while waiting)."""
    text = (DATA / "sacct_pending_range.txt").read_text()
    applied = quiet.fingerprint(parse_sacct(text))
    assert records.Answer(parse_sacct(text), applied).look("74_7") == (True, False)
    shrunk = records.Answer(parse_sacct(text.replace("74_[3-11%3]", "74_[5-11%3]")), applied)
    assert shrunk.look("74_7") == (True, False) and shrunk.look("74_3") == (False, False)
    grown = records.Answer(parse_sacct(text.replace("74_[3-11%3]", "74_[3-13%3]")), applied)
    assert grown.look("74_12") == (True, True) and grown.look("74_11") == (True, False)
    assert grown.look("74_1") == (True, False)  # its own row, as before
    cancelled = records.Answer(parse_sacct(text.replace("|PENDING|", "|CANCELLED by 0|")), applied)
    assert cancelled.look("74_7") == (True, True)
    assert records.Answer(parse_sacct(text), None).look("74_7") == (True, True)  # nothing applied yet
    assert [r.state for r in cancelled.allocations("74_7")] == ["CANCELLED"]


def test_a_quiet_poll_needs_the_state_file_as_written_and_no_log_grown(tmp_path):
    st = experiment(tmp_path, {"74": 12})
    statefile.write(tmp_path, st)
    answer = parse_sacct((DATA / "sacct_pending_range.txt").read_text())
    log = tmp_path / "74_0.out"
    log.write_text("step 1\n")
    watch = Watch(["74"], records.since(st), stamp=statefile.stamp(tmp_path), answer=quiet.fingerprint(answer),
                  logs={str(log): log.stat().st_size}, due=time.time() + 60)
    assert quiet.unchanged(watch, tmp_path, answer, time.time())
    assert not quiet.unchanged(watch, tmp_path, answer, time.time() + 61)  # something is due
    assert not quiet.unchanged(watch, tmp_path, answer[:-1], time.time())  # a different answer
    with log.open("a") as fh:
        fh.write("step 2\n")
    assert not quiet.unchanged(watch, tmp_path, answer, time.time())  # a log grew
    watch.logs = {str(log): log.stat().st_size}
    assert quiet.unchanged(watch, tmp_path, answer, time.time())
    statefile.write(tmp_path, st)  # someone else wrote the state (a retry, status --refresh)
    assert not quiet.unchanged(watch, tmp_path, answer, time.time())


def test_the_heartbeat_file_renews_the_lease_without_rewriting_the_state(tmp_path):
    st = experiment(tmp_path, {"74": 1})
    st["sidecar"] = model.held_lease({}, "99", "node1", 1, 2.0, "loop")
    st["sidecar"]["heartbeat"] = "2026-11-22T07:00:00Z"
    statefile.write(tmp_path, st)
    before = statefile.stamp(tmp_path)
    statefile.beat(tmp_path, "99", "2026-11-22T07:05:00Z")
    assert statefile.stamp(tmp_path) == before
    assert statefile.read(tmp_path)["sidecar"]["heartbeat"] == "2026-11-22T07:05:00Z"
    statefile.beat(tmp_path, "98", "2026-11-22T07:09:00Z")  # not the holder's (an old one's): ignored
    assert statefile.read(tmp_path)["sidecar"]["heartbeat"] == "2026-11-22T07:00:00Z"
