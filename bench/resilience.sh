#!/usr/bin/env bash
# Client-visible error rate of sumun while 2 of its 4 upstream endpoints are killed under load,
# with retries on and with retries off (issue 3's target: < 0.1 % with retries). See
# bench/README.md.
#
#   bench/resilience.sh                              # four scenarios, 4 × 30 s + build
#   SCENARIOS="retries no-retries" DURATION=10s bench/resilience.sh   # quick
#   RECOVER=1 SUMUN_BIN=target/release/sumun bench/resilience.sh
#
# Environment (defaults in brackets):
#   SCENARIOS      which scenarios, in order
#                  ["retries no-retries retries-health-only no-retries-health-only"]
#                  retries / no-retries: retry policy on / off, outlier ejection and active
#                  health checks on in both; retries-health-only / no-retries-health-only: the
#                  same without outlier ejection (only the health checks take dead endpoints out)
#   DURATION       wrk run of each scenario                   [30s]
#   WARMUP         unmeasured wrk run before it (0 = none)    [1s]
#   CONNS          wrk connections                            [64]
#   KILL           how many of the 4 backends to kill          [2]
#   KILL_AT        when, as a fraction of DURATION            [0.333]
#   RECOVER        1 = restart one killed backend later       [0]
#   RECOVER_AT     when, as a fraction of DURATION            [0.667]
#   SUMUN_BIN      use this binary instead of `cargo build --release -p sumun`
#   SUMUN_LOG_LEVEL  sumun's --log-level. The default turns on debug for sumun's own crates only:
#                  every retry and failed request is logged with its cause, and nothing is logged
#                  per successful request. Plain "debug" also enables hyper's per-request pool
#                  lines (~500 MB of log in 30 s, half the throughput): avoid it.
#                  [info,sumun_gateway=debug,sumun_upstream=debug]
#   READY_TIMEOUT  seconds a server gets to answer GET /       [20]
#   PROXY_CPU / LOAD_CPU  cores for sumun / for wrk+backends   [1 / 0]
#   NOFILE         fd limit for everything started            [65535]
#   RESULTS_DIR    where the .json/.md go                     [bench/results]
#   KEEP_WORK      1 = keep the temporary work dir (configs, logs) [0; kept on failure]
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
LIB=$BENCH_DIR/lib

# The exact command, with the knobs that were set explicitly (before defaults apply).
KNOBS=(SCENARIOS DURATION WARMUP CONNS KILL KILL_AT RECOVER RECOVER_AT SUMUN_BIN SUMUN_LOG_LEVEL
       READY_TIMEOUT PROXY_CPU LOAD_CPU NOFILE RESULTS_DIR KEEP_WORK)
shquote() {                   # quote for a POSIX shell, only when needed
  if [[ $1 =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
COMMAND=""
for k in "${KNOBS[@]}"; do
  if [[ -n "${!k+x}" ]]; then COMMAND+="$k=$(shquote "${!k}") "; fi
done
COMMAND+="bench/resilience.sh"
for a in "$@"; do COMMAND+=" $(shquote "$a")"; done

SCENARIOS=${SCENARIOS:-"retries no-retries retries-health-only no-retries-health-only"}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-64}
KILL=${KILL:-2}
KILL_AT=${KILL_AT:-0.333}
RECOVER=${RECOVER:-0}
RECOVER_AT=${RECOVER_AT:-0.667}
SUMUN_LOG_LEVEL=${SUMUN_LOG_LEVEL:-info,sumun_gateway=debug,sumun_upstream=debug}
READY_TIMEOUT=${READY_TIMEOUT:-20}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
NOFILE=${NOFILE:-65535}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORK=${KEEP_WORK:-0}
NBACKENDS=4
[[ -n ${EPOCHREALTIME:-} ]] || { echo "bench/resilience.sh needs bash 5 (EPOCHREALTIME)" >&2; exit 1; }

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[bench] ERROR: %s\n' "$*" >&2; exit 1; }

for s in $SCENARIOS; do
  case $s in retries|no-retries|retries-health-only|no-retries-health-only) ;;
  *) die "unknown scenario '$s' in SCENARIOS (known: retries no-retries retries-health-only no-retries-health-only)";; esac
