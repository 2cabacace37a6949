#!/usr/bin/env bash
# Reverse-proxy cost of sumun beside nginx and HAProxy, measured the same way in one run
# (DESIGN.md §7). See bench/README.md.
#
#   bench/reverse-proxy.sh                              # everything, ~1.5 min + build
#   PROXIES="nginx haproxy" DURATION=3s bench/reverse-proxy.sh
#   SUMUN_BIN=target/release/sumun bench/reverse-proxy.sh
#
# Environment (defaults in brackets):
#   PROXIES        proxies to measure, in order              ["sumun nginx haproxy"]
#   DURATION       measured wrk run                          [6s]
#   WARMUP         unmeasured wrk run before it              [1s]
#   CONNS          wrk connections                           [64]
#   REPEAT         measured runs per proxy (median reported) [1]
#   BASELINE       1 = also load the backend directly         [1]
#   IDLE_CONNS     idle keep-alive connections (0 = skip)     [10000]
#   IDLE_CONCURRENCY  connection set-ups in flight at once    [200]
#   SUMUN_BIN      use this binary instead of `cargo build --release -p sumun`
#   SUMUN_ARGS     extra arguments after `serve -c CONF --threads 1`
#   READY_TIMEOUT  seconds a server gets to answer GET /       [20]
#   PROXY_CPU / LOAD_CPU  cores for the proxy / for wrk+backend [1 / 0]
#   NOFILE         fd limit for everything started            [65535]
#   RESULTS_DIR    where the .json/.md go                     [bench/results]
#   KEEP_WORK      1 = keep the temporary work dir (configs, logs) [0; kept on failure]
#   QUIET_WAIT     before each measured run, wait up to this many seconds for the proxy's
#                  core to be idle (< QUIET_PCT % busy) — other jobs on it inflate the cost [60]
#   QUIET_PCT      [5]
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
LIB=$BENCH_DIR/lib

# The exact command, with the knobs that were set explicitly (before defaults apply).
KNOBS=(PROXIES DURATION WARMUP CONNS REPEAT BASELINE IDLE_CONNS IDLE_CONCURRENCY SUMUN_BIN
       SUMUN_ARGS READY_TIMEOUT PROXY_CPU LOAD_CPU NOFILE RESULTS_DIR KEEP_WORK QUIET_WAIT QUIET_PCT)
shquote() {                   # quote for a POSIX shell, only when needed
  if [[ $1 =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
COMMAND=""
for k in "${KNOBS[@]}"; do
  if [[ -n "${!k+x}" ]]; then COMMAND+="$k=$(shquote "${!k}") "; fi
done
COMMAND+="bench/reverse-proxy.sh"
for a in "$@"; do COMMAND+=" $(shquote "$a")"; done

PROXIES=${PROXIES:-"sumun nginx haproxy"}
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-64}
REPEAT=${REPEAT:-1}
BASELINE=${BASELINE:-1}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_CONCURRENCY=${IDLE_CONCURRENCY:-200}
SUMUN_ARGS=${SUMUN_ARGS:-}
READY_TIMEOUT=${READY_TIMEOUT:-20}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
NOFILE=${NOFILE:-65535}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORK=${KEEP_WORK:-0}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_PCT=${QUIET_PCT:-5}

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[bench] ERROR: %s\n' "$*" >&2; exit 1; }

for p in $PROXIES; do
  case $p in sumun|nginx|haproxy) ;; *) die "unknown proxy '$p' in PROXIES (known: sumun nginx haproxy)";; esac
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"

# shellcheck source=lib/common.sh
source "$BENCH_DIR/lib/common.sh"

# ---------------------------------------------------------------- 1. packages
install_missing() {
  local need=()
  command -v nginx   >/dev/null || [[ -x /usr/sbin/nginx ]]   || need+=(nginx)
  command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
  command -v wrk     >/dev/null || need+=(wrk)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v setsid  >/dev/null || need+=(util-linux)
  command -v python3 >/dev/null || need+=(python3)
  command -v getconf >/dev/null || need+=(libc-bin)
  command -v timeout >/dev/null || need+=(coreutils)
  command -v git     >/dev/null || need+=(git)
  apt_install "${need[@]+"${need[@]}"}"
}
install_missing
export PATH="$PATH:/usr/sbin:/sbin"
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)
WRK=$(command -v wrk)

