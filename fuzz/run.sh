#!/usr/bin/env bash
# fuzz/run.sh -- run libFuzzer targets built by `make fuzz-build` (fuzz/fuzz.mk).
#   fuzz/run.sh campaign TARGET...   FUZZ_RUNS executions (default 10000000), or FUZZ_SECONDS
#                                    seconds (and FUZZ_RUNS if also given: whichever first); new inputs kept in build-fuzz/corpus/<t>;
#                                    the final stats line of each run appended to
#                                    build-fuzz/logs/<t>.stats
#   fuzz/run.sh smoke TARGET...      the seed corpus plus FUZZ_SMOKE_RUNS (20000) mutations or
#                                    FUZZ_SMOKE_SECONDS (20) seconds, whichever comes first;
#                                    nothing kept; exits 1 on any crash, leak or timeout
# Per target: executions, exec/s, coverage (edges "cov" and features "ft"), corpus, crashes.
#   fuzz/run.sh summary [TARGET...]  totals over every campaign run logged in build-fuzz/logs
set -u
mode=$1
shift
B=${FUZZ_BUILD:-build-fuzz}
if [ "$mode" = summary ]; then
    [ $# -gt 0 ] || set -- safetensors parquet image config tokenizer manifest idx
    printf '%-12s %5s %12s %8s %8s %8s %8s %8s\n' target runs execs exec/s cov ft corpus crashes
    for t in "$@"; do
        f=$B/logs/$t.stats
        [ -f "$f" ] || continue
        nc=$(ls "$B/corpus/$t" 2>/dev/null | wc -l)
        # columns: stamp target execs exec/s cov ft corpus crashes rc log
        awk -v t="$t" -v nc="$nc" '{ n++; if ($3 ~ /^[0-9]+$/) { e += $3; if ($4 > 0) s += $3 / $4 }
             if ($5 > cov) cov = $5; if ($6 > ft) ft = $6; cr += $8 }
             END { printf "%-12s %5d %12d %8d %8d %8d %8d %8d\n", t, n, e, (s > 0 ? e / s : 0),
                   cov, ft, nc, cr }' "$f"
    done
    exit 0
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1
maxlen() {
    case $1 in
    safetensors) echo 16384 ;; parquet) echo 32768 ;; image) echo 16384 ;;
    config) echo 4096 ;; tokenizer) echo 40960 ;; manifest) echo 4096 ;; idx) echo 32768 ;;
    *) echo 4096 ;;
    esac
}
fail=0
printf '%-12s %12s %8s %8s %8s %8s %8s\n' target execs exec/s cov ft corpus crashes
for t in "$@"; do
    bin=$B/fuzz_$t
    [ -x "$bin" ] || { echo "$bin: not built (make fuzz-build)" >&2; exit 2; }
    mkdir -p "$B/logs" "$B/artifacts/$t"
    dict=()
    [ -f fuzz/$t.dict ] && dict=(-dict=fuzz/$t.dict)
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    if [ "$mode" = smoke ]; then
        corpus=$B/smoke/$t
        rm -rf "$corpus"
        mkdir -p "$corpus"
        limit=(-runs="${FUZZ_SMOKE_RUNS:-20000}" -max_total_time="${FUZZ_SMOKE_SECONDS:-20}")
        log=$B/logs/smoke-$t.log
    else
        corpus=$B/corpus/$t
        mkdir -p "$corpus"
        limit=(-runs="${FUZZ_RUNS:-10000000}")
        [ -n "${FUZZ_SECONDS:-}" ] && limit=(-max_total_time="$FUZZ_SECONDS" ${FUZZ_RUNS:+-runs=$FUZZ_RUNS})
        log=$B/logs/$t-$stamp.log
    fi
    before=$(ls "$B/artifacts/$t" | wc -l)
    extra=()
    # smoke also replays the regression inputs (read-only: libFuzzer adds only to $corpus)
    [ "$mode" = smoke ] && [ -d tests/fixtures/fuzz/$t ] && extra=(tests/fixtures/fuzz/$t)
    "$bin" "$corpus" "fuzz/corpus/$t" "${extra[@]}" "${dict[@]}" "${limit[@]}" -max_len="$(maxlen "$t")" \
        -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        -artifact_prefix="$B/artifacts/$t/" -print_final_stats=1 ${FUZZ_ARGS:-} \
        >"$log" 2>&1
    rc=$?
    after=$(ls "$B/artifacts/$t" | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    nc=$(ls "$corpus" | wc -l)
    crashes=$((after - before))
    line=$(printf '%-12s %12s %8s %8s %8s %8s %8s' "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" \
        "${ft:-?}" "$nc" "$crashes")
    echo "$line"
    if [ "$mode" != smoke ]; then
        echo "$stamp $line rc=$rc log=$log" >>"$B/logs/$t.stats"
    fi
    if [ $rc -ne 0 ] || [ $crashes -ne 0 ]; then
        fail=1
        echo "  $t: libFuzzer exit $rc; see $log and $B/artifacts/$t/" >&2
        grep -E 'ERROR|SUMMARY|runtime error' "$log" | head -5 >&2
    fi
done
exit $fail
