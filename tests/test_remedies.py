"""What a retry rule gives the next attempt (sidecar/remedies.py), without a cluster: the failure
class (OUT_OF_MEMORY from a FAILED attempt's log), memory and time scaled and carried on, time
capped at the partition's MaxTime (parsed from captured ``scontrol show partition`` output),
parameters from templates, the failed node excluded."""

from __future__ import annotations

from autoexp import model
from autoexp.scheduler import Scheduler
from autoexp.sidecar import remedies
from autoexp.slurm import partition_max_time

PARTITIONS = """PartitionName=debug
   AllocNodes=ALL Default=YES QoS=N/A
   MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED

PartitionName=small
   AllocNodes=ALL Default=NO QoS=N/A
   MaxNodes=UNLIMITED MaxTime=02:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED
"""


class Capped(Scheduler):
    """A partition whose MaxTime is ``cap`` seconds; nothing else is asked."""

    name = "slurm"

    def __init__(self, exp_dir, cap=None):
        super().__init__(exp_dir)
        self.cap = cap

    def submit(self, sub):
        raise AssertionError("nothing is submitted")

    def query(self, job_ids, since):
        raise AssertionError("nothing is queried")

    def cancel(self, job_ids):
        raise AssertionError("nothing is cancelled")

    def max_array_size(self):
        return 1001

    def max_time(self, partition):
        return self.cap


def run_with(tmp_path, state="FAILED", log_text="", given=None, nodes="node2"):
    log = tmp_path / "slurm-1_0.out"
    log.write_text(log_text)
    run = model.new_run(0, {"batch_size": 64, "lr": 0.1})
    attempt = model.new_attempt(1, "1_0", None, str(log), state=state, given=given)
    attempt["nodes"] = nodes
    model.add_attempt(run, attempt)
    return run


def test_partition_max_time_from_scontrol_output():
    assert partition_max_time(PARTITIONS, "small") == 7200
    assert partition_max_time(PARTITIONS, "debug") is None  # UNLIMITED
    assert partition_max_time(PARTITIONS, None) is None  # the default one, debug
    assert partition_max_time(PARTITIONS, "nosuch") is None


def test_out_of_memory_is_read_from_the_log_of_a_failed_attempt(tmp_path):
    for message in ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
                    "RuntimeError: HIP out of memory. Tried to allocate", "hipErrorOutOfMemory",
                    "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory"):
        run = run_with(tmp_path, log_text=f"step 1\n{message}\n")
        assert remedies.failure_class(run["attempts"][-1]) == "OUT_OF_MEMORY", message
        assert run["attempts"][-1]["failure"] == "OUT_OF_MEMORY"
    assert remedies.failure_class(run_with(tmp_path, log_text="Traceback: KeyError\n")["attempts"][-1]) == "FAILED"
    assert remedies.failure_class(run_with(tmp_path, state="TIMEOUT")["attempts"][-1]) == "TIMEOUT"
    # only a FAILED attempt's log is looked at; a TIMEOUT stays a TIMEOUT whatever its log says
    assert remedies.failure_class(run_with(tmp_path, "TIMEOUT", "CUDA out of memory")["attempts"][-1]) == "TIMEOUT"


def test_rules_scale_carry_on_and_cap(tmp_path):
    base = {"mem": "100M", "time": "01:00:00", "partition": "small"}
    oom = {"mem": 2, "params": {"batch_size": "{{ batch_size // 2 }}"}}
    given = remedies.next_given(tmp_path, run_with(tmp_path), "OUT_OF_MEMORY", oom, base, Capped(tmp_path))
    assert given["mem"] == "200M" and given["params"] == {"batch_size": 32}
    assert given["why"] == "OUT_OF_MEMORY: mem 100M x 2; batch_size 64 -> 32"
    # the next failure doubles again, from what the last attempt was given
    again = remedies.next_given(tmp_path, run_with(tmp_path, given=given), "OUT_OF_MEMORY", oom, base,
                                Capped(tmp_path))
    assert again["mem"] == "400M" and again["params"] == {"batch_size": 16}
    # a timeout doubles the time up to MaxTime, and keeps the memory an OOM rule gave
    timeout = remedies.next_given(tmp_path, run_with(tmp_path, "TIMEOUT", given=given), "TIMEOUT", {"time": 3},
                                  base, Capped(tmp_path, cap=7200))
    assert timeout["time"] == "0-02:00:00" and timeout["mem"] == "200M"
    assert "MaxTime" in timeout["why"]
    unlimited = remedies.next_given(tmp_path, run_with(tmp_path, "TIMEOUT"), "TIMEOUT", {"time": 2}, base,
                                    Capped(tmp_path))
    assert unlimited["time"] == "0-02:00:00"
    node = remedies.next_given(tmp_path, run_with(tmp_path, "NODE_FAIL", given={"exclude": "node1"}), "NODE_FAIL",
                               {"exclude_node": True}, base, Capped(tmp_path))
    assert node["exclude"] == "node1,node2"
    assert remedies.next_given(tmp_path, run_with(tmp_path), "FAILED", {}, base, Capped(tmp_path)) == {}
    assert remedies.next_given(tmp_path, run_with(tmp_path, given={"mem": "8G"}), "FAILED", {}, base,
                               Capped(tmp_path))["mem"] == "8G"  # carried on unchanged
    assert remedies.next_given(tmp_path, run_with(tmp_path), "OUT_OF_MEMORY", {"mem": 1.5}, {"mem": "1G"},
                               Capped(tmp_path))["mem"] == "1536M"
