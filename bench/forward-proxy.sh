#!/usr/bin/env bash
# Forward-proxy cost of sumun beside Squid and tinyproxy, measured the same way in one run
# (DESIGN.md §7, issue 4's targets): plain-HTTP absolute-form requests (CPU µs/request, req/s,
# p50/p99, peak RSS) and CONNECT tunnel throughput (MB/s of a 1 GiB transfer, proxy CPU per GB,
# against a direct loopback transfer by the same client). See bench/README.md.
#
#   bench/forward-proxy.sh                               # everything, ~1 min + build
#   PROXIES="squid tinyproxy" DURATION=3s bench/forward-proxy.sh
#   SUMUN_BIN=target/release/sumun bench/forward-proxy.sh
#
# Environment (defaults in brackets):
#   PROXIES        proxies to measure, in order              ["sumun squid tinyproxy"]
#   DURATION       measured wrk run                          [6s]
#   WARMUP         unmeasured wrk run before it              [1s]
#   CONNS          wrk connections                           [64]
#   REPEAT         measured wrk runs per proxy (median)      [1]
#   BASELINE       1 = also load the origin directly (wrk)    [1]
#   TUNNEL         1 = run the CONNECT throughput test        [1]
#   TUNNEL_SIZE    size of the transferred file (truncate -s) [1G]
#   TUNNEL_REPEAT  tunnel transfers per proxy, each paired with a direct one (medians) [3]
#   TUNNEL_TIMEOUT seconds one transfer may take               [120]
#   ORIGIN_SENDFILE  nginx `sendfile` for the origin (on|off) [on]
#   SUMUN_BIN      use this binary instead of `cargo build --release -p sumun`
#   SUMUN_ARGS     extra arguments after `serve -c CONF --threads 1`
#   READY_TIMEOUT  seconds a proxy gets to forward GET and CONNECT [20]
#   PROXY_CPU / LOAD_CPU  cores for the proxy / for wrk, curl and the origin [1 / 0]
#   NOFILE         fd limit for everything started            [65535]
#   RESULTS_DIR    where the .json/.md go                     [bench/results]
#   KEEP_WORK      1 = keep the temporary work dir (configs, logs) [0; kept on failure]
#   QUIET_WAIT     before each measured run, wait up to this many seconds for the proxy's
#                  core to be idle (< QUIET_PCT % busy)       [60]
#   QUIET_PCT      [5]
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
LIB=$BENCH_DIR/lib

# The exact command, with the knobs that were set explicitly (before defaults apply).
KNOBS=(PROXIES DURATION WARMUP CONNS REPEAT BASELINE TUNNEL TUNNEL_SIZE TUNNEL_REPEAT
       TUNNEL_TIMEOUT ORIGIN_SENDFILE SUMUN_BIN SUMUN_ARGS READY_TIMEOUT PROXY_CPU LOAD_CPU NOFILE
       RESULTS_DIR KEEP_WORK QUIET_WAIT QUIET_PCT)
shquote() {                   # quote for a POSIX shell, only when needed
  if [[ $1 =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
COMMAND=""
for k in "${KNOBS[@]}"; do
  if [[ -n "${!k+x}" ]]; then COMMAND+="$k=$(shquote "${!k}") "; fi
done
COMMAND+="bench/forward-proxy.sh"
for a in "$@"; do COMMAND+=" $(shquote "$a")"; done

PROXIES=${PROXIES:-"sumun squid tinyproxy"}
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-64}
REPEAT=${REPEAT:-1}
BASELINE=${BASELINE:-1}
TUNNEL=${TUNNEL:-1}
TUNNEL_SIZE=${TUNNEL_SIZE:-1G}
TUNNEL_REPEAT=${TUNNEL_REPEAT:-3}
TUNNEL_TIMEOUT=${TUNNEL_TIMEOUT:-120}
ORIGIN_SENDFILE=${ORIGIN_SENDFILE:-on}
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
  case $p in sumun|squid|tinyproxy) ;; *) die "unknown proxy '$p' in PROXIES (known: sumun squid tinyproxy)";; esac
