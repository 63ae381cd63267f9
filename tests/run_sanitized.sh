#!/usr/bin/env bash
# Runs the whole suite (tests/run_all.sh: every test binary given, then tests/cli/*.sh with
# $MAPO) built with AddressSanitizer + LeakSanitizer + UBSan, and fails on any sanitizer report.
# usage: tests/run_sanitized.sh BUILD_DIR TEST_BINARY...   (make test-sanitize)
#
# Reports go to files (log_path), not stderr: the CLI tests capture stderr and accept a non-zero
# exit as an expected refusal, so a report printed there could pass unnoticed. Every process
# writes BUILD_DIR/san-reports/report.<pid> when it reports; any such file fails the run.
set -u
dir=$1; shift
reports=$dir/san-reports
rm -rf "$reports"; mkdir -p "$reports"
reports=$(cd "$reports" && pwd)
# Both runtimes read log_path and exitcode (UBSan's options are parsed after ASan's, so they
# must agree). No LeakSanitizer suppressions file: the suite (OpenMP's libgomp thread pool and
# OpenBLAS included, at OMP_NUM_THREADS=2) reports no third-party leak.
common="log_path=$reports/report:exitcode=86"
export ASAN_OPTIONS="$common:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="$common:print_stacktrace=1:halt_on_error=1"
# tests that measure the process itself (RSS) skip what ASan's quarantine and shadow distort
export MAPO_SANITIZED=1
# two OpenMP threads: the threaded paths run (per-thread buffers, reductions) at a cost the
# 2-core CI machine can carry; override with OMP_NUM_THREADS
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export MAPO=${MAPO:-./$dir/mapo}
start=$(date +%s)
bash "$(dirname "$0")/run_all.sh" "$@"; rc=$?
n=$(find "$reports" -type f | wc -l)
if [ "$n" -gt 0 ]; then
  echo "SANITIZER: $n report(s) in $reports:"
  for f in "$reports"/*; do echo "---- $f"; head -n 60 "$f"; done
  rc=1
fi
echo "sanitized suite: $(( $(date +%s) - start )) s, $n sanitizer report(s), OMP_NUM_THREADS=$OMP_NUM_THREADS"
exit $rc
