#!/usr/bin/env bash
# Run a command inside the Slurm 24.11 cluster's root as root, e.g. `cluster/in-24.sh sinfo --version`
# or `cluster/in-24.sh runuser -u autoexp-test -- squeue`.
set -euo pipefail
# shellcheck source=env-24.sh
source "$(dirname "${BASH_SOURCE[0]}")/env-24.sh"
in_root "$@"
