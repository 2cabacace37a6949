#!/usr/bin/env python3
"""Builds bench/results/reverse-proxy-<date>.{json,md} from the raw files of one run.

Input layout (written by bench/reverse-proxy.sh under its work dir):
    DATA/<name>/load-<n>/wrk.txt        wrk output incl. the WRKJSON line of wrk-report.lua
    DATA/<name>/load-<n>/before.json    procinfo.py snapshot of the proxy before the run
    DATA/<name>/load-<n>/after.json     ... and after it
    DATA/<name>/idle.json               idle_conns.py result
where <name> is "direct" (wrk straight at the backend) or a proxy name.
Prints the markdown to stdout.
"""
import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys

PROXY_CPU = 1  # set from --proxy-cpu
LABEL = {"direct": "direct to backend (no proxy)", "sumun": "sumun", "nginx": "nginx", "haproxy": "HAProxy"}


def sh(cmd, timeout=10):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (p.stdout + p.stderr).strip()
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({type(e).__name__})"


def first_line(s):
    return s.splitlines()[0] if s else ""


def load_json(path):
    with open(path) as f:
        return json.load(f)


def parse_wrk(path):
    text = open(path).read()
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):]), text
    raise SystemExit(f"no WRKJSON line in {path}")


def sample(dirpath):
    w, text = parse_wrk(os.path.join(dirpath, "wrk.txt"))
    req = w["requests"]
    s = {
        "requests": req,
        "duration_s": w["duration_us"] / 1e6,
        "req_per_s": req / (w["duration_us"] / 1e6),
        "p50_us": w["latency_us"]["p50"],
        "p90_us": w["latency_us"]["p90"],
        "p99_us": w["latency_us"]["p99"],
        "p99_9_us": w["latency_us"]["p99_9"],
        "max_us": w["latency_us"]["max"],
        "non_2xx_3xx": w["errors"]["status"],
        "socket_errors": {k: w["errors"][k] for k in ("connect", "read", "write", "timeout")},
        "wrk_output": [l for l in text.splitlines() if not l.startswith("WRKJSON ")],
    }
    bb, ba = os.path.join(dirpath, "backend-before.txt"), os.path.join(dirpath, "backend-after.txt")
    if os.path.exists(bb) and os.path.exists(ba):
        (acc0, req0), (acc1, req1) = (map(int, open(x).read().split()) for x in (bb, ba))
        # The "after" status fetch is itself one connection and one request: not counted.
        s["backend_conns_accepted"] = acc1 - acc0 - 1
        s["backend_requests"] = req1 - req0 - 1
    b_path, a_path = os.path.join(dirpath, "before.json"), os.path.join(dirpath, "after.json")
    if os.path.exists(b_path) and os.path.exists(a_path):
        b, a = load_json(b_path), load_json(a_path)
        tck = a["clk_tck"]
        ticks = a["ticks"] - b["ticks"]
        s["clk_tck"] = tck
        s["cpu_ticks"] = ticks
        s["cpu_us_per_req"] = ticks * 1e6 / tck / req if req else None
        s["sched_cpu_us_per_req"] = (a["sched_ns"] - b["sched_ns"]) / 1e3 / req if req else None
        s["peak_rss_kb"] = a["hwm_kb"]
        before = {p["pid"]: p for p in b["procs"]}
        s["procs"] = [
            {
                "pid": p["pid"],
                "cmd": p["cmd"],
                "threads": p["threads"],
                "cpu_ticks": p["utime"] + p["stime"] - (before[p["pid"]]["utime"] + before[p["pid"]]["stime"])
                if p["pid"] in before else None,
                "hwm_kb": p["hwm_kb"],
            }
            for p in a["procs"]
        ]
        # Interference: what else ran on the proxy's core during the run (and hypervisor steal).
        core = str(PROXY_CPU)
        if core in a.get("cpus", {}) and core in b.get("cpus", {}):
            ca, cb = a["cpus"][core], b["cpus"][core]
            total = ca["total"] - cb["total"]
            if total > 0:
                s["proxy_core_busy_pct"] = round(100 * (ca["busy"] - cb["busy"]) / total, 1)
                s["proxy_core_others_pct"] = round(100 * max(0, ca["busy"] - cb["busy"] - ticks) / total, 1)
                s["proxy_core_steal_pct"] = round(100 * (ca["steal"] - cb["steal"]) / total, 1)
        s["pids_changed"] = sorted(before) != sorted(p["pid"] for p in a["procs"])
    return s


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(name, data_dir):
    d = os.path.join(data_dir, name)
    runs = sorted((x for x in os.listdir(d) if x.startswith("load-")), key=lambda x: int(x.split("-")[1]))
    samples = [sample(os.path.join(d, r)) for r in runs]
    out = {
        "name": name,
        "samples": samples,
        "req_per_s": median(s["req_per_s"] for s in samples),
        "cpu_us_per_req": median(s.get("cpu_us_per_req") for s in samples),
        "sched_cpu_us_per_req": median(s.get("sched_cpu_us_per_req") for s in samples),
        "p50_us": median(s["p50_us"] for s in samples),
        "p99_us": median(s["p99_us"] for s in samples),
        "peak_rss_kb": max((s["peak_rss_kb"] for s in samples if "peak_rss_kb" in s), default=None),
        "non_2xx_3xx": sum(s["non_2xx_3xx"] for s in samples),
        "socket_errors": sum(sum(s["socket_errors"].values()) for s in samples),
    }
    idle = os.path.join(d, "idle.json")
    if os.path.exists(idle):
        out["idle"] = load_json(idle)
    return out