done
[[ -n ${PROXIES// } ]] || die "PROXIES is empty"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"
[[ $TUNNEL_REPEAT =~ ^[1-9][0-9]*$ ]] || die "TUNNEL_REPEAT must be a positive integer"
[[ $ORIGIN_SENDFILE == on || $ORIGIN_SENDFILE == off ]] || die "ORIGIN_SENDFILE must be on or off"

# shellcheck source=lib/common.sh
source "$BENCH_DIR/lib/common.sh"

# ---------------------------------------------------------------- 1. packages
# Services a package may start on install (Squid on :3128, tinyproxy on :8888): this script
# runs its own instances, so the packages' services are kept from starting, and stopped and
# disabled if they started anyway (only for the packages installed by this run).
disable_services() {
  local svc
  for svc in "$@"; do
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    else
      if [[ -x /etc/init.d/$svc ]] && "/etc/init.d/$svc" status >/dev/null 2>&1; then
        log "stopping the $svc service the package started"
        "/etc/init.d/$svc" stop >/dev/null 2>&1 || log "warning: could not stop the $svc service"
      fi
      if command -v update-rc.d >/dev/null; then update-rc.d "$svc" disable >/dev/null 2>&1 || true; fi
    fi
  done
}

install_missing() {
  local need=()
  command -v squid     >/dev/null || [[ -x /usr/sbin/squid ]]     || need+=(squid)
  command -v tinyproxy >/dev/null || [[ -x /usr/bin/tinyproxy ]]  || need+=(tinyproxy)
  command -v nginx     >/dev/null || [[ -x /usr/sbin/nginx ]]     || need+=(nginx)
  command -v wrk       >/dev/null || need+=(wrk)
  command -v curl      >/dev/null || need+=(curl)
  command -v taskset   >/dev/null || need+=(util-linux)
  command -v setsid    >/dev/null || need+=(util-linux)
  command -v python3   >/dev/null || need+=(python3)
  command -v getconf   >/dev/null || need+=(libc-bin)
  command -v timeout   >/dev/null || need+=(coreutils)
  command -v git       >/dev/null || need+=(git)
  apt_install "${need[@]+"${need[@]}"}"
  local svcs=()
  for p in "${need[@]}"; do case $p in squid|tinyproxy|nginx) svcs+=("$p");; esac; done
  ((${#svcs[@]} == 0)) || disable_services "${svcs[@]}"
}
install_missing
export PATH="$PATH:/usr/sbin:/sbin"
NGINX=$(command -v nginx)
SQUID=$(command -v squid)
TINYPROXY=$(command -v tinyproxy)
WRK=$(command -v wrk)
CURL=$(command -v curl)

ncpu=$(nproc --all)
((ncpu > PROXY_CPU && ncpu > LOAD_CPU)) || die "need cores $LOAD_CPU and $PROXY_CPU; this machine has $ncpu"
if ! ulimit -n "$NOFILE" 2>/dev/null; then
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] || ulimit -n "$hard"
  log "note: cannot raise the fd limit to $NOFILE (hard limit $hard); using $(ulimit -n)"
fi
FDLIM=$(ulimit -n)
[[ $FDLIM == unlimited ]] && FDLIM=1048576
MAXCONN=$((FDLIM - 100))
((MAXCONN > 40000)) && MAXCONN=40000

# ---------------------------------------------------------------- 2. sumun
if [[ " $PROXIES " == *" sumun "* ]]; then
  if [[ -z ${SUMUN_BIN:-} ]]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust or set SUMUN_BIN (or PROXIES without sumun)"
    log "building sumun: cargo build --release -p sumun"
    (cd "$REPO_ROOT" && cargo build --release -p sumun) \
      || die "cargo build --release -p sumun failed (set SUMUN_BIN, or PROXIES=\"squid tinyproxy\" to skip sumun)"
    target_dir=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') || target_dir=$REPO_ROOT/target
    SUMUN_BIN=$target_dir/release/sumun
  fi
  [[ -x $SUMUN_BIN ]] || die "SUMUN_BIN=$SUMUN_BIN is not an executable"
  SUMUN_BIN=$(cd "$(dirname "$SUMUN_BIN")" && pwd)/$(basename "$SUMUN_BIN")
fi
export SUMUN_BIN="${SUMUN_BIN:-}"

# From here on this script and its helpers (snapshots, readiness, counters, the quiet check)
# stay on the load core: a Python start-up on the proxy's core (~30 ms) would count as another
# process there — about 10 % of a 0.3 s tunnel transfer. The servers are pinned explicitly.
taskset -cp "$LOAD_CPU" $$ >/dev/null || die "taskset -cp $LOAD_CPU $$ failed"

# ---------------------------------------------------------------- helpers
mkdir -p "$BENCH_DIR/work"
WORK=$(mktemp -d "$BENCH_DIR/work/forward-proxy.XXXXXX")
chmod 755 "$WORK"
DATA=$WORK/data
mkdir -p "$DATA"
log "work dir: $WORK"
if [[ -n $SUMUN_BIN ]]; then
  # A private copy: others may rebuild target/release/sumun while this runs. The report names
  # the original path.
  mkdir -p "$WORK/bin" && cp "$SUMUN_BIN" "$WORK/bin/sumun"
  SUMUN_RUN=$WORK/bin/sumun
fi

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

fail_with_log() {             # fail_with_log NAME ERRFILE LOGFILE... MESSAGE(last)
  local name=$1 errf=$2; shift 2
  local msg=${*: -1} f
  {
    echo "--- $name: $(cat "$errf" 2>/dev/null)"
    for f in "${@:1:$#-1}"; do
      [[ -s $f ]] || continue
      echo "--- last lines of $f:"
      tail -n 30 "$f" 2>/dev/null || true
    done
  } >&2
  die "$msg"
}

wait_origin() {               # wait_origin PGID LOGFILE
  local rc=0
  python3 "$LIB/ready.py" --port "$ORIGIN_PORT" --pid "$1" --timeout "$READY_TIMEOUT" 2>"$WORK/ready.err" || rc=$?
  ((rc == 0)) || fail_with_log "origin nginx" "$WORK/ready.err" "$2" "origin nginx failed to come up on 127.0.0.1:$ORIGIN_PORT"
}

wait_proxy() {                # wait_proxy NAME PORT PGID LOGFILE...: forwards absolute-form GET and CONNECT
  local name=$1 port=$2 pgid=$3 rc=0; shift 3
  python3 "$LIB/forward_ready.py" --port "$port" --origin-port "$ORIGIN_PORT" --pid "$pgid" \
    --timeout "$READY_TIMEOUT" 2>"$WORK/ready.err" || rc=$?
  ((rc == 0)) || fail_with_log "$name" "$WORK/ready.err" "$@" \
    "$name did not forward to the origin through 127.0.0.1:$port (absolute-form GET and CONNECT)"
}

run_wrk() {                   # run_wrk URL DURATION OUTFILE [-- TARGET [close]]
  local url=$1 dur=$2 outf=$3 script=$LIB/wrk-report.lua; shift 3
  (($#)) && script=$LIB/wrk-forward.lua
  timeout --kill-after=5 $((DURATION_S + 60)) \
    taskset -c "$LOAD_CPU" "$WRK" -t1 -c"$CONNS" -d"$dur" --latency -s "$script" "$url" "$@" \
    >"$outf" 2>&1 || { cat "$outf" >&2; die "wrk failed against $url"; }
  grep -q '^WRKJSON ' "$outf" || { cat "$outf" >&2; die "wrk gave no report against $url"; }
}

snapshot() { python3 "$LIB/procinfo.py" snapshot "$1"; }

origin_counters() {           # "accepts requests" of the origin nginx (stub_status)
  python3 - "$ORIGIN_PORT" <<'EOF'
import sys, urllib.request
op = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy
body = op.open(f"http://127.0.0.1:{sys.argv[1]}/__origin_status", timeout=5).read().decode()
accepts, handled, requests = body.splitlines()[2].split()
print(accepts, requests)
EOF
}

quiet_core() {                # wait (bounded) for the proxy's core to be idle before measuring
  local busy
  ((QUIET_WAIT > 0)) || return 0
  if ! busy=$(python3 "$LIB/procinfo.py" quiet "$PROXY_CPU" "$QUIET_PCT" "$QUIET_WAIT"); then
    log "warning: core $PROXY_CPU still ${busy}% busy with other processes after ${QUIET_WAIT}s; measuring anyway"
  fi
}

# ---------------------------------------------------------------- 3. origin
ORIGIN_PORT=$(free_port)
mkdir -p "$WORK/origin"
BIG=$WORK/origin/big
if [[ $TUNNEL == 1 ]]; then
  truncate -s "$TUNNEL_SIZE" "$BIG" || die "truncate -s $TUNNEL_SIZE failed"
else
  : >"$BIG"
fi
BIG_BYTES=$(stat -c %s "$BIG")
cat >"$WORK/origin/nginx.conf" <<EOF
# Origin: one worker, pinned with the load generators to core $LOAD_CPU.
user root;
worker_processes 1;
worker_rlimit_nofile $FDLIM;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections $MAXCONN; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  sendfile $ORIGIN_SENDFILE;
  server {
    listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
    location = / { return 200 "hello world\n"; }
    # The CONNECT throughput test's file: $TUNNEL_SIZE, sparse (served from the page cache).
    location = /big { alias $BIG; default_type application/octet-stream; }
    # Counters: connections the proxy opened to the origin per measured run.
    location = /__origin_status { stub_status; }
  }
}
EOF
log "starting origin nginx on 127.0.0.1:$ORIGIN_PORT (core $LOAD_CPU, sendfile $ORIGIN_SENDFILE, /big = $BIG_BYTES bytes)"
start_group "$LOAD_CPU" "$WORK/origin/stderr.log" \
  "$NGINX" -p "$WORK/origin" -e "$WORK/origin/error.log" -c "$WORK/origin/nginx.conf" -g 'daemon off;'
ORIGIN_PGID=$LAST_PGID
wait_origin "$ORIGIN_PGID" "$WORK/origin/stderr.log"

# ---------------------------------------------------------------- 4. proxies
write_config() {              # write_config PROXY PORT DIR -> path of the config
  local p=$1 port=$2 dir=$3
  case $p in
  sumun)
    cat >"$dir/sumun.toml" <<EOF
access_log = "off"

[listener.proxy]
bind = "127.0.0.1:$port"
forward_proxy = true
limits = { max_connections = 20000 }

[forward_proxy]
# block_private stays on; loopback is allowed explicitly for the benchmark.
allow = ["127.0.0.0/8"]
EOF
    echo "$dir/sumun.toml" ;;
  squid)
    # Squid drops to its cache_effective_user (proxy) when started as root.
    chown proxy: "$dir" 2>/dev/null || chmod 777 "$dir"
    cat >"$dir/squid.conf" <<EOF
# One Squid process (-N, workers 1), no caching, no access log; loopback only.
http_port 127.0.0.1:$port
workers 1
max_filedescriptors $FDLIM
pid_filename $dir/squid.pid
cache_log $dir/cache.log
access_log none
cache_store_log none
logfile_rotate 0
coredump_dir $dir
cache deny all
cache_mem 0 MB
pinger_enable off
shutdown_lifetime 0 seconds
acl origin_port port $ORIGIN_PORT
http_access deny CONNECT !origin_port
http_access allow all
EOF
    echo "$dir/squid.conf" ;;
  tinyproxy)
    cat >"$dir/tinyproxy.conf" <<EOF
# tinyproxy 1.11 is one process with a thread per connection (no StartServers/pool knobs).
User nobody
Group nogroup
Listen 127.0.0.1
Port $port
Timeout 600
MaxClients 1024
LogLevel Critical
Allow 127.0.0.1
ConnectPort $ORIGIN_PORT
EOF
    echo "$dir/tinyproxy.conf" ;;
  esac
}

start_proxy() {               # start_proxy PROXY DIR -> sets PROXY_PORT, PROXY_PGID
  local p=$1 dir=$2 conf
  PROXY_PORT=$(free_port)
  conf=$(write_config "$p" "$PROXY_PORT" "$dir")
  local logf=$dir/stderr.log
  case $p in
  sumun)
    "$SUMUN_RUN" check -c "$conf" >"$dir/check.txt" 2>&1 \
      || { cat "$dir/check.txt" >&2; die "sumun check refused $conf (is [forward_proxy] implemented in this build?)"; }
    # shellcheck disable=SC2086
    start_group "$PROXY_CPU" "$logf" "$SUMUN_RUN" serve -c "$conf" --threads 1 $SUMUN_ARGS ;;
  squid)
    "$SQUID" -k parse -f "$conf" >"$dir/parse.txt" 2>&1 \
      || { tail -n 20 "$dir/parse.txt" >&2; die "squid -k parse refused $conf"; }
    start_group "$PROXY_CPU" "$logf" "$SQUID" -N -f "$conf" ;;
  tinyproxy)
    start_group "$PROXY_CPU" "$logf" "$TINYPROXY" -d -c "$conf" ;;
  esac
  PROXY_PGID=$LAST_PGID
  wait_proxy "$p" "$PROXY_PORT" "$PROXY_PGID" "$logf" "$dir/cache.log"
}

