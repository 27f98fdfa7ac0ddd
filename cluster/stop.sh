#!/usr/bin/env bash
# Stop the Slurm daemons started by cluster/setup.sh (slurmd x N, slurmctld,
# slurmdbd).  MariaDB and munged are left running unless --all is given.
# Running jobs' slurmstepd processes are not touched.
#
# Usage: stop.sh [--all] [--quiet]
set -euo pipefail

RUNDIR=/run/slurm
all=0 quiet=0
for a in "$@"; do
    case $a in
        --all) all=1 ;;
        --quiet|-q) quiet=1 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "stop.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done
[[ $EUID -eq 0 ]] || { echo "stop.sh: must be run as root" >&2; exit 1; }

say() { ((quiet)) || echo "[cluster] $*"; }

# running PID: process exists and is not a zombie
running() {
    [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# stop_group NAME:PIDFILE:COMM...: SIGTERM all of them at once, wait up to
# 15 s for them to exit, then SIGKILL the rest.
stop_group() {
    local spec name pidfile comm pid i alive
    local -a pids=()
    for spec in "$@"; do
        IFS=: read -r name pidfile comm <<<"$spec"
        [[ -r $pidfile ]] || continue
        pid=$(<"$pidfile")
        rm -f "$pidfile"
        [[ $pid =~ ^[0-9]+$ ]] || continue
        [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$comm" ]] || continue
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    done
    for ((i = 0; i < 150; i++)); do
        alive=0
        for pid in "${pids[@]}"; do running "$pid" && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if running "$pid"; then
            say "pid $pid did not exit, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    sleep 0.2
}

shopt -s nullglob
specs=()
for f in "$RUNDIR"/slurmd-*.pid; do
    n=${f##*/slurmd-}; n=${n%.pid}
    specs+=("slurmd $n:$f:slurmd")
done
((${#specs[@]} == 0)) || stop_group "${specs[@]}"
stop_group "slurmctld:$RUNDIR/slurmctld.pid:slurmctld" "slurmdbd:$RUNDIR/slurmdbd.pid:slurmdbd"

if ((all)); then
    if mariadb-admin --protocol=socket ping >/dev/null 2>&1; then
        say "stopping MariaDB"
        mariadb-admin --protocol=socket shutdown || true
    fi
    stop_group "munged:/run/munge/munged.pid:munged"
fi
say "stopped"
