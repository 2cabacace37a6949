#!/usr/bin/env python3
"""Builds bench/results/resilience-<date>.{json,md} from the raw files of one run of
bench/resilience.sh, and prints the markdown.

Input layout (under the script's work dir), per scenario (DATA/<scenario>/):
    wrk.txt               wrk output with the WRKJSON line of wrk-report.lua
    timeline.json         epoch times of the wrk start, the kill, the restart, the end; ports
    upstreams.json        GET /v1/upstreams right after the load run
    metrics-before.txt    GET /metrics after the warm-up, before the load run
    metrics.txt           GET /metrics right after the load run
    sumun.log             sumun's JSON log (stderr)
    sumun.toml            its configuration

Error rate = client-visible errors ÷ attempts, where errors = non-2xx/3xx responses + socket
errors (connect, read, write, timeout) and attempts = responses + connect/read/write errors (a
request that died on a broken connection never produced a response, so wrk does not count it in
its requests; a timeout is counted on a request wrk also counts when it completes).
"""
import argparse
import collections
import datetime as dt
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import first_line, fmt_ms, parse_wrk, sh  # noqa: E402

LABEL = {"retries": "retries on", "no-retries": "retries off",
         "retries-health-only": "retries on, no outlier ejection",
         "no-retries-health-only": "retries off, no outlier ejection"}
TARGET_PCT = 0.1


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def prom(path):
    """Prometheus text -> {(name, frozenset(labels)): value}."""
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            pass
    return out


def metric_sum(m, name, **want):
    return sum(v for (n, labels), v in m.items()
               if n == name and all((k, val) in labels for k, val in want.items()))


def by_label(m, name, label):
    out = collections.Counter()
    for (n, labels), v in m.items():
        if n == name:
            d = dict(labels)
            out[d.get(label, "")] += v
    return out


def parse_ts(s):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z?", s or "")
    if not m:
        return None
    t = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
    return t + (float(m.group(2)) if m.group(2) else 0.0)


# Log lines worth putting on the timeline (state changes of endpoints and breakers).
EVENTS = ("outlier ejected", "outlier ejection ended", "endpoint unhealthy", "endpoint healthy again",
          "circuit breaker")


def parse_log(path, t0, t_kill):
    """From sumun's JSON log, the lines of the measured run (from the wrk start on): the timeline
    of endpoint state changes, counts of every message, and — with debug on for sumun's crates —
    the failed requests by cause and the retries, with when they happened (relative to the kill)."""
    events = []
    counts = collections.Counter()
    failures = collections.Counter()
    retries = collections.Counter()
    spans = {}
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            v = json.loads(line)
        except ValueError:
            continue
        t = parse_ts(v.get("timestamp"))
        if t is not None and t0 and t < t0:
            continue  # start-up and warm-up
        msg, lvl = v.get("message", ""), v.get("level", "")
        counts[f"{lvl} {msg}"] += 1
        rel = round(t - t_kill, 4) if (t is not None and t_kill) else None
        key = None
        if msg == "request failed":
            key = f"request failed: {v.get('kind')} ({v.get('error')})"
            failures[f"{v.get('kind')} ({v.get('error')})"] += 1
        elif msg == "retrying":
            key = "retrying"
            retries[f"after attempt {v.get('attempt')}"] += 1
        elif msg in ("connection ended with an error", "response body aborted"):
            key = f"{msg}: {v.get('error')}"
        elif any(msg.startswith(e) for e in EVENTS):
            ev = {"t_from_kill_s": rel, "level": lvl, "message": msg}
            for k in ("endpoint", "reason", "ejection", "duration_ms", "checks", "scope"):
                if k in v:
                    ev[k] = v[k]
            events.append(ev)
        if key and rel is not None:
            sp = spans.setdefault(key, {"count": 0, "first_from_kill_s": rel, "last_from_kill_s": rel})
            sp["count"] += 1
            sp["first_from_kill_s"] = min(sp["first_from_kill_s"], rel)
            sp["last_from_kill_s"] = max(sp["last_from_kill_s"], rel)
    return {
        "events": events,
        "message_counts": dict(counts.most_common()),
        "request_failures": dict(failures.most_common()),
        "retries": dict(sorted(retries.items())),
        "spans_from_kill": spans,
    }