measure_http() {              # measure_http NAME PORT [PGID]: plain-HTTP load runs
  local name=$1 port=$2 pgid=${3:-} out=$DATA/$1 r
  local -a fwd=()
  [[ $name == direct ]] || fwd=(-- "http://127.0.0.1:$ORIGIN_PORT/")
  mkdir -p "$out"
  log "$name: HTTP warm-up $WARMUP"
  run_wrk "http://127.0.0.1:$port/" "$WARMUP" "$out/warmup.txt" "${fwd[@]+"${fwd[@]}"}"
  for ((r = 1; r <= REPEAT; r++)); do
    mkdir -p "$out/load-$r"
    log "$name: HTTP measured run $r/$REPEAT, wrk -t1 -c$CONNS -d$DURATION${fwd[1]+ (absolute-form ${fwd[1]})}"
    [[ -n $pgid ]] && quiet_core
    origin_counters >"$out/load-$r/backend-before.txt"
    [[ -n $pgid ]] && snapshot "$pgid" >"$out/load-$r/before.json"
    run_wrk "http://127.0.0.1:$port/" "$DURATION" "$out/load-$r/wrk.txt" "${fwd[@]+"${fwd[@]}"}"
    [[ -n $pgid ]] && snapshot "$pgid" >"$out/load-$r/after.json"
    origin_counters >"$out/load-$r/backend-after.txt"
    grep -E 'Requests/sec|requests in|Socket errors|Non-2xx' "$out/load-$r/wrk.txt" | sed 's/^/    /' >&2 || true
  done
}

