//! `[upstream.NAME]` tables: endpoints, balancing, protocol, timeouts, pool.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use crate::model::*;
use crate::raw::*;
use crate::validate::{Ctx, is_dns_name, one_of};

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
    let balance = match u.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
        None | Some(("round_robin", _)) => Balance::RoundRobin,
        Some((other, span)) => {
            let message = one_of(&format!("{what}: unknown `balance`"), other, &["round_robin"]);
            cx.error(span, message);
            Balance::RoundRobin
        }
    };
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
        hash_key: None,
        sticky: None,
        slow_start: None,
        health: None,
        all_unavailable: AllUnavailable::default(),
        outlier: None,
        retry: None,
        breaker: None,
        protocol,
        timeouts,
        pool,
        tcp_keepalive: None,
    })
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
