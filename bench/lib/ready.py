#!/usr/bin/env python3
"""Wait until an HTTP server answers `GET /` with the expected status, within a deadline.

    ready.py --port P [--pid PID] [--timeout SECONDS] [--status 200]

Polls (connect + one request, 0.5 s per attempt) until it succeeds or the deadline passes.
With --pid, gives up at once when that process has exited (or is a zombie).
Exit 0 = ready, 1 = deadline passed, 2 = process exited. The last error goes to stderr.
"""
import argparse
import socket
import sys
import time


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return False
    return s[s.rindex(")") + 2] != "Z"


def probe(host, port, path):
    with socket.create_connection((host, port), timeout=0.5) as s:
        s.settimeout(0.5)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise RuntimeError(f"bad status line {line!r}")
        return int(parts[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--timeout", type=float, default=15.0)
    ap.add_argument("--status", type=int, default=200)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    last = "no attempt"
    while True:
        if a.pid and not alive(a.pid):
            print(f"process {a.pid} exited before answering on port {a.port}", file=sys.stderr)
            return 2
        try:
            st = probe(a.host, a.port, a.path)
            if st == a.status:
                return 0
            last = f"status {st}, want {a.status}"
        except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            print(f"port {a.port} not ready after {a.timeout:g}s (last: {last})", file=sys.stderr)
            return 1
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