ncpu=$(nproc --all)
((ncpu > PROXY_CPU && ncpu > LOAD_CPU)) || die "need cores $LOAD_CPU and $PROXY_CPU; this machine has $ncpu"
# Raise the fd limit for everything started from here (proxies, backend, wrk, the idle test).
# Without CAP_SYS_RESOURCE (containers) the hard limit caps it: use what we can get.
if ! ulimit -n "$NOFILE" 2>/dev/null; then
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] || ulimit -n "$hard"
  log "note: cannot raise the fd limit to $NOFILE (hard limit $hard); using $(ulimit -n)"
fi
FDLIM=$(ulimit -n)
[[ $FDLIM == unlimited ]] && FDLIM=1048576
((FDLIM >= IDLE_CONNS + 1000)) || die "fd limit $FDLIM is too low for IDLE_CONNS=$IDLE_CONNS (need $((IDLE_CONNS + 1000)))"
# Connections the proxies may hold (client + upstream side), within the fd limit.
MAXCONN=$((FDLIM - 100))
((MAXCONN > 40000)) && MAXCONN=40000

# ---------------------------------------------------------------- 2. sumun
if [[ " $PROXIES " == *" sumun "* ]]; then
  if [[ -z ${SUMUN_BIN:-} ]]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust or set SUMUN_BIN (or PROXIES without sumun)"
    log "building sumun: cargo build --release -p sumun"
    (cd "$REPO_ROOT" && cargo build --release -p sumun) \
      || die "cargo build --release -p sumun failed (set SUMUN_BIN, or PROXIES=\"nginx haproxy\" to skip sumun)"
    target_dir=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') || target_dir=$REPO_ROOT/target
    SUMUN_BIN=$target_dir/release/sumun
  fi
  [[ -x $SUMUN_BIN ]] || die "SUMUN_BIN=$SUMUN_BIN is not an executable"
  SUMUN_BIN=$(cd "$(dirname "$SUMUN_BIN")" && pwd)/$(basename "$SUMUN_BIN")
fi
export SUMUN_BIN="${SUMUN_BIN:-}"

# ---------------------------------------------------------------- helpers
mkdir -p "$BENCH_DIR/work"
WORK=$(mktemp -d "$BENCH_DIR/work/reverse-proxy.XXXXXX")
chmod 755 "$WORK"
DATA=$WORK/data
mkdir -p "$DATA"
log "work dir: $WORK"

seconds_of() {                # wrk duration (6s, 1m, 500ms…) -> whole seconds, rounded up
  python3 - "$1" <<'EOF'
import math, re, sys
m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", sys.argv[1])
if not m: sys.exit(f"bad duration {sys.argv[1]!r}")
print(math.ceil(float(m.group(1)) * {"ms": .001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]))
EOF
}
DURATION_S=$(seconds_of "$DURATION")
seconds_of "$WARMUP" >/dev/null

wait_ready() {                # wait_ready NAME PORT PGID LOGFILE
  local name=$1 port=$2 pgid=$3 logf=$4 rc=0
  python3 "$LIB/ready.py" --port "$port" --pid "$pgid" --timeout "$READY_TIMEOUT" 2>"$WORK/ready.err" || rc=$?
  if ((rc != 0)); then
    {
      echo "--- $name did not come up: $(cat "$WORK/ready.err")"
      echo "--- last lines of $logf:"
      tail -n 30 "$logf" 2>/dev/null || true
    } >&2
    die "$name failed to come up on 127.0.0.1:$port"
  fi
}

