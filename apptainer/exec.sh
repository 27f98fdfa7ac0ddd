#!/bin/bash
# Run a command inside an Apptainer (or Singularity) image: what an autoexp array task calls when
# the config has a `container:` section.
#
#   exec.sh --image IMAGE [--runtime apptainer|singularity] [--gpu rocm|nv|none]
#           [--bind SPEC]... [--option WORD]... -- COMMAND [ARG]...
#
# The command runs with the host's environment (the runtime passes it by default; the AUTOEXP_*
# variables are also handed over explicitly, so they survive an --option --cleanenv), in the
# current working directory (--pwd), with the experiment directory bound. Each --option is one
# extra word for `exec`, e.g. --option --cleanenv or --option --overlay=/scratch/extra.sqsh.
die() {
  echo "autoexp exec.sh: $*" >&2
  exit 2
}

image="" runtime="" gpu=""
binds=() options=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    --image|--runtime|--gpu|--bind|--option) [ $# -ge 2 ] || die "$1 needs a value" ;;
    *) die "unknown argument '$1' (usage: exec.sh --image IMAGE [options] -- COMMAND...)" ;;
  esac
  case "$1" in
    --image) image=$2 ;;
    --runtime) runtime=$2 ;;
    --gpu) gpu=$2 ;;
    --bind) binds+=("$2") ;;
    --option) options+=("$2") ;;
  esac
  shift 2
done
[ -n "$image" ] || die "--image is required"
[ $# -gt 0 ] || die "no command after --"

if [ -z "$runtime" ]; then
  for candidate in apptainer singularity; do
    if command -v "$candidate" >/dev/null 2>&1; then runtime=$candidate; break; fi
  done
  [ -n "$runtime" ] || die "neither apptainer nor singularity is on PATH on $(hostname) (load its module in setup:)"
elif ! command -v "$runtime" >/dev/null 2>&1; then
  die "container runtime '$runtime' is not on PATH on $(hostname) (load its module in setup:)"
fi

case "$image" in
  *://*) ;;  # docker://, oras://, library://: the runtime fetches it
  *) [ -e "$image" ] || die "container image '$image' does not exist (on $(hostname))" ;;
esac

flags=()
case "$gpu" in
  rocm) flags+=(--rocm) ;;
  nv) flags+=(--nv) ;;
  ""|none) ;;
  *) die "--gpu must be rocm, nv or none, not '$gpu'" ;;
esac

# A bind is SRC[:DST[:OPTS]]; a missing source is reported here rather than as a mount error.
for bind in "${binds[@]}"; do
  IFS=, read -r -a specs <<<"$bind"
  for spec in "${specs[@]}"; do
    [ -e "${spec%%:*}" ] || die "bind source '${spec%%:*}' does not exist (on $(hostname))"
  done
  flags+=(--bind "$bind")
done
# The experiment directory (logs, run directories) must be visible inside; a path with a comma
# or a colon cannot be written as a bind, and is then left to the runtime's own $PWD mount.
case "${AUTOEXP_EXP_DIR:-}" in
  ""|*,*|*:*) ;;
  *) flags+=(--bind "$AUTOEXP_EXP_DIR") ;;
esac
flags+=(--pwd "$PWD")

# <RUNTIME>ENV_<NAME> reaches the command even under --cleanenv.
prefix=$(echo "${runtime##*/}" | tr '[:lower:]' '[:upper:]')ENV_
while IFS= read -r name; do
  export "$prefix$name=${!name}"
done < <(compgen -e | grep '^AUTOEXP_')

exec "$runtime" exec "${flags[@]}" "${options[@]}" "$image" "$@"
