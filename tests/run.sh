#!/usr/bin/env bash
# The test command: provision the Slurm test cluster, install autoexp (a plain, non-editable
# `pip install .` into a fresh venv), and run pytest as the unprivileged user autoexp-test, with
# a missing cluster failing the run (AUTOEXP_REQUIRE_SLURM=1). Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E bash "$0" "$@"
fi
test_user=${AUTOEXP_TEST_USER:-autoexp-test}
venv=${AUTOEXP_VENV:-/opt/autoexp-test-venv}

echo "== cluster"
bash "$repo/cluster/setup.sh"

echo "== sudo rule: $test_user may set test nodes down/up (the NODE_FAIL test)"
command -v sudo >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null; }
printf '%s ALL=(root) NOPASSWD: /usr/bin/scontrol update nodename=*\n' "$test_user" >/etc/sudoers.d/autoexp-test
chmod 440 /etc/sudoers.d/autoexp-test

echo "== install autoexp into $venv"
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q "$repo[test]"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$repo"

echo "== lint: ruff and mypy (rules in pyproject.toml, versions in tests/constraints.txt)"
"$venv/bin/python" -m pip install -q -c "$repo/tests/constraints.txt" ruff mypy types-PyYAML types-psutil
(cd "$repo" && "$venv/bin/ruff" check --no-cache . && "$venv/bin/mypy")

echo "== pytest as $test_user"
work=$(mktemp -d /tmp/autoexp-tests.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar -C "$repo" --exclude=.git --exclude='*.egg-info' --exclude=build -cf - . | tar -C "$work" -xf -
rm -rf "$work/autoexp"  # the tests must use the installed package, not the source tree
chown -R "$test_user:" "$work"
chmod 755 "$work"
cd "$work"
set +e
runuser -u "$test_user" -- env HOME="/home/$test_user" PATH="$venv/bin:$PATH" AUTOEXP_REQUIRE_SLURM=1 \
  "$venv/bin/python" -m pytest -p no:cacheprovider -rs "$work/tests" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  status=1
fi
exit "$status"
