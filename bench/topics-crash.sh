#!/usr/bin/env bash
# End-to-end crash test of topics, long version: publish over HTTP under load (4 publishers),
# kill -9 sumun at random moments KILLS times, restart it each time, then check that every
# message that got a 202 was pushed to the worker with its exact body and that the
# subscription dropped nothing (no record skipped as corrupt or lost). The suite runs the
# same test with 6 kills (crates/sumun/tests/topics.rs,
# kill_9_under_load_loses_no_acknowledged_message). The storage-level crash test of the log
# alone is bench/bus-crash.sh.
#
#   bench/topics-crash.sh              # 200 kills, optimized build
#   KILLS=20 PROFILE=dev bench/topics-crash.sh
#
# Environment (defaults in brackets):
#   KILLS      kill -9s                                  [200]
#   PROFILE    cargo profile of sumun and the test       [release]
set -Eeuo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILLS=${KILLS:-200}
PROFILE=${PROFILE:-release}
cd "$REPO_ROOT"
echo "[topics-crash] $KILLS kills, profile $PROFILE" >&2
SUMUN_CRASH_KILLS=$KILLS cargo test --profile "$PROFILE" -p sumun --test topics \
  kill_9_under_load_loses_no_acknowledged_message -- --exact --nocapture