def fmt_int(x):
    return "–" if x is None else f"{x:,.0f}"


def fmt_ms(us):
    return "–" if us is None else f"{us / 1000:.3f} ms"


def fmt_mib(kb):
    return "–" if kb is None else f"{kb / 1024:.1f} MiB"


def fmt_f(x, n=2):
    return "–" if x is None else f"{x:.{n}f}"


def fmt_idle(idle):
    if not idle:
        return "–"
    s = f"{fmt_mib(idle['rss_after_kb'])} (+{idle['per_conn_bytes'] / 1024:.2f} KiB/conn)" \
        if idle.get("per_conn_bytes") is not None else fmt_mib(idle["rss_after_kb"])
    if idle["opened_ok"] != idle["target_conns"] or idle["still_open"] != idle["opened_ok"]:
        s += f" ⚠ {idle['still_open']}/{idle['target_conns']} open"
    return s


def ratio(a, b):
    return a / b if a is not None and b else None


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
    m = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "os": first_line(sh(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""])),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
        "nginx": first_line(sh([a.nginx, "-v"])).replace("nginx version: ", ""),
        "haproxy": first_line(sh([a.haproxy, "-v"])),
        "wrk": first_line(sh([a.wrk, "-v"])),
        "python": platform.python_version(),
        "fd_limit": a.nofile,
        "sumun_git_rev": rev,
        "loadavg_at_report": open("/proc/loadavg").read().split()[:3],
    }
    if a.sumun:
        m["sumun_bin"] = a.sumun
        m["sumun_version"] = first_line(sh([a.sumun, "--version"], timeout=5))
        m["rustc"] = first_line(sh(["rustc", "--version"]))
    return m