def scenario(data, name):
    d = os.path.join(data, name)
    w, text = parse_wrk(os.path.join(d, "wrk.txt"))
    tl = load_json(os.path.join(d, "timeline.json"), {})
    e = w["errors"]
    socket = {k: e[k] for k in ("connect", "read", "write", "timeout")}
    errors = e["status"] + sum(socket.values())
    attempts = w["requests"] + e["connect"] + e["read"] + e["write"]
    before, after = prom(os.path.join(d, "metrics-before.txt")), prom(os.path.join(d, "metrics.txt"))

    def delta(nm, **kw):
        return metric_sum(after, nm, **kw) - metric_sum(before, nm, **kw)

    statuses_after = by_label(after, "sumun_requests_total", "status")
    statuses_before = by_label(before, "sumun_requests_total", "status")
    statuses = {k: int(statuses_after[k] - statuses_before.get(k, 0)) for k in sorted(statuses_after)}
    ej_after = by_label(after, "sumun_upstream_ejections_total", "endpoint")
    ej_before = by_label(before, "sumun_upstream_ejections_total", "endpoint")
    tries_after = by_label(after, "sumun_upstream_endpoint_request_duration_seconds_count", "endpoint")
    tries_before = by_label(before, "sumun_upstream_endpoint_request_duration_seconds_count", "endpoint")
    t0, tk = tl.get("t0_epoch"), tl.get("kill_epoch")
    up = load_json(os.path.join(d, "upstreams.json"), {})
    r = {
        "name": name,
        "retries_configured": name.startswith("retries"),
        "outlier_configured": not name.endswith("-health-only"),
        "requests": w["requests"],
        "duration_s": w["duration_us"] / 1e6,
        "req_per_s": w["requests"] / (w["duration_us"] / 1e6),
        "non_2xx_3xx": e["status"],
        "socket_errors": socket,
        "errors": errors,
        "attempts": attempts,
        "error_rate_pct": 100.0 * errors / attempts if attempts else None,
        "latency_us": w["latency_us"],
        "kill_at_s": round(tk - t0, 3) if (tk and t0) else None,
        "kill_utc": dt.datetime.fromtimestamp(tk, dt.timezone.utc).isoformat(timespec="milliseconds") if tk else None,
        "recover_at_s": round(tl["recover_epoch"] - t0, 3) if tl.get("recover_epoch") else None,
        "recover_ready_at_s": round(tl["recover_ready_epoch"] - t0, 3) if tl.get("recover_ready_epoch") else None,
        "backend_ports": tl.get("backend_ports"),
        "killed": tl.get("killed"),
        "restarted": tl.get("restarted"),
        "retries_total": delta("sumun_upstream_retries_total"),
        "retries_denied_total": delta("sumun_upstream_retries_denied_total"),
        "retries_total_since_start": metric_sum(after, "sumun_upstream_retries_total"),
        "retries_denied_total_since_start": metric_sum(after, "sumun_upstream_retries_denied_total"),
        "panic_picks": delta("sumun_upstream_panic_picks_total"),
        "ejections_overflow": delta("sumun_upstream_ejections_overflow_total"),
        "ejections": {k: int(ej_after[k] - ej_before.get(k, 0)) for k in sorted(ej_after)},
        "sumun_statuses": statuses,
        "tries_per_endpoint": {k: int(tries_after[k] - tries_before.get(k, 0)) for k in sorted(tries_after)},
        "upstreams": up,
        "log": parse_log(os.path.join(d, "sumun.log"), t0, tk),
        "config": open(os.path.join(d, "sumun.toml")).read(),
        "wrk_output": text,
    }
    return r


