//! `[admin]` and `[listener.NAME]` tables: bind addresses, TLS files, connection limits.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use crate::model::*;
use crate::raw::*;
use crate::units::io_reason;
use crate::validate::Ctx;

/// The listener and where its `bind` was written.
pub(crate) fn listener(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    raw: &S<RawListener>,
) -> Option<(Listener, Range<usize>)> {
    let what = format!("listener `{name}`");
    let l = raw.get_ref();
    let tls = l.tls.as_ref().and_then(|tls| {
        let path = format!("listener.{name}.tls");
        let cert = tls_file(cx, &tls.get_ref().cert, &path, "cert", tls.span(), &what);
        let key = tls_file(cx, &tls.get_ref().key, &path, "key", tls.span(), &what);
        Some(Tls { cert: cert?, key: key? })
    });
    let limits = l.limits.as_ref().map_or_else(Limits::default, |raw| limits(cx, raw.get_ref(), &what));
    let Some(bind) = &l.bind else {
        cx.missing(
            &format!("listener.{name}.bind"),
            raw.span(),
            format!("{what} needs `bind`, e.g. `0.0.0.0:8080` or `unix:/run/sumun.sock`"),
        );
        return None;
    };
    let listener = Listener {
        name: name.to_string(),
        bind: bind_addr(cx, bind, &what)?,
        tls,
        trust_forwarded: l.trust_forwarded.as_ref().is_some_and(|t| *t.get_ref()),
        forward_proxy: l.forward_proxy.as_ref().is_some_and(|f| *f.get_ref()),
        limits,
    };
    Some((listener, bind.span()))
}

fn tls_file(
    cx: &mut Ctx<'_, '_>,
    raw: &Option<S<String>>,
    table_path: &str,
    key: &str,
    table_span: Range<usize>,
    what: &str,
) -> Option<PathBuf> {
    let Some(raw) = raw else {
        let message = format!("{what}: `tls` needs both `cert` and `key`; `{key}` is missing");
        cx.missing(&format!("{table_path}.{key}"), table_span, message);
        return None;
    };
    let path = cx.resolve(raw.get_ref());
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Some(path),
        Ok(_) => {
            cx.error(raw.span(), format!("{what}: tls {key} `{}` is not a file", path.display()));
            None
        }
        Err(e) => {
            let reason = io_reason(&e);
            cx.error(raw.span(), format!("{what}: tls {key} `{}`: {reason}", path.display()));
            None
        }
    }
}

fn limits(cx: &mut Ctx<'_, '_>, raw: &RawLimits, what: &str) -> Limits {
    let d = Limits::default();
    let max_connections = raw
        .max_connections
        .as_ref()
        .and_then(|m| cx.int(m, 1, i64::from(u32::MAX), &format!("{what}: `max_connections`")))
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(d.max_connections);
    let header_timeout =
        cx.duration(&raw.header_timeout, d.header_timeout, &format!("{what}: `header_timeout`"), true);
    let idle_timeout =
        cx.duration(&raw.idle_timeout, d.idle_timeout, &format!("{what}: `idle_timeout`"), true);
    let max_header_bytes = raw
        .max_header_bytes
        .as_ref()
        .and_then(|raw| {
            let key = format!("{what}: `max_header_bytes`");
            let v = cx.size(raw, &key)?;
            // hyper refuses a read buffer below 8 KiB; above 1 MiB is an attack surface.
            if !(8 * 1024..=1024 * 1024).contains(&v) {
                cx.error(raw.span(), format!("{key} must be between 8KiB and 1MiB, not {v} bytes"));
                return None;
            }
            usize::try_from(v).ok()
        })
        .unwrap_or(d.max_header_bytes);
    let max_body_bytes = raw
        .max_body_bytes
        .as_ref()
        .and_then(|raw| cx.size(raw, &format!("{what}: `max_body_bytes`")))
        .unwrap_or(d.max_body_bytes);
    Limits { max_connections, header_timeout, idle_timeout, max_header_bytes, max_body_bytes }
}

pub(crate) fn bind_addr(cx: &mut Ctx<'_, '_>, raw: &S<String>, what: &str) -> Option<BindAddr> {
    let text = raw.get_ref();
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            cx.error(raw.span(), format!("{what}: `unix:` needs a socket path"));
            return None;
        }
        return Some(BindAddr::Unix(cx.resolve(path)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(BindAddr::Tcp(addr));
    }
    let hint = match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains(':') => {
            "listeners bind IP addresses, not names (e.g. `0.0.0.0:8080`, `127.0.0.1:8080`, `[::]:8080`)"
        }
        Some((host, _)) if host.contains(':') && !host.starts_with('[') => {
            "IPv6 addresses need brackets, e.g. `[::1]:8080`"
        }
        _ => "expected `IP:PORT`, `[IPv6]:PORT` or `unix:/path/to.sock`",
    };
    cx.error(raw.span(), format!("{what}: invalid bind address `{text}`: {hint}"));
    None
}

/// Two sockets cannot bind the same address, nor a port that a same-family wildcard (0.0.0.0
/// or [::]) already holds. Port 0 asks the OS for a free port, so it never conflicts.
pub(crate) fn check_duplicate_binds(cx: &mut Ctx<'_, '_>, binds: &[(BindAddr, String, Range<usize>)]) {
    let mut sorted: Vec<_> = binds.iter().collect();
    sorted.sort_by_key(|(_, _, span)| span.start);
    for (i, (addr, owner, span)) in sorted.iter().enumerate() {
        let earlier = sorted[..i].iter().find(|(other, _, _)| binds_conflict(addr, other));
        if let Some((other, other_owner, other_span)) = earlier {
            let line = cx.sink.lines.position(other_span.start).0;
            let how = if addr == other { "is already used by" } else { "overlaps" };
            let message =
                format!("{owner}: bind address `{addr}` {how} {other_owner} (`{other}`, line {line})");
            cx.error(span.clone(), message);
        }
    }
}

fn binds_conflict(a: &BindAddr, b: &BindAddr) -> bool {
    match (a, b) {
        (BindAddr::Unix(a), BindAddr::Unix(b)) => a == b,
        (BindAddr::Tcp(a), BindAddr::Tcp(b)) => {
            a.port() != 0
                && a.port() == b.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_conflicts() {
        let tcp = |s: &str| BindAddr::Tcp(s.parse().unwrap());
        assert!(binds_conflict(&tcp("127.0.0.1:80"), &tcp("127.0.0.1:80")));
        assert!(binds_conflict(&tcp("0.0.0.0:80"), &tcp("127.0.0.1:80")));
        assert!(!binds_conflict(&tcp("[::]:80"), &tcp("127.0.0.1:80")));
        assert!(!binds_conflict(&tcp("127.0.0.1:80"), &tcp("127.0.0.2:80")));
        assert!(!binds_conflict(&tcp("127.0.0.1:0"), &tcp("127.0.0.1:0")));
        let unix = |s: &str| BindAddr::Unix(s.into());
        assert!(binds_conflict(&unix("/a"), &unix("/a")));
        assert!(!binds_conflict(&unix("/a"), &tcp("127.0.0.1:80")));
    }
}
