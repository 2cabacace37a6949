//! `[upstream.NAME]` tables: endpoints, balancing (`balance`, `hash_key`, `sticky`), protocol,
//! timeouts, pool, keep-alive; the failure-handling keys are in `resilience`.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::diagnostics::did_you_mean;
use crate::model::*;
use crate::raw::*;
use crate::resilience;
use crate::validate::{Ctx, is_dns_name, is_token, one_of};

pub(crate) fn upstream(cx: &mut Ctx<'_, '_>, name: &str, raw: &S<RawUpstream>) -> Option<Upstream> {
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
            cx.error(list.span(), format!("{what}: `endpoints` must not be empty"));
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
    // None: an unknown balancer, reported here.
    let balance = match &u.balance {
        None => Some(Balance::RoundRobin),
        Some(b) => {
            let parsed = BALANCERS.iter().find(|(n, _)| n == b.get_ref()).map(|(_, b)| *b);
            if parsed.is_none() {
                let names: Vec<&str> = BALANCERS.iter().map(|(n, _)| *n).collect();
                cx.error(b.span(), one_of(&format!("{what}: unknown `balance`"), b.get_ref(), &names));
            }
            parsed
        }
    };
    let hash_key = u.hash_key.as_ref().and_then(|k| match hash_key(k.get_ref()) {
        Ok(key) => Some(key),
        Err(e) => {
            cx.error(k.span(), format!("{what}: invalid `hash_key` `{}`: {e}", k.get_ref()));
            None
        }
    });
    match (balance, &u.balance, &u.hash_key) {
        (Some(b @ (Balance::RingHash | Balance::Rendezvous)), Some(raw_balance), None) => {
            let message = format!(
                "{what}: `balance = \"{}\"` needs `hash_key`, e.g. `hash_key = \"header:x-user-id\"` ({HASH_KEY_FORMS})",
                balance_name(b)
            );
            cx.missing(&format!("upstream.{name}.hash_key"), raw_balance.span(), message);
        }
        (Some(b), _, Some(raw_key))
            if hash_key.is_some() && !matches!(b, Balance::RingHash | Balance::Rendezvous) =>
        {
            let message = format!(
                "{what}: `hash_key` is ignored by `balance = \"{}\"`; only `ring_hash` and `rendezvous` use it",
                balance_name(b)
            );
            cx.warning(raw_key.span(), message);
        }
        _ => {}
    }
    let balance = balance.unwrap_or(Balance::RoundRobin);
    let sticky = u.sticky.as_ref().map(|s| sticky(cx, s.get_ref(), &what));
    let slow_start = u
        .slow_start
        .as_ref()
        .and_then(|s| resilience::slow_start(cx, s, &format!("upstream.{name}.slow_start"), &what));
    let health =
        u.health.as_ref().and_then(|h| resilience::health(cx, h, &format!("upstream.{name}.health"), &what));
    let all_unavailable = match u.all_unavailable.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
        None | Some(("panic", _)) => AllUnavailable::Panic,
        Some(("fail", _)) => AllUnavailable::Fail,
        Some((other, span)) => {
            let message = one_of(&format!("{what}: unknown `all_unavailable`"), other, &["panic", "fail"]);
            cx.error(span, message);
            AllUnavailable::default()
        }
    };
    let outlier = u.outlier.as_ref().map(|o| resilience::outlier(cx, o, &what));
    let breaker = u.breaker.as_ref().map(|b| resilience::breaker(cx, b, &what));
    let protocol = match u.protocol.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
        None | Some(("http1", _)) => UpstreamProtocol::Http1,
        Some(("h2c", _)) => UpstreamProtocol::H2c,
        Some((other, span)) => {
            let message = one_of(&format!("{what}: unknown `protocol`"), other, &["http1", "h2c"]);
            cx.error(span, message);
            UpstreamProtocol::Http1
        }
    };
    let mut timeouts = UpstreamTimeouts::default();
    if let Some(t) = &u.timeouts {
        let t = t.get_ref();
        timeouts.connect =
            cx.duration(&t.connect, timeouts.connect, &format!("{what}: `timeouts.connect`"), true);
        timeouts.request =
            cx.duration(&t.request, timeouts.request, &format!("{what}: `timeouts.request`"), true);
    }
    let request_span = u.timeouts.as_ref().and_then(|t| t.get_ref().request.as_ref()).map(|r| r.span());
    let retry = u.retry.as_ref().map(|r| {
        resilience::retry(cx, r, &format!("upstream.{name}.retry"), &what, (timeouts.request, request_span))
    });
    let tcp_keepalive = match &u.tcp_keepalive {
        Some(k) if k.get_ref() != "off" => Some(cx.duration(
            &u.tcp_keepalive,
            Duration::from_secs(60),
            &format!("{what}: `tcp_keepalive`"),
            true,
        )),
        _ => None,
    };
    let mut pool = Pool::default();
    if let Some(p) = &u.pool {
        let p = p.get_ref();
        pool.idle_timeout =
            cx.duration(&p.idle_timeout, pool.idle_timeout, &format!("{what}: `pool.idle_timeout`"), true);
        if let Some(max) = &p.max_idle_per_endpoint {
            let key = format!("{what}: `pool.max_idle_per_endpoint`");
            if let Some(max) = cx.int(max, 0, i64::from(u32::MAX), &key) {
                pool.max_idle_per_endpoint = usize::try_from(max).unwrap_or(pool.max_idle_per_endpoint);
            }
        }
    }
    (!endpoints.is_empty()).then(|| Upstream {
        name: name.to_string(),
        endpoints,
        balance,
        hash_key,
        sticky,
        slow_start,
        health,
        all_unavailable,
        outlier,
        retry,
        breaker,
        protocol,
        timeouts,
        pool,
        tcp_keepalive,
    })
}