def machine_info(a):
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rev = sh(["git", "-C", a.repo, "rev-parse", "--short=12", "HEAD"])
    if not rev or "fatal" in rev or "unavailable" in rev:
        rev = "no commit yet"
    dirty = sh(["git", "-C", a.repo, "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"])
    if dirty and "fatal" not in dirty and "unavailable" not in dirty:
        rev += f" + uncommitted changes ({len(dirty.splitlines())} paths under crates/, Cargo.*)"
    import platform
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "os": first_line(sh(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""])),
        "nginx": first_line(sh([a.nginx, "-v"])).replace("nginx version: ", ""),
        "wrk": first_line(sh([a.wrk, "-v"])),
        "python": platform.python_version(),
        "fd_limit": a.nofile,
        "sumun_git_rev": rev,
        "sumun_bin": a.sumun,
        "sumun_version": first_line(sh([a.sumun, "--version"], timeout=5)),
        "rustc": first_line(sh(["rustc", "--version"])),
        "loadavg_at_report": open("/proc/loadavg").read().split()[:3],
    }


def fmt_pct(x):
    return "–" if x is None else (f"{x:.3f} %" if x < 10 else f"{x:.1f} %")


def rel(t):
    return "?" if t is None else f"{t:+.3f} s"


def endpoint_state(up, killed, restarted):
    rows = []
    for u in (up.get("upstreams") if isinstance(up, dict) else None) or (up if isinstance(up, list) else []):
        for e in u.get("endpoints", []):
            port = int(str(e.get("address", ":0")).rsplit(":", 1)[-1] or 0)
            role = "restarted" if port in (restarted or []) else "killed" if port in (killed or []) else "alive"
            rows.append((u.get("name", "?"), e, role))
    return rows


