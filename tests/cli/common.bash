# common.bash -- helpers for the CLI tests (sourced). Each test runs from the repo root.
set -u
MAPO=${MAPO:-./mapo}
TMP=$(mktemp -d /tmp/mapo_cli.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
ok()   { echo "  ok: $*"; }
bad()  { echo "  FAIL: $*"; fails=$((fails+1)); }
# expect_error "description" "needle" cmd...: must exit non-zero, print exactly one
# "mapo: error:" line containing needle, not crash (exit code < 128), and write nothing under
# $TMP (no new path, no file modified: a refused command leaves the disk as it found it).
# expect_error_w: the same without the nothing-written check, for failures that happen after a
# run has legitimately started writing (a full disk at step 3 still logged steps 1-3).
expect_error() { _expect_error 1 "$@"; }
expect_error_w() { _expect_error 0 "$@"; }
_expect_error() {
  local check=$1 what=$2 needle=$3; shift 3
  local out rc before
  before=$(find "$TMP" -mindepth 1 ! -name .stamp | sort); touch "$TMP/.stamp"
  out=$("$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 0 ]; then bad "$what: exit 0"; return; fi
  if [ $rc -ge 128 ]; then bad "$what: crashed (exit $rc): $out"; return; fi
  local n; n=$(printf '%s\n' "$out" | grep -c '^mapo: error:')
  if [ "$n" -ne 1 ]; then bad "$what: expected one error line, got: $out"; return; fi
  if ! printf '%s' "$out" | grep -qF -- "$needle"; then bad "$what: '$needle' not in: $out"; return; fi
  if [ "$check" = 1 ]; then
    local wrote
    wrote=$( { comm -13 <(printf '%s\n' "$before") <(find "$TMP" -mindepth 1 ! -name .stamp | sort);
               find "$TMP" -type f -newer "$TMP/.stamp" ! -name .stamp; } | sort -u | sed "s|$TMP/||" | tr '\n' ' ')
    if [ -n "$wrote" ]; then bad "$what: refused but wrote: $wrote"; return; fi
  fi
  ok "$what -> $(printf '%s\n' "$out" | grep '^mapo: error:')"
}
finish() { [ $fails -eq 0 ] && echo "  all ok" ; exit $fails; }