run_wrk() {                   # run_wrk PORT DURATION OUTFILE
  timeout --kill-after=5 $((DURATION_S + 60)) \
    taskset -c "$LOAD_CPU" "$WRK" -t1 -c"$CONNS" -d"$2" --latency -s "$LIB/wrk-report.lua" \
    "http://127.0.0.1:$1/" >"$3" 2>&1 || { cat "$3" >&2; die "wrk failed against port $1"; }
  grep -q '^WRKJSON ' "$3" || { cat "$3" >&2; die "wrk gave no report against port $1"; }
}

snapshot() { python3 "$LIB/procinfo.py" snapshot "$1"; }

backend_counters() {          # "accepts requests" of the backend nginx (stub_status)
  python3 - "$BACKEND_PORT" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/__backend_status", timeout=5).read().decode()
accepts, handled, requests = body.splitlines()[2].split()
print(accepts, requests)
EOF
}

# ---------------------------------------------------------------- 3. backend
BACKEND_PORT=$(free_port)
mkdir -p "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<EOF
# Trivial backend: one worker, pinned with the load generator to core $LOAD_CPU.
user root;
worker_processes 1;
worker_rlimit_nofile $FDLIM;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections $MAXCONN; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT backlog=4096;
    location / { return 200 "hello world\n"; }
    # Counters used to check upstream keep-alive (connections accepted per measured run).
    location = /__backend_status { stub_status; }
  }
}
EOF
log "starting backend nginx on 127.0.0.1:$BACKEND_PORT (core $LOAD_CPU)"
start_group "$LOAD_CPU" "$WORK/backend/stderr.log" \
  "$NGINX" -p "$WORK/backend" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" -g 'daemon off;'
BACKEND_PGID=$LAST_PGID
wait_ready "backend nginx" "$BACKEND_PORT" "$BACKEND_PGID" "$WORK/backend/stderr.log"

# ---------------------------------------------------------------- 4./5. proxies
write_config() {              # write_config PROXY PORT DIR -> path of the config
  local p=$1 port=$2 dir=$3
  case $p in
  sumun)
    cat >"$dir/sumun.toml" <<EOF
access_log = "off"

[listener.web]
bind = "127.0.0.1:$port"
limits = { max_connections = 20000 }

[upstream.backend]
endpoints = ["127.0.0.1:$BACKEND_PORT"]
pool = { max_idle_per_endpoint = 128 }

[[route]]
name = "all"
to = { upstream = "backend" }
EOF
    echo "$dir/sumun.toml" ;;
  nginx)
    cat >"$dir/nginx.conf" <<EOF
user root;
worker_processes 1;
worker_rlimit_nofile $FDLIM;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $MAXCONN; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  upstream backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 64;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
    echo "$dir/nginx.conf" ;;
  haproxy)
    cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  # HAProxy sizes its fd needs as 2 per connection; allow 20000 connections even when the
  # hard fd limit is lower (idle client connections need only one fd each).
  maxconn 20000
  ulimit-n $FDLIM
  no strict-limits
  # no "log" line: HAProxy logs nothing

defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  maxconn 20000

frontend web
  bind 127.0.0.1:$port
  default_backend backend

backend backend
  server s1 127.0.0.1:$BACKEND_PORT
EOF
    echo "$dir/haproxy.cfg" ;;
  esac
}

start_proxy() {               # start_proxy PROXY DIR -> sets PROXY_PORT, PROXY_PGID
  local p=$1 dir=$2 conf
  PROXY_PORT=$(free_port)
  conf=$(write_config "$p" "$PROXY_PORT" "$dir")
  local logf=$dir/stderr.log
  case $p in
  sumun)
    # shellcheck disable=SC2086
    start_group "$PROXY_CPU" "$logf" "$SUMUN_BIN" serve -c "$conf" --threads 1 $SUMUN_ARGS ;;
  nginx)
    start_group "$PROXY_CPU" "$logf" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$conf" -g 'daemon off;' ;;
  haproxy)
    start_group "$PROXY_CPU" "$logf" "$HAPROXY" -db -f "$conf" ;;
  esac
  PROXY_PGID=$LAST_PGID
  wait_ready "$p" "$PROXY_PORT" "$PROXY_PGID" "$logf"
}