def main():
    ap = argparse.ArgumentParser()
    for k in ("data", "out", "repo", "scenarios", "command", "duration", "warmup", "conns", "kill", "kill-at",
              "recover", "recover-at", "proxy-cpu", "load-cpu", "nofile", "log-level", "nginx", "wrk", "sumun"):
        ap.add_argument("--" + k, default="")
    a = ap.parse_args()
    now = dt.datetime.now(dt.timezone.utc)
    names = a.scenarios.split()
    results = {n: scenario(a.data, n) for n in names}
    machine = machine_info(a)
    recover = a.recover == "1"
    method = {
        "target": f"issue 3: with 2 of 4 endpoints killed during a 30 s load run, client-visible error rate "
                  f"< {TARGET_PCT} % with retries enabled",
        "backends": '4 × nginx (own prefix/config), 1 worker each, return 200 "hello\\n", '
                    f"pinned to core {a.load_cpu} with wrk",
        "proxy": f"sumun serve --threads 1, pinned to core {a.proxy_cpu}, access_log off, "
                 f"--log-format json --log-level {a.log_level}; upstream of the 4 endpoints, "
                 "balance least_request, outlier + active health checks; scenario 'retries' adds the retry "
                 "policy, 'no-retries' has no retry key",
        "load": f"taskset -c {a.load_cpu} wrk -t1 -c{a.conns} -d{a.duration} --latency "
                f"(after a {a.warmup} warm-up run)",
        "fault": f"SIGKILL to the process group (master + worker) of {a.kill} backends at {a.kill_at} of the run"
                 + (f"; the first of them restarted at {a.recover_at}" if recover else ""),
        "error_rate": "(non-2xx/3xx responses + connect/read/write/timeout socket errors) ÷ "
                      "(responses + connect/read/write errors), from wrk",
        "counters": "sumun /metrics after the warm-up and after the load run (deltas); /v1/upstreams after the run",
    }
    doc = {"date_utc": now.isoformat(timespec="seconds"), "command": a.command, "method": method,
           "machine": machine, "target_error_rate_pct": TARGET_PCT, "results": results}
    with open(a.out + ".json", "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")

    L = []
    L.append(f"# Resilience: {a.kill} of 4 endpoints killed under load — {now:%Y-%m-%d %H:%M} UTC")
    L.append("")
    L.append(f"sumun alone on core {a.proxy_cpu} (`--threads 1`), four nginx backends (1 worker each, "
             f"`return 200 \"hello\\n\"`) and wrk on core {a.load_cpu}; `wrk -t1 -c{a.conns} -d{a.duration} "
             f"--latency` after a {a.warmup} warm-up. At {a.kill_at} of the run {a.kill} backends get SIGKILL "
             "(master and worker)"
             + (f"; the first of them is restarted at {a.recover_at}" if recover else "")
             + ". Upstream: `least_request`, outlier ejection after 3 consecutive failures (not in the "
             "\"no outlier ejection\" scenarios), active "
             "health checks every 500 ms; \"retries on\" adds `retry = { attempts = 3, on = [connect_failure, "
             "reset, timeout, 502, 503], budget_percent = 50, … }`. "
             f"Issue 3's target: error rate < {TARGET_PCT} % with retries.")
    L.append("")
    L.append("| scenario | requests | req/s | errors (non-2xx / connect / read / write / timeout) | error rate | "
             "p50 | p99 | kill at | retries (denied) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        r = results[n]
        s = r["socket_errors"]
        mark = ""
        if r["retries_configured"] and r["error_rate_pct"] is not None:
            mark = " ✅" if r["error_rate_pct"] < TARGET_PCT else " ❌"
        kill_at = "–" if r["kill_at_s"] is None else f"{r['kill_at_s']:.2f} s"
        retries = (f"{r['retries_total']:,.0f} ({r['retries_denied_total']:,.0f})"
                   if r["retries_configured"] else "– (off)")
        L.append(f"| {LABEL.get(n, n)} | {r['requests']:,} | {r['req_per_s']:,.0f} | "
                 f"{r['errors']:,} ({r['non_2xx_3xx']:,} / {s['connect']} / {s['read']} / {s['write']} / "
                 f"{s['timeout']}) | {fmt_pct(r['error_rate_pct'])}{mark} | {fmt_ms(r['latency_us']['p50'])} | "
                 f"{fmt_ms(r['latency_us']['p99'])} | "
                 f"{kill_at} | {retries} |")
    L.append("")
    for on, off in (("retries", "no-retries"), ("retries-health-only", "no-retries-health-only")):
        if on in results and off in results:
            a_, b_ = results[on], results[off]
            what = "" if on == "retries" else " (no outlier ejection)"
            L.append(f"Retries{what} turned {b_['errors']:,} client-visible errors into {a_['errors']:,} "
                     f"({fmt_pct(b_['error_rate_pct'])} → {fmt_pct(a_['error_rate_pct'])}).")
            L.append("")

    L.append("Per scenario (sumun's side: `/metrics` deltas over the load run, `/v1/upstreams` right after it):")
    L.append("")
    for n in names:
        r = results[n]
        L.append(f"**{LABEL.get(n, n)}**")
        L.append("")
        st = ", ".join(f"{k}: {v:,}" for k, v in r["sumun_statuses"].items()) or "–"
        L.append(f"- responses by status (`sumun_requests_total`): {st}")
        if r["retries_configured"]:
            L.append(f"- `sumun_upstream_retries_total` {r['retries_total']:,.0f}, "
                     f"`sumun_upstream_retries_denied_total` {r['retries_denied_total']:,.0f} "
                     f"(since start: {r['retries_total_since_start']:,.0f} / "
                     f"{r['retries_denied_total_since_start']:,.0f})")
        if r["kill_utc"]:
            L.append(f"- killed `{', '.join(f'127.0.0.1:{p}' for p in r['killed'] or [])}` at {r['kill_utc']} "
                     f"(+{r['kill_at_s']:.3f} s into the run)"
                     + (f"; restarted `127.0.0.1:{r['restarted'][0]}` at +{r['recover_at_s']:.3f} s, answering at "
                        f"+{r['recover_ready_at_s']:.3f} s" if r.get("restarted") and r.get("recover_at_s") else ""))
        ej = ", ".join(f"{k} ×{v}" for k, v in r["ejections"].items() if v) or "none"
        L.append(f"- outlier ejections: {ej}; ejections refused by `max_ejected_percent`: "
                 f"{r['ejections_overflow']:,.0f}; panic picks: {r['panic_picks']:,.0f}")
        rows = endpoint_state(r["upstreams"], r["killed"], r["restarted"])
        if rows:
            L.append("- endpoints at the end:")
            for up, e, role in rows:
                ej_for = f" for {e.get('ejected_for_ms', 0) / 1000:.1f} s more" if e.get("ejected") else ""
                L.append(f"  - `{e.get('address')}` ({role}): healthy={str(e.get('healthy')).lower()}, "
                         f"ejected={str(e.get('ejected')).lower()}{ej_for}, ejections {e.get('ejections')}, "
                         f"in flight {e.get('in_flight')}; tries during the run: "
                         f"{r['tries_per_endpoint'].get(e.get('address'), 0):,}")
        lg = r["log"]
        if lg.get("events"):
            ev = "; ".join(f"{rel(x['t_from_kill_s'])} {x['message'].split(';')[0]} `{x.get('endpoint', '')}`"
                           for x in lg["events"][:12])
            more = f" (+{len(lg['events']) - 12} more)" if len(lg["events"]) > 12 else ""
            L.append(f"- log timeline (from the kill): {ev}{more}")
        for k, sp in lg.get("spans_from_kill", {}).items():
            L.append(f"- debug log: {sp['count']:,} × `{k}`, from {rel(sp['first_from_kill_s'])} to "
                     f"{rel(sp['last_from_kill_s'])} after the kill")
        if r["retries_configured"] and lg.get("retries"):
            L.append(f"- retries by the attempt that failed (debug log): "
                     + ", ".join(f"{k}: {v:,}" for k, v in lg["retries"].items()))
        L.append("")

    L.append("Notes:")
    L.append("- Error rate = (non-2xx/3xx responses + connect/read/write/timeout socket errors) ÷ "
             "(responses + connect/read/write errors), all from wrk. A read error is a request whose "
             "connection broke before its response; wrk reconnects and goes on.")
    L.append("- The kill is timed from the start of wrk (a timer); readiness of every server is polled with "
             "a deadline. Every scenario starts from fresh backends and a fresh sumun.")
    L.append(f"- sumun ran with `--log-level {a.log_level}`. With debug on for `sumun_gateway` (the default "
             "of the script) every retry (`retrying`) and every request that failed to the client (`request "
             "failed`, with its kind and cause) is logged, and nothing per successful request; the lines above "
             "count those of the load run only (the warm-up is left out).")
    L.append("- `ejections` in `/v1/upstreams` is the count that sets the next ejection's length; it decays by "
             "one per `base_ejection` after an ejection ends. The ejections listed above are the "
             "`sumun_upstream_ejections_total` counter over the run.")
    L.append("- Tries per endpoint = the count of `sumun_upstream_endpoint_request_duration_seconds` over the "
             "run: every try sent to the endpoint, failed ones and retries included.")
    L.append("- `connection ended with an error: connection closed before message completed` lines at the very "
             "end of the run are wrk closing its connections with requests in flight when it stops.")
    L.append("- sumun's own status counts (`sumun_requests_total`) can exceed wrk's by up to the number of "
             "connections: wrk does not count the responses still in flight when it stops.")
    L.append("")
    L.append("Machine:")
    L.append("")
    L.append(f"- nproc {machine['nproc']}, {machine['cpu_model']}")
    L.append(f"- kernel {machine['kernel']}, {machine['os']}; fd limit (ulimit -n) {machine['fd_limit']}")
    L.append(f"- {machine['nginx']}; {machine['wrk']}; python {machine['python']}")
    L.append(f"- sumun git rev: {machine['sumun_git_rev']}; binary `{machine['sumun_bin']}` "
             f"({machine['sumun_version']}); {machine['rustc']}")
    L.append(f"- load average when the report was written: {' '.join(machine['loadavg_at_report'])}")
    L.append("")
    L.append("Command (from the repository root):")
    L.append("")
    L.append("```sh")
    L.append(a.command)
    L.append("```")
    md = "\n".join(L) + "\n"
    with open(a.out + ".md", "w") as f:
        f.write(md)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
