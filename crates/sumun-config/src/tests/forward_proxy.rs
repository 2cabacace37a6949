//! `forward_proxy = true` on listeners and the `[forward_proxy]` table: defaults, every rule
//! form, errors at their line:col, warnings.

use std::time::Duration;

use super::{FILE, LISTENER, errors, ok};
use crate::*;

const ARGON2: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$k9ohroejZy1PN5E1SbHNPug6vB8eQAahb5SOAp6iGF4";
const BCRYPT: &str = "$2b$12$KBCwKxOzLha2MUDgW0PjXeTGMKFb5hDnV5DOsGQ7lkhTcSK8ioiQ2";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn cidr(addr: &str, prefix: u8) -> EgressTarget {
    EgressTarget::Cidr { addr: addr.parse().unwrap(), prefix }
}

fn rule(id: &str, text: &str, target: EgressTarget, ports: Option<(u16, u16)>) -> EgressRule {
    EgressRule { id: id.into(), text: text.into(), target, ports }
}

/// Errors rendered as `line:col: message`, without warnings (these tests' `[forward_proxy]`
/// tables mostly have no listener using them, which is a warning).
fn error_lines(source: &str) -> Vec<String> {
    errors(source)
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect()
}

/// Warnings rendered as `line:col: message`.
fn warning_lines(source: &str) -> Vec<String> {
    ok(source)
        .warnings
        .iter()
        .map(|d| {
            assert_eq!(d.severity, Severity::Warning);
            format!("{}:{}: {}", d.line, d.col, d.message)
        })
        .collect()
}

#[test]
fn defaults_without_the_table() {
    let loaded = ok(LISTENER);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert!(!c.listeners[0].forward_proxy);
    assert_eq!(c.forward_proxy, ForwardProxy::default());
    let fp = &c.forward_proxy;
    assert!(fp.allow.is_empty() && fp.deny.is_empty() && fp.users.is_empty());
    assert!(fp.block_private);
    assert_eq!((fp.connect_timeout, fp.tunnel_idle_timeout), (secs(10), secs(300)));
    assert_eq!(fp.dns, Dns { timeout: secs(5), min_ttl: secs(1), max_ttl: secs(300), cache_size: 4096 });
}

#[test]
fn defaults_with_an_empty_table() {
    let source = "[listener.proxy]\nbind = \"127.0.0.1:3128\"\nforward_proxy = true\n\n[forward_proxy]\n";
    let loaded = ok(source);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(loaded.config.listeners[0].forward_proxy);
    assert_eq!(loaded.config.forward_proxy, ForwardProxy::default());
    // An empty `dns` table is all defaults too.
    let c = ok(&format!("{source}dns = {{}}\n")).config;
    assert_eq!(c.forward_proxy.dns, Dns::default());
}

#[test]
fn every_key() {
    let source = format!(
        r#"[listener.proxy]
bind = "127.0.0.1:3128"
forward_proxy = true

[listener.web]
bind = "127.0.0.1:8080"
forward_proxy = false

[forward_proxy]
allow = ["*.Example.com", "example.org:443", "203.0.113.0/24", "[2001:db8::]/32:443", "*:8000-8999", "127.0.0.1", "::1", "fd00::/8"]
deny  = ["*:22", "169.254.0.0/16", "evil.example.", "*"]
block_private = true
connect_timeout = "3s"
tunnel_idle_timeout = "1m30s"
dns = {{ timeout = "2s", min_ttl = "0s", max_ttl = "10m", cache_size = 0 }}

[forward_proxy.users.bob]
password_hash = "{BCRYPT}"

[forward_proxy.users.alice]
password_hash = "{ARGON2}"
allow = ["*.internal.example", "10.1.0.0/16:5432"]
"#
    );
    let loaded = ok(&source);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    let flags: Vec<(&str, bool)> = c.listeners.iter().map(|l| (l.name.as_str(), l.forward_proxy)).collect();
    assert_eq!(flags, [("proxy", true), ("web", false)]);
    let fp = c.forward_proxy;
    assert_eq!(
        fp.allow,
        [
            rule("allow[0]", "*.Example.com", EgressTarget::Suffix(".example.com".into()), None),
            rule("allow[1]", "example.org:443", EgressTarget::Host("example.org".into()), Some((443, 443))),
            rule("allow[2]", "203.0.113.0/24", cidr("203.0.113.0", 24), None),
            rule("allow[3]", "[2001:db8::]/32:443", cidr("2001:db8::", 32), Some((443, 443))),
            rule("allow[4]", "*:8000-8999", EgressTarget::Any, Some((8000, 8999))),
            rule("allow[5]", "127.0.0.1", cidr("127.0.0.1", 32), None),
            rule("allow[6]", "::1", cidr("::1", 128), None),
            rule("allow[7]", "fd00::/8", cidr("fd00::", 8), None),
        ]
    );
    assert_eq!(
        fp.deny,
        [
            rule("deny[0]", "*:22", EgressTarget::Any, Some((22, 22))),
            rule("deny[1]", "169.254.0.0/16", cidr("169.254.0.0", 16), None),
            rule("deny[2]", "evil.example.", EgressTarget::Host("evil.example".into()), None),
            rule("deny[3]", "*", EgressTarget::Any, None),
        ]
    );
    assert!(fp.block_private);
    assert_eq!((fp.connect_timeout, fp.tunnel_idle_timeout), (secs(3), secs(90)));
    assert_eq!(fp.dns, Dns { timeout: secs(2), min_ttl: secs(0), max_ttl: secs(600), cache_size: 0 });
    // File order.
    assert_eq!(
        fp.users,
        [
            ProxyUser { name: "bob".into(), password_hash: BCRYPT.into(), allow: vec![] },
            ProxyUser {
                name: "alice".into(),
                password_hash: ARGON2.into(),
                allow: vec![
                    rule(
                        "users.alice.allow[0]",
                        "*.internal.example",
                        EgressTarget::Suffix(".internal.example".into()),
                        None
                    ),
                    rule(
                        "users.alice.allow[1]",
                        "10.1.0.0/16:5432",
                        cidr("10.1.0.0", 16),
                        Some((5432, 5432))
                    ),
                ],
            },
        ]
    );
}

