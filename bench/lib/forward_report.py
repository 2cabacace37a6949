#!/usr/bin/env python3
"""Builds bench/results/forward-proxy-<date>.{json,md} from the raw files of one run.

Input layout (written by bench/forward-proxy.sh under its work dir):
    DATA/<name>/load-<n>/wrk.txt          wrk output incl. the WRKJSON line (wrk-report.lua)
    DATA/<name>/load-<n>/before.json      procinfo.py snapshot of the proxy before the run
    DATA/<name>/load-<n>/after.json       ... and after it
    DATA/<name>/load-<n>/backend-*.txt    origin nginx stub_status "accepts requests"
    DATA/<name>/tunnel-<n>/direct.json    curl -w '%{json}' of a direct transfer of /big
    DATA/<name>/tunnel-<n>/curl.json      ... of the transfer through the proxy's CONNECT tunnel
    DATA/<name>/tunnel-<n>/{before,after}.json  procinfo snapshots around the tunnel transfer
    DATA/<name>/config                    the proxy's generated config
where <name> is "direct" (wrk straight at the origin) or a proxy name. The plain-HTTP part
reuses report.py (the reverse-proxy report) for parsing and formatting. Prints the markdown.
"""
import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report as R  # noqa: E402

LABEL = {"direct": "direct to origin (no proxy)", "sumun": "sumun", "squid": "Squid", "tinyproxy": "tinyproxy"}
CPU_TARGET = 0.5      # issue 4: sumun's CPU/request ≤ 0.5 × Squid's
TUNNEL_TARGET = 0.9   # issue 4: tunnel throughput ≥ 90 % of a direct loopback transfer


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def tunnel_sample(d, proxy_cpu):
    c = R.load_json(os.path.join(d, "curl.json"))
    direct = R.load_json(os.path.join(d, "direct.json"))
    b, a = R.load_json(os.path.join(d, "before.json")), R.load_json(os.path.join(d, "after.json"))
    nbytes = c["size_download"]
    gb = nbytes / 1e9
    tck = a["clk_tck"]
    ticks = a["ticks"] - b["ticks"]
    sched_s = (a["sched_ns"] - b["sched_ns"]) / 1e9
    wall = a["monotonic"] - b["monotonic"]
    s = {
        "bytes": nbytes,
        "time_s": c["time_total"],
        "mb_per_s": c["speed_download"] / 1e6,
        "time_connect_s": c.get("time_connect"),
        "time_starttransfer_s": c.get("time_starttransfer"),
        "http_connect": c.get("http_connect"),
        "direct_bytes": direct["size_download"],
        "direct_time_s": direct["time_total"],
        "direct_mb_per_s": direct["speed_download"] / 1e6,
        "cpu_ticks": ticks,
        "clk_tck": tck,
        "cpu_s_per_gb": ticks / tck / gb if gb else None,
        "sched_cpu_s_per_gb": sched_s / gb if gb else None,
        # How much of its core the proxy used while the transfer ran (100 % = the proxy's core
        # was the bottleneck). From utime+stime: schedstat misses threads that exited (tinyproxy
        # runs a thread per connection), so it is only a cross-check here.
        "proxy_core_use_pct": round(100 * ticks / tck / c["time_total"], 1) if c["time_total"] else None,
        "sched_proxy_core_use_pct": round(100 * sched_s / c["time_total"], 1) if c["time_total"] else None,
        "snapshot_wall_s": round(wall, 3),
        "hwm_kb": a["hwm_kb"],
        "rss_kb": a["rss_kb"],
    }
    s["vs_direct"] = s["mb_per_s"] / s["direct_mb_per_s"] if s["direct_mb_per_s"] else None
    core = str(proxy_cpu)
    if core in a.get("cpus", {}) and core in b.get("cpus", {}):
        ca, cb = a["cpus"][core], b["cpus"][core]
        total = ca["total"] - cb["total"]
        if total > 0:
            s["proxy_core_others_pct"] = round(100 * max(0, ca["busy"] - cb["busy"] - ticks) / total, 1)
            s["proxy_core_steal_pct"] = round(100 * (ca["steal"] - cb["steal"]) / total, 1)
    return s


