//! The validated configuration: every reference resolved, every duration, size and address
//! parsed. The gateway compiles this into its Runtime; nothing here is raw text any more.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole, validated sumun configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (diagnostics and reload watch it).
    pub source: PathBuf,
    /// Topics' logs and metadata live here (used by later subsystems).
    pub data_dir: PathBuf,
    /// Pseudonym in our `Via` entry; seeing it again on a request means a loop (508).
    pub via: String,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_grace: Duration,
    pub access_log: AccessLog,
    pub admin: Option<Admin>,
    /// Sorted by name.
    pub listeners: Vec<Listener>,
    /// Sorted by name; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// In file order: first match wins.
    pub routes: Vec<Route>,
    /// `[forward_proxy]`: egress policy for listeners with `forward_proxy = true` (defaults
    /// when the table is absent).
    pub forward_proxy: ForwardProxy,
    /// `[auth.NAME]`, sorted by name.
    pub auth: Vec<crate::AuthPolicy>,
    /// `[passport]` (defaults when absent: a key generated at start).
    pub passport: crate::Passport,
    /// `[rate_limit.NAME]`, sorted by name.
    pub rate_limits: Vec<crate::RateLimitPolicy>,
    /// `[cors.NAME]`, sorted by name.
    pub cors: Vec<crate::CorsPolicy>,
    /// `[redis]`: required by `store = "redis"` anywhere.
    pub redis: Option<crate::Redis>,
    /// `[cache]` (defaults when absent).
    pub cache: crate::CacheStore,
    /// `[compression]` (defaults when absent).
    pub compression: crate::Compression,
    /// `[topic.NAME]`, sorted by name; `Target::Topic` refers to them by index.
    pub topics: Vec<crate::Topic>,
    /// `[subscription.NAME]`, sorted by name.
    pub subscriptions: Vec<crate::Subscription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub bind: BindAddr,
}

/// Where a listener accepts connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for BindAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindAddr::Tcp(a) => write!(f, "{a}"),
            BindAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub bind: BindAddr,
    pub tls: Option<Tls>,
    /// Trust inbound `Forwarded` / `X-Forwarded-*` (append to them) instead of replacing them.
    pub trust_forwarded: bool,
    /// Also act as a forward proxy: absolute-form requests and `CONNECT` tunnels, under the
    /// policy in [`Config::forward_proxy`]. Origin-form requests still go to the router.
    pub forward_proxy: bool,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections beyond this wait in the accept backlog.
    pub max_connections: usize,
    /// Time allowed to receive a request's complete header section (slowloris guard).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    pub idle_timeout: Duration,
    /// Larger request header sections get 431.
    pub max_header_bytes: usize,
    /// Larger request bodies get 413.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balance: Balance,
    /// Required by `ring_hash` and `rendezvous`; ignored (warning) by the others.
    pub hash_key: Option<HashKey>,
    pub sticky: Option<Sticky>,
    pub slow_start: Option<SlowStart>,
    pub health: Option<HealthCheck>,
    /// What to do when every endpoint is unhealthy or ejected.
    pub all_unavailable: AllUnavailable,
    pub outlier: Option<OutlierDetection>,
    pub retry: Option<RetryPolicy>,
    pub breaker: Option<CircuitBreaker>,
    pub protocol: UpstreamProtocol,
    pub timeouts: UpstreamTimeouts,
    pub pool: Pool,
    /// TCP keep-alive probes on upstream sockets (None = off).
    pub tcp_keepalive: Option<Duration>,
}

/// What a hashing balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    ClientIp,
    Path,
    Query(String),
}

/// Pins a client to an endpoint with a cookie while that endpoint stays available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    pub ttl: Duration,
}

/// A new or newly recovered endpoint's weight ramps up over `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    /// 1.0 = linear; > 1 ramps faster early (Envoy's aggression: factor = t^(1/aggression)).
    pub aggression: f64,
    /// Share of the full weight at the start of the window, 0 < x ≤ 1 (default 0.1).
    pub min_weight: f64,
}

impl Eq for SlowStart {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// GET `path`; healthy when the status is in `expected`.
    Http { path: String, expected: Vec<StatusRange>, host: Option<String> },
    /// Healthy when a TCP (or unix) connect succeeds.
    Tcp,
}