measure_load() {              # measure_load NAME PORT [PGID]
  local name=$1 port=$2 pgid=${3:-} out=$DATA/$1 r busy
  mkdir -p "$out"
  log "$name: warm-up $WARMUP"
  run_wrk "$port" "$WARMUP" "$out/warmup.txt"
  for ((r = 1; r <= REPEAT; r++)); do
    mkdir -p "$out/load-$r"
    log "$name: measured run $r/$REPEAT, wrk -t1 -c$CONNS -d$DURATION"
    if [[ -n $pgid ]] && ((QUIET_WAIT > 0)); then
      if ! busy=$(python3 "$LIB/procinfo.py" quiet "$PROXY_CPU" "$QUIET_PCT" "$QUIET_WAIT"); then
        log "warning: core $PROXY_CPU still ${busy}% busy with other processes after ${QUIET_WAIT}s; measuring anyway"
      fi
    fi
    backend_counters >"$out/load-$r/backend-before.txt"
    [[ -n $pgid ]] && snapshot "$pgid" >"$out/load-$r/before.json"
    run_wrk "$port" "$DURATION" "$out/load-$r/wrk.txt"
    [[ -n $pgid ]] && snapshot "$pgid" >"$out/load-$r/after.json"
    backend_counters >"$out/load-$r/backend-after.txt"
    grep -E 'Requests/sec|requests in' "$out/load-$r/wrk.txt" | sed 's/^/    /' >&2 || true
  done
}

if [[ $BASELINE == 1 ]]; then
  measure_load direct "$BACKEND_PORT"
fi

for p in $PROXIES; do
  dir=$WORK/$p
  mkdir -p "$dir"
  log "$p: starting on core $PROXY_CPU"
  start_proxy "$p" "$dir"
  log "$p: up on 127.0.0.1:$PROXY_PORT, pids $(python3 "$LIB/procinfo.py" pids "$PROXY_PGID" | tr '\n' ' ')"
  measure_load "$p" "$PROXY_PORT" "$PROXY_PGID"
  stop_group "$PROXY_PGID"

  if ((IDLE_CONNS > 0)); then
    rm -rf "$dir" && mkdir -p "$dir"
    log "$p: fresh start for the idle test ($IDLE_CONNS keep-alive connections)"
    start_proxy "$p" "$dir"
    timeout --kill-after=5 600 taskset -c "$LOAD_CPU" python3 "$LIB/idle_conns.py" \
      --port "$PROXY_PORT" --pgid "$PROXY_PGID" --conns "$IDLE_CONNS" \
      --concurrency "$IDLE_CONCURRENCY" \
      --backend-status "http://127.0.0.1:$BACKEND_PORT/__backend_status" >"$DATA/$p/idle.json" \
      || die "$p: idle connection test failed"
    python3 - "$DATA/$p/idle.json" <<'EOF' >&2
import json, sys
d = json.load(open(sys.argv[1]))
print(f"    opened {d['opened_ok']}/{d['target_conns']}, still open {d['still_open']}, "
      f"RSS {d['rss_before_kb']} -> {d['rss_after_kb']} KiB, {d['per_conn_bytes']} B/conn, errors {d['errors']}, "
      f"backend connections held {d['backend_active_conns']}")
EOF
    stop_group "$PROXY_PGID"
  fi
done

stop_group "$BACKEND_PGID"

# ---------------------------------------------------------------- 6. report
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y-%m-%d)
OUT=$RESULTS_DIR/reverse-proxy-$STAMP
python3 "$LIB/report.py" --data "$DATA" --out "$OUT" --repo "$REPO_ROOT" \
  --proxies "$PROXIES" --baseline "$BASELINE" --command "$COMMAND" \
  --duration "$DURATION" --warmup "$WARMUP" --conns "$CONNS" --repeat "$REPEAT" \
  --idle-conns "$IDLE_CONNS" --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" \
  --nofile "$FDLIM" --nginx "$NGINX" --haproxy "$HAPROXY" --wrk "$WRK" --sumun "${SUMUN_BIN:-}"
log "wrote $OUT.json and $OUT.md"
FAILED=0
