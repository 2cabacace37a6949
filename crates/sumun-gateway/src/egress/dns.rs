//! Asynchronous name resolution for the forward proxy, over hickory-resolver.
//!
//! The system configuration is used (`/etc/resolv.conf` for servers and search domains,
//! `/etc/hosts` first). Answers are cached by hickory's own cache, whose TTL bounds are set to
//! `[forward_proxy.dns] min_ttl`/`max_ttl`, and every lookup, retries included, is bounded by
//! `timeout`. The addresses returned still have to pass
//! [`EgressPolicy::check_addr`](super::EgressPolicy::check_addr) before the proxy connects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use sumun_config::model::Dns;

/// Why a name did not resolve. The messages are fit for a client: they never carry resolver
/// internals (server addresses, search domains, OS errors), which are logged at debug level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist.
    #[error("host not found")]
    NotFound,
    /// The name exists but has no address records.
    #[error("host has no addresses")]
    NoAddresses,
    /// Not a valid host name.
    #[error("invalid host name")]
    InvalidName,
    /// No answer within `[forward_proxy.dns] timeout`.
    #[error("DNS lookup timed out")]
    Timeout,
    /// Anything else: servers unreachable or refusing, malformed answers.
    #[error("DNS lookup failed")]
    Failed,
}

impl DnsError {
    /// A stable name for metrics and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            DnsError::NotFound => "nxdomain",
            DnsError::NoAddresses => "no_addresses",
            DnsError::InvalidName => "invalid_name",
            DnsError::Timeout => "timeout",
            DnsError::Failed => "failed",
        }
    }

    fn classify(err: &ResolveError) -> DnsError {
        if err.is_nx_domain() {
            return DnsError::NotFound;
        }
        if err.is_no_records_found() {
            return DnsError::NoAddresses;
        }
        match err.proto().map(|p| p.kind()) {
            Some(ProtoErrorKind::Timeout) => DnsError::Timeout,
            Some(ProtoErrorKind::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut => DnsError::Timeout,
            _ => DnsError::Failed,
        }
    }
}