/// An inclusive status range: `200` is 200..=200, `"2xx"` is 200..=299.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Random extra delay added to each interval, up to this percentage of it (0..=100,
    /// default 10).
    pub jitter_percent: u8,
    /// Consecutive successes to become healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllUnavailable {
    /// Route to every endpoint as if all were healthy (Envoy's panic mode).
    #[default]
    Panic,
    /// Answer 503.
    Fail,
}

/// Passive outlier ejection from observed results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive connect failures / resets / timeouts / 5xx that eject; 0 disables that kind.
    pub consecutive_failures: u32,
    pub consecutive_5xx: u32,
    /// First ejection lasts this long; each further ejection of the same endpoint multiplies it.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Never eject more than this share of the pool (0..=100).
    pub max_ejected_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            consecutive_5xx: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Which failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    Timeout,
    /// A response with this status (e.g. 503).
    Status(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries including the first (≥ 1).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: Vec<RetryOn>,
    /// Retries may add at most this share of recent requests (0..=100).
    pub budget_percent: u8,
    /// Retries allowed per second regardless of the budget, so a quiet upstream can retry.
    pub min_retries_per_second: u32,
    /// Request bodies up to this size are kept so a try can be replayed.
    pub replay_buffer: u64,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Also retry non-idempotent methods (POST, PATCH) when the failure allows.
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on: vec![RetryOn::ConnectFailure, RetryOn::Reset],
            budget_percent: 20,
            min_retries_per_second: 3,
            replay_buffer: 64 * 1024,
            backoff_initial: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            non_idempotent: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    /// Opens when failures / requests over `window` exceed this (0 < x ≤ 1).
    pub failure_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probes allowed while half-open; all must succeed to close.
    pub half_open_probes: u32,
    /// One breaker per endpoint as well as the upstream-wide one.
    pub per_endpoint: bool,
}

impl Eq for CircuitBreaker {}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_for: Duration::from_secs(30),
            half_open_probes: 3,
            per_endpoint: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: EndpointAddr,
    /// Relative share of traffic (≥ 1).
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddr {
    /// `host:port`; host may be a name, resolved at connect time.
    Tcp {
        host: String,
        port: u16,
    },
    Unix(PathBuf),
}

impl std::fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            EndpointAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            EndpointAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Random,
    LeastRequest,
    RingHash,
    Rendezvous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext, prior knowledge (gRPC backends).
    H2c,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// The whole exchange up to the response head, all tries and backoff included.
    pub request: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Pooled idle connections are closed after this long.
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts { connect: Duration::from_secs(5), request: Duration::from_secs(60) }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool { idle_timeout: Duration::from_secs(90), max_idle_per_endpoint: 256 }
    }
}

/// Where a config item was written, for diagnostics emitted after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// 1-based; `col` counts characters. For a route: its `[[route]]` header.
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub location: Location,
    /// Listener names this route serves; empty = all listeners.
    pub listeners: Vec<String>,
    pub matcher: RouteMatch,
    pub target: Target,
    pub rewrite: Rewrite,
    pub headers: HeaderRules,
    pub protect: crate::RouteProtection,
    pub cache: Option<crate::RouteCache>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    /// Upper-case method names; empty = any method.
    pub methods: Vec<String>,
    /// Lower-case header names with the value required.
    pub headers: Vec<(String, HeaderValueMatch)>,
    /// API version, e.g. "2": matches a `/v2/` path segment, `Accept: application/vnd.x.v2+json`
    /// or `X-API-Version: 2`.
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower-case host without a trailing dot; an IPv6 address keeps its brackets
    /// (`[::1]`), as in a `Host` header. `port` None matches any port.
    Exact { host: String, port: Option<u16> },
    /// `*.example.com` stored as suffix ".example.com": matches one or more labels before it.
    Wildcard { suffix: String, port: Option<u16> },
}

impl HostMatch {
    pub fn port(&self) -> Option<u16> {
        match self {
            HostMatch::Exact { port, .. } | HostMatch::Wildcard { port, .. } => *port,
        }
    }

