#!/usr/bin/env bash
# Capture real Slurm outputs for the parser tests, on the cluster at hand, into OUTDIR (see
# README.md here for what each file shows). Run it as the unprivileged test user, about 2 minutes:
#   runuser -u autoexp-test -- bash tests/data/capture.sh OUTDIR [--node-fail]
# --node-fail also sets node2 DOWN for a moment (through `sudo -n /usr/bin/scontrol`, the rule
# tests/run.sh installs): only on a cluster nobody else is using.
set -euo pipefail
out=$(realpath "$1")
node_fail=${2:-}
work=$(mktemp -d)
trap 'scancel "${jobs[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
jobs=()
since=$(date -u +%Y-%m-%dT%H:%M:%S)

# exactly what autoexp.slurm.SlurmScheduler.query runs
sacct_rows() {  # sacct_rows JOBID...
    TZ=UTC SLURM_TIME_FORMAT=%Y-%m-%dT%H:%M:%S sacct --noheader --parsable2 --duplicates "${opts[@]}" \
        --format=JobID,JobIDRaw,State,Submit,Start,End,ElapsedRaw,ExitCode,NodeList \
        --jobs="$(IFS=,; echo "$*")" --starttime="$since"
}
has_rows() { (( $(sacct_rows "${@:2}" | wc -l) >= $1 )); }  # has_rows N JOBID...
sacct_to() {  # sacct_to FILE MIN_ROWS JOBID...: once sacct (a few seconds behind) has MIN_ROWS rows
    local file=$1 min=$2; shift 2
    wait_until 30 has_rows "$min" "$@"
    sacct_rows "$@" >"$out/$file"
    echo "wrote $file"
}
opts=(--allocations)
submit() { local id; id=$(sbatch --parsable "$@"); jobs+=("$id"); echo "$id"; }
running() { (( $(squeue --noheader --states=RUNNING --format=%i --jobs="$2" | wc -l) >= $1 )); }  # running N JOBS
task_running() { squeue --noheader --states=RUNNING --format=%i --jobs="${1%_*}" | grep -qx "$1"; }
ended() { ! squeue --noheader --states=RUNNING,PENDING,REQUEUED --format=%i --jobs="$1" | grep -q .; }
wait_until() {  # wait_until SECONDS CMD...
    local end=$(( $(date +%s) + $1 )); shift
    until "$@"; do (( $(date +%s) < end )) || { echo "timed out: $*" >&2; exit 1; }; sleep 0.5; done
}

cat >task.sh <<'TASK'
#!/bin/bash
[ "$SLURM_ARRAY_TASK_ID" = 1 ] && exit 3
sleep "${NAP:-25}"
TASK

# 1. pending range, then requeue + cancel, then the requeued task running
# (arrays a, b and job c on node1: the node failure of step 4 is on node2)
a=$(submit --array=0-11%3 --nodelist=node1 --time=00:05:00 task.sh)
wait_until 60 running 2 "$a"
sleep 1
sacct_to sacct_pending_range.txt 3 "$a"
wait_until 60 task_running "${a}_2"
scontrol requeue "${a}_2"
scancel "${a}_3"
sleep 2
sacct_to sacct_requeue_cancel.txt 5 "$a"

# 2. pending tasks cancelled, then a time limit
b=$(submit --array=0-5%2 --nodelist=node1 --time=00:01:00 --wrap 'sleep 300')
wait_until 60 running 2 "$b"
scancel "${b}_4" "${b}_5"
sleep 2
sacct_to sacct_range_overlap.txt 3 "$b"

# 3. squeue: the end time autoexp reads (TZ=UTC, SLURM_TIME_FORMAT) with and without a time limit
c=$(submit --nodelist=node1 --wrap 'sleep 300')
wait_until 60 running 1 "$c"
TZ=UTC SLURM_TIME_FORMAT=%Y-%m-%dT%H:%M:%S squeue --noheader --jobs="$b,$c" --format='%i|%T|%l|%e' >"$out/squeue_end_time.txt"
squeue --jobs="$a,$b,$c" >"$out/squeue_default.txt"
echo "wrote squeue_end_time.txt squeue_default.txt"
scontrol show config >"$out/scontrol_show_config.txt"
echo "wrote scontrol_show_config.txt"
scancel "$c"

# 4. node failure (optional): a requeueable array and a --no-requeue one on node2
if [ "$node_fail" = --node-fail ]; then
    n1=$(submit --array=0-1 --nodelist=node2 --time=00:05:00 --wrap 'sleep 20')
    n2=$(submit --array=0-1 --nodelist=node2 --no-requeue --time=00:05:00 --wrap 'sleep 20')
    wait_until 60 running 4 "$n1,$n2"
    sudo -n /usr/bin/scontrol update nodename=node2 state=down reason=capture
    sleep 3
    sudo -n /usr/bin/scontrol update nodename=node2 state=resume
    sleep 6
    sacct_to sacct_node_fail.txt 6 "$n1" "$n2"
fi

wait_until 200 ended "$b"
sacct_to sacct_timeout_vanished.txt 4 "$b"
wait_until 200 ended "$a"
sacct_to sacct_requeue_done.txt 12 "$a"
if [ "$node_fail" = --node-fail ]; then
    wait_until 200 ended "$n1"
    sacct_to sacct_node_fail_requeued_done.txt 6 "$n1" "$n2"
fi
opts=()  # the steps too (.batch, .extern)
sacct_to sacct_steps.txt 16 "$a" "$b"