run_curl() {                  # run_curl OUTFILE [PROXY_PORT]: one transfer of /big, curl on LOAD_CPU
  local outf=$1 port=${2:-} rc=0
  local -a via=(--noproxy '*')
  [[ -n $port ]] && via=(--proxytunnel --proxy "http://127.0.0.1:$port")
  timeout --kill-after=5 "$TUNNEL_TIMEOUT" taskset -c "$LOAD_CPU" \
    "$CURL" -q -sS --fail "${via[@]}" -o /dev/null -w '%{json}' \
    "http://127.0.0.1:$ORIGIN_PORT/big" >"$outf" 2>"$outf.err" || rc=$?
  ((rc == 0)) || { cat "$outf.err" "$outf" >&2; die "curl ${port:+through 127.0.0.1:$port }failed (exit $rc)"; }
  python3 - "$outf" "$BIG_BYTES" <<'EOF' || die "incomplete transfer ($outf)"
import json, sys
d = json.load(open(sys.argv[1]))
if d.get("http_code") != 200 or d.get("size_download") != int(sys.argv[2]):
    sys.exit(f"curl: status {d.get('http_code')}, {d.get('size_download')} of {sys.argv[2]} bytes")
print(f"    {d['size_download']:,} bytes in {d['time_total']:.3f} s = {d['speed_download'] / 1e6:,.0f} MB/s",
      file=sys.stderr)
EOF
}