    /// Whether a request's host (as in `Host` or the URI authority, IPv6 in brackets) and
    /// explicit port match. Case and one trailing dot of `host` are ignored; a pattern with
    /// a port matches only requests that name that port.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        if self.port().is_some() && self.port() != port {
            return false;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostMatch::Exact { host: want, .. } => host.eq_ignore_ascii_case(want),
            HostMatch::Wildcard { suffix, .. } => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware: "/api" matches "/api" and "/api/x", not "/apix". Stored without a
    /// trailing slash unless it is "/".
    Prefix(String),
    /// Compiled as `^(?:…)$`: it must match the whole path.
    Regex(regex::Regex),
}

impl PathMatch {
    /// Whether a request path (without the query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(want) => path == want,
            PathMatch::Prefix(prefix) => {
                prefix == "/"
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueMatch {
    Present,
    Exact(String),
}

/// What a route does. `Topic`: store the request as a message and answer 202.
/// `Subscription`: the pull API of a `deliver = { pull = true }` subscription under the
/// route (`GET …/messages`, `POST …/ack`, `…/nack`, `…/extend`).
#[derive(Debug, Clone)]
pub enum Target {
    Upstream { index: usize, name: String },
    Respond(Respond),
    Redirect { location: String, status: u16 },
    Echo,
    Topic { index: usize, name: String },
    Subscription { name: String },
}

#[derive(Debug, Clone)]
pub struct Respond {
    pub status: u16,
    pub body: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Removed from the front of the (normalized) path, segment-aware; "" left becomes "/".
    pub strip_prefix: Option<String>,
    /// Replaces the whole path (query kept).
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// Header edits, applied in the order remove, set, add. Names are lower-case.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
}

/// A secret value as written in config: resolved at load time from the environment or a file.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `[forward_proxy]`: the egress policy of listeners with `forward_proxy = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardProxy {
    /// Empty = every destination not denied (and not private, see `block_private`).
    pub allow: Vec<EgressRule>,
    /// Deny wins over allow.
    pub deny: Vec<EgressRule>,
    /// Refuse loopback, RFC 1918, link-local (incl. 169.254.169.254), unique-local and
    /// unspecified addresses unless an allow rule names them (by CIDR or IP literal).
    pub block_private: bool,
    /// Empty = no proxy authentication.
    pub users: Vec<ProxyUser>,
    pub connect_timeout: Duration,
    /// A CONNECT tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub dns: Dns,
}

impl Default for ForwardProxy {
    fn default() -> Self {
        ForwardProxy {
            allow: Vec::new(),
            deny: Vec::new(),
            block_private: true,
            users: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            tunnel_idle_timeout: Duration::from_secs(300),
            dns: Dns::default(),
        }
    }
}

/// One allow/deny entry, e.g. `"*.example.com:443"`, `"10.0.0.0/8"`, `"*:22"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// Stable name for logs and 403 bodies: `deny[2]`, `allow[0]`, `users.alice.allow[1]`
    /// (the index counts from 0 in the list as written).
    pub id: String,
    /// The rule as written.
    pub text: String,
    pub target: EgressTarget,
    /// Inclusive port range; None = any port.
    pub ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressTarget {
    /// `*`: any host.
    Any,
    /// An exact host name, lower-case, no trailing dot.
    Host(String),
    /// `*.example.com` stored as ".example.com": one or more labels before it.
    Suffix(String),
    /// An IP network; a bare IP is a /32 or /128. Matched against the resolved address.
    /// `addr` is the network address (no host bits set).
    Cidr { addr: std::net::IpAddr, prefix: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUser {
    pub name: String,
    /// PHC string: argon2 (`$argon2id$…`) or bcrypt (`$2b$…`). Never a plain password.
    pub password_hash: String,
    /// If non-empty, this user may only reach these destinations (the global deny still wins).
    pub allow: Vec<EgressRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub timeout: Duration,
    /// Answers are cached for their TTL clamped to [min_ttl, max_ttl].
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub cache_size: usize,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            timeout: Duration::from_secs(5),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            cache_size: 4096,
        }
    }
}

/// An IP network; a bare address is a /32 or /128. `addr` has no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the network; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

impl From<Cidr> for EgressTarget {
    fn from(c: Cidr) -> Self {
        EgressTarget::Cidr { addr: c.addr, prefix: c.prefix }
    }
}