/// The forward proxy's resolver. Clones share the cache; lookups run concurrently.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver on the system configuration. When `/etc/resolv.conf` is missing, unreadable
    /// or names no server, it asks 127.0.0.1:53, as the C library does, rather than a public
    /// resolver that would see every destination.
    pub fn new(settings: &Dns) -> Resolver {
        let (config, opts) = match hickory_resolver::system_conf::read_system_conf() {
            Ok(system) => system,
            Err(err) => {
                tracing::warn!(error = %err, "cannot use /etc/resolv.conf, resolving via 127.0.0.1:53");
                let servers =
                    NameServerConfigGroup::from_ips_clear(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], 53, true);
                (ResolverConfig::from_parts(None, Vec::new(), servers), ResolverOpts::default())
            }
        };
        Resolver::build(config, opts, settings)
    }

    /// A resolver asking these servers (UDP, then TCP for truncated answers), still reading
    /// `/etc/hosts` first.
    pub fn with_nameservers(settings: &Dns, servers: &[SocketAddr]) -> Resolver {
        let mut group = NameServerConfigGroup::with_capacity(servers.len() * 2);
        for server in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true));
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        Resolver::build(config, ResolverOpts::default(), settings)
    }

    fn build(config: ResolverConfig, mut opts: ResolverOpts, settings: &Dns) -> Resolver {
        let min_ttl = settings.min_ttl.min(settings.max_ttl);
        // Each query may use the whole budget; `resolve` bounds the sum of retries.
        opts.timeout = settings.timeout;
        opts.cache_size = settings.cache_size;
        opts.positive_min_ttl = Some(min_ttl);
        opts.positive_max_ttl = Some(settings.max_ttl);
        opts.negative_min_ttl = Some(min_ttl);
        opts.negative_max_ttl = Some(settings.max_ttl);
        let inner = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        Resolver { inner, timeout: settings.timeout }
    }

    /// The addresses of `host` with `port`. An IP literal (`10.0.0.1`, `::1`, `[::1]`) is
    /// returned as is, without a query.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        // Parsed here so a bad name is told apart from a failed lookup. ASCII only, without
        // IDNA mapping: the name queried is the one the egress policy judged.
        let name = match Name::from_ascii(host) {
            Ok(name) if host.is_ascii() && !host.is_empty() && !name.is_root() => name,
            _ => return Err(DnsError::InvalidName),
        };
        let lookup = match tokio::time::timeout(self.timeout, self.inner.lookup_ip(name)).await {
            Ok(Ok(lookup)) => lookup,
            Ok(Err(err)) => {
                let class = DnsError::classify(&err);
                tracing::debug!(host, error = %err, class = class.as_str(), "DNS lookup failed");
                return Err(class);
            }
            Err(_elapsed) => return Err(DnsError::Timeout),
        };
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(DnsError::NoAddresses);
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::{RData, Record, RecordType};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use tokio::net::UdpSocket;

    fn settings(timeout_ms: u64) -> Dns {
        Dns { timeout: Duration::from_millis(timeout_ms), ..Dns::default() }
    }

    /// A DNS server on loopback: `*.nx.test` is NXDOMAIN, `empty.test` has no records, anything
    /// else gets one A record (192.0.2.N, N = queries so far) with a TTL of `ttl`.
    async fn fake_dns(ttl: u32) -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let count = queries.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else { return };
                let Ok(request) = Message::from_vec(&buf[..n]) else { continue };
                let mut response = Message::new();
                response
                    .set_id(request.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(request.op_code())
                    .set_recursion_desired(true)
                    .set_recursion_available(true)
                    .add_queries(request.queries().to_vec());
                if let Some(query) = request.queries().first() {
                    let name = query.name().to_ascii();
                    if name.ends_with(".nx.test.") {
                        response.set_response_code(ResponseCode::NXDomain);
                    } else if query.query_type() == RecordType::A && name != "empty.test." {
                        let seen = count.fetch_add(1, Ordering::SeqCst) + 1;
                        let ip = Ipv4Addr::new(192, 0, 2, seen as u8);
                        response.add_answer(Record::from_rdata(query.name().clone(), ttl, RData::A(A(ip))));
                    }
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
            }
        });
        (addr, queries)
    }

    #[tokio::test]
    async fn ip_literals_need_no_query() {
        // No server at all: literals must not touch it.
        let r = Resolver::with_nameservers(&settings(200), &[]);
        assert_eq!(r.resolve("10.1.2.3", 80).await, Ok(vec!["10.1.2.3:80".parse().unwrap()]));
        assert_eq!(r.resolve("::1", 443).await, Ok(vec!["[::1]:443".parse().unwrap()]));
        assert_eq!(r.resolve("[2001:db8::1]", 8443).await, Ok(vec!["[2001:db8::1]:8443".parse().unwrap()]));
        assert_eq!(r.resolve("[not-an-ip]", 80).await, Err(DnsError::InvalidName));
        assert_eq!(r.resolve("", 80).await, Err(DnsError::InvalidName));
        assert_eq!(r.resolve(".", 80).await, Err(DnsError::InvalidName));
        assert_eq!(r.resolve("a..b", 80).await, Err(DnsError::InvalidName));
        assert_eq!(r.resolve("bücher.example", 80).await, Err(DnsError::InvalidName));
        assert_eq!(r.resolve(&"x".repeat(64), 80).await, Err(DnsError::InvalidName));
    }

    #[test]
    fn builds_outside_a_runtime() {
        // Config reloads may build it on any thread.
        let _ = Resolver::new(&Dns::default());
        let _ = Resolver::with_nameservers(&Dns::default(), &["127.0.0.1:53".parse().unwrap()]);
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let listed = hosts.lines().any(|l| {
            let l = l.split('#').next().unwrap_or("");
            l.split_whitespace().skip(1).any(|name| name == "localhost")
        });
        if !listed {
            eprintln!("skipping: /etc/hosts has no localhost entry");
            return;
        }
        let r = Resolver::new(&settings(2000));
        let addrs = r.resolve("localhost", 8080).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8080), "{addrs:?}");
    }

    #[tokio::test]
    async fn silent_server_times_out_within_budget() {
        // Bound but never read: queries vanish, as with an unreachable server.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = Resolver::with_nameservers(&settings(300), &[silent.local_addr().unwrap()]);
        let start = Instant::now();
        assert_eq!(r.resolve("nothing.test", 80).await, Err(DnsError::Timeout));
        assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    }

    #[tokio::test]
    async fn refused_server_fails_fast() {
        // Nothing listens on the discard port: whatever the platform reports (ICMP refusal or
        // silence), the lookup ends within the budget with a non-address error.
        let r = Resolver::with_nameservers(&settings(500), &["127.0.0.1:9".parse().unwrap()]);
        let start = Instant::now();
        let err = r.resolve("nothing.test", 80).await.unwrap_err();
        assert!(matches!(err, DnsError::Timeout | DnsError::Failed), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    }

    #[tokio::test]
    async fn nxdomain_and_no_records_are_told_apart() {
        let (server, _) = fake_dns(60).await;
        let r = Resolver::with_nameservers(&settings(2000), &[server]);
        assert_eq!(r.resolve("missing.nx.test", 80).await, Err(DnsError::NotFound));
        assert_eq!(r.resolve("empty.test", 80).await, Err(DnsError::NoAddresses));
        assert_eq!(DnsError::NotFound.to_string(), "host not found");
        assert_eq!(DnsError::Timeout.as_str(), "timeout");
    }

    #[tokio::test]
    async fn answers_are_cached_with_ttl_raised_to_min_ttl() {
        // TTL 0 from the server, min_ttl 60 s: the second lookup must not reach the server.
        let (server, queries) = fake_dns(0).await;
        let dns = Dns { min_ttl: Duration::from_secs(60), ..settings(2000) };
        let r = Resolver::with_nameservers(&dns, &[server]);
        let first = r.resolve("cached.test", 443).await.unwrap();
        assert_eq!(first, vec!["192.0.2.1:443".parse().unwrap()]);
        let again = r.resolve("cached.test", 8443).await.unwrap();
        assert_eq!(again, vec!["192.0.2.1:8443".parse().unwrap()]);
        assert_eq!(queries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn cached_answers_expire_at_max_ttl() {
        // TTL one hour from the server, max_ttl 1 s: the answer is asked again once it expires.
        let (server, queries) = fake_dns(3600).await;
        let dns = Dns { min_ttl: Duration::from_secs(1), max_ttl: Duration::from_secs(1), ..settings(2000) };
        let r = Resolver::with_nameservers(&dns, &[server]);
        assert_eq!(r.resolve("short.test", 80).await.unwrap(), vec!["192.0.2.1:80".parse().unwrap()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let addrs = r.resolve("short.test", 80).await.unwrap();
            if addrs == vec!["192.0.2.2:80".parse().unwrap()] {
                break;
            }
            assert!(Instant::now() < deadline, "answer never expired: {addrs:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(queries.load(Ordering::SeqCst), 2);
    }
}
