#!/usr/bin/env bash
# Cache-hit cost of sumun beside Varnish and nginx proxy_cache, measured the same way in one
# run (DESIGN.md §7): each cache alone on core 1 (one worker/thread where it has the knob),
# wrk and the nginx backend on core 0, keep-alive; every request a hit on a 1 KiB or a
# 100 KiB object. See bench/README.md and docs/cache.md.
#
#   bench/cache.sh                                  # everything, ~2 min + build
#   CACHES="varnish nginx" DURATION=3s bench/cache.sh
#   SUMUN_BIN=target/release/sumun REPEAT=3 bench/cache.sh
#
# Environment (defaults in brackets):
#   CACHES         caches to measure, in order               ["sumun varnish nginx"]
#   SIZES          object sizes (bytes)                      ["1024 102400"]
#   DURATION       measured wrk run                          [6s]
#   WARMUP         unmeasured wrk run before it              [1s]
#   CONNS          wrk connections                           [64]
#   REPEAT         measured runs per cache and size (median) [1]
#   SUMUN_BIN      use this binary instead of `cargo build --release -p sumun`
#   PROXY_CPU / LOAD_CPU  cores for the cache / for wrk+backend [1 / 0]
#   RESULTS_DIR    where the .json/.md go                     [bench/results]
#   KEEP_WORK      1 = keep the temporary work dir            [0; kept on failure]
#   QUIET_WAIT / QUIET_PCT  wait up to QUIET_WAIT s for the cache's core to be < QUIET_PCT %
#                  busy before each measured run                [60 / 5]
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
LIB=$BENCH_DIR/lib

KNOBS=(CACHES SIZES DURATION WARMUP CONNS REPEAT SUMUN_BIN PROXY_CPU LOAD_CPU RESULTS_DIR KEEP_WORK QUIET_WAIT QUIET_PCT)
COMMAND=""
for k in "${KNOBS[@]}"; do
  if [[ -n "${!k+x}" ]]; then COMMAND+="$k='${!k}' "; fi
done
COMMAND+="bench/cache.sh"

CACHES=${CACHES:-"sumun varnish nginx"}
SIZES=${SIZES:-"1024 102400"}
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-64}
REPEAT=${REPEAT:-1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORK=${KEEP_WORK:-0}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_PCT=${QUIET_PCT:-5}

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[bench] ERROR: %s\n' "$*" >&2; exit 1; }

for c in $CACHES; do
  case $c in sumun|varnish|nginx) ;; *) die "unknown cache '$c' in CACHES (known: sumun varnish nginx)";; esac
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"

# shellcheck source=lib/common.sh
source "$BENCH_DIR/lib/common.sh"

# ---------------------------------------------------------------- 1. packages
need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v varnishd >/dev/null || [[ -x /usr/sbin/varnishd ]] || need+=(varnish)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
apt_install "${need[@]+"${need[@]}"}"
export PATH="$PATH:/usr/sbin:/sbin"
NGINX=$(command -v nginx)
VARNISHD=$(command -v varnishd)
WRK=$(command -v wrk)
ncpu=$(nproc --all)
((ncpu > PROXY_CPU && ncpu > LOAD_CPU)) || die "need cores $LOAD_CPU and $PROXY_CPU; this machine has $ncpu"
ulimit -n 65535 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ " $CACHES " == *" sumun "* ]]; then
  if [[ -z ${SUMUN_BIN:-} ]]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust or set SUMUN_BIN"
    log "building sumun: cargo build --release -p sumun"
    (cd "$REPO_ROOT" && cargo build --release -p sumun) || die "cargo build --release -p sumun failed"
    target_dir=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') || target_dir=$REPO_ROOT/target
    SUMUN_BIN=$target_dir/release/sumun
  fi
  [[ -x $SUMUN_BIN ]] || die "SUMUN_BIN=$SUMUN_BIN is not an executable"
  SUMUN_BIN=$(cd "$(dirname "$SUMUN_BIN")" && pwd)/$(basename "$SUMUN_BIN")
fi

mkdir -p "$BENCH_DIR/work"
WORK=$(mktemp -d "$BENCH_DIR/work/cache.XXXXXX")
chmod 755 "$WORK"
DATA=$WORK/data
mkdir -p "$DATA"
log "work dir: $WORK"

DURATION_S=$(python3 -c 'import re,sys,math; m=re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", sys.argv[1]); print(math.ceil(float(m.group(1))*{"ms":.001,"s":1,None:1,"m":60}[m.group(2)]))' "$DURATION")

wait_ready() {                # wait_ready NAME PORT PGID LOGFILE PATH
  local rc=0
  python3 "$LIB/ready.py" --port "$2" --pid "$3" --timeout 20 --path "$5" 2>"$WORK/ready.err" || rc=$?
  if ((rc != 0)); then
    { echo "--- $1 did not come up: $(cat "$WORK/ready.err")"; tail -n 30 "$4" 2>/dev/null || true; } >&2
    die "$1 failed to come up on 127.0.0.1:$2"
  fi
}

# ---------------------------------------------------------------- 2. backend
BACKEND_PORT=$(free_port)
mkdir -p "$WORK/backend/www"
for size in $SIZES; do
  head -c "$size" /dev/zero | tr '\0' 'x' >"$WORK/backend/www/obj-$size"
done
cat >"$WORK/backend/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT backlog=4096;
    root $WORK/backend/www;
    location / { add_header Cache-Control "public, max-age=86400"; }
    location = /__backend_status { stub_status; }
  }
}
CONF
log "starting backend nginx on 127.0.0.1:$BACKEND_PORT (core $LOAD_CPU)"
start_group "$LOAD_CPU" "$WORK/backend/stderr.log" "$NGINX" -p "$WORK/backend" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" -g 'daemon off;'
BACKEND_PGID=$LAST_PGID
first_size=${SIZES%% *}
wait_ready backend "$BACKEND_PORT" "$BACKEND_PGID" "$WORK/backend/stderr.log" "/obj-$first_size"