done
if ! [[ $KILL =~ ^[0-9]+$ ]] || ((KILL >= NBACKENDS)); then die "KILL must be 0..$((NBACKENDS - 1))"; fi
[[ $RECOVER == 0 || $RECOVER == 1 ]] || die "RECOVER must be 0 or 1"
((RECOVER == 0 || KILL > 0)) || die "RECOVER=1 needs KILL > 0"
frac_ok() { python3 -c 'import sys; f=float(sys.argv[1]); sys.exit(0 if 0 < f < 1 else 1)' "$1" 2>/dev/null; }
frac_ok "$KILL_AT" || die "KILL_AT must be a fraction strictly between 0 and 1"
frac_ok "$RECOVER_AT" || die "RECOVER_AT must be a fraction strictly between 0 and 1"
python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)' "$KILL_AT" "$RECOVER_AT" \
  || ((RECOVER == 0)) || die "RECOVER_AT must be after KILL_AT"

# shellcheck source=lib/common.sh
source "$BENCH_DIR/lib/common.sh"

# ---------------------------------------------------------------- 1. packages
install_missing() {
  local need=()
  command -v nginx   >/dev/null || [[ -x /usr/sbin/nginx ]]   || need+=(nginx)
  command -v wrk     >/dev/null || need+=(wrk)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v setsid  >/dev/null || need+=(util-linux)
  command -v python3 >/dev/null || need+=(python3)
  command -v timeout >/dev/null || need+=(coreutils)
  command -v git     >/dev/null || need+=(git)
  apt_install "${need[@]+"${need[@]}"}"
}
install_missing
export PATH="$PATH:/usr/sbin:/sbin"
NGINX=$(command -v nginx)
WRK=$(command -v wrk)

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
if [[ -z ${SUMUN_BIN:-} ]]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust or set SUMUN_BIN"
  log "building sumun: cargo build --release -p sumun"
  (cd "$REPO_ROOT" && cargo build --release -p sumun) || die "cargo build --release -p sumun failed (or set SUMUN_BIN)"
  target_dir=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') || target_dir=$REPO_ROOT/target
  SUMUN_BIN=$target_dir/release/sumun
fi
[[ -x $SUMUN_BIN ]] || die "SUMUN_BIN=$SUMUN_BIN is not an executable"
SUMUN_BIN=$(cd "$(dirname "$SUMUN_BIN")" && pwd)/$(basename "$SUMUN_BIN")

# ---------------------------------------------------------------- helpers
mkdir -p "$BENCH_DIR/work"
WORK=$(mktemp -d "$BENCH_DIR/work/resilience.XXXXXX")
chmod 755 "$WORK"
DATA=$WORK/data
mkdir -p "$DATA"
log "work dir: $WORK"
# Both scenarios run the same binary even if target/ is rebuilt meanwhile.
cp "$SUMUN_BIN" "$WORK/sumun"
SUMUN=$WORK/sumun

seconds_of() {                # wrk duration (6s, 1m, 500ms…) -> seconds (float)
  python3 - "$1" <<'EOF'
import re, sys
m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", sys.argv[1])
if not m: sys.exit(f"bad duration {sys.argv[1]!r}")
print(float(m.group(1)) * {"ms": .001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)])
EOF
}
DURATION_F=$(seconds_of "$DURATION") || die "bad DURATION '$DURATION'"
DURATION_S=$(python3 -c 'import math,sys; print(math.ceil(float(sys.argv[1])))' "$DURATION_F")
((DURATION_S >= 3)) || die "DURATION must be at least 3s"
WARMUP_F=$(seconds_of "$WARMUP") || die "bad WARMUP '$WARMUP'"

