# shellcheck shell=bash
# Shell helpers shared by the cluster scripts (sourced, not run). Set LOG_TAG before sourcing to
# name the script in messages; T0 (the start time) is set here.
T0=$(date +%s)
LOG_TAG=${LOG_TAG:-cluster}

say()  { printf '[%s %3ss] %s\n' "$LOG_TAG" "$(( $(date +%s) - T0 ))" "$*"; }
die()  { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }
show_log() {  # show_log FILE...: print the tail of log files to stderr
    local f
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf -- '----- tail of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2
        fi
    done
}
fail() {  # fail MESSAGE LOGFILE...
    local msg=$1; shift
    show_log "$@"
    die "$msg"
}
# wait_for SECONDS CMD...: poll CMD (quietly) every 0.5s until it succeeds.
wait_for() {
    local secs=$1; shift
    local end=$(( $(date +%s) + secs ))
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        (( $(date +%s) >= end )) && return 1
        sleep 0.5
    done
}
# Is the process recorded in PIDFILE alive and called COMM?
pid_alive() {
    local pidfile=$1 comm=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$comm" ]] || return 1
    # a zombie (not yet reaped, e.g. when PID 1 is no real init) is dead
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}
# Start a daemon fully detached from this script (no inherited stdio, own
# session) so callers capturing our output never hang on it.
detach() {  # detach OUTFILE CMD...
    local out=$1; shift
    setsid "$@" </dev/null >>"$out" 2>&1 &
    disown "$!" 2>/dev/null || true
}
# install_packages PKG...: apt-get install those not installed yet, without letting their
# maintainer scripts start services.
install_packages() {
    local p missing=() policy_created=0 aptlog=/tmp/autoexp-cluster-apt.log
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        say "packages already installed"
        return 0
    fi
    say "installing packages: ${missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$aptlog" 2>&1; then
        ((policy_created)) && rm -f /usr/sbin/policy-rc.d
        fail "apt-get install failed" "$aptlog"
    fi
    ((policy_created)) && rm -f /usr/sbin/policy-rc.d
    say "packages installed"
}
