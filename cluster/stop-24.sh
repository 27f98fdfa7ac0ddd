#!/usr/bin/env bash
# Stop the Slurm 24.11 cluster of setup-24.sh (its stop.sh, run inside the root).
#
# Usage: stop-24.sh [--all] [--quiet] [--unmount]
#   --all      also stop its MariaDB and munged
#   --unmount  --all, then unmount /proc, /sys and /dev from the root
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # read by lib.sh
LOG_TAG=cluster-24
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"
# shellcheck source=env-24.sh
source "$SCRIPT_DIR/env-24.sh"

args=() unmount=0
for a in "$@"; do
    case $a in
        --unmount) unmount=1; args+=(--all) ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) args+=("$a") ;;
    esac
done
[[ $EUID -eq 0 ]] || die "must be run as root"
[[ -x $ROOT24$SCRIPTS24/stop.sh ]] || die "no cluster in $ROOT24 (run setup-24.sh)"
in_root bash "$SCRIPTS24/stop.sh" "${args[@]}"
if ((unmount)); then
    for dir in /dev/shm /dev/pts /dev /sys /proc; do
        if mountpoint -q "$ROOT24$dir"; then
            umount "$ROOT24$dir" || die "cannot unmount $ROOT24$dir (still in use: fuser -vm $ROOT24$dir)"
            say "unmounted $ROOT24$dir"
        fi
    done
fi
