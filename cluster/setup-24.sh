#!/usr/bin/env bash
# Install and start the second test cluster, Slurm 24.11 from Debian 13 (trixie), beside the
# 22.05 one: a trixie root made with debootstrap (cluster/env-24.sh says where), /proc, /sys and
# /dev mounted into it, and cluster/setup.sh run inside it with its own ports and cluster name.
# Run as root. Idempotent like setup.sh: about 0.3 s when everything is up, 55 s cold.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # read by lib.sh
LOG_TAG=cluster-24
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"
# shellcheck source=env-24.sh
source "$SCRIPT_DIR/env-24.sh"

[[ $EUID -eq 0 ]] || die "must be run as root"

# 1. the root
if [[ ! -x $ROOT24/usr/bin/apt-get ]]; then
    command -v debootstrap >/dev/null || install_packages debootstrap
    partial=$ROOT24.partial
    if [[ -e $partial ]]; then  # an interrupted debootstrap; it may have left proc/sys mounted
        umount -R "$partial/proc" "$partial/sys" 2>/dev/null || true
        rm -rf --one-file-system "$partial"
    fi
    say "debootstrap trixie into $ROOT24 (from $MIRROR24)"
    mkdir -p "$(dirname "$ROOT24")"
    debootstrap --variant=minbase trixie "$partial" "$MIRROR24" >/tmp/autoexp-debootstrap.log 2>&1 \
        || fail "debootstrap failed" /tmp/autoexp-debootstrap.log
    mv "$partial" "$ROOT24"
fi
[[ -s $ROOT24/etc/hosts ]] || printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$ROOT24/etc/hosts"
share_network() {  # apt-get and pip inside reach the network as this host does: same resolver, trusted CAs, pip.conf
    local f
    for f in /etc/resolv.conf /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
        if [[ -r $f ]]; then install -D -m 0644 "$f" "$ROOT24$f"; fi
    done
}
share_network

# 2. mounts (each only when not mounted yet)
mount_in() {  # mount_in DIR MOUNT-ARGS...: mount onto $ROOT24/DIR
    local dir=$ROOT24$1; shift
    mountpoint -q "$dir" || { mkdir -p "$dir"; mount "$@" "$dir"; say "mounted $dir"; }
}
mount_in /proc -t proc proc
mount_in /sys --bind /sys
mount_in /dev --bind /dev
mount_in /dev/pts --bind /dev/pts
mount_in /dev/shm --bind /dev/shm

# 3. the cluster: setup.sh inside, with env-24.sh's settings
install -d "$ROOT24$SCRIPTS24"
install -m 0755 "$SCRIPT_DIR/setup.sh" "$SCRIPT_DIR/stop.sh" "$SCRIPT_DIR/lib.sh" "$ROOT24$SCRIPTS24/"
in_root bash "$SCRIPTS24/setup.sh" || die "setup.sh inside $ROOT24 failed (logs: $ROOT24/var/log/slurm)"
share_network  # again: installing ca-certificates inside rebuilt the CA bundle without this host's own CAs
say "OK $(in_root sinfo --version) in $ROOT24"
