#!/usr/bin/env bash
# The test command: provision the Slurm test cluster, install autoexp (a plain, non-editable
# `pip install .` into a fresh venv, every version pinned by tests/constraints.txt), and run pytest
# as the unprivileged user autoexp-test, with a missing cluster failing the run
# (AUTOEXP_REQUIRE_SLURM=1). Run it as root, or as a user with sudo (it re-runs itself with sudo).
# Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E bash "$0" "$@"
fi
test_user=${AUTOEXP_TEST_USER:-autoexp-test}
# tests/run-24.sh sets AUTOEXP_CORE_ONLY=1: the cluster-facing core on another Slurm, without the
# lint, the browser, the README's clone and torch (which the core does not use).
core_only=${AUTOEXP_CORE_ONLY:-0}
venv=${AUTOEXP_VENV:-/opt/autoexp-test-venv}

echo "== cluster"
bash "$repo/cluster/setup.sh"

echo "== sudo rule: $test_user may set test nodes down/up (the NODE_FAIL test)"
# sudo (the NODE_FAIL test), git (the README test clones), GNU time (bench/status.py, run by it)
# and a headless browser (the report is looked at in one).
missing=()
command -v sudo >/dev/null || missing+=(sudo)
if [ "$core_only" != 1 ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v git >/dev/null || missing+=(git)
  [ -x /usr/bin/time ] || missing+=(time)
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
printf '%s ALL=(root) NOPASSWD: /usr/bin/scontrol update nodename=*\n' "$test_user" >/etc/sudoers.d/autoexp-test
chmod 440 /etc/sudoers.d/autoexp-test
# The hung-controller test (tests/test_failures.py) stops slurmctld for at most 30 s; the helper
# continues it whatever happens to its caller ("cont" continues it at once).
cat >/usr/local/sbin/autoexp-test-pause-slurmctld <<'HELPER'
#!/bin/bash
set -eu
pid=$(cat /run/slurm/slurmctld.pid)
[ "$(cat "/proc/$pid/comm")" = slurmctld ] || exit 1
if [ "${1:-}" = cont ]; then kill -CONT "$pid"; exit 0; fi
[[ ${1:-} =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 30 ] || { echo "usage: $0 SECONDS(1-30)|cont" >&2; exit 2; }
setsid bash -c "trap 'kill -CONT $pid' EXIT; sleep $1" </dev/null >/dev/null 2>&1 &
kill -STOP "$pid"
HELPER
chmod 755 /usr/local/sbin/autoexp-test-pause-slurmctld
printf '%s ALL=(root) NOPASSWD: /usr/local/sbin/autoexp-test-pause-slurmctld\n' "$test_user" \
  >/etc/sudoers.d/autoexp-test-faults
chmod 440 /etc/sudoers.d/autoexp-test-faults
# The accounting-outage and controller-restart tests: slurmdbd stopped for a while, slurmctld
# restarted; cluster/setup.sh (idempotent) brings back whatever is down.
setup=$(printf %q "$repo/cluster/setup.sh")
cat >/usr/local/sbin/autoexp-test-slurm-fault <<HELPER
#!/bin/bash
set -eu
stop() { local pid; pid=\$(cat "/run/slurm/\$1.pid"); [ "\$(cat "/proc/\$pid/comm")" = "\$1" ] || exit 1
         kill "\$pid"; while kill -0 "\$pid" 2>/dev/null; do sleep 0.2; done; }
case "\${1:-}" in
  dbd-down) [[ \${2:-} =~ ^[0-9]+\$ ]] && [ "\$2" -le 300 ] || { echo "usage: \$0 dbd-down SECONDS(<=300)" >&2; exit 2; }
            stop slurmdbd
            setsid bash -c "sleep \$2; bash $setup" </dev/null >/tmp/autoexp-test-slurm-fault.log 2>&1 & ;;
  ctld-restart) stop slurmctld; bash $setup >/tmp/autoexp-test-slurm-fault.log 2>&1 ;;
  up) bash $setup >/tmp/autoexp-test-slurm-fault.log 2>&1 ;;
  *) echo "usage: \$0 dbd-down SECONDS | ctld-restart | up" >&2; exit 2 ;;
esac
HELPER
chmod 755 /usr/local/sbin/autoexp-test-slurm-fault
printf '%s ALL=(root) NOPASSWD: /usr/local/sbin/autoexp-test-slurm-fault\n' "$test_user" \
  >>/etc/sudoers.d/autoexp-test-faults
# The disk-full test: a small file system anyone may write to, filled and freed by the test.
mkdir -p /mnt/autoexp-small
mountpoint -q /mnt/autoexp-small || mount -t tmpfs -o size=16m,mode=1777 autoexp-small /mnt/autoexp-small

echo "== install autoexp into $venv"
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
export PIP_CONSTRAINT="$repo/tests/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
artifacts=${AUTOEXP_ARTIFACTS:-/tmp/autoexp-artifacts}  # what the tests keep to be looked at (screenshots)
mkdir -p "$artifacts" && chown "$test_user:" "$artifacts"
# setuptools' build/ keeps the files of earlier builds (a module since renamed would be installed
# again): every install here starts from none.
rm -rf "$repo/build"
"$venv/bin/python" -m pip install -q pip >/dev/null
"$venv/bin/python" -m pip install -q "$repo[test,report]"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$repo"
if [ "$core_only" != 1 ]; then
  # For the multi-node example's real torchrun (tests/test_templates.py), not a dependency of
  # autoexp: the CPU build, which this machine's pip finds locally (find-links), pinned.
  "$venv/bin/python" -m pip install -q "torch==2.13.0+cpu"

  echo "== lint: ruff and mypy (rules in pyproject.toml, versions in tests/constraints.txt)"
  "$venv/bin/python" -m pip install -q -c "$repo/tests/constraints.txt" ruff mypy types-PyYAML types-psutil
  (cd "$repo" && "$venv/bin/ruff" check --no-cache . && "$venv/bin/mypy")
fi

echo "== pytest as $test_user"
work=$(mktemp -d /tmp/autoexp-tests.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar -C "$repo" --exclude=.git --exclude='*.egg-info' --exclude=build -cf - . | tar -C "$work" -xf -
rm -rf "$work/autoexp"  # the tests must use the installed package, not the source tree
# The README test clones the repository as a newcomer would: from a clone of this checkout's
# committed HEAD, made here because the test user may not read the checkout's .git.
if [ "$core_only" != 1 ] && git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  git clone -q --no-hardlinks "$repo" "$work/.origin"
  export AUTOEXP_ORIGIN="$work/.origin"
fi
chown -R "$test_user:" "$work"
chmod 755 "$work"
cd "$work"
set +e
runuser -u "$test_user" -- env HOME="/home/$test_user" PATH="$venv/bin:$PATH" AUTOEXP_REQUIRE_SLURM=1 \
  PIP_CONSTRAINT="$work/tests/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1 AUTOEXP_ORIGIN="${AUTOEXP_ORIGIN:-}" \
  AUTOEXP_ARTIFACTS="$artifacts" \
  "$venv/bin/python" -m pytest -p no:cacheprovider -rs "$@"  # no path given: testpaths (tests/)
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  status=1
fi
exit "$status"
