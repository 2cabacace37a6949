#!/usr/bin/env bash
# HTTP caching conformance: the public cache-tests suite (npm package http-cache-tests, the
# suite behind cache-tests.fyi) against sumun as a reverse proxy in front of the suite's own
# test server, and against nginx proxy_cache the same way, in one run. See docs/cache.md.
#
#   bench/cache-conformance.sh                       # sumun and nginx, ~2 min + build
#   PEERS="" SUMUN_BIN=target/debug/sumun bench/cache-conformance.sh
#
# Environment (defaults in brackets):
#   PEERS          other caches to run the suite against    ["nginx"]
#   SUITE_VERSION  npm version of http-cache-tests           [0.4.5]
#   SUMUN_BIN      use this binary instead of `cargo build -p sumun`
#   RESULTS_DIR    where the .json/.md go                   [bench/results]
#   KEEP_WORK      1 = keep the temporary work dir           [0; kept on failure]
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
LIB=$BENCH_DIR/lib

PEERS=${PEERS-nginx}
SUITE_VERSION=${SUITE_VERSION:-0.4.5}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORK=${KEEP_WORK:-0}

log() { printf '[conformance %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[conformance] ERROR: %s\n' "$*" >&2; exit 1; }

for p in $PEERS; do
  case $p in nginx) ;; *) die "unknown peer '$p' in PEERS (known: nginx)";; esac
done

# shellcheck source=lib/common.sh
source "$BENCH_DIR/lib/common.sh"

# ---------------------------------------------------------------- 1. tools
need=()
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [[ " $PEERS " == *" nginx "* ]]; then
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
fi
apt_install "${need[@]+"${need[@]}"}"
export PATH="$PATH:/usr/sbin:/sbin"
ALL_CPUS="0-$(($(nproc --all) - 1))"

if [[ -z ${SUMUN_BIN:-} ]]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust or set SUMUN_BIN"
  log "building sumun: cargo build -p sumun"
  (cd "$REPO_ROOT" && cargo build -p sumun) || die "cargo build -p sumun failed"
  target_dir=$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') || target_dir=$REPO_ROOT/target
  SUMUN_BIN=$target_dir/debug/sumun
fi
[[ -x $SUMUN_BIN ]] || die "SUMUN_BIN=$SUMUN_BIN is not an executable"

mkdir -p "$BENCH_DIR/work"
WORK=$(mktemp -d "$BENCH_DIR/work/cache-conformance.XXXXXX")
log "work dir: $WORK"

# The suite, installed once per version (npm's own cache makes a re-install cheap).
SUITE_HOME=$BENCH_DIR/work/http-cache-tests-$SUITE_VERSION
SUITE=$SUITE_HOME/node_modules/http-cache-tests
if [[ ! -f $SUITE/package.json ]]; then
  log "installing http-cache-tests@$SUITE_VERSION with npm"
  mkdir -p "$SUITE_HOME"
  (cd "$SUITE_HOME" && npm install --no-audit --no-fund --legacy-bundling "http-cache-tests@$SUITE_VERSION" >/dev/null 2>&1) \
    || die "npm install http-cache-tests@$SUITE_VERSION failed"
fi

wait_http() {                 # wait_http URL NAME LOGFILE: any HTTP answer within 20 s
  local deadline=$((SECONDS + 20))
  until curl -s -o /dev/null "$1"; do
    ((SECONDS < deadline)) || { tail -n 20 "$3" >&2 || true; die "$2 did not come up at $1"; }
    sleep 0.1
  done
}

# ---------------------------------------------------------------- 2. the suite's server
ORIGIN_PORT=$(free_port)
log "starting the suite's test server on 127.0.0.1:$ORIGIN_PORT"
# Through npm, as the suite expects (its scripts read npm's config variables). The script
# backgrounds node itself; we stop it by the pid file it writes.
(cd "$SUITE" && npm run server --port="$ORIGIN_PORT" --pidfile="$WORK/origin.pid" >"$WORK/origin.log" 2>&1)
stop_origin() { [[ -f $WORK/origin.pid ]] && kill "$(cat "$WORK/origin.pid")" 2>/dev/null || true; }
trap 'rc=$?; stop_origin; (exit $rc); cleanup' EXIT
wait_http "http://127.0.0.1:$ORIGIN_PORT/" "the test server" "$WORK/origin.log"

