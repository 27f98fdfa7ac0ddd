#!/usr/bin/env bash
# Install and start a single-host Slurm test cluster with slurmdbd accounting
# (Debian's packages: 22.05 on Debian 12 here, 24.11 on Debian 13 in the
# chroot of setup-24.sh; run as root, no systemd needed).
#
# Idempotent: when everything is already up this only checks and exits
# quickly; daemons that are dead (e.g. after a reboot) are restarted; when
# the generated configuration changed, the Slurm daemons are restarted.
#
# Layout: two virtual nodes (node1, node2; 8 CPUs each, overstated on purpose)
# served by two slurmd processes on this host (Debian's slurmd is built with
# multiple-slurmd support), partitions "debug" (default) and "small".
#
# Environment overrides (all optional):
#   AUTOEXP_CLUSTER_NAME   cluster name             (default autoexp-local)
#   AUTOEXP_TEST_USER      unprivileged test user   (default autoexp-test)
#   AUTOEXP_EXTRA_USERS    space separated extra local users to add to sacctmgr
#   AUTOEXP_WAIT           seconds to wait for each daemon (default 60)
#   AUTOEXP_EXTRA_PACKAGES space separated further Debian packages to install
# and, for a second cluster on the same host (setup-24.sh), the ports:
#   AUTOEXP_SLURMCTLD_PORT (6817)  AUTOEXP_SLURMDBD_PORT (6819)
#   AUTOEXP_SLURMD_PORTS ("17001 17002")  AUTOEXP_MYSQL_PORT (3306)
set -euo pipefail

CLUSTER_NAME=${AUTOEXP_CLUSTER_NAME:-autoexp-local}
TEST_USER=${AUTOEXP_TEST_USER:-autoexp-test}
EXTRA_USERS=${AUTOEXP_EXTRA_USERS:-}
WAIT=${AUTOEXP_WAIT:-60}
ACCOUNT=autoexp
# A second account of the test user, never its default: tests that the account autoexp records is
# the one Slurm bills, whatever SBATCH_ACCOUNT says.
OTHER_ACCOUNT=autoexp-other
NODES=(node1 node2)
read -r -a NODE_PORTS <<<"${AUTOEXP_SLURMD_PORTS:-17001 17002}"
CTLD_PORT=${AUTOEXP_SLURMCTLD_PORT:-6817}
DBD_PORT=${AUTOEXP_SLURMDBD_PORT:-6819}
MYSQL_PORT=${AUTOEXP_MYSQL_PORT:-3306}
NODE_CPUS=8
NODE_MEM=16000
NODELIST="node[1-2]"

SLURM_ETC=/etc/slurm
SLURM_CONF=$SLURM_ETC/slurm.conf
SLURMDBD_CONF=$SLURM_ETC/slurmdbd.conf
LOGDIR=/var/log/slurm
RUNDIR=/run/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
MYSQL_LOG=/var/log/mysql/error.log
read -r -a EXTRA_PACKAGES <<<"${AUTOEXP_EXTRA_PACKAGES:-}"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server "${EXTRA_PACKAGES[@]}")

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

[[ $EUID -eq 0 ]] || die "must be run as root"

# --------------------------------------------------------------------------
# 1. packages
# --------------------------------------------------------------------------
install_packages "${PACKAGES[@]}"

HOST=$(hostname -s)
[[ -n $HOST ]] || die "hostname -s returned nothing"
# The controller's name, and the node names as jobs see them (SLURM_JOB_NODELIST, a MASTER_ADDR
# taken from it): all served by this host, so all must resolve here, as they would on a cluster.
for name in "$HOST" "${NODES[@]}"; do
    if ! getent hosts "$name" >/dev/null; then
        say "adding $name to /etc/hosts"
        echo "127.0.0.1 $name" >>/etc/hosts
    fi
done

