#!/usr/bin/env bash
# What edge protection costs: proxy CPU per request of a bare route beside the same route with
# JWT auth (RS256, the common IdP setup) + passport + a local rate limit + CORS, and with a
# global (Redis) rate limit instead of the local one; plus Redis round trips per request.
# Same method as bench/reverse-proxy.sh (DESIGN.md §7): sumun pinned to one core, wrk and
# the backend on the other, CPU = utime+stime delta of sumun / requests served.
#
#   bench/protect.sh
#   DURATION=3s REPEAT=3 bench/protect.sh
#
# Environment (defaults in brackets):
#   DURATION   measured wrk run per variant [6s]      WARMUP   [1s]
#   CONNS      wrk connections [64]                   REPEAT   measured runs, median [3]
#   VARIANTS   ["bare protected global bound"]
#   SUMUN_BIN  use this binary instead of `cargo build --release -p sumun`
#   PROXY_CPU / LOAD_CPU  [1 / 0]      RESULTS_DIR [bench/results]   KEEP_WORK [0]
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
LIB=$BENCH_DIR/lib
COMMAND="bench/protect.sh"
for k in DURATION WARMUP CONNS REPEAT VARIANTS SUMUN_BIN PROXY_CPU LOAD_CPU; do
  [[ -n "${!k+x}" ]] && COMMAND="$k=${!k} $COMMAND"
done

DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-64}
REPEAT=${REPEAT:-3}
VARIANTS=${VARIANTS:-"bare protected global bound"}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORK=${KEEP_WORK:-0}

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[bench] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/common.sh
source "$BENCH_DIR/lib/common.sh"

need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
command -v taskset >/dev/null || need+=(util-linux)
apt_install "${need[@]+"${need[@]}"}"
export PATH="$PATH:/usr/sbin:/sbin"
python3 -c 'import jwt, cryptography' 2>/dev/null || python3 -m pip install -q pyjwt cryptography \
  || die "pip install pyjwt cryptography failed"

if [[ -z ${SUMUN_BIN:-} ]]; then
  log "building sumun: cargo build --release -p sumun"
  (cd "$REPO_ROOT" && cargo build --release -p sumun) || die "cargo build --release -p sumun failed"
  SUMUN_BIN=$REPO_ROOT/target/release/sumun
fi
[[ -x $SUMUN_BIN ]] || die "SUMUN_BIN=$SUMUN_BIN is not an executable"

mkdir -p "$BENCH_DIR/work"
WORK=$(mktemp -d "$BENCH_DIR/work/protect.XXXXXX")
log "work dir: $WORK"

# ---------------------------------------------------------------- keys and a token
python3 - "$WORK" <<'EOF'
import json, sys, time
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
work = sys.argv[1]
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
jwk.update(kid="bench", alg="RS256", use="sig")
json.dump({"keys": [jwk]}, open(f"{work}/jwks.json", "w"))
now = int(time.time())
token = jwt.encode({"iss": "https://idp.bench", "aud": "api", "sub": "user-1", "scope": "read write",
                    "iat": now, "exp": now + 3600, "jti": "bench-1"}, key, algorithm="RS256",
                   headers={"kid": "bench"})
open(f"{work}/token", "w").write(token)
EOF
TOKEN=$(cat "$WORK/token")

# ---------------------------------------------------------------- backend and redis
BACKEND_PORT=$(free_port)
mkdir -p "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  server { listen 127.0.0.1:$BACKEND_PORT backlog=4096; location / { return 200 "hello world\n"; } }
}
EOF
start_group "$LOAD_CPU" "$WORK/backend/stderr.log" nginx -p "$WORK/backend" -e "$WORK/backend/error.log" \
  -c "$WORK/backend/nginx.conf" -g 'daemon off;'
python3 "$LIB/ready.py" --port "$BACKEND_PORT" --pid "$LAST_PGID" --timeout 20 || die "backend did not start"

REDIS_PORT=$(free_port)
start_group "$LOAD_CPU" "$WORK/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$REDIS_PORT" ping >/dev/null || die "redis-server did not start"

