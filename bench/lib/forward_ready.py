#!/usr/bin/env python3
"""Wait until a forward proxy forwards both kinds of request to the origin, within a deadline.

    forward_ready.py --port PROXY_PORT --origin-port ORIGIN_PORT [--pid PID] [--timeout S]

One attempt (0.5 s per network step) is:
  1. absolute-form `GET http://127.0.0.1:ORIGIN/ HTTP/1.1` to the proxy: must answer 200 with
     the origin's body (`hello world`);
  2. `CONNECT 127.0.0.1:ORIGIN HTTP/1.1` on a new connection: must answer 2xx, then an
     origin-form `GET /` sent through the tunnel must come back 200 `hello world`.
Polls until one attempt passes or the deadline does. With --pid, gives up at once when that
process has exited (or is a zombie). Exit 0 = ready, 1 = deadline passed, 2 = process exited;
the last failure (status line and the start of the body, so a 403/400 from the proxy explains
itself) goes to stderr. Used by bench/forward-proxy.sh; stdlib only.
"""
import argparse
import socket
import sys
import time

from ready import alive  # same directory

BODY = b"hello world"


def read_head(s, data=b""):
    """Read until the end of the response head; returns (status, head, rest)."""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise RuntimeError(f"bad status line {line!r} (got {data[:120]!r})")
    return int(parts[1]), head.decode("latin-1"), rest


def read_body(s, head, rest):
    length = None
    for h in head.split("\r\n")[1:]:
        k, _, v = h.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    while length is None or len(rest) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        rest += chunk
    return rest if length is None else rest[:length]


def absolute_get(port, origin):
    target = f"127.0.0.1:{origin}"
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.settimeout(0.5)
        s.sendall(f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        st, head, rest = read_head(s)
        body = read_body(s, head, rest)
    if st != 200 or not body.startswith(BODY):
        raise RuntimeError(f"absolute-form GET: status {st}, body {body[:200]!r}")


def connect_get(port, origin):
    target = f"127.0.0.1:{origin}"
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.settimeout(0.5)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        st, head, rest = read_head(s)
        if not 200 <= st < 300:
            body = read_body(s, head, rest) if "content-length" in head.lower() else rest
            raise RuntimeError(f"CONNECT: status {st}, body {body[:200]!r}")
        s.sendall(f"GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        st, head, rest = read_head(s, rest)
        body = read_body(s, head, rest)
    if st != 200 or not body.startswith(BODY):
        raise RuntimeError(f"GET through the CONNECT tunnel: status {st}, body {body[:200]!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True, help="the proxy's port")
    ap.add_argument("--origin-port", type=int, required=True)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--timeout", type=float, default=15.0)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    last = "no attempt"
    while True:
        if a.pid and not alive(a.pid):
            print(f"process {a.pid} exited before forwarding on port {a.port} (last: {last})", file=sys.stderr)
            return 2
        try:
            absolute_get(a.port, a.origin_port)
            connect_get(a.port, a.origin_port)
            return 0
        except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            print(f"proxy on port {a.port} not forwarding after {a.timeout:g}s (last: {last})", file=sys.stderr)
            return 1
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
