//! Defaults and every key parsed into the model.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{FILE, LISTENER, ok};
use crate::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn defaults() {
    let source = format!(
        "{LISTENER}\n[upstream.api]\nendpoints = [\"127.0.0.1:3000\"]\n\n[[route]]\nmatch = {{ path = \"/r\" }}\nto = {{ respond = {{}} }}\n\n[[route]]\nmatch = {{ path = \"/d\" }}\nto = {{ redirect = {{ location = \"/x\" }} }}\n\n[[route]]\nto = {{ upstream = \"api\" }}\n"
    );
    let loaded = ok(&source);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.source, Path::new(FILE));
    assert_eq!(c.data_dir, Path::new("/etc/sumun/sumun-data"));
    assert_eq!(c.via, "sumun");
    assert_eq!(c.shutdown_grace, secs(30));
    assert_eq!(c.access_log, AccessLog::Stdout);
    assert_eq!(c.admin, None);

    let l = &c.listeners[0];
    assert_eq!(l.name, "web");
    assert_eq!(l.bind, BindAddr::Tcp("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(l.tls, None);
    assert!(!l.trust_forwarded);
    assert_eq!(
        l.limits,
        Limits {
            max_connections: 10_000,
            header_timeout: secs(10),
            idle_timeout: secs(60),
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
        }
    );

    let u = &c.upstreams[0];
    assert_eq!(u.endpoints[0].weight, 1);
    assert_eq!(u.balance, Balance::RoundRobin);
    assert_eq!(u.protocol, UpstreamProtocol::Http1);
    assert_eq!(u.timeouts, UpstreamTimeouts { connect: secs(5), request: secs(60) });
    assert_eq!(u.pool, Pool { idle_timeout: secs(90), max_idle_per_endpoint: 256 });

    let Target::Respond(respond) = &c.routes[0].target else { panic!("{:?}", c.routes[0].target) };
    assert_eq!((respond.status, respond.body.as_str()), (200, ""));
    assert!(respond.headers.is_empty());
    assert!(matches!(&c.routes[1].target, Target::Redirect { location, status: 308 } if location == "/x"));

    let r = &c.routes[2];
    assert_eq!(r.name, "route-3");
    assert_eq!(r.location, Location { line: 15, col: 1 });
    assert!(r.listeners.is_empty());
    assert!(r.matcher.host.is_none() && r.matcher.path.is_none() && r.matcher.version.is_none());
    assert!(r.matcher.methods.is_empty() && r.matcher.headers.is_empty());
    assert!(matches!(&r.target, Target::Upstream { index: 0, name } if name == "api"));
    assert!(r.rewrite.strip_prefix.is_none() && r.rewrite.path.is_none());
    let h = &r.headers;
    assert!(h.request.set.is_empty() && h.request.add.is_empty() && h.request.remove.is_empty());
    assert!(h.response.set.is_empty() && h.response.add.is_empty() && h.response.remove.is_empty());
}

#[test]
fn every_key() {
    let dir = tempdir("every-key");
    std::fs::write(dir.join("server.pem"), "cert").unwrap();
    std::fs::write(dir.join("server.key"), "key").unwrap();
    let source = r#"
data_dir = "/var/lib/sumun"
via = "edge-1"
shutdown_grace = "1m30s"
access_log = "/var/log/sumun.log"

[admin]
bind = "127.0.0.1:9901"

[listener.web]
bind = "0.0.0.0:8080"
tls = { cert = "server.pem", key = "server.key" }
trust_forwarded = true
limits = { max_connections = 5, header_timeout = "2s", idle_timeout = "250ms", max_header_bytes = "8KiB", max_body_bytes = 1024 }

[listener.local]
bind = "unix:/run/sumun.sock"

[upstream.zeta]
endpoints = ["127.0.0.1:3000", "unix:/run/api.sock", { address = "LocalHost:3001", weight = 2 }, "[::1]:3002"]
balance = "round_robin"
protocol = "h2c"
timeouts = { connect = "1s", request = "30s" }
pool = { idle_timeout = "10s", max_idle_per_endpoint = 0 }

[upstream.alpha]
endpoints = ["10.0.0.1:80"]

[[route]]
name = "api"
listeners = ["web", "local", "web"]
match = { host = "API.example.com:8080", path_prefix = "/v1/", methods = ["get", "POST"], headers = { "X-Canary" = "true", "x-debug" = true }, version = "2" }
to = { upstream = "zeta" }
rewrite = { strip_prefix = "/v1/" }
headers = { request = { set = { "X-B" = "2", "x-a" = "1" }, add = { "x-c" = "d" }, remove = ["X-E"] }, response = { set = { "server" = "sumun" }, add = {}, remove = ["x-powered-by"] } }

[[route]]
match = { host = "*.example.com", path = "/exact", version = 3 }
to = { respond = { status = 404, body = "nope", headers = { "Content-Type" = "text/plain" } } }
rewrite = { path = "/elsewhere" }

[[route]]
match = { path_regex = "/items/[0-9]+" }
to = { redirect = "https://example.com/" }

[[route]]
match = { host = "[::1]", path = "/r301" }
to = { redirect = { location = "https://example.com/new", status = 301 } }

[[route]]
name = "echo"
match = { path = "/echo" }
to = { echo = true }
"#;
    let path = dir.join("sumun.toml");
    std::fs::write(&path, source).unwrap();
    let loaded = load(&path).unwrap_or_else(|e| panic!("{}", super::render(&e)));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.source, path);
    assert_eq!(c.data_dir, Path::new("/var/lib/sumun"));
    assert_eq!(c.via, "edge-1");
    assert_eq!(c.shutdown_grace, secs(90));
    assert_eq!(c.access_log, AccessLog::File("/var/log/sumun.log".into()));
    assert_eq!(c.admin, Some(Admin { bind: BindAddr::Tcp("127.0.0.1:9901".parse().unwrap()) }));

    // Sorted by name.
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["local", "web"]);
    assert_eq!(c.listeners[0].bind, BindAddr::Unix("/run/sumun.sock".into()));
    let web = &c.listeners[1];
    assert_eq!(web.tls, Some(Tls { cert: dir.join("server.pem"), key: dir.join("server.key") }));
    assert!(web.trust_forwarded);
    assert_eq!(
        web.limits,
        Limits {
            max_connections: 5,
            header_timeout: secs(2),
            idle_timeout: Duration::from_millis(250),
            max_header_bytes: 8192,
            max_body_bytes: 1024,
        }
    );

    let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let zeta = &c.upstreams[1];
    let tcp = |host: &str, port| EndpointAddr::Tcp { host: host.into(), port };
    let endpoints: Vec<(EndpointAddr, u32)> =
        zeta.endpoints.iter().map(|e| (e.address.clone(), e.weight)).collect();
    assert_eq!(
        endpoints,
        [
            (tcp("127.0.0.1", 3000), 1),
            (EndpointAddr::Unix("/run/api.sock".into()), 1),
            (tcp("localhost", 3001), 2),
            (tcp("::1", 3002), 1),
        ]
    );
    assert_eq!(zeta.endpoints[3].address.to_string(), "[::1]:3002");
    assert_eq!(zeta.protocol, UpstreamProtocol::H2c);
    assert_eq!(zeta.timeouts, UpstreamTimeouts { connect: secs(1), request: secs(30) });
    assert_eq!(zeta.pool, Pool { idle_timeout: secs(10), max_idle_per_endpoint: 0 });

    let api = &c.routes[0];
    assert_eq!(api.name, "api");
    assert_eq!(api.location, Location { line: 29, col: 1 });
    assert_eq!(api.listeners, ["web", "local"]);
    let m = &api.matcher;
    assert_eq!(m.host, Some(HostMatch::Exact { host: "api.example.com".into(), port: Some(8080) }));
    assert!(matches!(&m.path, Some(PathMatch::Prefix(p)) if p == "/v1"));
    assert_eq!(m.methods, ["GET", "POST"]);
    assert_eq!(
        m.headers,
        [
            ("x-canary".to_string(), HeaderValueMatch::Exact("true".into())),
            ("x-debug".to_string(), HeaderValueMatch::Present),
        ]
    );
    assert_eq!(m.version.as_deref(), Some("2"));
    // Index into the sorted upstreams.
    assert!(matches!(&api.target, Target::Upstream { index: 1, name } if name == "zeta"));
    assert_eq!(api.rewrite.strip_prefix.as_deref(), Some("/v1"));
    let req = &api.headers.request;
    // File order, not key order.
    assert_eq!(req.set, [("x-b".to_string(), "2".to_string()), ("x-a".to_string(), "1".to_string())]);
    assert_eq!(req.add, [("x-c".to_string(), "d".to_string())]);
    assert_eq!(req.remove, ["x-e"]);
    let resp = &api.headers.response;
    assert_eq!(resp.set, [("server".to_string(), "sumun".to_string())]);
    assert!(resp.add.is_empty());
    assert_eq!(resp.remove, ["x-powered-by"]);

    let r2 = &c.routes[1];
    assert_eq!(r2.name, "route-2");
    assert_eq!(r2.matcher.host, Some(HostMatch::Wildcard { suffix: ".example.com".into(), port: None }));
    assert!(matches!(&r2.matcher.path, Some(PathMatch::Exact(p)) if p == "/exact"));
    assert_eq!(r2.matcher.version.as_deref(), Some("3"));
    let Target::Respond(respond) = &r2.target else { panic!("{:?}", r2.target) };
    assert_eq!(respond.status, 404);
    assert_eq!(respond.body, "nope");
    assert_eq!(respond.headers, [("content-type".to_string(), "text/plain".to_string())]);
    assert_eq!(r2.rewrite.path.as_deref(), Some("/elsewhere"));

    let Some(PathMatch::Regex(re)) = &c.routes[2].matcher.path else { panic!() };
    assert!(re.is_match("/items/42"));
    assert!(!re.is_match("/items/42/x"), "the regex must match the whole path");
    assert!(!re.is_match("/x/items/42"));
    assert!(
        matches!(&c.routes[2].target, Target::Redirect { location, status: 308 } if location == "https://example.com/")
    );

    assert_eq!(c.routes[3].matcher.host, Some(HostMatch::Exact { host: "[::1]".into(), port: None }));
    assert!(matches!(&c.routes[3].target, Target::Redirect { status: 301, .. }));
    assert_eq!(c.routes[4].name, "echo");
    assert!(matches!(c.routes[4].target, Target::Echo));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn access_log_values() {
    for (value, expected) in [
        ("stdout", AccessLog::Stdout),
        ("stderr", AccessLog::Stderr),
        ("off", AccessLog::Off),
        ("logs/access.log", AccessLog::File("/etc/sumun/logs/access.log".into())),
    ] {
        let c = ok(&format!("access_log = \"{value}\"\n{LISTENER}")).config;
        assert_eq!(c.access_log, expected);
    }
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let source = "data_dir = \"./data\"\naccess_log = \"../log/a.log\"\n[listener.web]\nbind = \"unix:run/s.sock\"\n\
         [upstream.u]\nendpoints = [\"unix:./u.sock\"]\n";
    let c = ok(source).config;
    assert_eq!(c.data_dir, Path::new("/etc/sumun/data"));
    assert_eq!(c.access_log, AccessLog::File("/etc/sumun/../log/a.log".into()));
    assert_eq!(c.listeners[0].bind, BindAddr::Unix("/etc/sumun/run/s.sock".into()));
    assert_eq!(c.upstreams[0].endpoints[0].address, EndpointAddr::Unix("/etc/sumun/u.sock".into()));

    // A bare file name resolves against the working directory, made absolute.
    let c = crate::parse_str(LISTENER, Path::new("sumun.toml")).unwrap().config;
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.data_dir, cwd.join("sumun-data"));
}