# ---------------------------------------------------------------- sumun
# sumun_config PORT BIND_REQUEST: the config of one instance. The "bound" variant runs a
# second instance whose passports name each request ([passport] bind_request = true).
sumun_config() {
cat <<EOF
access_log = "off"

[passport]
bind_request = $2

[listener.web]
bind = "127.0.0.1:$1"
limits = { max_connections = 20000 }

[upstream.backend]
endpoints = ["127.0.0.1:$BACKEND_PORT"]
pool = { max_idle_per_endpoint = 128 }

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"

[auth.users]
jwt = { keys = ["$WORK/jwks.json"], issuer = "https://idp.bench", audience = "api", algorithms = ["RS256"] }

[rate_limit.local]
key = "client_ip"
rate = "10000000/s"

[rate_limit.global]
key = "jwt:sub"
rate = "10000000/s"
store = "redis"

[cors.app]
allow_origins = ["https://app.bench.example"]
allow_methods = ["GET", "POST"]
allow_headers = ["authorization", "content-type"]

[[route]]
name = "protected"
match = { path_prefix = "/protected" }
to = { upstream = "backend" }
rewrite = { path = "/" }
auth = "users"
rate_limit = "local"
cors = "app"

[[route]]
name = "global"
match = { path_prefix = "/global" }
to = { upstream = "backend" }
rewrite = { path = "/" }
auth = "users"
rate_limit = "global"
cors = "app"

[[route]]
name = "bare"
to = { upstream = "backend" }
rewrite = { path = "/" }
EOF
}
start_sumun() {               # start_sumun NAME BIND_REQUEST: sets PORT and PGID
  PORT=$(free_port)
  sumun_config "$PORT" "$2" >"$WORK/$1.toml"
  start_group "$PROXY_CPU" "$WORK/$1.log" "$SUMUN_BIN" serve -c "$WORK/$1.toml" --threads 1
  PGID=$LAST_PGID
  python3 "$LIB/ready.py" --port "$PORT" --pid "$PGID" --timeout 20 || { tail "$WORK/$1.log"; die "sumun did not start"; }
}
start_sumun sumun false
SUMUN_PORT=$PORT SUMUN_PGID=$PGID
BOUND_PORT="" BOUND_PGID=""
if [[ " $VARIANTS " == *" bound "* ]]; then
  start_sumun sumun-bound true
  BOUND_PORT=$PORT BOUND_PGID=$PGID
fi
PORT=$SUMUN_PORT

# Each protected request must really pass every layer: check once by hand.
check=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" \
  -H "origin: https://app.bench.example" "http://127.0.0.1:$PORT/global/x")
[[ $check == 200 ]] || die "a protected request got $check, not 200"
check=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/protected/x")
[[ $check == 401 ]] || die "an unauthenticated request got $check, not 401"

# Redis counts the commands a script runs (TIME, GET, SET) as commands too, so round trips
# are the client-issued calls: EVALSHA/EVAL (and SCRIPT LOAD after a NOSCRIPT), plus anything
# else sumun might send. "rt calls" counts those; "all" every command Redis ran.
commandstats() {              # "ROUND_TRIP_CALLS ALL_CALLS" so far
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_/ { n = $3 + 0; all += n
                  if ($1 != "cmdstat_time" && $1 != "cmdstat_get" && $1 != "cmdstat_set" &&
                      $1 != "cmdstat_info" && $1 != "cmdstat_ping") rt += n }
    END { print rt + 0, all + 0 }'
}

run() {                       # run VARIANT PATH [PORT PGID]
  local v=$1 path=$2 port=${3:-$SUMUN_PORT} pgid=${4:-$SUMUN_PGID} r out
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" -H "authorization: Bearer $TOKEN" \
    -H "origin: https://app.bench.example" "http://127.0.0.1:$port$path" >/dev/null
  for ((r = 1; r <= REPEAT; r++)); do
    out=$WORK/$v-$r
    mkdir -p "$out"
    python3 "$LIB/procinfo.py" quiet "$PROXY_CPU" 5 30 >/dev/null || log "warning: core $PROXY_CPU busy"
    commandstats >"$out/redis-before"
    python3 "$LIB/procinfo.py" snapshot "$pgid" >"$out/before.json"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$LIB/wrk-report.lua" \
      -H "authorization: Bearer $TOKEN" -H "origin: https://app.bench.example" \
      "http://127.0.0.1:$port$path" >"$out/wrk.txt"
    python3 "$LIB/procinfo.py" snapshot "$pgid" >"$out/after.json"
    commandstats >"$out/redis-after"
    grep -E 'Requests/sec' "$out/wrk.txt" | sed "s/^/    $v run $r: /" >&2 || true
  done
}