now() { echo "$EPOCHREALTIME"; }
us_of() { local t=${1/./}; echo $((10#$t)); }   # "1700000000.123456" -> microseconds
sleep_until() {               # sleep_until EPOCH_SECONDS (float): the kill/restart timer.
  # In short steps, so that a TERM/INT (whose trap runs only between commands) is not held up.
  local target left
  target=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 1e6))' "$1")
  while :; do
    left=$((target - $(us_of "$EPOCHREALTIME")))
    ((left > 0)) || break
    ((left > 200000)) && left=200000
    sleep "$(printf '0.%06d' "$left")"
  done
}
since() { python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))' "$1" "$2"; }

wait_ready() {                # wait_ready NAME PORT PGID LOGFILE [TIMEOUT]
  local name=$1 port=$2 pgid=$3 logf=$4 tmo=${5:-$READY_TIMEOUT} rc=0
  python3 "$LIB/ready.py" --port "$port" --pid "$pgid" --timeout "$tmo" 2>"$WORK/ready.err" || rc=$?
  if ((rc != 0)); then
    {
      echo "--- $name did not come up: $(cat "$WORK/ready.err")"
      echo "--- last lines of $logf:"
      tail -n 30 "$logf" 2>/dev/null || true
    } >&2
    die "$name failed to come up on 127.0.0.1:$port"
  fi
}

admin_addr() {                # admin_addr LOGFILE PGID: the admin address from sumun's JSON log
  python3 - "$1" "$2" "$READY_TIMEOUT" <<'EOF'
import json, os, sys, time
path, pgid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    try:
        for line in open(path, errors="replace"):
            try:
                v = json.loads(line)
            except ValueError:
                continue
            msg = v.get("message") or v.get("fields", {}).get("message")
            addr = v.get("addr") or v.get("fields", {}).get("addr")
            if msg == "admin listening" and addr:
                print(addr)
                sys.exit(0)
    except OSError:
        pass
    if not os.path.exists(f"/proc/{pgid}"):
        sys.exit("sumun exited before logging its admin address")
    if time.monotonic() >= deadline:
        sys.exit(f"no 'admin listening' line in {path} after {timeout:g}s")
    time.sleep(0.05)
EOF
}

fetch() {                     # fetch URL OUTFILE
  python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    open(sys.argv[2], "wb").write(r.read())
EOF
}

# ---------------------------------------------------------------- 3. backends
declare -a BPORT=() BPGID=()
backend_conf() {              # backend_conf N: writes WORK/backend-N/nginx.conf
  local n=$1 dir=$WORK/backend-$1
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
# Trivial backend $n of $NBACKENDS: one worker, pinned with the load generator to core $LOAD_CPU.
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
  server {
    listen 127.0.0.1:${BPORT[$n]} backlog=4096;
    location / { return 200 "hello\n"; }
  }
}
EOF
}

start_backend() {             # start_backend N: (re)start backend N on its port, wait until it answers
  local n=$1 dir=$WORK/backend-$1
  start_group "$LOAD_CPU" "$dir/stderr.log" \
    "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
  BPGID[n]=$LAST_PGID
  # Out of the job table: bash would print "Killed" when it reaps a SIGKILLed backend.
  # It still reaps it (stop_group then sees it gone); STARTED still tracks its group.
  disown "$LAST_PGID" 2>/dev/null || true
  wait_ready "backend $n" "${BPORT[$n]}" "${BPGID[$n]}" "$dir/stderr.log"
}

kill_backend() {              # kill_backend N: SIGKILL master and worker (the whole group), reap
  local n=$1
  stop_group "${BPGID[$n]}" KILL
  BPGID[n]=""
}