def summarize_tunnel(name, data_dir, proxy_cpu):
    d = os.path.join(data_dir, name)
    runs = sorted((x for x in os.listdir(d) if x.startswith("tunnel-")), key=lambda x: int(x.split("-")[1]))
    samples = [tunnel_sample(os.path.join(d, r), proxy_cpu) for r in runs]
    if not samples:
        return None
    return {
        "samples": samples,
        "mb_per_s": median(s["mb_per_s"] for s in samples),
        "direct_mb_per_s": median(s["direct_mb_per_s"] for s in samples),
        # median of the per-pair ratios (each tunnel transfer right after its direct one)
        "vs_direct": median(s["vs_direct"] for s in samples),
        "cpu_s_per_gb": median(s["cpu_s_per_gb"] for s in samples),
        "sched_cpu_s_per_gb": median(s["sched_cpu_s_per_gb"] for s in samples),
        "proxy_core_use_pct": median(s["proxy_core_use_pct"] for s in samples),
        "peak_rss_kb": max(s["hwm_kb"] for s in samples),
    }


def closes_per_request(r):
    """The proxy closed the connection after every response: read errors ≈ requests, nothing else."""
    for s in r["samples"]:
        e = s["socket_errors"]
        if s["non_2xx_3xx"] or e["connect"] or e["write"] or e["timeout"] or e["read"] < 0.9 * s["requests"]:
            return False
    return bool(r["samples"])


def shared_core(samples):
    """⚠ when another process took > 5 % of the proxy's core during any of these runs."""
    worst = max((s.get("proxy_core_others_pct") or 0 for s in samples), default=0)
    return " ⚠" if worst > 5 else ""


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_pct(x, n=0):
    return "–" if x is None else f"{100 * x:.{n}f} %"


def fmt_mbs(x):
    return "–" if x is None else f"{x:,.0f}"


def machine_info(a):
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rev = R.sh(["git", "-C", a.repo, "rev-parse", "--short=12", "HEAD"])
    if not rev or "fatal" in rev or "unavailable" in rev:
        rev = "no commit yet"
    dirty = R.sh(["git", "-C", a.repo, "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"])
    if dirty and "fatal" not in dirty and "unavailable" not in dirty:
        rev += f" + uncommitted changes ({len(dirty.splitlines())} paths under crates/, Cargo.*)"
    m = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "os": R.first_line(R.sh(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""])),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
        "nginx": R.first_line(R.sh([a.nginx, "-v"])).replace("nginx version: ", ""),
        "squid": R.first_line(R.sh([a.squid, "-v"])),
        "tinyproxy": R.first_line(R.sh([a.tinyproxy, "-v"])),
        "wrk": R.first_line(R.sh([a.wrk, "-v"])),
        "curl": R.first_line(R.sh([a.curl, "--version"])),
        "python": platform.python_version(),
        "fd_limit": a.nofile,
        "sumun_git_rev": rev,
        "loadavg_at_report": open("/proc/loadavg").read().split()[:3],
    }
    if a.sumun:
        m["sumun_bin"] = a.sumun
        m["sumun_version"] = R.first_line(R.sh([a.sumun, "--version"], timeout=5))
        m["rustc"] = R.first_line(R.sh(["rustc", "--version"]))
    return m


def version_of(machine, n):
    if n == "squid":
        return machine["squid"].replace("Squid Cache: Version ", "")
    if n == "tinyproxy":
        return machine["tinyproxy"].replace("tinyproxy ", "")
    return ""