# --------------------------------------------------------------------------
# 2. users
# --------------------------------------------------------------------------
if ! id "$TEST_USER" >/dev/null 2>&1; then
    say "creating user $TEST_USER"
    useradd --create-home --shell /bin/bash "$TEST_USER"
fi
home=$(getent passwd "$TEST_USER" | cut -d: -f6)
[[ -d $home ]] || { mkdir -p "$home"; chown "$TEST_USER:" "$home"; }

# --------------------------------------------------------------------------
# 3. munge
# --------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
if munge_ok 2>/dev/null; then
    say "munged already running"
else
    say "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged </dev/null >>/var/log/munge/munged.out 2>&1 \
        || fail "munged failed to start" /var/log/munge/munged.out /var/log/munge/munged.log
    wait_for "$WAIT" munge_ok || fail "munged does not answer" /var/log/munge/munged.out /var/log/munge/munged.log
fi

# --------------------------------------------------------------------------
# 4. MariaDB
# --------------------------------------------------------------------------
install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql
if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "initialising MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/var/log/mysql/install-db.log 2>&1 \
        || fail "mariadb-install-db failed" /var/log/mysql/install-db.log
fi
# settings recommended by the slurmdbd documentation (only applied at start)
cat >/etc/mysql/mariadb.conf.d/90-autoexp-slurm.cnf <<EOF
# written by autoexp cluster/setup.sh
[mysqld]
innodb_buffer_pool_size=1024M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
port=$MYSQL_PORT
EOF
mysql_ok() { mariadb-admin --protocol=socket ping; }
if mysql_ok >/dev/null 2>&1; then
    say "MariaDB already running"
else
    say "starting MariaDB (mysqld_safe)"
    detach /var/log/mysql/mysqld_safe.out mariadbd-safe --skip-syslog --log-error="$MYSQL_LOG"
    wait_for "$WAIT" mysql_ok || fail "MariaDB did not come up" /var/log/mysql/mysqld_safe.out "$MYSQL_LOG"
fi

# database + user; keep the password of an existing slurmdbd.conf
DB_PASS=""
if [[ -r $SLURMDBD_CONF ]]; then
    DB_PASS=$(sed -n 's/^StoragePass=//p' "$SLURMDBD_CONF" | head -n1)
fi
if [[ -z $DB_PASS ]]; then
    DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)
fi
mariadb --protocol=socket <<EOF || die "could not create database $DB_NAME / user $DB_USER"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF

# --------------------------------------------------------------------------
# 5. Slurm configuration
# --------------------------------------------------------------------------
install -d -m 0755 "$SLURM_ETC" "$LOGDIR" "$RUNDIR" /var/spool/slurmctld /var/spool/slurmd
for n in "${NODES[@]}"; do install -d -m 0755 "/var/spool/slurmd/$n"; done

tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT

{
cat <<EOF
# Generated by autoexp cluster/setup.sh -- local changes are overwritten.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# requeued jobs become eligible again after cred_expire+1 s (default 120)
AuthInfo=cred_expire=10
SlurmctldPort=$CTLD_PORT
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides

StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

# scheduling: fast starts for tests
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MaxArraySize=100001
MaxJobCount=200000
MinJobAge=600
KillWait=5
OverTimeLimit=0
InactiveLimit=0
Waittime=0
# 1 (not 2): a node set DOWN by an admin/test must stay DOWN until resumed
ReturnToService=1
SlurmdTimeout=120
SlurmctldTimeout=60
MessageTimeout=10
JobRequeue=1
MailProg=/bin/true

# accounting
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none

# nodes: several slurmd processes on this one host (multiple-slurmd build);
# the hardware is overstated on purpose (config_overrides).
EOF
for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=${NODE_PORTS[$i]} CPUs=$NODE_CPUS RealMemory=$NODE_MEM State=UNKNOWN"
done
cat <<EOF
PartitionName=debug Nodes=$NODELIST Default=YES MaxTime=INFINITE State=UP
PartitionName=small Nodes=$NODELIST Default=NO MaxTime=INFINITE State=UP
EOF
# (the default port goes unsaid, so an existing 22.05 cluster's configuration stays the same)
((DBD_PORT == 6819)) || echo "AccountingStoragePort=$DBD_PORT"
} >"$tmpdir/slurm.conf"

