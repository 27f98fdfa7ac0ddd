#!/bin/bash
# Build the PyTorch image for one GPU family from the definition files next to this script.
#
#   container/build.sh rocm|cuda [-o OUTPUT.sif] [--runtime apptainer|singularity]
#                      [--build-arg NAME=VALUE]... [--dry-run]
#
# rocm is the LUMI image (pytorch-rocm.def), cuda the JUWELS one (pytorch-cuda.def). As root the
# image is built directly; otherwise with --fakeroot, when this machine allows it (an entry for
# you in /etc/subuid, or unprivileged user namespaces). Where it does not, the script says what to
# do instead and exits with status 3 without building anything.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() {
  sed -n '4,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

flavour="" output="" runtime="" dry_run=0
build_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    rocm|cuda) flavour=$1; shift ;;
    -o|--output) [ $# -ge 2 ] || usage; output=$2; shift 2 ;;
    --runtime) [ $# -ge 2 ] || usage; runtime=$2; shift 2 ;;
    --build-arg) [ $# -ge 2 ] || usage; build_args+=(--build-arg "$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    *) echo "build.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$flavour" ] || usage
definition="$here/pytorch-$flavour.def"
output=${output:-pytorch-$flavour.sif}

if [ -z "$runtime" ]; then
  runtime=$(command -v apptainer || command -v singularity || true)
  runtime=${runtime##*/}
fi
if [ -z "$runtime" ] || ! command -v "$runtime" >/dev/null; then
  echo "build.sh: neither apptainer nor singularity is on PATH (on HPC systems: module load it)" >&2
  exit 2
fi

# The default requirements file, by absolute path: the definition's %files is read from the cwd.
case " ${build_args[*]:-} " in
  *" REQUIREMENTS="*) ;;
  *) build_args+=(--build-arg "REQUIREMENTS=$here/requirements.txt") ;;
esac

# Subordinate ids (getsubids also sees those from LDAP/sssd), else a user namespace mapped to root.
fakeroot_possible() {
  if command -v getsubids >/dev/null; then
    getsubids "$(id -un)" >/dev/null 2>&1 && return 0
  elif grep -qE "^($(id -un)|$(id -u)):" /etc/subuid 2>/dev/null; then
    return 0
  fi
  unshare --user --map-root-user true 2>/dev/null
}

privilege=()
if [ "$(id -u)" -ne 0 ]; then
  if ! fakeroot_possible; then
    cat >&2 <<EOF
build.sh: this machine cannot build images as $(id -un): not root, no /etc/subuid entry, and no
unprivileged user namespaces, so '$runtime build --fakeroot' would fail. Instead:
  * on LUMI: start from one of LUMI's AI images (under /appl/local/laifs/containers, with
    module use /appl/local/laifs/modules; module load lumi-aif-singularity-bindings) and add
    packages with cotainr or a virtual environment in a SquashFS overlay (see LUMI's container
    docs), or use an image directly: container.image: /appl/local/laifs/containers/<image>.sif.
    They carry the aws-ofi-rccl plugin, which AMD's image (pytorch-rocm.def) lacks;
  * build on a machine where you are root or have fakeroot (a workstation, a CI runner):
      container/build.sh $flavour -o $output
    then copy $output to the cluster (scratch or project space);
  * ask the system's support to enable --fakeroot for you (an /etc/subuid entry).
EOF
    exit 3
  fi
  privilege=(--fakeroot)
fi

command=("$runtime" build ${privilege[@]+"${privilege[@]}"} "${build_args[@]}" "$output" "$definition")
echo "+ ${command[*]}"
if [ "$dry_run" -eq 0 ]; then
  exec "${command[@]}"
fi
