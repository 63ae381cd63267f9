# common.bash -- helpers for the CLI tests (sourced). Each test runs from the repo root.
set -u
MAPO=${MAPO:-./mapo}
TMP=$(mktemp -d /tmp/mapo_cli.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
ok()   { echo "  ok: $*"; }
bad()  { echo "  FAIL: $*"; fails=$((fails+1)); }
# expect_error "description" "needle" cmd...: must exit non-zero, print exactly one
# "mapo: error:" line containing needle, and not crash (exit code < 128).
expect_error() {
  local what=$1 needle=$2; shift 2
  local out rc
  out=$("$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 0 ]; then bad "$what: exit 0"; return; fi
  if [ $rc -ge 128 ]; then bad "$what: crashed (exit $rc): $out"; return; fi
  local n; n=$(printf '%s\n' "$out" | grep -c '^mapo: error:')
  if [ "$n" -ne 1 ]; then bad "$what: expected one error line, got: $out"; return; fi
  if ! printf '%s' "$out" | grep -qF -- "$needle"; then bad "$what: '$needle' not in: $out"; return; fi
  ok "$what -> $out"
}
finish() { [ $fails -eq 0 ] && echo "  all ok" ; exit $fails; }
