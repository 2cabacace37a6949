//! Raw model → validated [`Config`]: defaults, units, addresses, references. Every problem is
//! reported; validation carries on with a default after each so later problems show too.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diagnostics::{Sink, did_you_mean};
use crate::model::*;
use crate::raw::*;
use crate::units::{io_reason, parse_duration, parse_size};

pub(crate) struct Ctx<'s, 'a> {
    pub sink: &'s mut Sink<'a>,
    /// Relative paths in the file are relative to the file's directory.
    pub base_dir: PathBuf,
    /// Paths already reported by the parser; not reported again as missing.
    pub removed: HashSet<String>,
}

impl Ctx<'_, '_> {
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.sink.error(&span, message);
    }

    /// Reports a missing required key unless the parser already reported something there.
    pub fn missing(&mut self, path: &str, span: Range<usize>, message: impl Into<String>) {
        let reported = self.removed.iter().any(|r| {
            r == path
                || r.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        });
        if !reported {
            self.error(span, message);
        }
    }

    pub fn resolve(&self, path: &str) -> PathBuf {
        // Collecting components drops interior `.`s: "/etc/sumun/./data" → "/etc/sumun/data".
        self.base_dir.join(path).components().collect()
    }

    /// A duration key with its default; `positive` refuses zero.
    pub fn duration(
        &mut self,
        raw: &Option<S<String>>,
        default: Duration,
        what: &str,
        positive: bool,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match parse_duration(raw.get_ref()) {
            Ok(d) if positive && d.is_zero() => {
                self.error(raw.span(), format!("{what} must be greater than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(raw.span(), format!("{what}: {e}"));
                default
            }
        }
    }

    /// An integer key within `min..=max`.
    pub fn int(&mut self, raw: &S<i64>, min: i64, max: i64, what: &str) -> Option<i64> {
        let v = *raw.get_ref();
        if (min..=max).contains(&v) {
            Some(v)
        } else {
            self.error(
                raw.span(),
                format!("{what} must be between {min} and {max}, not {v}"),
            );
            None
        }
    }

    fn size(&mut self, raw: &S<RawSize>, what: &str) -> Option<u64> {
        let parsed = match raw.get_ref() {
            RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| format!("invalid size `{n}`")),
            RawSize::Text(t) => parse_size(t),
        };
        parsed
            .map_err(|e| self.error(raw.span(), format!("{what}: {e}")))
            .ok()
    }
}

pub(crate) fn validate(raw: RawConfig, source: &Path, cx: &mut Ctx<'_, '_>) -> Option<Config> {
    let data_dir = match &raw.data_dir {
        Some(d) if d.get_ref().is_empty() => {
            cx.error(d.span(), "`data_dir` must not be empty");
            PathBuf::new()
        }
        Some(d) => cx.resolve(d.get_ref()),
        None => cx.resolve("./sumun-data"),
    };
    let via = match &raw.via {
        Some(v) if !is_token(v.get_ref()) => {
            cx.error(
                v.span(),
                format!(
                    "`via` must be a token (letters, digits and !#$%&'*+-.^_`|~), not `{}`",
                    v.get_ref()
                ),
            );
            String::new()
        }
        Some(v) => v.get_ref().clone(),
        None => "sumun".to_string(),
    };
    let shutdown_grace = cx.duration(
        &raw.shutdown_grace,
        Duration::from_secs(30),
        "`shutdown_grace`",
        false,
    );
    let access_log = match raw
        .access_log
        .as_ref()
        .map(|a| (a.get_ref().as_str(), a.span()))
    {
        None | Some(("stdout", _)) => AccessLog::Stdout,
        Some(("stderr", _)) => AccessLog::Stderr,
        Some(("off", _)) => AccessLog::Off,
        Some(("", span)) => {
            cx.error(
                span,
                "`access_log` must be `stdout`, `stderr`, `off` or a file path",
            );
            AccessLog::Off
        }
        Some((path, _)) => AccessLog::File(cx.resolve(path)),
    };

    let mut binds: Vec<(BindAddr, String, Range<usize>)> = Vec::new();
    let admin = raw.admin.as_ref().and_then(|admin| {
        let Some(bind) = &admin.get_ref().bind else {
            cx.missing(
                "admin.bind",
                admin.span(),
                "`admin` needs `bind`, e.g. `127.0.0.1:9901`",
            );
            return None;
        };
        let addr = bind_addr(cx, bind, "admin")?;
        binds.push((addr.clone(), "the admin listener".into(), bind.span()));
        Some(Admin { bind: addr })
    });

    let mut listeners = Vec::new();
    let mut listener_names = Vec::new();
    match &raw.listener {
        Some(table) if !table.get_ref().0.is_empty() => {
            for (name, l) in &table.get_ref().0 {
                check_name(cx, name, "listener");
                listener_names.push(name.get_ref().clone());
                if let Some((l, span)) = listener(cx, name.get_ref(), l) {
                    binds.push((l.bind.clone(), format!("listener `{}`", l.name), span));
                    listeners.push(l);
                }
            }
        }
        Some(table) => cx.error(table.span(), "at least one `[listener.NAME]` is required"),
        None => cx.missing(
            "listener",
            0..0,
            "at least one `[listener.NAME]` is required",
        ),
    }
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    check_duplicate_binds(cx, &binds);

    let mut raw_upstreams: Vec<_> = raw.upstream.iter().flat_map(|u| &u.get_ref().0).collect();
    raw_upstreams.sort_by(|a, b| a.0.get_ref().cmp(b.0.get_ref()));
    let upstream_names: Vec<String> = raw_upstreams
        .iter()
        .map(|(n, _)| n.get_ref().clone())
        .collect();
    let mut upstreams = Vec::new();
    for (name, u) in raw_upstreams {
        check_name(cx, name, "upstream");
        if let Some(u) = upstream(cx, name.get_ref(), u) {
            upstreams.push(u);
        }
    }

    let names = crate::route::Names {
        listeners: &listener_names,
        upstreams: &upstream_names,
    };
    let routes = crate::route::routes(cx, raw.route.as_deref().unwrap_or_default(), &names);

    if cx.sink.has_errors() {
        return None;
    }
    Some(Config {
        source: source.to_path_buf(),
        data_dir,
        via,
        shutdown_grace,
        access_log,
        admin,
        listeners,
        upstreams,
        routes,
    })
}

