#!/usr/bin/env python3
"""CPU and memory accounting of a process group, read from /proc (stdlib only).

    procinfo.py snapshot PGID   -> JSON: every live (non-zombie) process whose process group
                                   is PGID, with utime/stime (clock ticks), summed per-thread
                                   schedstat run time (ns), VmRSS and VmHWM (KiB), and totals.
    procinfo.py pids PGID       -> the PIDs, one per line.
    procinfo.py quiet CPU PCT T -> waits (at most T s) until core CPU is busy < PCT % over
                                   0.5 s; prints that busy %; exit 1 if it never was.

Used by bench/reverse-proxy.sh before and after each load run (DESIGN.md §7: proxy cost is
the utime+stime delta of the proxy's processes divided by the requests served).
"""
import json
import os
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return s[s.rindex(")") + 2:].split()  # rest[0] is field 3 (state)


def group_pids(pgid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            rest = _stat_fields(d)
        except (OSError, ValueError):
            continue
        if int(rest[2]) == pgid and rest[0] != "Z":  # field 5 = pgrp
            pids.append(int(d))
    return sorted(pids)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _status_kb(pid, key):
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _sched_ns(pid):
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        s = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
        if s:
            total += int(s[0])
    return total


def proc(pid):
    rest = _stat_fields(pid)
    cmdline = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
    return {
        "pid": pid,
        "cmd": cmdline[:120],
        "utime": int(rest[11]),   # field 14, clock ticks
        "stime": int(rest[12]),   # field 15, clock ticks
        "sched_ns": _sched_ns(pid),
        "threads": int(rest[17]),  # field 20
        "rss_kb": _status_kb(pid, "VmRSS"),
        "hwm_kb": _status_kb(pid, "VmHWM"),
    }


def cpu_times():
    """Per-core busy/steal/total clock ticks from /proc/stat, to see who else used the cores."""
    out = {}
    for line in _read("/proc/stat").splitlines():
        f = line.split()
        if f and f[0].startswith("cpu") and f[0] != "cpu":
            v = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
            out[f[0][3:]] = {"busy": sum(v) - v[3] - v[4] - v[7], "steal": v[7], "total": sum(v)}
    return out


def snapshot(pgid):
    procs = []
    for pid in group_pids(pgid):
        try:
            procs.append(proc(pid))
        except (OSError, ValueError):
            pass  # exited meanwhile
    return {
        "pgid": pgid,
        "monotonic": time.monotonic(),
        "clk_tck": CLK_TCK,
        "procs": procs,
        "ticks": sum(p["utime"] + p["stime"] for p in procs),
        "sched_ns": sum(p["sched_ns"] for p in procs),
        "rss_kb": sum(p["rss_kb"] for p in procs),
        "hwm_kb": sum(p["hwm_kb"] for p in procs),
        "cpus": cpu_times(),
    }


def wait_quiet(cpu, max_pct, timeout, window=0.5):
    """Poll until core `cpu` was busy less than max_pct % over one `window`, or timeout.
    Prints the last busy %; returns True when quiet."""
    deadline = time.monotonic() + timeout
    while True:
        a = cpu_times()[cpu]
        time.sleep(window)
        b = cpu_times()[cpu]
        total = b["total"] - a["total"]
        pct = 100.0 * (b["busy"] - a["busy"]) / total if total > 0 else 0.0
        if pct < max_pct or time.monotonic() >= deadline:
            print(f"{pct:.1f}")
            return pct < max_pct


def main(argv):
    if len(argv) == 5 and argv[1] == "quiet":
        sys.exit(0 if wait_quiet(argv[2], float(argv[3]), float(argv[4])) else 1)
    if len(argv) != 3 or argv[1] not in ("snapshot", "pids"):
        sys.exit("usage: procinfo.py snapshot|pids PGID | quiet CPU MAX_BUSY_PCT TIMEOUT_S")
    pgid = int(argv[2])
    if argv[1] == "pids":
        print("\n".join(str(p) for p in group_pids(pgid)))
    else:
        json.dump(snapshot(pgid), sys.stdout)
        print()


if __name__ == "__main__":
    main(sys.argv)