for v in $VARIANTS; do
  case $v in
    bare) run bare /x ;;
    protected) run protected /protected/x ;;
    global) run global /global/x ;;
    bound) run bound /protected/x "$BOUND_PORT" "$BOUND_PGID" ;;
    *) die "unknown variant $v (bare protected global bound)" ;;
  esac
done

# ---------------------------------------------------------------- report
mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/protect-$(date -u +%Y-%m-%d)
python3 - "$WORK" "$OUT" "$REPEAT" "$VARIANTS" "$COMMAND" "$(cd "$REPO_ROOT" && git rev-parse --short HEAD)" <<'EOF'
import json, os, statistics, sys
work, out, repeat, variants, command, commit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(), sys.argv[5], sys.argv[6]
tck = os.sysconf("SC_CLK_TCK")
res = {}
for v in variants:
    runs = []
    for r in range(1, repeat + 1):
        d = f"{work}/{v}-{r}"
        b, a = json.load(open(f"{d}/before.json")), json.load(open(f"{d}/after.json"))
        w = json.loads(next(l for l in open(f"{d}/wrk.txt") if l.startswith("WRKJSON "))[8:])
        cpu_s = (a["ticks"] - b["ticks"]) / tck  # utime + stime of the process group
        rb, ab = (list(map(int, open(f"{d}/redis-{w_}").read().split())) for w_ in ("before", "after"))
        redis_rt, redis_all = ab[0] - rb[0], ab[1] - rb[1]
        n = w["requests"]
        errors = sum(w["errors"].values())
        runs.append({"requests": n, "rps": n / (w["duration_us"] / 1e6), "cpu_us_per_req": cpu_s * 1e6 / n,
                     "p99_us": w["latency_us"]["p99"], "errors": errors, "redis_round_trips_per_req": redis_rt / n,
                     "redis_cmds_per_req": redis_all / n})
    med = lambda k: statistics.median(x[k] for x in runs)
    res[v] = {"runs": runs, **{k: med(k) for k in ("rps", "cpu_us_per_req", "p99_us", "redis_round_trips_per_req", "redis_cmds_per_req")},
              "errors": sum(x["errors"] for x in runs)}
bare = res.get("bare", {}).get("cpu_us_per_req")
doc = {"command": command, "commit": commit, "variants": res}
json.dump(doc, open(out + ".json", "w"), indent=2)
lines = [f"# Protection overhead ({commit})", "", f"`{command}` — sumun on one core, wrk -c64 and nginx backend on the other; median of {repeat} runs.", "",
         "| route | req/s | CPU µs/req | vs bare | p99 | Redis round trips/req | Redis cmds/req (incl. in script) | errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for v, r in res.items():
    ratio = f"{r['cpu_us_per_req'] / bare:.2f}×" if bare else "—"
    lines.append(f"| {v} | {r['rps']:,.0f} | {r['cpu_us_per_req']:.2f} | {ratio} | {r['p99_us'] / 1000:.2f} ms | {r['redis_round_trips_per_req']:.3f} | {r['redis_cmds_per_req']:.3f} | {r['errors']} |")
lines += ["", "bare: plain reverse proxy route. protected: JWT (RS256) auth + passport + local rate limit + CORS. global: the same with the rate limit in Redis (GCRA script, EVALSHA). bound: protected, with `[passport] bind_request = true` (a passport signed for every request).", ""]
open(out + ".md", "w").write("\n".join(lines))
print("\n".join(lines))
EOF
FAILED=0
