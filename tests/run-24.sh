#!/usr/bin/env bash
# The cluster-facing core of the test suite (tests marked `core`) on the second test cluster,
# Slurm 24.11 (cluster/setup-24.sh): the worktree is copied into that cluster's Debian 13 root,
# and tests/run.sh runs there (trixie's python, its own venv, as autoexp-test, the cluster
# required). Extra arguments go to pytest after the marker selection.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E bash "$0" "$@"
fi
# shellcheck source=../cluster/env-24.sh
source "$repo/cluster/env-24.sh"

echo "== cluster (Slurm 24.11)"
bash "$repo/cluster/setup-24.sh"

src=/opt/autoexp-src  # inside the root
echo "== copy of $repo into $ROOT24$src"
rm -rf --one-file-system "${ROOT24:?}$src"
mkdir -p "$ROOT24$src"
tar -C "$repo" --exclude=.git --exclude='*.egg-info' --exclude=build -cf - . | tar -C "$ROOT24$src" -xf -

in_root AUTOEXP_VENV=/opt/autoexp-test-venv AUTOEXP_CORE_ONLY=1 bash "$src/tests/run.sh" -m "slurm and core" "$@"