def main():
    ap = argparse.ArgumentParser()
    for k in ("data", "out", "repo", "proxies", "baseline", "command", "duration", "warmup", "conns", "repeat",
              "tunnel", "tunnel-size", "tunnel-bytes", "tunnel-repeat", "origin-sendfile",
              "proxy-cpu", "load-cpu", "nofile", "nginx", "squid", "tinyproxy", "wrk", "curl", "sumun"):
        ap.add_argument("--" + k, default="")
    a = ap.parse_args()

    proxy_cpu = int(a.proxy_cpu or 1)
    R.PROXY_CPU = proxy_cpu
    now = dt.datetime.now(dt.timezone.utc)
    proxies = a.proxies.split()
    names = (["direct"] if a.baseline == "1" else []) + proxies
    http = {n: R.summarize(n, a.data) for n in names}
    tunnel = {}
    if a.tunnel == "1":
        for n in proxies:
            t = summarize_tunnel(n, a.data, proxy_cpu)
            if t:
                tunnel[n] = t
    configs = {}
    for n in proxies:
        p = os.path.join(a.data, n, "config")
        if os.path.exists(p):
            configs[n] = open(p).read()
    machine = machine_info(a)

    ratios = {}
    if "sumun" in http:
        for peer in ("squid", "tinyproxy"):
            if peer in http:
                ts, tp = tunnel.get("sumun", {}), tunnel.get(peer, {})
                ratios[f"sumun/{peer}"] = {
                    "cpu_us_per_req": ratio(http["sumun"]["cpu_us_per_req"], http[peer]["cpu_us_per_req"]),
                    "p99": ratio(http["sumun"]["p99_us"], http[peer]["p99_us"]),
                    "req_per_s": ratio(http["sumun"]["req_per_s"], http[peer]["req_per_s"]),
                    "tunnel_mb_per_s": ratio(ts.get("mb_per_s"), tp.get("mb_per_s")),
                    "tunnel_cpu_s_per_gb": ratio(ts.get("cpu_s_per_gb"), tp.get("cpu_s_per_gb")),
                }
    targets = {}
    if "sumun/squid" in ratios and ratios["sumun/squid"]["cpu_us_per_req"] is not None:
        v = ratios["sumun/squid"]["cpu_us_per_req"]
        targets["cpu_per_request_vs_squid"] = {"value": v, "target": f"≤ {CPU_TARGET}", "met": v <= CPU_TARGET}
    if "sumun" in tunnel and tunnel["sumun"]["vs_direct"] is not None:
        v = tunnel["sumun"]["vs_direct"]
        targets["tunnel_vs_direct"] = {"value": v, "target": f"≥ {TUNNEL_TARGET}", "met": v >= TUNNEL_TARGET}

    size_h = a.tunnel_size
    method = {
        "design": "DESIGN.md §7; targets of issue 4",
        "proxy_cpu": proxy_cpu,
        "load_cpu": int(a.load_cpu),
        "origin": f"nginx, 1 worker, return 200 \"hello world\\n\" on /, a {size_h} sparse file on /big "
                  f"(sendfile {a.origin_sendfile}), pinned to core {a.load_cpu} with wrk and curl",
        "http_load": f"taskset -c {a.load_cpu} wrk -t1 -c{a.conns} -d{a.duration} --latency "
                     f"(after a {a.warmup} warm-up run); through a proxy every request is absolute-form "
                     "`GET http://127.0.0.1:ORIGIN/ HTTP/1.1` with `Host: 127.0.0.1:ORIGIN` (lib/wrk-forward.lua)",
        "repeat": int(a.repeat),
        "cpu_accounting": "utime+stime delta (/proc/PID/stat) summed over every process of the proxy's "
                          "process group, divided by the requests wrk completed in the measured run",
        "peak_rss": "VmHWM summed over the proxy's processes, after the measured run(s)",
        "tunnel": f"taskset -c {a.load_cpu} curl --proxytunnel --proxy http://127.0.0.1:PROXY "
                  f"http://127.0.0.1:ORIGIN/big -o /dev/null ({a.tunnel_bytes} bytes), {a.tunnel_repeat} times, "
                  "each right after a direct transfer by the same curl (--noproxy '*'); "
                  "MB/s = curl's speed_download / 1e6; proxy CPU per GB = utime+stime delta over the "
                  "transfer ÷ (bytes / 1e9); vs direct = median of the per-pair ratios",
    }
    doc = {"date_utc": now.isoformat(timespec="seconds"), "command": a.command, "method": method,
           "machine": machine, "http": http, "tunnel": tunnel, "ratios": ratios, "targets": targets,
           "configs": configs}
    with open(a.out + ".json", "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")

    def label(n):
        v = version_of(machine, n)
        return LABEL[n] + (f" {v}" if v else "")

    L = []
    L.append(f"# Forward proxy cost — {now:%Y-%m-%d %H:%M} UTC")
    L.append("")
    L.append(f"Method of DESIGN.md §7: each proxy alone on core {a.proxy_cpu} (one process/thread), "
             f"wrk, curl and the nginx origin (1 worker) on core {a.load_cpu}.")
    L.append("")
    L.append(f"## Plain-HTTP forward requests")
    L.append("")
    L.append(f"`wrk -t1 -c{a.conns} -d{a.duration} --latency` after a {a.warmup} warm-up"
             + (f", {a.repeat} measured runs per proxy (medians)" if a.repeat not in ("", "1") else "")
             + "; through a proxy each request is `GET http://127.0.0.1:ORIGIN/ HTTP/1.1` (absolute-form), "
             "the origin answers `return 200 \"hello world\\n\"`.")
    L.append("")
    L.append("| proxy | req/s | CPU µs/req | p50 | p99 | peak RSS | origin connections / requests | "
             "wrk errors (non-2xx / socket) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        r = http[n]
        s0 = r["samples"][0]
        orig = (f"{s0['backend_conns_accepted']:,} / {s0['backend_requests']:,}"
                if "backend_conns_accepted" in s0 else "–")
        mark = " ¹" if closes_per_request(r) else ""
        L.append(f"| {label(n)}{shared_core(r['samples'])} | {R.fmt_int(r['req_per_s'])} | {R.fmt_f(r['cpu_us_per_req'])} | "
                 f"{R.fmt_ms(r['p50_us'])} | {R.fmt_ms(r['p99_us'])} | {R.fmt_mib(r['peak_rss_kb'])} | {orig} | "
                 f"{r['non_2xx_3xx']} / {r['socket_errors']:,}{mark} |")
    L.append("")
    for n in names:
        r = http[n]
        if not closes_per_request(r):
            continue
        s0 = r["samples"][0]
        served = s0.get("backend_requests")
        conns = s0.get("backend_conns_accepted")
        L.append(f"¹ {LABEL[n]}: one read error per request and no other error. It answers with HTTP/1.1 and "
                 "no `Connection: close`, then closes the client connection after each response (no client "
                 "keep-alive); wrk had taken the connection as persistent, counts the close as a read error "
                 "and reconnects. Every response wrk got was a 2xx"
                 + (f"; the origin served {served:,} requests for wrk's {s0['requests']:,} (the difference is "
                    "requests in flight when wrk stopped)" if served is not None else "")
                 + (f" over {conns:,} origin connections" if conns is not None else "")
                 + ". So no request failed, but each one cost a new client connection"
                 + (" and a new origin connection" if conns is not None and conns >= 0.9 * s0["requests"] else "")
                 + ", which is part of its cost.")
        L.append("")
    if tunnel:
        L.append("## CONNECT tunnel throughput")
        L.append("")
        L.append(f"`curl --proxytunnel --proxy http://127.0.0.1:PROXY http://127.0.0.1:ORIGIN/big -o /dev/null` "
                 f"({size_h} = {int(a.tunnel_bytes):,} bytes), {a.tunnel_repeat}× per proxy, each right after a "
                 "direct transfer by the same curl; medians. MB = 10⁶ bytes.")
        L.append("")
        L.append("| path | MB/s | vs direct | proxy CPU s/GB | proxy core busy during transfer | peak RSS |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        all_direct = median(s["direct_mb_per_s"] for t in tunnel.values() for s in t["samples"])
        L.append(f"| direct (no proxy) | {fmt_mbs(all_direct)} | 100 % | – | – | – |")
        for n in proxies:
            t = tunnel.get(n)
            if not t:
                continue
            mark = ""
            if n == "sumun" and t["vs_direct"] is not None:
                mark = " ✅" if t["vs_direct"] >= TUNNEL_TARGET else " ❌"
            L.append(f"| {label(n)}{shared_core(t['samples'])} | {fmt_mbs(t['mb_per_s'])} | {fmt_pct(t['vs_direct'])}{mark} | "
                     f"{R.fmt_f(t['cpu_s_per_gb'], 3)} | {R.fmt_f(t['proxy_core_use_pct'], 0)} % | "
                     f"{R.fmt_mib(t['peak_rss_kb'])} |")
        L.append("")

    L.append("## Targets and ratios")
    L.append("")
    if ratios:
        L.append("sumun ÷ peer, from this run (below 1 = sumun uses less CPU / has the lower p99; "
                 "above 1 = more req/s, more MB/s):")
        L.append("")
        L.append("| ratio | CPU µs/req | p99 | req/s | tunnel MB/s | tunnel CPU/GB |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for k, v in ratios.items():
            L.append(f"| {k.replace('squid', 'Squid')} | {R.fmt_f(v['cpu_us_per_req'])} | {R.fmt_f(v['p99'])} | "
                     f"{R.fmt_f(v['req_per_s'])} | {R.fmt_f(v['tunnel_mb_per_s'])} | "
                     f"{R.fmt_f(v['tunnel_cpu_s_per_gb'])} |")
        L.append("")
    t_cpu, t_tun = targets.get("cpu_per_request_vs_squid"), targets.get("tunnel_vs_direct")
    L.append(f"- CPU per request ≤ {CPU_TARGET} × Squid's: "
             + (f"{t_cpu['value']:.2f} × {'✅' if t_cpu['met'] else '❌'}" if t_cpu
                else "n/a (sumun and Squid not both measured)"))
    L.append(f"- CONNECT tunnel throughput ≥ {TUNNEL_TARGET:.0%} of a direct loopback transfer: "
             + (f"{t_tun['value']:.0%} {'✅' if t_tun['met'] else '❌'}" if t_tun else "n/a (sumun not measured)")
             + ("; peers: " + ", ".join(f"{LABEL[n]} {fmt_pct(tunnel[n]['vs_direct'])}"
                                         for n in proxies if n in tunnel and n != "sumun")
                if any(n != "sumun" for n in tunnel) else ""))
    L.append("")

    L.append("Notes:")
    L.append("- CPU µs/req = utime+stime delta of the proxy's processes (`/proc/PID/stat`, "
             f"{machine['clk_tck']} ticks/s) ÷ requests completed in the measured run; every process of the "
             "proxy's process group counts (Squid runs as one process with `-N`, tinyproxy as one process "
             "with a thread per connection).")
    sched = ", ".join(f"{LABEL[n]} {R.fmt_f(http[n]['sched_cpu_us_per_req'])}"
                      for n in names if http[n].get("sched_cpu_us_per_req") is not None)
    if sched:
        L.append(f"- Same cost from per-thread schedstat run time (ns resolution, cross-check): {sched} µs/req."
                 " For tinyproxy, the threads that exited during the run are missing from schedstat "
                 "(their time is in the process's utime+stime), so only the first figure counts.")
    for n in names:
        for s in http[n]["samples"][:1]:
            if s.get("pids_changed"):
                L.append(f"- ⚠ {LABEL[n]}: its set of processes changed during the measured run.")
    L.append("- Origin connections / requests: what the origin's nginx (`stub_status`) accepted and served "
             "during measured run 1. The warm-up run has already filled the proxy's pool, so 0 to a handful "
             "of new connections means the proxy kept its origin connections alive; one per request means "
             "it opened a new one for each.")
    busy = []
    for n in names:
        xs = [x.get("proxy_core_others_pct") for x in http[n]["samples"]]
        xs += [x.get("proxy_core_others_pct") for x in (tunnel.get(n) or {}).get("samples", [])]
        if any(x is not None for x in xs):
            busy.append(f"{LABEL[n]} {'/'.join(R.fmt_f(x, 1) for x in xs)}%")
    if busy:
        worst = max((x or 0) for n in names for x in
                    [s.get("proxy_core_others_pct") for s in http[n]["samples"]]
                    + [s.get("proxy_core_others_pct") for s in (tunnel.get(n) or {}).get("samples", [])])
        L.append(f"- Other processes on core {a.proxy_cpu} during the measured runs (HTTP runs, then "
                 f"tunnel transfers; /proc/stat busy minus the proxy's own time): {', '.join(busy)}."
                 + (" ⚠ (in the tables) = above 5% in at least one run: the proxy shared its core, so its "
                    "figures are inflated; re-run on a quiet machine." if worst > 5 else ""))
    if tunnel:
        L.append("- Tunnel: proxy CPU s/GB = utime+stime of the proxy over the transfer ÷ GB moved (one "
                 "direction); \"proxy core busy\" = that CPU time ÷ curl's transfer time (100 % = the "
                 "proxy's core was the bottleneck; ±1 tick of 10 ms). With this kernel's tick-based CPU accounting the "
                 "loopback network work the kernel does in the proxy's context (softirq) is charged to the proxy. The direct transfer runs curl and the origin on one core; "
                 f"through a proxy they keep that core and the proxy adds core {a.proxy_cpu}.")
        for n in proxies:
            t = tunnel.get(n)
            if t:
                runs = "; ".join(f"{s['mb_per_s']:,.0f} vs {s['direct_mb_per_s']:,.0f} MB/s direct "
                                 f"({s['cpu_ticks']} ticks)" for s in t["samples"])
                L.append(f"  - {LABEL[n]}: {runs}.")
        L.append(f"- The origin serves /big with `sendfile {a.origin_sendfile}` from a sparse file (page cache, "
                 "no disk): the direct transfer is as cheap as the client and server can make it.")
    L.append("- Peak RSS = VmHWM summed over the proxy's processes after the HTTP run(s) (HTTP table) and "
             "after the tunnel transfers (tunnel table).")
    L.append("")
    L.append("Machine:")
    L.append("")
    L.append(f"- nproc {machine['nproc']}, {machine['cpu_model']}")
    L.append(f"- kernel {machine['kernel']}, {machine['os']}; fd limit (ulimit -n) {machine['fd_limit']}")
    L.append(f"- {machine['squid']}; {machine['tinyproxy']}; {machine['nginx']} (origin); {machine['wrk']}; "
             f"{' '.join(machine['curl'].split()[:2])}; python {machine['python']}")
    L.append(f"- sumun git rev: {machine['sumun_git_rev']}"
             + (f"; binary `{machine['sumun_bin']}` ({machine['sumun_version']}); {machine['rustc']}"
                if machine.get("sumun_bin") else ""))
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