const BALANCERS: &[(&str, Balance)] = &[
    ("round_robin", Balance::RoundRobin),
    ("random", Balance::Random),
    ("least_request", Balance::LeastRequest),
    ("ring_hash", Balance::RingHash),
    ("rendezvous", Balance::Rendezvous),
];

fn balance_name(b: Balance) -> &'static str {
    BALANCERS.iter().find(|(_, v)| *v == b).map_or("round_robin", |(n, _)| n)
}

const HASH_KEY_FORMS: &str = "`header:NAME`, `cookie:NAME`, `client_ip`, `path` or `query:NAME`";

/// `header:NAME` (lower-cased), `cookie:NAME`, `client_ip`, `path`, `query:NAME`.
fn hash_key(text: &str) -> Result<HashKey, String> {
    let (kind, name) = match text.split_once(':') {
        Some((kind, name)) => (kind, Some(name)),
        None => (text, None),
    };
    match (kind, name) {
        ("client_ip", None) => Ok(HashKey::ClientIp),
        ("path", None) => Ok(HashKey::Path),
        ("client_ip" | "path", Some(_)) => Err(format!("`{kind}` takes no name; write `{kind}`")),
        ("header" | "cookie" | "query", None | Some("")) => Err(format!(
            "`{kind}` needs a name, e.g. `{kind}:{}`",
            if kind == "header" { "x-user-id" } else { "user" }
        )),
        ("header", Some(n)) if is_token(n) => Ok(HashKey::Header(n.to_ascii_lowercase())),
        ("header", Some(n)) => Err(format!("`{n}` is not a valid header name")),
        ("cookie", Some(n)) if is_token(n) => Ok(HashKey::Cookie(n.to_string())),
        ("cookie", Some(n)) => Err(format!("`{n}` is not a valid cookie name")),
        ("query", Some(n))
            if !n.chars().any(|c| c.is_whitespace() || c.is_control() || "&=#".contains(c)) =>
        {
            Ok(HashKey::Query(n.to_string()))
        }
        ("query", Some(n)) => Err(format!(
            "`{n}` is not a valid query parameter name (no spaces, control characters, `&`, `=` or `#`)"
        )),
        _ => {
            let mut message = format!("expected {HASH_KEY_FORMS}");
            if let Some(hint) = did_you_mean(kind, ["header", "cookie", "client_ip", "path", "query"]) {
                let example = match hint {
                    "client_ip" | "path" => hint.to_string(),
                    _ => format!("{hint}:{}", name.unwrap_or("NAME")),
                };
                message = format!("did you mean `{example}`? ({message})");
            }
            Err(message)
        }
    }
}

