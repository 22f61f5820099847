#!/usr/bin/env bash
# Formats every C++ file of the repository with its .clang-format (clang-format 14, Debian package
# clang-format), or with --check, lists the files that differ and fails (CI runs the check).
#   scripts/format.sh            rewrite the files in place
#   scripts/format.sh --check    change nothing; exit 1 if any file is not formatted
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "format: error: $*" >&2; exit 1; }

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) die "unknown option '$1' (expected --check or nothing)" ;;
esac
command -v clang-format >/dev/null 2>&1 || die "clang-format not found; run scripts/setup.sh first"

mapfile -t files < <(git ls-files '*.hpp' '*.cpp' '*.h')
if [[ ${check} == 0 ]]; then
  clang-format -i "${files[@]}"
  echo "format: formatted ${#files[@]} files ($(clang-format --version))"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run --Werror "${f}" >/dev/null 2>&1 || bad+=("${f}")
done
if [[ ${#bad[@]} -gt 0 ]]; then
  printf 'format: not formatted: %s\n' "${bad[@]}" >&2
  die "${#bad[@]} of ${#files[@]} files differ from .clang-format; run scripts/format.sh"
fi
echo "format: all ${#files[@]} files match .clang-format"