backend_requests() {
  curl -s "http://127.0.0.1:$BACKEND_PORT/__backend_status" | awk 'NR==3 {print $3}'
}

# ---------------------------------------------------------------- 3. caches
start_cache() {               # start_cache NAME DIR -> CACHE_PORT, CACHE_PGID
  local c=$1 dir=$2
  CACHE_PORT=$(free_port)
  case $c in
  sumun)
    cat >"$dir/sumun.toml" <<CONF
access_log = "off"

[listener.web]
bind = "127.0.0.1:$CACHE_PORT"
limits = { max_connections = 20000 }

[upstream.backend]
endpoints = ["127.0.0.1:$BACKEND_PORT"]

[cache]
memory = "256MiB"

[[route]]
name = "all"
to = { upstream = "backend" }
cache = true
CONF
    start_group "$PROXY_CPU" "$dir/stderr.log" "$SUMUN_BIN" serve -c "$dir/sumun.toml" --threads 1 ;;
  varnish)
    cat >"$dir/default.vcl" <<CONF
vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "$BACKEND_PORT"; }
CONF
    # -F: foreground; one thread pool; malloc storage like sumun's memory tier. Varnish's
    # shared-memory log is written per request by design and counted in its CPU.
    start_group "$PROXY_CPU" "$dir/stderr.log" "$VARNISHD" -F -n "$dir/varnish" -a "127.0.0.1:$CACHE_PORT" \
      -f "$dir/default.vcl" -s malloc,256m -p thread_pools=1 -p thread_pool_min=100 ;;
  nginx)
    mkdir -p "$dir/cache"
    cat >"$dir/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  proxy_cache_path $dir/cache keys_zone=hits:16m max_size=256m;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$CACHE_PORT backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache hits;
    }
  }
}
CONF
    start_group "$PROXY_CPU" "$dir/stderr.log" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' ;;
  esac
  CACHE_PGID=$LAST_PGID
  wait_ready "$c" "$CACHE_PORT" "$CACHE_PGID" "$dir/stderr.log" "/obj-$first_size"
}

run_wrk() {                   # run_wrk PORT PATH DURATION OUT
  timeout --kill-after=5 $((DURATION_S + 60)) taskset -c "$LOAD_CPU" "$WRK" -t1 -c"$CONNS" -d"$3" --latency \
    -s "$LIB/wrk-report.lua" "http://127.0.0.1:$1$2" >"$4" 2>&1 || { cat "$4" >&2; die "wrk failed against port $1"; }
  grep -q '^WRKJSON ' "$4" || { cat "$4" >&2; die "wrk gave no report against port $1"; }
}

for c in $CACHES; do
  dir=$WORK/$c
  mkdir -p "$dir"
  log "$c: starting on core $PROXY_CPU"
  start_cache "$c" "$dir"
  for size in $SIZES; do
    out=$DATA/$c/$size
    mkdir -p "$out"
    path=/obj-$size
    # Fill, then check that the next request is a hit (the backend sees no new request).
    curl -s -o /dev/null "http://127.0.0.1:$CACHE_PORT$path"
    before=$(backend_requests)
    curl -s -o /dev/null "http://127.0.0.1:$CACHE_PORT$path"
    after=$(backend_requests)
    # stub_status counts its own request too.
    ((after - before <= 1)) || die "$c: the second request for $path was not a hit"
    run_wrk "$CACHE_PORT" "$path" "$WARMUP" "$out/warmup.txt"
    for ((r = 1; r <= REPEAT; r++)); do
      mkdir -p "$out/load-$r"
      if ((QUIET_WAIT > 0)) && ! busy=$(python3 "$LIB/procinfo.py" quiet "$PROXY_CPU" "$QUIET_PCT" "$QUIET_WAIT"); then
        log "warning: core $PROXY_CPU still ${busy}% busy with other processes; measuring anyway"
      fi
      log "$c: $size-byte hits, run $r/$REPEAT, wrk -t1 -c$CONNS -d$DURATION"
      backend_requests >"$out/load-$r/backend-before.txt"
      python3 "$LIB/procinfo.py" snapshot "$CACHE_PGID" >"$out/load-$r/before.json"
      run_wrk "$CACHE_PORT" "$path" "$DURATION" "$out/load-$r/wrk.txt"
      python3 "$LIB/procinfo.py" snapshot "$CACHE_PGID" >"$out/load-$r/after.json"
      backend_requests >"$out/load-$r/backend-after.txt"
      grep -E 'Requests/sec' "$out/load-$r/wrk.txt" | sed 's/^/    /' >&2 || true
    done
  done
  stop_group "$CACHE_PGID"
done
stop_group "$BACKEND_PGID"

# ---------------------------------------------------------------- 4. report
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y-%m-%d)
OUT=$RESULTS_DIR/cache-$STAMP
python3 "$LIB/cache_report.py" --data "$DATA" --out "$OUT" --caches "$CACHES" --sizes "$SIZES" \
  --command "$COMMAND" --duration "$DURATION" --conns "$CONNS" --repeat "$REPEAT" \
  --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" --repo "$REPO_ROOT" \
  --versions "sumun=${SUMUN_BIN:-}" "varnish=$("$VARNISHD" -V 2>&1 | head -1)" "nginx=$("$NGINX" -v 2>&1)"
log "wrote $OUT.json and $OUT.md"
FAILED=0