measure_tunnel() {            # measure_tunnel NAME PORT PGID: paired direct / CONNECT transfers
  local name=$1 port=$2 pgid=$3 out=$DATA/$1 r
  for ((r = 1; r <= TUNNEL_REPEAT; r++)); do
    mkdir -p "$out/tunnel-$r"
    log "$name: transfer $r/$TUNNEL_REPEAT of $TUNNEL_SIZE — direct, then through a CONNECT tunnel"
    run_curl "$out/tunnel-$r/direct.json"
    quiet_core
    snapshot "$pgid" >"$out/tunnel-$r/before.json"
    run_curl "$out/tunnel-$r/curl.json" "$port"
    snapshot "$pgid" >"$out/tunnel-$r/after.json"
  done
}

if [[ $BASELINE == 1 ]]; then
  measure_http direct "$ORIGIN_PORT"
fi
if [[ $TUNNEL == 1 ]]; then
  log "origin: unmeasured transfer of /big (fills the page cache)"
  run_curl "$WORK/origin/prime.json"
fi

for p in $PROXIES; do
  dir=$WORK/$p
  mkdir -p "$dir"
  log "$p: starting on core $PROXY_CPU"
  start_proxy "$p" "$dir"
  log "$p: up on 127.0.0.1:$PROXY_PORT, pids $(python3 "$LIB/procinfo.py" pids "$PROXY_PGID" | tr '\n' ' ')"
  mkdir -p "$DATA/$p"
  for f in "$dir/sumun.toml" "$dir/squid.conf" "$dir/tinyproxy.conf"; do
    if [[ -f $f ]]; then cp "$f" "$DATA/$p/config"; fi
  done
  measure_http "$p" "$PROXY_PORT" "$PROXY_PGID"
  if [[ $TUNNEL == 1 ]]; then
    measure_tunnel "$p" "$PROXY_PORT" "$PROXY_PGID"
  fi
  stop_group "$PROXY_PGID"
done

stop_group "$ORIGIN_PGID"

# ---------------------------------------------------------------- 5. report
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y-%m-%d)
OUT=$RESULTS_DIR/forward-proxy-$STAMP
python3 "$LIB/forward_report.py" --data "$DATA" --out "$OUT" --repo "$REPO_ROOT" \
  --proxies "$PROXIES" --baseline "$BASELINE" --command "$COMMAND" \
  --duration "$DURATION" --warmup "$WARMUP" --conns "$CONNS" --repeat "$REPEAT" \
  --tunnel "$TUNNEL" --tunnel-size "$TUNNEL_SIZE" --tunnel-bytes "$BIG_BYTES" \
  --tunnel-repeat "$TUNNEL_REPEAT" --origin-sendfile "$ORIGIN_SENDFILE" \
  --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" --nofile "$FDLIM" \
  --nginx "$NGINX" --squid "$SQUID" --tinyproxy "$TINYPROXY" --wrk "$WRK" --curl "$CURL" \
  --sumun "${SUMUN_BIN:-}"
log "wrote $OUT.json and $OUT.md"
FAILED=0