cat >"$tmpdir/slurmdbd.conf" <<EOF
# Generated by autoexp cluster/setup.sh -- local changes are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=$RUNDIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=$MYSQL_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF

config_changed=0
install_conf() {  # install_conf SRC DEST MODE
    if ! cmp -s "$1" "$2"; then
        install -m "$3" -o root -g root "$1" "$2"
        config_changed=1
        say "wrote $2"
    fi
    chmod "$3" "$2"; chown root:root "$2"
}
install_conf "$tmpdir/slurm.conf" "$SLURM_CONF" 0644
install_conf "$tmpdir/slurmdbd.conf" "$SLURMDBD_CONF" 0600
# Slurm 23.11 and later set up cgroups in every slurmd, even with proctrack/linuxproc; where no
# cgroup filesystem is mounted (a chroot, as in setup-24.sh) they are switched off.
if ! mountpoint -q /sys/fs/cgroup; then
    printf '# Generated by autoexp cluster/setup.sh: no cgroup filesystem here\nCgroupPlugin=disabled\n' >"$tmpdir/cgroup.conf"
    install_conf "$tmpdir/cgroup.conf" "$SLURM_ETC/cgroup.conf" 0644
fi

if ((config_changed)); then
    if pid_alive "$RUNDIR/slurmctld.pid" slurmctld || pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd \
       || pid_alive "$RUNDIR/slurmd-${NODES[0]}.pid" slurmd; then
        say "configuration changed: restarting Slurm daemons"
        "$SCRIPT_DIR/stop.sh" --quiet
    fi
fi

# --------------------------------------------------------------------------
# 6. slurmdbd + accounting objects
# --------------------------------------------------------------------------
dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster; }
if pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd && dbd_ok >/dev/null 2>&1; then
    say "slurmdbd already running"
else
    say "starting slurmdbd"
    detach "$LOGDIR/slurmdbd.out" slurmdbd
    wait_for "$WAIT" dbd_ok || fail "slurmdbd did not come up" "$LOGDIR/slurmdbd.out" "$LOGDIR/slurmdbd.log"
fi

sam() { timeout 30 sacctmgr -i "$@"; }
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
    say "sacctmgr: adding cluster $CLUSTER_NAME"
    sam add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr add cluster failed"
fi
if ! sacctmgr -n -P list account "$ACCOUNT" format=account | grep -qx "$ACCOUNT"; then
    say "sacctmgr: adding account $ACCOUNT"
    sam add account "$ACCOUNT" Cluster="$CLUSTER_NAME" Description="autoexp tests" Organization=autoexp >/dev/null \
        || die "sacctmgr add account failed"
fi
if ! sacctmgr -n -P list account "$OTHER_ACCOUNT" format=account | grep -qx "$OTHER_ACCOUNT"; then
    say "sacctmgr: adding account $OTHER_ACCOUNT"
    sam add account "$OTHER_ACCOUNT" Cluster="$CLUSTER_NAME" Description="autoexp tests: a second account" \
        Organization=autoexp >/dev/null || die "sacctmgr add account $OTHER_ACCOUNT failed"
fi
if id "$TEST_USER" >/dev/null 2>&1 && ! sacctmgr -n -P list assoc cluster="$CLUSTER_NAME" user="$TEST_USER" \
        account="$OTHER_ACCOUNT" format=user | grep -qx "$TEST_USER"; then
    say "sacctmgr: adding user $TEST_USER to account $OTHER_ACCOUNT"
    sam add user "$TEST_USER" Account="$OTHER_ACCOUNT" Cluster="$CLUSTER_NAME" >/dev/null \
        || die "sacctmgr add user $TEST_USER to $OTHER_ACCOUNT failed"
