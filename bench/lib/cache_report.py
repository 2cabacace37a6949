#!/usr/bin/env python3
"""Report of bench/cache.sh: CPU µs per cache hit (utime+stime delta of the cache's process
group ÷ requests served), req/s and latency per cache and object size, and sumun's ratios to
each peer. Writes OUT.json and OUT.md, prints the markdown (stdlib only)."""
import argparse
import json
import os
import statistics
import subprocess
from datetime import datetime, timezone


def run_stats(d):
    wrk = next(l for l in open(f"{d}/wrk.txt") if l.startswith("WRKJSON "))
    w = json.loads(wrk[len("WRKJSON "):])
    b, a = json.load(open(f"{d}/before.json")), json.load(open(f"{d}/after.json"))
    ticks = a["ticks"] - b["ticks"]
    sched = a["sched_ns"] - b["sched_ns"]
    reqs = max(w["requests"], 1)
    bb, ba = int(open(f"{d}/backend-before.txt").read() or 0), int(open(f"{d}/backend-after.txt").read() or 0)
    return {
        "requests": w["requests"],
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "cpu_us": ticks / a["clk_tck"] * 1e6 / reqs,
        "cpu_us_sched": sched / 1e3 / reqs,
        "p50_ms": w["latency_us"]["p50"] / 1000,
        "p99_ms": w["latency_us"]["p99"] / 1000,
        "errors": sum(w["errors"].values()),
        "backend_requests": max(ba - bb - 1, 0),
        "rss_kb": a["rss_kb"],
    }


def main():
    ap = argparse.ArgumentParser()
    for k in ["data", "out", "caches", "sizes", "command", "duration", "conns", "repeat", "proxy-cpu", "load-cpu", "repo"]:
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--versions", nargs="*", default=[])
    a = ap.parse_args()
    caches, sizes = a.caches.split(), a.sizes.split()
    results = {}
    for c in caches:
        for s in sizes:
            d = os.path.join(a.data, c, s)
            runs = sorted(x for x in os.listdir(d) if x.startswith("load-"))
            stats = [run_stats(os.path.join(d, r)) for r in runs]
            med = {k: statistics.median(x[k] for x in stats) for k in stats[0]}
            results.setdefault(c, {})[s] = {"median": med, "runs": stats}
    try:
        commit = subprocess.run(["git", "-C", a.repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = {"when": stamp, "commit": commit, "command": a.command, "duration": a.duration, "conns": a.conns,
           "repeat": a.repeat, "proxy_cpu": a.proxy_cpu, "load_cpu": a.load_cpu,
           "versions": dict(v.split("=", 1) for v in a.versions if "=" in v), "results": results}
    json.dump(doc, open(a.out + ".json", "w"), indent=1)

    def human(n):
        return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"

    lines = [f"# Cache-hit cost — {stamp} (sumun {commit})", "",
             f"Method of DESIGN.md §7: each cache alone on core {a.proxy_cpu} (one worker/thread where it has the knob), "
             f"wrk and the nginx backend on core {a.load_cpu}; keep-alive; every request a hit on the same object "
             f"(`wrk -t1 -c{a.conns} -d{a.duration}`, {a.repeat} measured run(s), medians). Command: `{a.command}`.", "",
             "| object | cache | hits/s | CPU µs/hit | p50 | p99 | backend requests during the run | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in sizes:
        for c in caches:
            m = results[c][s]["median"]
            lines.append(f"| {human(int(s))} | {c} | {m['rps']:,.0f} | {m['cpu_us']:.2f} | {m['p50_ms']:.3f} ms | "
                         f"{m['p99_ms']:.3f} ms | {m['backend_requests']:.0f} | {m['errors']:.0f} |")
    if "sumun" in caches:
        lines += ["", "Ratios of sumun's CPU per hit (below 1 = sumun uses less):", "",
                  "| object | " + " | ".join(f"sumun/{c}" for c in caches if c != "sumun") + " |",
                  "| --- | " + " | ".join("---:" for c in caches if c != "sumun") + " |"]
        for s in sizes:
            su = results["sumun"][s]["median"]["cpu_us"]
            lines.append(f"| {human(int(s))} | " + " | ".join(
                f"{su / results[c][s]['median']['cpu_us']:.2f}" for c in caches if c != "sumun") + " |")
    lines += ["", "Notes:",
              "- CPU µs/hit = utime+stime delta of every process in the cache's process group (100 ticks/s) ÷ requests "
              "completed; cross-check from per-thread schedstat: " + ", ".join(
                  f"{c} {results[c][s]['median']['cpu_us_sched']:.2f} ({human(int(s))})" for s in sizes for c in caches) + ".",
              "- Varnish runs its manager and child processes (both counted) and one thread per connection; its "
              "shared-memory log is written per request by design. nginx `proxy_cache` keeps bodies in files (page cache).",
              "- Versions: " + ", ".join(f"{k}: {v}" for k, v in doc["versions"].items()) + "."]
    open(a.out + ".md", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