# ---------------------------------------------------------------- 4./5. scenarios
write_sumun_config() {        # write_sumun_config SCENARIO PORT FILE
  local sc=$1 port=$2 f=$3 eps="" n retry="" outlier
  outlier='outlier = { consecutive_failures = 3, base_ejection = "10s", max_ejected_percent = 75 }'
  for ((n = 0; n < NBACKENDS; n++)); do eps+="${eps:+, }\"127.0.0.1:${BPORT[$n]}\""; done
  if [[ $sc == *-health-only ]]; then
    outlier="# no outlier key: only the active health checks take endpoints out"
  fi
  if [[ $sc == retries* ]]; then
    retry='retry = { attempts = 3, on = ["connect_failure", "reset", "timeout", "502", "503"], budget_percent = 50, min_retries_per_second = 100, backoff = { initial = "1ms", max = "10ms" } }'
  fi
  cat >"$f" <<EOF
# Scenario "$sc": $NBACKENDS endpoints, $KILL killed at ${KILL_AT} of the run.
access_log = "off"

[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:$port"
limits = { max_connections = 20000 }

[upstream.backends]
endpoints = [$eps]
balance = "least_request"
pool = { max_idle_per_endpoint = 128 }
${retry:-# no retry key: a failed try goes straight to the client}
$outlier
health = { path = "/", interval = "500ms", timeout = "200ms", healthy = 2, unhealthy = 2 }

[[route]]
name = "all"
to = { upstream = "backends" }
EOF
}

run_scenario() {              # run_scenario NAME
  local sc=$1 out=$DATA/$1 n port conf logf pg admin t0 t_kill t_rec t_rec_ready t_end wrk_pg rc
  mkdir -p "$out"
  log "[$sc] starting $NBACKENDS backend nginx instances (core $LOAD_CPU)"
  for ((n = 0; n < NBACKENDS; n++)); do
    BPORT[n]=$(free_port)
    backend_conf "$n"
    start_backend "$n"
  done

  port=$(free_port)
  conf=$out/sumun.toml
  logf=$out/sumun.log
  write_sumun_config "$sc" "$port" "$conf"
  "$SUMUN" check -c "$conf" >"$out/check.txt" 2>&1 || { cat "$out/check.txt" >&2; die "sumun check refused $conf"; }
  log "[$sc] starting sumun on 127.0.0.1:$port (core $PROXY_CPU, --threads 1, --log-level $SUMUN_LOG_LEVEL)"
  start_group "$PROXY_CPU" "$logf" "$SUMUN" serve -c "$conf" --threads 1 \
    --log-format json --log-level "$SUMUN_LOG_LEVEL"
  pg=$LAST_PGID
  wait_ready "sumun" "$port" "$pg" "$logf"
  admin=$(admin_addr "$logf" "$pg") || { tail -n 30 "$logf" >&2; die "[$sc] cannot find sumun's admin address"; }
  python3 "$LIB/ready.py" --port "${admin##*:}" --path /readyz --pid "$pg" --timeout "$READY_TIMEOUT" \
    || die "[$sc] sumun's admin API at $admin is not ready"
  log "[$sc] sumun up, admin at $admin"

  if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$WARMUP_F"; then
    log "[$sc] warm-up $WARMUP"
    timeout --kill-after=5 $((DURATION_S + 60)) taskset -c "$LOAD_CPU" \
      "$WRK" -t1 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$port/" >"$out/warmup.txt" 2>&1 \
      || { cat "$out/warmup.txt" >&2; die "[$sc] warm-up wrk failed"; }
  fi
  fetch "http://$admin/metrics" "$out/metrics-before.txt"

  log "[$sc] load: wrk -t1 -c$CONNS -d$DURATION --latency; killing $KILL of $NBACKENDS backends at ${KILL_AT} of the run" \
      "$( ((RECOVER)) && echo "and restarting one at ${RECOVER_AT}")"
  t0=$(now)
  start_group "$LOAD_CPU" "$out/wrk.txt" timeout --kill-after=5 $((DURATION_S + 60)) \
    "$WRK" -t1 -c"$CONNS" -d"$DURATION" --latency -s "$LIB/wrk-report.lua" "http://127.0.0.1:$port/"
  wrk_pg=$LAST_PGID

  t_kill="" t_rec="" t_rec_ready=""
  if ((KILL > 0)); then
    sleep_until "$(python3 -c 'import sys; print(float(sys.argv[1]) + float(sys.argv[2]) * float(sys.argv[3]))' "$t0" "$DURATION_F" "$KILL_AT")"
    t_kill=$(now)
    for ((n = 0; n < KILL; n++)); do kill -KILL -- "-${BPGID[$n]}"; done   # all at the same instant
    for ((n = 0; n < KILL; n++)); do kill_backend "$n"; done                  # then reap
    log "[$sc] killed backends ${BPORT[*]:0:$KILL} at +$(since "$t0" "$t_kill") s"
  fi
  if ((RECOVER)); then
    sleep_until "$(python3 -c 'import sys; print(float(sys.argv[1]) + float(sys.argv[2]) * float(sys.argv[3]))' "$t0" "$DURATION_F" "$RECOVER_AT")"
    t_rec=$(now)
    start_backend 0
    t_rec_ready=$(now)
    log "[$sc] restarted backend ${BPORT[0]} at +$(since "$t0" "$t_rec") s (answering at +$(since "$t0" "$t_rec_ready") s)"
  fi

  rc=0
  wait "$wrk_pg" || rc=$?
  forget_group "$wrk_pg"
  t_end=$(now)
  ((rc == 0)) || { cat "$out/wrk.txt" >&2; die "[$sc] wrk failed (exit $rc)"; }
  grep -q '^WRKJSON ' "$out/wrk.txt" || { cat "$out/wrk.txt" >&2; die "[$sc] wrk gave no report"; }
  grep -E 'Requests/sec|requests in|Socket errors|Non-2xx' "$out/wrk.txt" | sed 's/^/    /' >&2 || true

  fetch "http://$admin/v1/upstreams" "$out/upstreams.json"
  fetch "http://$admin/metrics" "$out/metrics.txt"
  python3 - "$out/timeline.json" "$t0" "$t_kill" "$t_rec" "$t_rec_ready" "$t_end" "$port" "$admin" \
    "${BPORT[*]}" "$KILL" "$RECOVER" <<'EOF'
import json, sys
out, t0, tk, tr, trr, te, port, admin, ports, kill, recover = sys.argv[1:]
f = lambda x: float(x) if x else None
ports = [int(p) for p in ports.split()]
json.dump({"t0_epoch": f(t0), "kill_epoch": f(tk), "recover_epoch": f(tr), "recover_ready_epoch": f(trr),
           "end_epoch": f(te), "proxy_port": int(port), "admin": admin, "backend_ports": ports,
           "killed": ports[:int(kill)], "restarted": ports[:1] if recover == "1" else []},
          open(out, "w"))
EOF

  stop_group "$pg"
  for ((n = 0; n < NBACKENDS; n++)); do
    [[ -n ${BPGID[$n]} ]] && stop_group "${BPGID[$n]}"
    BPGID[n]=""
  done
  cp "$WORK"/backend-*/error.log "$out/" 2>/dev/null || true
}

for sc in $SCENARIOS; do run_scenario "$sc"; done

# ---------------------------------------------------------------- 6. report
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y-%m-%d)
OUT=$RESULTS_DIR/resilience-$STAMP
python3 "$LIB/resilience_report.py" --data "$DATA" --out "$OUT" --repo "$REPO_ROOT" \
  --scenarios "$SCENARIOS" --command "$COMMAND" --duration "$DURATION" --warmup "$WARMUP" \
  --conns "$CONNS" --kill "$KILL" --kill-at "$KILL_AT" --recover "$RECOVER" --recover-at "$RECOVER_AT" \
  --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" --nofile "$FDLIM" --log-level "$SUMUN_LOG_LEVEL" \
  --nginx "$NGINX" --wrk "$WRK" --sumun "$SUMUN_BIN"
log "wrote $OUT.json and $OUT.md"
FAILED=0