/// Names show up in logs, metrics and admin paths: keep them plain.
pub(crate) fn check_name(cx: &mut Ctx<'_, '_>, name: &S<String>, kind: &str) {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        cx.error(
            name.span(),
            format!(
                "{kind} name `{n}` must be non-empty and use only letters, digits, `-`, `_` and `.`"
            ),
        );
    }
}

/// The listener and where its `bind` was written.
fn listener(
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
        Some(Tls {
            cert: cert?,
            key: key?,
        })
    });
    let limits = l
        .limits
        .as_ref()
        .map_or_else(Limits::default, |raw| limits(cx, raw.get_ref(), &what));
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
            cx.error(
                raw.span(),
                format!("{what}: tls {key} `{}` is not a file", path.display()),
            );
            None
        }
        Err(e) => {
            let reason = io_reason(&e);
            cx.error(
                raw.span(),
                format!("{what}: tls {key} `{}`: {reason}", path.display()),
            );
            None
        }
    }
}

fn limits(cx: &mut Ctx<'_, '_>, raw: &RawLimits, what: &str) -> Limits {
    let d = Limits::default();
    let max_connections = raw
        .max_connections
        .as_ref()
        .and_then(|m| {
            cx.int(
                m,
                1,
                i64::from(u32::MAX),
                &format!("{what}: `max_connections`"),
            )
        })
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(d.max_connections);
    let header_timeout = cx.duration(
        &raw.header_timeout,
        d.header_timeout,
        &format!("{what}: `header_timeout`"),
        true,
    );
    let idle_timeout = cx.duration(
        &raw.idle_timeout,
        d.idle_timeout,
        &format!("{what}: `idle_timeout`"),
        true,
    );
    let max_header_bytes = raw
        .max_header_bytes
        .as_ref()
        .and_then(|raw| {
            let key = format!("{what}: `max_header_bytes`");
            let v = cx.size(raw, &key)?;
            // hyper refuses a read buffer below 8 KiB; above 1 MiB is an attack surface.
            if !(8 * 1024..=1024 * 1024).contains(&v) {
                cx.error(
                    raw.span(),
                    format!("{key} must be between 8KiB and 1MiB, not {v} bytes"),
                );
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
    Limits {
        max_connections,
        header_timeout,
        idle_timeout,
        max_header_bytes,
        max_body_bytes,
    }
}

fn bind_addr(cx: &mut Ctx<'_, '_>, raw: &S<String>, what: &str) -> Option<BindAddr> {
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
        Some((host, port))
            if !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains(':') =>
        {
            "listeners bind IP addresses, not names (e.g. `0.0.0.0:8080`, `127.0.0.1:8080`, `[::]:8080`)"
        }
        Some((host, _)) if host.contains(':') && !host.starts_with('[') => {
            "IPv6 addresses need brackets, e.g. `[::1]:8080`"
        }
        _ => "expected `IP:PORT`, `[IPv6]:PORT` or `unix:/path/to.sock`",
    };
    cx.error(
        raw.span(),
        format!("{what}: invalid bind address `{text}`: {hint}"),
    );
    None
}

/// Two sockets cannot bind the same address, nor a port that a same-family wildcard (0.0.0.0
/// or [::]) already holds. Port 0 asks the OS for a free port, so it never conflicts.
fn check_duplicate_binds(cx: &mut Ctx<'_, '_>, binds: &[(BindAddr, String, Range<usize>)]) {
    let mut sorted: Vec<_> = binds.iter().collect();
    sorted.sort_by_key(|(_, _, span)| span.start);
    for (i, (addr, owner, span)) in sorted.iter().enumerate() {
        let earlier = sorted[..i]
            .iter()
            .find(|(other, _, _)| binds_conflict(addr, other));
        if let Some((other, other_owner, other_span)) = earlier {
            let line = cx.sink.lines.position(other_span.start).0;
            let how = if addr == other {
                "is already used by"
            } else {
                "overlaps"
            };
            let message = format!(
                "{owner}: bind address `{addr}` {how} {other_owner} (`{other}`, line {line})"
            );
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

fn upstream(cx: &mut Ctx<'_, '_>, name: &str, raw: &S<RawUpstream>) -> Option<Upstream> {
    let what = format!("upstream `{name}`");
    let u = raw.get_ref();
    let mut endpoints = Vec::new();
    match &u.endpoints {
        None => cx.missing(
            &format!("upstream.{name}.endpoints"),
            raw.span(),
            format!("{what} needs `endpoints`, e.g. [\"127.0.0.1:3000\"]"),
        ),
        Some(list) if list.get_ref().is_empty() => {
            cx.error(
                list.span(),
                format!("{what}: `endpoints` must not be empty"),
            );
        }
        Some(list) => {
            for (i, ep) in list.get_ref().iter().enumerate() {
                let path = format!("upstream.{name}.endpoints[{i}]");
                if let Some(ep) = endpoint(cx, ep, &path, &what) {
                    endpoints.push(ep);
                }
            }
        }
    }
    let balance = match u.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
        None | Some(("round_robin", _)) => Balance::RoundRobin,
        Some((other, span)) => {
            let message = one_of(
                &format!("{what}: unknown `balance`"),
                other,
                &["round_robin"],
            );
            cx.error(span, message);
            Balance::RoundRobin
        }
    };
    let protocol = match u
        .protocol
        .as_ref()
        .map(|p| (p.get_ref().as_str(), p.span()))
    {
        None | Some(("http1", _)) => UpstreamProtocol::Http1,
        Some(("h2c", _)) => UpstreamProtocol::H2c,
        Some((other, span)) => {
            let message = one_of(
                &format!("{what}: unknown `protocol`"),
                other,
                &["http1", "h2c"],
            );
            cx.error(span, message);
            UpstreamProtocol::Http1
        }
    };
    let mut timeouts = UpstreamTimeouts::default();
    if let Some(t) = &u.timeouts {
        let t = t.get_ref();
        timeouts.connect = cx.duration(
            &t.connect,
            timeouts.connect,
            &format!("{what}: `timeouts.connect`"),
            true,
        );
        timeouts.request = cx.duration(
            &t.request,
            timeouts.request,
            &format!("{what}: `timeouts.request`"),
            true,
        );
    }
    let mut pool = Pool::default();
    if let Some(p) = &u.pool {
        let p = p.get_ref();
        pool.idle_timeout = cx.duration(
            &p.idle_timeout,
            pool.idle_timeout,
            &format!("{what}: `pool.idle_timeout`"),
            true,
        );
        if let Some(max) = &p.max_idle_per_endpoint {
            let key = format!("{what}: `pool.max_idle_per_endpoint`");
            if let Some(max) = cx.int(max, 0, i64::from(u32::MAX), &key) {
                pool.max_idle_per_endpoint =
                    usize::try_from(max).unwrap_or(pool.max_idle_per_endpoint);
            }
        }
    }
    (!endpoints.is_empty()).then(|| Upstream {
        name: name.to_string(),
        endpoints,
        balance,
        protocol,
        timeouts,
        pool,
    })
}

/// "`what` `value`; valid values: …" with a "did you mean" when one is close.
pub(crate) fn one_of(what: &str, value: &str, valid: &[&str]) -> String {
    let list: Vec<String> = valid.iter().map(|v| format!("`{v}`")).collect();
    let mut message = format!("{what} `{value}`");
    if let Some(hint) = did_you_mean(value, valid.iter().copied()) {
        message.push_str(&format!("; did you mean `{hint}`?"));
    }
    message.push_str(&format!(" (valid: {})", list.join(", ")));
    message
}

fn endpoint(
    cx: &mut Ctx<'_, '_>,
    raw: &S<RawEndpoint>,
    path: &str,
    what: &str,
) -> Option<Endpoint> {
    let (address, weight) = match raw.get_ref() {
        RawEndpoint::Short(a) => ((a.as_str(), raw.span()), 1),
        RawEndpoint::Full(t) => {
            let weight = match &t.weight {
                Some(w) => cx.int(
                    w,
                    1,
                    i64::from(u32::MAX),
                    &format!("{what}: endpoint `weight`"),
                )?,
                None => 1,
            };
            let Some(a) = &t.address else {
                let message = format!("{what}: endpoint needs `address`");
                cx.missing(&format!("{path}.address"), raw.span(), message);
                return None;
            };
            ((a.get_ref().as_str(), a.span()), weight)
        }
    };
    let parsed = endpoint_addr(address.0).map(|addr| match addr {
        EndpointAddr::Unix(p) => EndpointAddr::Unix(cx.resolve(&p.to_string_lossy())),
        tcp => tcp,
    });
    match parsed {
        Ok(addr) => Some(Endpoint {
            address: addr,
            weight: u32::try_from(weight).unwrap_or(1),
        }),
        Err(e) => {
            cx.error(
                address.1,
                format!("{what}: invalid endpoint `{}`: {e}", address.0),
            );
            None
        }
    }
}

/// `host:port` (host a DNS name or IPv4), `[IPv6]:port` or `unix:/path`.
fn endpoint_addr(text: &str) -> Result<EndpointAddr, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("`unix:` needs a socket path".into());
        }
        return Ok(EndpointAddr::Unix(PathBuf::from(path)));
    }
    if text.contains("://") {
        return Err("write the address without a scheme, e.g. `127.0.0.1:3000`".into());
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or("expected `[IPv6]:PORT`, e.g. `[::1]:3000`")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        (v6.to_ascii_lowercase(), port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or("missing port; expected `HOST:PORT`, e.g. `127.0.0.1:3000`")?;
        if host.contains(':') {
            return Err("IPv6 addresses need brackets, e.g. `[::1]:3000`".into());
        }
        if !is_dns_name(host) && host.parse::<IpAddr>().is_err() {
            return Err(format!("`{host}` is not a valid host name or IP address"));
        }
        (host.to_ascii_lowercase(), port)
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(EndpointAddr::Tcp { host, port: p }),
        _ => Err(format!("`{port}` is not a valid port (1-65535)")),
    }
}

/// RFC 1123 host name (underscores tolerated: service names use them).
pub(crate) fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// RFC 9110 token: method names, header names, the Via pseudonym.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses() {
        let tcp = |h: &str, p| {
            Ok(EndpointAddr::Tcp {
                host: h.into(),
                port: p,
            })
        };
        assert_eq!(endpoint_addr("127.0.0.1:3000"), tcp("127.0.0.1", 3000));
        assert_eq!(endpoint_addr("API.local:80"), tcp("api.local", 80));
        assert_eq!(endpoint_addr("[::1]:8080"), tcp("::1", 8080));
        assert_eq!(
            endpoint_addr("unix:/run/a.sock"),
            Ok(EndpointAddr::Unix("/run/a.sock".into()))
        );
        assert!(endpoint_addr("::1:8080").unwrap_err().contains("brackets"));
        assert!(endpoint_addr("http://a:1").unwrap_err().contains("scheme"));
        assert!(
            endpoint_addr("localhost")
                .unwrap_err()
                .contains("missing port")
        );
        assert!(
            endpoint_addr("localhost:0")
                .unwrap_err()
                .contains("not a valid port")
        );
        assert!(endpoint_addr("localhost:99999").is_err());
        assert!(endpoint_addr("bad host:80").is_err());
        assert!(endpoint_addr("[zz]:80").is_err());
        assert!(endpoint_addr("unix:").is_err());
    }

    #[test]
    fn tokens_and_names() {
        assert!(is_token("GET") && is_token("x-api-key") && is_token("sumun-1.0"));
        assert!(!is_token("") && !is_token("a b") && !is_token("a:b") && !is_token("é"));
        assert!(is_dns_name("a.example.com") && is_dns_name("svc_1.local"));
        assert!(!is_dns_name("-a.com") && !is_dns_name("a..com") && !is_dns_name(""));
    }

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