run_suite() {                 # run_suite NAME PORT
  log "$1: running the suite through 127.0.0.1:$2"
  (cd "$SUITE" && timeout 600 npm run --silent cli --base="http://127.0.0.1:$2") >"$WORK/$1.json" 2>"$WORK/$1.cli.log" \
    || die "$1: the suite's client failed (see $WORK/$1.cli.log)"
  python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$WORK/$1.json" || die "$1: no JSON results"
}

# ---------------------------------------------------------------- 3. sumun
SUMUN_PORT=$(free_port)
mkdir -p "$WORK/sumun"
cat >"$WORK/sumun/sumun.toml" <<CONF
access_log = "off"

[listener.web]
bind = "127.0.0.1:$SUMUN_PORT"

[upstream.suite]
endpoints = ["127.0.0.1:$ORIGIN_PORT"]

[[route]]
name = "all"
to = { upstream = "suite" }
cache = true
CONF
start_group "$ALL_CPUS" "$WORK/sumun/stderr.log" "$SUMUN_BIN" serve -c "$WORK/sumun/sumun.toml"
SUMUN_PGID=$LAST_PGID
wait_http "http://127.0.0.1:$SUMUN_PORT/" sumun "$WORK/sumun/stderr.log"
run_suite sumun "$SUMUN_PORT"
stop_group "$SUMUN_PGID"
RUNS=("sumun=$WORK/sumun.json")

# ---------------------------------------------------------------- 4. peers
for p in $PEERS; do
  port=$(free_port)
  dir=$WORK/$p
  mkdir -p "$dir/cache"
  case $p in
  nginx)
    cat >"$dir/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  proxy_cache_path $dir/cache keys_zone=suite:10m;
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN_PORT;
      proxy_cache suite;
      proxy_cache_revalidate on;
      proxy_http_version 1.1;
    }
  }
}
CONF
    start_group "$ALL_CPUS" "$dir/stderr.log" "$(command -v nginx)" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' ;;
  esac
  pg=$LAST_PGID
  wait_http "http://127.0.0.1:$port/" "$p" "$dir/stderr.log"
  run_suite "$p" "$port"
  stop_group "$pg"
  RUNS+=("$p=$WORK/$p.json")
done
stop_origin

# ---------------------------------------------------------------- 5. report
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y-%m-%d)
OUT=$RESULTS_DIR/cache-conformance-$STAMP
node "$LIB/cache_tests_score.mjs" "$SUITE" "${RUNS[@]}" >"$WORK/summary.json"
python3 - "$WORK" "$OUT" "$SUITE_VERSION" "$(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" "${RUNS[@]}" <<'PY'
import json, sys
work, out, version, commit, *runs = sys.argv[1:]
summary = json.load(open(f"{work}/summary.json"))
raw = {r.split("=", 1)[0]: json.load(open(r.split("=", 1)[1])) for r in runs}
doc = {"suite": f"http-cache-tests {version}", "commit": commit, "command": "bench/cache-conformance.sh",
       "summary": summary, "results": raw}
json.dump(doc, open(out + ".json", "w"), indent=1, sort_keys=True)
lines = [f"# cache-tests conformance (http-cache-tests {version}, sumun {commit})", "",
         "Counted as the suite does: by `kind` (absent = required) from tests/index.mjs; setup failures not counted.", "",
         "| cache | required passed / counted (of tests) | optimal passed / counted | Surrogate-Control required | Surrogate-Control optimal |",
         "| --- | --- | --- | --- | --- |"]
for name, s in summary.items():
    c, sc = s["suite"]["counts"], s["surrogate"]["counts"]
    f = lambda d, k: f"{d.get(k, {}).get('passed', 0)} / {d.get(k, {}).get('counted', 0)} ({d.get(k, {}).get('tests', 0)})"
    lines.append(f"| {name} | {f(c, 'required')} | {f(c, 'optimal')} | {f(sc, 'required')} | {f(sc, 'optimal')} |")
for name, s in summary.items():
    lines += ["", f"## {name}: failed required and optimal tests", ""]
    for t in s["suite"]["failed"] + s["surrogate"]["failed"]:
        lines.append(f"- `{t['id']}` ({t['kind']}): {t['result'][1] if isinstance(t['result'], list) else t['result']}")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines[:6 + len(summary)]))
PY
log "wrote $OUT.json and $OUT.md"
FAILED=0