/// `sticky = { cookie = "sumun_sticky", ttl = "1h" }`.
fn sticky(cx: &mut Ctx<'_, '_>, raw: &RawSticky, what: &str) -> Sticky {
    let cookie = match &raw.cookie {
        Some(c) if !is_token(c.get_ref()) => {
            let message = format!(
                "{what}: `sticky.cookie` `{}` is not a valid cookie name (letters, digits and `!#$%&'*+-.^_`|~`; no spaces, `=`, `;` or `,`)",
                c.get_ref()
            );
            cx.error(c.span(), message);
            String::new()
        }
        Some(c) => c.get_ref().clone(),
        None => "sumun_sticky".to_string(),
    };
    let ttl = cx.duration(&raw.ttl, Duration::from_secs(3600), &format!("{what}: `sticky.ttl`"), true);
    Sticky { cookie, ttl }
}

fn endpoint(cx: &mut Ctx<'_, '_>, raw: &S<RawEndpoint>, path: &str, what: &str) -> Option<Endpoint> {
    let (address, weight) = match raw.get_ref() {
        RawEndpoint::Short(a) => ((a.as_str(), raw.span()), 1),
        RawEndpoint::Full(t) => {
            let weight = match &t.weight {
                Some(w) => cx.int(w, 1, i64::from(u32::MAX), &format!("{what}: endpoint `weight`"))?,
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
        Ok(addr) => Some(Endpoint { address: addr, weight: u32::try_from(weight).unwrap_or(1) }),
        Err(e) => {
            cx.error(address.1, format!("{what}: invalid endpoint `{}`: {e}", address.0));
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
        let (v6, port) = rest.split_once("]:").ok_or("expected `[IPv6]:PORT`, e.g. `[::1]:3000`")?;
        v6.parse::<Ipv6Addr>().map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        (v6.to_ascii_lowercase(), port)
    } else {
        let (host, port) =
            text.rsplit_once(':').ok_or("missing port; expected `HOST:PORT`, e.g. `127.0.0.1:3000`")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses() {
        let tcp = |h: &str, p| Ok(EndpointAddr::Tcp { host: h.into(), port: p });
        assert_eq!(endpoint_addr("127.0.0.1:3000"), tcp("127.0.0.1", 3000));
        assert_eq!(endpoint_addr("API.local:80"), tcp("api.local", 80));
        assert_eq!(endpoint_addr("[::1]:8080"), tcp("::1", 8080));
        assert_eq!(endpoint_addr("unix:/run/a.sock"), Ok(EndpointAddr::Unix("/run/a.sock".into())));
        assert!(endpoint_addr("::1:8080").unwrap_err().contains("brackets"));
        assert!(endpoint_addr("http://a:1").unwrap_err().contains("scheme"));
        assert!(endpoint_addr("localhost").unwrap_err().contains("missing port"));
        assert!(endpoint_addr("localhost:0").unwrap_err().contains("not a valid port"));
        assert!(endpoint_addr("localhost:99999").is_err());
        assert!(endpoint_addr("bad host:80").is_err());
        assert!(endpoint_addr("[zz]:80").is_err());
        assert!(endpoint_addr("unix:").is_err());
    }
}