#[test]
fn tls_paths_are_resolved_and_must_exist() {
    let dir = tempdir("tls");
    std::fs::write(dir.join("c.pem"), "x").unwrap();
    std::fs::create_dir(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/k.pem"), "x").unwrap();
    let source =
        "[listener.web]\nbind = \"127.0.0.1:8443\"\ntls = { cert = \"c.pem\", key = \"keys/k.pem\" }\n";
    let c = crate::parse_str(source, &dir.join("sumun.toml")).unwrap().config;
    let tls = c.listeners[0].tls.clone().unwrap();
    assert_eq!((tls.cert, tls.key), (dir.join("c.pem"), dir.join("keys/k.pem")));

    let source =
        "[listener.web]\nbind = \"127.0.0.1:8443\"\ntls = { cert = \"keys\", key = \"missing.pem\" }\n";
    let errs = crate::parse_str(source, &dir.join("sumun.toml")).unwrap_err();
    let messages: Vec<String> = errs.iter().map(|d| format!("{}:{}: {}", d.line, d.col, d.message)).collect();
    assert_eq!(
        messages,
        [
            format!("3:16: listener `web`: tls cert `{}` is not a file", dir.join("keys").display()),
            format!("3:30: listener `web`: tls key `{}`: no such file", dir.join("missing.pem").display()),
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_accept_integers_and_strings() {
    let source = "[listener.web]\nbind = \"127.0.0.1:1\"\nlimits = { max_header_bytes = 16384, max_body_bytes = \"1GB\" }\n";
    let limits = &ok(source).config.listeners[0].limits;
    assert_eq!((limits.max_header_bytes, limits.max_body_bytes), (16384, 1_000_000_000));
}

#[test]
fn ephemeral_ports_do_not_conflict() {
    let source = "[admin]\nbind = \"127.0.0.1:0\"\n[listener.a]\nbind = \"127.0.0.1:0\"\n[listener.b]\nbind = \"127.0.0.1:0\"\n";
    assert_eq!(ok(source).config.listeners.len(), 2);
}

#[test]
fn matchers_helpers() {
    let h = HostMatch::Wildcard { suffix: ".example.com".into(), port: None };
    assert!(h.matches("a.Example.com", Some(80)) && h.matches("a.b.example.com.", None));
    assert!(!h.matches("example.com", None) && !h.matches("xexample.com", None));
    let h = HostMatch::Exact { host: "a.com".into(), port: Some(8080) };
    assert!(h.matches("A.com", Some(8080)) && !h.matches("a.com", None) && !h.matches("a.com", Some(80)));
    let p = PathMatch::Prefix("/api".into());
    assert!(p.matches("/api") && p.matches("/api/x") && !p.matches("/apix"));
    assert!(PathMatch::Prefix("/".into()).matches("/anything"));
    assert!(PathMatch::Exact("/a".into()).matches("/a") && !PathMatch::Exact("/a".into()).matches("/a/"));
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sumun-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_documented_complete_example_is_valid() {
    let doc = include_str!("../../../../docs/configuration.md");
    let example = doc
        .split("## Complete example")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("docs/configuration.md has a complete example");
    let loaded = ok(example);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.routes.len(), 7);
    let listeners: Vec<(&str, bool)> =
        c.listeners.iter().map(|l| (l.name.as_str(), l.forward_proxy)).collect();
    assert_eq!(listeners, [("internal", false), ("proxy", true), ("web", false)]);
    let fp = &c.forward_proxy;
    assert_eq!((fp.allow.len(), fp.deny.len(), fp.block_private), (4, 2, true));
    assert_eq!(fp.allow[3].target, EgressTarget::Cidr { addr: "10.20.0.0".parse().unwrap(), prefix: 16 });
    assert_eq!(fp.dns, Dns::default());
    assert_eq!((fp.connect_timeout, fp.tunnel_idle_timeout), (secs(10), secs(300)));
    assert_eq!(fp.users.len(), 1);
    assert_eq!((fp.users[0].name.as_str(), fp.users[0].allow.len()), ("ci", 2));
    let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["api", "grpc", "legacy", "sessions"]);
    let (api, grpc, legacy, sessions) = (&c.upstreams[0], &c.upstreams[1], &c.upstreams[2], &c.upstreams[3]);
    assert_eq!(api.balance, Balance::LeastRequest);
    assert!(api.slow_start.is_some() && api.health.is_some() && api.outlier.is_some());
    assert!(api.retry.is_some() && api.breaker.is_some());
    assert_eq!(api.tcp_keepalive, Some(secs(60)));
    assert_eq!(api.retry.as_ref().unwrap().on.len(), 4);
    assert_eq!(grpc.all_unavailable, AllUnavailable::Fail);
    assert_eq!(legacy.sticky, Some(Sticky { cookie: "sumun_sticky".into(), ttl: secs(3600) }));
    assert_eq!(
        (sessions.balance, &sessions.hash_key),
        (Balance::RingHash, &Some(HashKey::Cookie("session".into())))
    );
    assert_eq!(sessions.health.as_ref().unwrap().kind, HealthCheckKind::Tcp);
    assert_eq!((c.auth.len(), c.rate_limits.len(), c.cors.len()), (1, 1, 1));
    let api_route = &c.routes[0].protect;
    assert_eq!(api_route.auth.as_ref().unwrap().scopes, ["api:read"]);
    assert!(api_route.compress.is_some() && api_route.cors.is_some() && api_route.rate_limit.is_some());
    assert_eq!(c.routes[3].cache.as_ref().unwrap().stale_if_error, secs(300));
}
