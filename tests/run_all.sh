#!/usr/bin/env bash
# Runs each cmocka test binary given as argument, then the CLI tests (tests/cli/*.sh).
# Prints one closing line "N passed, N failed" counting test binaries and scripts.
pass=0; fail=0; failed=()
for t in "$@"; do
  echo "== $t"
  if "$t"; then pass=$((pass+1)); else fail=$((fail+1)); failed+=("$t"); fi
done
for s in tests/cli/*.sh; do
  [ -e "$s" ] || continue
  echo "== $s"
  if bash "$s"; then pass=$((pass+1)); else fail=$((fail+1)); failed+=("$s"); fi
done
[ ${#failed[@]} -gt 0 ] && printf 'FAILED: %s\n' "${failed[@]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