fi
for u in root "$TEST_USER" $EXTRA_USERS; do
    id "$u" >/dev/null 2>&1 || { say "WARNING: user $u does not exist, skipped"; continue; }
    if ! sacctmgr -n -P list assoc cluster="$CLUSTER_NAME" user="$u" account="$ACCOUNT" format=user | grep -qx "$u"; then
        say "sacctmgr: adding user $u to account $ACCOUNT"
        if [[ $u == root ]]; then
            sam add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER_NAME" >/dev/null || die "sacctmgr add user $u failed"
        else
            sam add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER_NAME" >/dev/null \
                || die "sacctmgr add user $u failed"
        fi
    fi
done

# --------------------------------------------------------------------------
# 7. slurmctld
# --------------------------------------------------------------------------
ctld_ok() { timeout 10 scontrol ping | grep -q 'is UP'; }
if pid_alive "$RUNDIR/slurmctld.pid" slurmctld && ctld_ok 2>/dev/null; then
    say "slurmctld already running"
else
    say "starting slurmctld"
    detach "$LOGDIR/slurmctld.out" slurmctld
    wait_for "$WAIT" ctld_ok || fail "slurmctld did not come up" "$LOGDIR/slurmctld.out" "$LOGDIR/slurmctld.log"
fi

# --------------------------------------------------------------------------
# 8. slurmd (one per virtual node)
# --------------------------------------------------------------------------
for n in "${NODES[@]}"; do
    if pid_alive "$RUNDIR/slurmd-$n.pid" slurmd; then
        say "slurmd $n already running"
    else
        say "starting slurmd $n"
        detach "$LOGDIR/slurmd-$n.out" slurmd -N "$n"
    fi
done
for n in "${NODES[@]}"; do
    wait_for 20 pid_alive "$RUNDIR/slurmd-$n.pid" slurmd \
        || fail "slurmd $n did not start" "$LOGDIR/slurmd-$n.out" "$LOGDIR/slurmd-$n.log"
done

# --------------------------------------------------------------------------
# 9. nodes idle
# --------------------------------------------------------------------------
node_states() { sinfo -h -N -o '%N %T' | sort -u; }
all_idle() {
    local s
    s=$(sinfo -h -N -o '%T' | sort -u) || return 1
    [[ -n $s ]] && ! grep -qvE '^(idle|mixed|allocated|completing)$' <<<"$s"
}
end=$(( $(date +%s) + WAIT ))
resumed=0
while ! all_idle; do
    # nodes left DOWN/DRAIN (e.g. by a test or an unclean shutdown)
    bad=$(sinfo -h -N -o '%N %T' | awk '$2 ~ /^(down|drain|drained|draining|fail|failing)/ && $2 !~ /\*$/ {print $1}' | sort -u | paste -sd, -)
    if [[ -n $bad ]] && (( resumed < 3 )); then
        say "resuming node(s) $bad"
        scontrol update nodename="$bad" state=resume >/dev/null 2>&1 || true
        resumed=$((resumed + 1))
    fi
    if (( $(date +%s) >= end )); then
        node_states >&2 || true
        logs=()
        for n in "${NODES[@]}"; do logs+=("$LOGDIR/slurmd-$n.log"); done
        fail "nodes did not become idle within ${WAIT}s" "$LOGDIR/slurmctld.log" "${logs[@]}"
    fi
    sleep 0.5
done

# --------------------------------------------------------------------------
# 10. summary
# --------------------------------------------------------------------------
sacct -X -n -S now-1minutes >/dev/null 2>&1 || fail "sacct does not work" "$LOGDIR/slurmdbd.log"
summary=$(sinfo -h -o '%P:%D:%T:%N' | paste -sd' ' -)
say "OK cluster=$CLUSTER_NAME controller=$HOST partitions/nodes: $summary; sacct OK; test user $TEST_USER"
