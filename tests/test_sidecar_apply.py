"""How a poll turns real accounting records (tests/data) into runs, attempts and STATE_CHANGEs.

These run without a cluster: the records are real ``sacct`` outputs captured on the test cluster;
the scheduler stand-in only answers whether Slurm would requeue a job (the cluster tests cover the
real thing end to end).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from types import SimpleNamespace

from autoexp import clock, liveness, model, sidecar, statusview
from autoexp.scheduler import Scheduler
from autoexp.sidecar import policy, records
from autoexp.slurm import parse_sacct

DATA = Path(__file__).parent / "data"


class Requeues(Scheduler):
    """Submits nothing; Slurm requeues jobs of the scripts named in ``requeueing`` after NODE_FAIL."""

    name = "slurm"

    def __init__(self, exp_dir, requeueing=()):
        super().__init__(exp_dir)
        self.requeueing = set(requeueing)

    def submit(self, sub):
        raise AssertionError("nothing is submitted in these tests")

    def query(self, job_ids, since):
        raise AssertionError("records are given")

    def cancel(self, job_ids):
        self.cancelled = list(job_ids)

    def max_array_size(self):
        return 1001

    def will_requeue(self, state, script):
        return state == "NODE_FAIL" and Path(script).name in self.requeueing


def experiment(tmp_path, arrays: dict[str, int]) -> dict:
    """A state whose runs were submitted as the given arrays (job id -> task count), all PENDING."""
    runs, k = [], 0
    for job_id, count in arrays.items():
        for task in range(count):
            runs.append(SimpleNamespace(name=f"r{job_id}_{task}", index=k, params={}))
            k += 1
    st = model.new_experiment("t", runs, tmp_path, "slurm")
    st["created"] = "2026-11-22T07:00:00Z"
    k = 0
    for job_id, count in arrays.items():
        st["arrays"].append(model.new_array(job_id, f"0-{count - 1}", 1, f"{job_id}.sbatch", k, st["created"],
                                            "launch"))
        for task in range(count):
            model.add_attempt(st["runs"][f"r{job_id}_{task}"], model.new_attempt(
                1, f"{job_id}_{task}", st["created"], str(tmp_path / f"{job_id}_{task}.out")))
        k += count
    return st


def apply(tmp_path, st, name_or_text, sched=None, now=None, settings=None, window=None):
    text = (DATA / name_or_text).read_text() if name_or_text.endswith(".txt") else name_or_text
    work = sidecar.Poll(tmp_path, st, sched or Requeues(tmp_path), settings or sidecar.Settings(interval=1),
                         sidecar.PollResult())
    if now is not None:
        work.now, work.when = now, clock.iso(now)
    work.apply(parse_sacct(text), time.time(), window)
    return work


def changes(st, run):
    return [(e["details"]["Previous"], e["details"]["Current"]) for e in st["history"]
            if e["kind"] == "STATE_CHANGE" and e["subject"] == run]


def test_pending_range_running_and_failed(tmp_path):
    st = experiment(tmp_path, {"74": 12})
    apply(tmp_path, st, "sacct_pending_range.txt")
    runs = st["runs"]
    assert runs["r74_0"]["state"] == "RUNNING" and runs["r74_0"]["started"] == "2026-11-22T07:07:16Z"
    assert runs["r74_1"]["state"] == "FAILED" and runs["r74_1"]["exit_code"] == "3:0"
    assert changes(st, "r74_1") == [("PENDING", "RUNNING"), ("RUNNING", "FAILED")]  # nothing skipped
    assert all(runs[f"r74_{t}"]["state"] == "PENDING" for t in range(3, 12))
    assert changes(st, "r74_5") == []


def test_requeue_is_a_new_attempt_of_the_same_run(tmp_path):
    st = experiment(tmp_path, {"74": 12})
    apply(tmp_path, st, "sacct_pending_range.txt")
    apply(tmp_path, st, "sacct_requeue_cancel.txt")
    run = st["runs"]["r74_2"]
    assert [(a["attempt"], a["job_id"], a["state"]) for a in run["attempts"]] == \
        [(1, "74_2", "REQUEUED"), (2, "74_2", "PENDING")]
    assert run["attempts"][1]["log"] == run["attempts"][0]["log"]  # Slurm appends to the same file
    assert run["state"] == "PENDING"
    assert changes(st, "r74_2") == [("PENDING", "RUNNING"), ("RUNNING", "REQUEUED"), ("REQUEUED", "PENDING")]
    # a collapsed row that lags behind does not pull running tasks back to PENDING
    assert st["runs"]["r74_4"]["state"] == "RUNNING"
    assert st["runs"]["r74_3"]["state"] == "CANCELLED"
    assert st["runs"]["r74_3"]["attempts"][0]["reason"] == "by 0"
    apply(tmp_path, st, "sacct_requeue_running.txt")
    apply(tmp_path, st, "sacct_steps_cancelled_ranges.txt")
    assert [a["state"] for a in run["attempts"]] == ["REQUEUED", "COMPLETED"]
    assert run["state"] == "COMPLETED" and run["elapsed_s"] == 40
    assert len(run["attempts"]) == 2  # applying the same records again adds nothing
    assert changes(st, "r74_2")[-2:] == [("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]


def test_accounting_lagging_behind_our_own_cancel_is_ignored(tmp_path):
    st = experiment(tmp_path, {"74": 12})
    apply(tmp_path, st, "sacct_pending_range.txt")
    attempt = st["runs"]["r74_0"]["attempts"][0]
    attempt.update(state="CANCELLED", completed="2026-11-22T07:07:18Z")
    st["runs"]["r74_0"]["state"] = "CANCELLED"
    apply(tmp_path, st, "sacct_pending_range.txt")  # still says RUNNING
    assert st["runs"]["r74_0"]["state"] == "CANCELLED"
    assert not sidecar.Poll(tmp_path, st, Requeues(tmp_path), sidecar.Settings(), sidecar.PollResult()).settled(attempt)
    apply(tmp_path, st, "sacct_requeue_running.txt")  # the task had finished first: that is the truth
    assert st["runs"]["r74_0"]["state"] == "COMPLETED"


def test_tasks_cancelled_while_pending_vanish_and_are_then_cancelled(tmp_path):
    st = experiment(tmp_path, {"141": 10})
    t0 = time.time()
    apply(tmp_path, st, "sacct_range_overlap.txt", now=t0)
    assert st["runs"]["r141_8"]["state"] == "PENDING"  # not seen yet: maybe just lagging
    apply(tmp_path, st, "sacct_timeout_vanished.txt", now=t0 + records.VANISH_GRACE - 5)
    assert st["runs"]["r141_8"]["state"] == "PENDING"
    work = apply(tmp_path, st, "sacct_timeout_vanished.txt", now=t0 + records.VANISH_GRACE + 1)
    assert st["runs"]["r141_8"]["state"] == st["runs"]["r141_9"]["state"] == "CANCELLED"
    assert st["runs"]["r141_0"]["state"] == "TIMEOUT"
    assert work.over()


def test_node_fail_waits_for_slurms_own_requeue(tmp_path):
    st = experiment(tmp_path, {"137": 2, "138": 2})
    sched = Requeues(tmp_path, requeueing={"137.sbatch"})
    settings = sidecar.Settings(interval=1, retry_max=1, retry_on=frozenset({"NODE_FAIL"}))
    first = "\n".join((DATA / "sacct_node_fail.txt").read_text().splitlines()[:4])  # before the requeue shows
    work = apply(tmp_path, st, first, sched=sched, settings=settings)
    assert not work.settled(st["runs"]["r137_0"]["attempts"][-1])  # Slurm will bring it back
    assert work.settled(st["runs"]["r138_0"]["attempts"][-1])  # --no-requeue: final, autoexp retries
    work = apply(tmp_path, st, "sacct_node_fail.txt", sched=sched, settings=settings)
    assert [a["state"] for a in st["runs"]["r137_0"]["attempts"]] == ["NODE_FAIL", "PENDING"]
    apply(tmp_path, st, "sacct_node_fail_requeued_done.txt", sched=sched, settings=settings)
    assert st["runs"]["r137_1"]["state"] == "COMPLETED" and len(st["runs"]["r137_1"]["attempts"]) == 2
    late = apply(tmp_path, st, first, sched=sched, settings=settings, now=time.time() + policy.REQUEUE_GRACE + 1)
    assert late.settled(st["runs"]["r138_1"]["attempts"][-1])


def test_lease(tmp_path):
    st = experiment(tmp_path, {"74": 1})
    now = time.time()
    st["sidecar"] = {"job_id": "99", "heartbeat": clock.iso(now - 5), "interval": 2, "host": "elsewhere", "pid": 1}
    assert sidecar.alive(st, now=now)
    assert not sidecar.alive(st, now=now + liveness.stale_after(2) + 5)
    st["sidecar"]["stopped"] = clock.iso(now)
    assert not sidecar.alive(st, now=now)
    assert sidecar.holds({"sidecar": {"job_id": "99"}}, "99") and not sidecar.holds(st, "99")


def test_status_and_the_sidecar_agree_on_whether_the_sidecar_is_alive(tmp_path):
    """One liveness rule (liveness.lease_fresh): they used to disagree for intervals under 3.3 s."""
    st = experiment(tmp_path, {"74": 1})
    now = time.time()
    for interval in (1, 2, 60):
        for age in (2, 5, 9, 11, 40, 150, 200):
            st["sidecar"] = {"job_id": "99", "heartbeat": clock.iso(now - age), "interval": interval,
                             "host": "elsewhere", "pid": 1}
            health = statusview.health(st, tmp_path, dt.datetime.fromtimestamp(now, dt.timezone.utc))
            assert (health["sidecar"] == "alive") == sidecar.alive(st, now=now), (interval, age)


def test_slurm_24_11_array_from_pending_range_to_done(tmp_path):
    """The same story on Slurm 24.11's records: the collapsed range still holds a started task, a
    user's cancel is ``by 1000``, and the requeued task ends as attempt 2."""
    st = experiment(tmp_path, {"558": 12})
    for name in ("sacct_pending_range.txt", "sacct_requeue_cancel.txt", "sacct_requeue_done.txt"):
        apply(tmp_path, st, "slurm-24.11/" + name)
        if name == "sacct_pending_range.txt":
            assert st["runs"]["r558_3"]["state"] == "RUNNING"  # not pulled back by the range
    runs = st["runs"]
    assert [(a["attempt"], a["state"]) for a in runs["r558_2"]["attempts"]] == [(1, "REQUEUED"), (2, "COMPLETED")]
    assert runs["r558_3"]["state"] == "CANCELLED" and runs["r558_3"]["attempts"][0]["reason"] == "by 1000"
    assert runs["r558_1"]["state"] == "FAILED" and runs["r558_1"]["exit_code"] == "3:0"
    assert changes(st, "r558_3") == [("PENDING", "RUNNING"), ("RUNNING", "CANCELLED")]
    assert sum(r["state"] == "COMPLETED" for r in runs.values()) == 10
