#!/usr/bin/env python3
"""Idle keep-alive connection memory of a proxy (stdlib asyncio).

    idle_conns.py --port P --pgid G [--conns 10000] [--concurrency 200]
                  [--timeout 10] [--deadline 300] [--settle 1.0]

1. Reads the proxy's VmRSS (sum over the processes of process group G) before connecting.
2. Opens N keep-alive connections to 127.0.0.1:P, at most --concurrency being set up at
   once; on each it sends one `GET /` (HTTP/1.1, keep-alive) and reads the full response,
   then leaves the connection open and idle.
3. Once all are set up it waits --settle seconds, counts how many are still open (no EOF
   from the proxy), and reads VmRSS again (and, with --backend-status, how many connections
   the proxy holds open to the backend).
4. Closes them all and prints one JSON object.

Every network step is bounded by --timeout and the whole setup by --deadline.
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procinfo  # noqa: E402


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(need, 65536)
    if soft >= want:
        return soft
    for lim in ((want, max(want, hard)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, lim)
            return lim[0]
        except (ValueError, OSError):
            continue
    return soft


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, chunked = None, False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v.strip())
        elif k == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:  # (assumes no trailers)
                break
    elif length:
        await reader.readexactly(length)
    return status


def backend_active_conns(url):
    """'Active connections' of an nginx stub_status page (includes this request's own)."""
    import urllib.request
    try:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        return int(body.split(":", 1)[1].split()[0]) - 1
    except Exception:  # noqa: BLE001 - diagnostic only
        return None


async def run(a):
    host = "127.0.0.1"
    req = f"GET / HTTP/1.1\r\nHost: {host}:{a.port}\r\nUser-Agent: sumun-bench-idle\r\n\r\n".encode()
    conns = []
    errors = {}
    statuses = {}
    sem = asyncio.Semaphore(a.concurrency)

    async def one():
        async with sem:
            w = None
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, a.port), a.timeout)
                w.write(req)
                st = await asyncio.wait_for(read_response(r), a.timeout)
                statuses[st] = statuses.get(st, 0) + 1
                conns.append((r, w))
            except Exception as e:  # noqa: BLE001 - counted and reported
                key = type(e).__name__
                errors[key] = errors.get(key, 0) + 1
                if w is not None:
                    w.close()

    before = procinfo.snapshot(a.pgid)
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(one()) for _ in range(a.conns)]
    done, pending = await asyncio.wait(tasks, timeout=a.deadline)
    for t in pending:
        t.cancel()
    if pending:
        errors["deadline"] = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    setup_s = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    still_open = sum(1 for r, _ in conns if not r.at_eof())
    after = procinfo.snapshot(a.pgid)
    backend_active = backend_active_conns(a.backend_status) if a.backend_status else None

    for _, w in conns:
        w.close()
    if conns:
        await asyncio.wait([asyncio.ensure_future(w.wait_closed()) for _, w in conns], timeout=a.timeout)

    ok = len(conns)
    delta_kb = after["rss_kb"] - before["rss_kb"]
    return {
        "target_conns": a.conns,
        "opened_ok": ok,
        "still_open": still_open,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "setup_seconds": round(setup_s, 3),
        "rss_before_kb": before["rss_kb"],
        "rss_after_kb": after["rss_kb"],
        "rss_delta_kb": delta_kb,
        "backend_active_conns": backend_active,
        "per_conn_bytes": round(delta_kb * 1024 / ok, 1) if ok else None,
        "procs_before": [{k: p[k] for k in ("pid", "cmd", "rss_kb")} for p in before["procs"]],
        "procs_after": [{k: p[k] for k in ("pid", "cmd", "rss_kb")} for p in after["procs"]],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pgid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--deadline", type=float, default=300.0)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--backend-status", help="nginx stub_status URL of the backend (diagnostic)")
    a = ap.parse_args()
    nofile = raise_nofile(a.conns + 1024)
    if nofile < a.conns + 64:
        sys.exit(f"idle_conns: RLIMIT_NOFILE is {nofile}, need > {a.conns + 64}")
    res = asyncio.run(run(a))
    res["nofile"] = nofile
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    main()
