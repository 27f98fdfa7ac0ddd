# shellcheck shell=bash disable=SC2034  # (the variables are for the scripts that source this)
# Where the Slurm 24.11 test cluster lives and how to run a command in it (sourced by setup-24.sh,
# stop-24.sh, in-24.sh and tests/run-24.sh). It is a Debian 13 (trixie) root, in which
# cluster/setup.sh runs with these settings: nothing may clash with the 22.05 cluster that
# cluster/setup.sh runs on this host at the same time (ports, cluster name; munge, MariaDB and
# the Slurm state live in the root's own /run, /var and /etc).
ROOT24=${AUTOEXP_ROOT24:-/var/lib/autoexp/trixie}
MIRROR24=${AUTOEXP_MIRROR24:-http://deb.debian.org/debian}
SCRIPTS24=/opt/autoexp-cluster  # where the cluster scripts are copied inside the root
CLUSTER24_ENV=(
    AUTOEXP_CLUSTER_NAME=autoexp-24
    AUTOEXP_SLURMCTLD_PORT=6917
    AUTOEXP_SLURMDBD_PORT=6919
    "AUTOEXP_SLURMD_PORTS=17101 17102"
    AUTOEXP_MYSQL_PORT=3316
    "AUTOEXP_EXTRA_PACKAGES=python3 python3-venv sudo hostname"
)

# in_root CMD...: run CMD as root inside the root, with a clean environment plus the settings
# above and this host's proxy and pip settings.
in_root() {
    local net=()
    # (not PIP_FIND_LINKS: a directory of this host means nothing inside)
    mapfile -t net < <(env | grep -E '^(PIP_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)=' | grep -v '^PIP_FIND_LINKS=' || true)
    chroot "$ROOT24" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "${net[@]}" "${CLUSTER24_ENV[@]}" "$@"
}