def main():
    ap = argparse.ArgumentParser()
    for k in ("data", "out", "repo", "proxies", "baseline", "command", "duration", "warmup", "conns",
              "repeat", "idle-conns", "nofile", "proxy-cpu", "load-cpu", "nginx", "haproxy", "wrk", "sumun"):
        ap.add_argument("--" + k, default="")
    a = ap.parse_args()

    global PROXY_CPU
    PROXY_CPU = int(a.proxy_cpu or 1)
    now = dt.datetime.now(dt.timezone.utc)
    names = (["direct"] if a.baseline == "1" else []) + a.proxies.split()
    results = {n: summarize(n, a.data) for n in names}
    machine = machine_info(a)
    ratios = {}
    if "sumun" in results:
        for peer in ("nginx", "haproxy"):
            if peer in results:
                ratios[f"sumun/{peer}"] = {
                    "cpu_us_per_req": ratio(results["sumun"]["cpu_us_per_req"], results[peer]["cpu_us_per_req"]),
                    "p99": ratio(results["sumun"]["p99_us"], results[peer]["p99_us"]),
                }
    method = {
        "design": "DESIGN.md §7",
        "proxy_cpu": int(a.proxy_cpu),
        "load_cpu": int(a.load_cpu),
        "load": f"taskset -c {a.load_cpu} wrk -t1 -c{a.conns} -d{a.duration} --latency (after a {a.warmup} warm-up run)",
        "repeat": int(a.repeat),
        "backend": 'nginx, 1 worker, return 200 "hello world\\n", pinned with wrk',
        "cpu_accounting": "utime+stime delta (/proc/PID/stat) summed over every process of the proxy's "
                          "process group (nginx: master + worker; HAProxy, sumun: one process), "
                          "divided by the requests wrk completed in the measured run",
        "peak_rss": "VmHWM summed over the proxy's processes, after the measured run(s)",
        "idle": f"fresh proxy; {a.idle_conns} keep-alive connections, one GET each, then idle; "
                "VmRSS summed over the proxy's processes, before and after",
    }
    doc = {"date_utc": now.isoformat(timespec="seconds"), "command": a.command, "method": method,
           "machine": machine, "results": results, "ratios": ratios}
    with open(a.out + ".json", "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")

    idle_n = int(a.idle_conns or 0)
    L = []
    L.append(f"# Reverse proxy cost — {now:%Y-%m-%d %H:%M} UTC")
    L.append("")
    L.append(f"Method of DESIGN.md §7: each proxy alone on core {a.proxy_cpu} (one worker/thread), "
             f"wrk and the nginx backend (`return 200 \"hello world\\n\"`, 1 worker) on core {a.load_cpu}; "
             f"keep-alive on both sides; `wrk -t1 -c{a.conns} -d{a.duration} --latency` after a {a.warmup} warm-up"
             + (f", {a.repeat} measured runs per proxy (medians)" if a.repeat not in ("", "1") else "") + ".")
    L.append("")
    idle_col = (f"RSS @{idle_n // 1000}k idle" if idle_n % 1000 == 0 else f"RSS @{idle_n} idle") \
        if idle_n else "RSS idle (not run)"
    L.append(f"| proxy | req/s | CPU µs/req | p50 | p99 | peak RSS | {idle_col} | wrk errors (non-2xx / socket) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        r = results[n]
        label = LABEL[n]
        if n == "nginx":
            label += " " + machine["nginx"].replace("nginx/", "")
        elif n == "haproxy":
            parts = machine["haproxy"].split()
            label += " " + (parts[2] if len(parts) > 2 else "")
        L.append(f"| {label} | {fmt_int(r['req_per_s'])} | {fmt_f(r['cpu_us_per_req'])} | {fmt_ms(r['p50_us'])} | "
                 f"{fmt_ms(r['p99_us'])} | {fmt_mib(r['peak_rss_kb'])} | {fmt_idle(r.get('idle'))} | "
                 f"{r['non_2xx_3xx']} / {r['socket_errors']} |")
    L.append("")
    if ratios:
        L.append("Ratios (below 1 = sumun uses less CPU per request / has the lower p99):")
        L.append("")
        L.append("| ratio | CPU µs/req | p99 |")
        L.append("| --- | ---: | ---: |")
        for k, v in ratios.items():
            L.append(f"| {k.replace('haproxy', 'HAProxy')} | {fmt_f(v['cpu_us_per_req'])} | {fmt_f(v['p99'])} |")
    else:
        L.append("Ratios: n/a (sumun was not measured in this run).")
    L.append("")
    L.append("Notes:")
    L.append("- CPU µs/req = utime+stime delta of the proxy's processes (`/proc/PID/stat`, "
             f"{machine['clk_tck']} ticks/s) ÷ requests completed in the measured run. For nginx that is "
             "master + worker (every process of its process group); the master's share is shown below.")
    sched = ", ".join(f"{LABEL[n]} {fmt_f(results[n]['sched_cpu_us_per_req'])}"
                      for n in names if results[n].get("sched_cpu_us_per_req") is not None)
    if sched:
        L.append(f"- Same cost from per-thread schedstat run time (ns resolution, cross-check): {sched} µs/req.")
    for n in names:
        for s in results[n]["samples"][:1]:
            if n == "nginx" and s.get("procs"):
                split = "; ".join(f"`{p['cmd'][:40]}` {p['cpu_ticks']} ticks" for p in s["procs"])
                L.append(f"- nginx processes in run 1: {split}.")
            if s.get("pids_changed"):
                L.append(f"- ⚠ {LABEL[n]}: its set of processes changed during the measured run.")
    bk = ", ".join(f"{LABEL[n]} {s0['backend_conns_accepted']:,} connections / {s0['backend_requests']:,} requests"
                   for n in names for s0 in results[n]["samples"][:1] if "backend_conns_accepted" in s0)
    if bk:
        L.append(f"- Backend side of run 1 (nginx stub_status): {bk} — a handful of connections means "
                 "upstream keep-alive worked.")
    busy = []
    for n in names:
        xs = [x.get("proxy_core_others_pct") for x in results[n]["samples"]]
        if any(x is not None for x in xs):
            st = max((x.get("proxy_core_steal_pct") or 0) for x in results[n]["samples"])
            busy.append(f"{LABEL[n]} {'/'.join(fmt_f(x, 1) for x in xs)}%" + (f" (steal ≤{st:.1f}%)" if st else ""))
    if busy:
        worst = max((x.get("proxy_core_others_pct") or 0) for n in names for x in results[n]["samples"])
        L.append(f"- Other processes on core {a.proxy_cpu} during the measured run(s) (/proc/stat busy minus the "
                 f"proxy's own time): {', '.join(busy)}."
                 + (" ⚠ Above 5%: the proxy shared its core, so its figures are inflated; re-run on a quiet "
                    "machine." if worst > 5 else ""))
    L.append("- Peak RSS = VmHWM after the load run(s), summed over the proxy's processes "
             "(nginx master + worker: shared pages count twice).")
    if idle_n:
        L.append(f"- Idle test on a freshly started proxy: {idle_n} keep-alive connections, one GET each, left "
                 "open; RSS = VmRSS summed over the proxy's processes, per-connection = (after − before) ÷ "
                 "connections opened.")
        for n in names:
            i = results[n].get("idle")
            if i:
                L.append(f"  - {LABEL[n]}: {i['rss_before_kb']:,} → {i['rss_after_kb']:,} KiB; "
                         f"{i['opened_ok']:,}/{i['target_conns']:,} opened, {i['still_open']:,} still open at "
                         f"the reading, set-up {i['setup_seconds']} s"
                         + (f", {i['backend_active_conns']:,} connections to the backend held open"
                            if i.get("backend_active_conns") is not None else "")
                         + (f", errors {i['errors']}" if i["errors"] else "")
                         + (f", statuses {i['statuses']}" if list(i["statuses"]) != ["200"] else "") + ".")
    L.append("")
    L.append("Machine:")
    L.append("")
    L.append(f"- nproc {machine['nproc']}, {machine['cpu_model']}")
    L.append(f"- kernel {machine['kernel']}, {machine['os']}; fd limit (ulimit -n) {machine['fd_limit']}")
    L.append(f"- {machine['nginx']}; {machine['haproxy']}; {machine['wrk']}; python {machine['python']}")
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
