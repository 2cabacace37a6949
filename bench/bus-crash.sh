#!/usr/bin/env bash
# Storage-level crash test of the bus's embedded log, long version, and its append benchmark.
# The same test runs in the suite with 24 kills (crates/sumun-bus/tests/log_crash.rs): a child
# process appends from 32 tasks and reports every acknowledged offset over a pipe; it is
# killed with SIGKILL at random moments and restarted; at the end every acknowledged record
# must be readable at its offset with a valid checksum and offsets must be gap-free. Here it
# runs with many more kills, for each durability level (kill -9 keeps the page cache, so every
# level must lose nothing; only power loss separates them), in an optimized build.
#
#   bench/bus-crash.sh                          # 200 kills × 3 levels + the append benchmark
#   KILLS=50 LEVELS=fsync BENCH=0 bench/bus-crash.sh
#
# Environment (defaults in brackets):
#   KILLS        kill -9s per durability level                        [200]
#   LEVELS       durability levels to crash                           ["fsync interval none"]
#   BENCH        1 = also run the append benchmark (cargo bench)       [1]
#   BENCH_SECS   seconds per level of the benchmark                   [5]
#   APPENDERS    concurrent appenders in the benchmark                [64]
#   DATA_DIR     where the log files go (the disk under test)          [system temp dir]
#   RESULTS_DIR  where the summary goes                               [bench/results]
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
KILLS=${KILLS:-200}
LEVELS=${LEVELS:-"fsync interval none"}
BENCH=${BENCH:-1}
BENCH_SECS=${BENCH_SECS:-5}
APPENDERS=${APPENDERS:-64}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/bus-log-$(date +%F).md
if [[ -n ${DATA_DIR:-} ]]; then
    export TMPDIR=$DATA_DIR
fi

cd "$REPO_ROOT"
{
    echo "# bus embedded log: crash test and append benchmark ($(date -u +%FT%TZ))"
    echo
    echo "Command: \`KILLS=$KILLS LEVELS=\"$LEVELS\" BENCH=$BENCH bench/bus-crash.sh\`"
    echo "Machine: $(nproc) cores, $(uname -r), data on $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2 " (" $1 ")"}')"
    echo
} >"$OUT"

status=0
for level in $LEVELS; do
    log=$(mktemp)
    echo "== crash test: $KILLS kills, durability $level"
    start=$SECONDS
    if SUMUN_LOG_CRASH_KILLS=$KILLS SUMUN_LOG_CRASH_DURABILITY=$level \
        cargo test --profile bench-fast -p sumun-bus --test log_crash -- --nocapture --exact \
        crash_kill_9_loses_no_acknowledged_record 2>&1 | tee "$log"; then
        verdict=passed
    else
        verdict=FAILED
        status=1
    fi
    {
        echo "## crash test, durability = $level: $verdict ($((SECONDS - start)) s with the build)"
        echo
        echo '```'
        grep -E '^(run [0-9]+:|[0-9]+ kills|final:|thread .* panicked|offset|run [0-9]+: )' "$log" | tail -n 8
        echo '```'
        echo
    } >>"$OUT"
    rm -f "$log"
done

if [[ $BENCH == 1 ]]; then
    echo "== append benchmark"
    log=$(mktemp)
    LOG_BENCH_SECS=$BENCH_SECS LOG_BENCH_APPENDERS=$APPENDERS \
        cargo bench -p sumun-bus --bench log_append 2>&1 | tee "$log"
    {
        echo "## append benchmark (crates/sumun-bus/benches/log_append.rs)"
        echo
        echo '```'
        grep -A10 '^log append:' "$log"
        echo '```'
    } >>"$OUT"
    rm -f "$log"
fi
echo "summary: $OUT"
exit $status