#[test]
fn dns_as_a_table_header_and_a_tls_forward_proxy_listener() {
    let dir = std::env::temp_dir().join(format!("sumun-config-fp-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.pem"), "x").unwrap();
    std::fs::write(dir.join("k.pem"), "x").unwrap();
    let source = format!(
        "[listener.proxy]\nbind = \"0.0.0.0:3129\"\ntls = {{ cert = \"c.pem\", key = \"k.pem\" }}\nforward_proxy = true\n\n\
         [forward_proxy.users.ci-bot]\npassword_hash = \"{BCRYPT}\"\n\n[forward_proxy.dns]\nmax_ttl = \"1m\"\n"
    );
    let loaded = crate::parse_str(&source, &dir.join("sumun.toml")).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert!(c.listeners[0].forward_proxy && c.listeners[0].tls.is_some());
    assert_eq!(c.forward_proxy.users[0].name, "ci-bot");
    assert_eq!(c.forward_proxy.dns, Dns { max_ttl: secs(60), ..Dns::default() });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rule_errors_at_their_line_and_column() {
    let source = format!(
        r#"{LISTENER}[forward_proxy]
allow = ["ok.example", "foo*.com", "10.0.0.1/8", "10.0.0.0/33",
         "example.com:0", "*:9000-8000", "[2001:db8::1]/32:443", "999.1.1.1"]
deny = ["bad host", "fd00::/8:443", ":22", "example.com:http"]

[forward_proxy.users.alice]
password_hash = "{BCRYPT}"
allow = ["*.ok.example", "*.*.example"]
"#
    );
    assert_eq!(
        error_lines(&source),
        [
            "4:24: forward_proxy `allow[1]`: `foo*.com`: a wildcard is only allowed alone (`*`) or as the whole first label (`*.example.com`)",
            "4:36: forward_proxy `allow[2]`: `10.0.0.1/8` has host bits set; did you mean `10.0.0.0/8`?",
            "4:50: forward_proxy `allow[3]`: `10.0.0.0/33`: the prefix length must be 0-32, not `33`",
            "5:10: forward_proxy `allow[4]`: port 0 is not a valid port (ports are 1-65535)",
            "5:27: forward_proxy `allow[5]`: port range `9000-8000` is reversed; did you mean `8000-9000`?",
            "5:42: forward_proxy `allow[6]`: `[2001:db8::1]/32:443` has host bits set; did you mean `[2001:db8::]/32:443`?",
            "5:66: forward_proxy `allow[7]`: `999.1.1.1` is not a valid IPv4 address",
            "6:9: forward_proxy `deny[0]`: `bad host` must not contain spaces",
            "6:21: forward_proxy `deny[1]`: `fd00::/8:443`: the prefix length must be 0-128, not `8:443`; an IPv6 network with a port needs brackets: `[fd00::]/8:443`",
            "6:37: forward_proxy `deny[2]`: missing host before `:22`; `*:22` means any host on that port",
            "6:44: forward_proxy `deny[3]`: `http` is not a valid port (ports are 1-65535; a range is `FROM-TO`)",
            "10:26: forward_proxy `users.alice.allow[1]`: `*.*.example`: a wildcard is only allowed alone (`*`) or as the whole first label (`*.example.com`)",
        ]
    );
}

#[test]
fn unknown_keys_get_hints() {
    let source = format!(
        "{LISTENER}[forward_proxy]\nalow = [\"*\"]\nblock_privat = false\ndns = {{ timout = \"1s\", cache_size = 5 }}\n\
         [forward_proxy.users.alice]\npassword = \"hunter2\"\n"
    );
    let lines = error_lines(&source);
    assert_eq!(
        lines[..3],
        [
            "4:1: unknown key `alow` in `forward_proxy`; did you mean `allow`?",
            "5:1: unknown key `block_privat` in `forward_proxy`; did you mean `block_private`?",
            "6:9: unknown key `timout` in `forward_proxy.dns`; did you mean `timeout`?",
        ]
    );
    // As for any required key, its absence is reported too, at the table.
    assert!(lines[3].starts_with("7:1: forward_proxy user `alice` needs `password_hash`"), "{}", lines[3]);
    assert_eq!(
        lines[4],
        "8:1: unknown key `password` in `forward_proxy.users.alice`; did you mean `password_hash`?"
    );
    assert_eq!(lines.len(), 5);
    assert!(!lines.iter().any(|l| l.contains("hunter2")));
    let source = format!(
        "{LISTENER}[listener.web.limits]\n[listener.proxy]\nbind = \"127.0.0.1:1\"\nforward_prxy = true\n"
    );
    assert_eq!(
        error_lines(&source),
        ["6:1: unknown key `forward_prxy` in `listener.proxy`; did you mean `forward_proxy`?"]
    );
}

#[test]
fn bad_password_hashes_are_not_echoed() {
    let source = format!(
        "{LISTENER}[forward_proxy.users.alice]\npassword_hash = \"correct-horse-battery\"\n\
         [forward_proxy.users.bob]\npassword_hash = \"$2b$03$KBCwKxOzLha2MUDgW0PjXeTGMKFb5hDnV5DOsGQ7lkhTcSK8ioiQ2\"\n\
         [forward_proxy.users.carol]\nallow = [\"*\"]\n\
         [forward_proxy.users.\"dave:x\"]\npassword_hash = \"{ARGON2}\"\n"
    );
    let errs = errors(&source);
    let lines = error_lines(&source);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].starts_with(
            "4:17: forward_proxy user `alice`: `password_hash` is not an argon2 or bcrypt hash (expected `$argon2id$v=19$m=…,t=…,p=…$SALT$HASH` or `$2b$12$…`); sumun stores password hashes, never passwords; make one with `python3 -c 'import getpass, bcrypt;"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("argon2 \"$(openssl rand -hex 16)\" -id -t 2 -k 19456 -p 1 -e"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(
            "6:17: forward_proxy user `bob`: `password_hash` is not a valid bcrypt hash: the cost must be two digits between 04 and 31;"
        ),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with("7:1: forward_proxy user `carol` needs `password_hash`"), "{}", lines[2]);
    assert!(lines[3].starts_with("9:22: forward_proxy user name `dave:x` must be non-empty"), "{}", lines[3]);
    for d in &errs {
        assert!(!d.message.contains("correct-horse") && !d.message.contains("KBCwKx"), "{}", d.message);
        assert!(!d.to_string().contains("correct-horse"));
    }
}

#[test]
fn bad_durations_and_dns_values() {
    let source = format!(
        "{LISTENER}[forward_proxy]\nconnect_timeout = \"0s\"\ntunnel_idle_timeout = \"5\"\n\
         dns = {{ timeout = \"0ms\", min_ttl = \"10m\", max_ttl = \"1m\", cache_size = -1 }}\n\
         [listener.x]\nbind = \"127.0.0.1:9\"\nforward_proxy = \"yes\"\n"
    );
    let lines = error_lines(&source);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(lines[0], "4:19: `forward_proxy.connect_timeout` must be greater than zero");
    assert!(lines[1].starts_with("5:23: `forward_proxy.tunnel_idle_timeout`: "), "{}", lines[1]);
    assert_eq!(lines[2], "6:19: `forward_proxy.dns.timeout` must be greater than zero");
    assert_eq!(lines[3], "6:53: `forward_proxy.dns.max_ttl` (60s) must not be below `min_ttl` (600s)");
    assert_eq!(lines[4], "6:72: `forward_proxy.dns.cache_size` must be between 0 and 16777216, not -1");
    assert_eq!(
        lines[5],
        "9:17: `listener.x.forward_proxy`: invalid type: string \"yes\", expected a boolean"
    );
}

#[test]
fn warnings() {
    // block_private = false.
    let source = "[listener.p]\nbind = \"127.0.0.1:3128\"\nforward_proxy = true\n[forward_proxy]\nblock_private = false\n";
    assert_eq!(
        warning_lines(source),
        [
            "5:17: `forward_proxy.block_private = false`: the proxy can reach internal services and cloud metadata endpoints (169.254.169.254); prefer keeping it on and allowing the networks clients need, e.g. `allow = [\"10.1.2.0/24\"]`"
        ]
    );
    assert!(!ok(source).config.forward_proxy.block_private);

    // An open proxy: non-loopback bind, no users. Loopback and unix sockets are fine.
    let source = "[listener.open]\nbind = \"0.0.0.0:3128\"\nforward_proxy = true\n\
                  [listener.v6]\nbind = \"[::]:3129\"\nforward_proxy = true\n\
                  [listener.lo]\nbind = \"127.0.0.1:3130\"\nforward_proxy = true\n\
                  [listener.lo6]\nbind = \"[::1]:3130\"\nforward_proxy = true\n\
                  [listener.sock]\nbind = \"unix:/run/proxy.sock\"\nforward_proxy = true\n\
                  [listener.web]\nbind = \"0.0.0.0:8080\"\n";
    assert_eq!(
        warning_lines(source),
        [
            "3:17: listener `open`: `forward_proxy = true` on `0.0.0.0:3128` without `[forward_proxy.users]` is an open proxy: anyone who can reach it can send traffic through it; bind a loopback address or add users",
            "6:17: listener `v6`: `forward_proxy = true` on `[::]:3129` without `[forward_proxy.users]` is an open proxy: anyone who can reach it can send traffic through it; bind a loopback address or add users",
        ]
    );
    let with_users = format!("{source}[forward_proxy.users.alice]\npassword_hash = \"{BCRYPT}\"\n");
    assert!(ok(&with_users).warnings.is_empty(), "{:?}", ok(&with_users).warnings);

    // A `[forward_proxy]` table no listener uses.
    let source = format!("{LISTENER}\n[forward_proxy]\nallow = [\"*\"]\n");
    assert_eq!(
        warning_lines(&source),
        ["4:1: `[forward_proxy]` has no effect: no listener has `forward_proxy = true`"]
    );

    // `localhost` by name does not get past block_private.
    let source = format!(
        "[listener.p]\nbind = \"127.0.0.1:3128\"\nforward_proxy = true\n[forward_proxy]\nallow = [\"localhost\", \"127.0.0.0/8\"]\n\
         [forward_proxy.users.a]\npassword_hash = \"{BCRYPT}\"\nallow = [\"*.localhost:8080\"]\n"
    );
    let lines = warning_lines(&source);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(
        lines[0],
        "5:10: forward_proxy `allow[0]`: a host rule does not exempt loopback addresses from `block_private`; to reach local services allow their addresses, e.g. `127.0.0.0/8` and `::1`"
    );
    assert!(lines[1].starts_with("8:10: forward_proxy `users.a.allow[0]`: a host rule"), "{}", lines[1]);
    // Not when block_private is off (that has its own warning).
    let off = source.replace("[forward_proxy]\n", "[forward_proxy]\nblock_private = false\n");
    assert_eq!(warning_lines(&off).len(), 1);
}

#[test]
fn warnings_and_errors_are_reported_together() {
    let source = "[listener.p]\nbind = \"0.0.0.0:3128\"\nforward_proxy = true\n[forward_proxy]\nblock_private = false\ndeny = [\"a*\"]\n";
    let diags = errors(source);
    let got: Vec<(usize, Severity)> = diags.iter().map(|d| (d.line, d.severity)).collect();
    assert_eq!(got, [(3, Severity::Warning), (5, Severity::Warning), (6, Severity::Error)]);
    assert!(diags.iter().all(|d| d.file == std::path::Path::new(FILE)));
}

/// Every TOML block of docs/forward-proxy.md, and the example of the `[forward_proxy]` section
/// of the configuration reference, is valid and draws no warning (a fragment without a
/// listener gets a loopback forward-proxy listener).
#[test]
fn documented_examples_are_valid() {
    let guide = include_str!("../../../../docs/forward-proxy.md");
    let reference = include_str!("../../../../docs/configuration.md");
    let section = reference
        .split("## `[forward_proxy]`")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("configuration.md has a [forward_proxy] section");
    let blocks: Vec<&str> = [guide, section]
        .iter()
        .flat_map(|doc| doc.split("```toml\n").skip(1))
        .filter_map(|block| block.split("```").next())
        .collect();
    assert!(blocks.len() >= 3, "{}", blocks.len());
    for block in blocks {
        let source = if block.contains("[listener.") {
            block.to_string()
        } else {
            format!("[listener.p]\nbind = \"127.0.0.1:3128\"\nforward_proxy = true\n{block}")
        };
        let loaded = ok(&source);
        assert!(loaded.warnings.is_empty(), "{block}\n{:?}", loaded.warnings);
    }
}
