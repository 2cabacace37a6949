//! `[forward_proxy]`: egress rules, proxy users and DNS settings, and the warnings about a
//! proxy that is open or can reach internal addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::time::Duration;

use crate::model::*;
use crate::raw::*;
use crate::validate::{Ctx, is_dns_name};

/// How to make a hash, for the error about a value that is not one.
const HASH_HOWTO: &str = "sumun stores password hashes, never passwords; make one with \
`python3 -c 'import getpass, bcrypt; print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt()).decode())'` \
(pip install bcrypt) or the argon2 CLI: `printf %s \"$PASSWORD\" | argon2 \"$(openssl rand -hex 16)\" -id -t 2 -k 19456 -p 1 -e`";

/// The largest `dns.cache_size` (entries).
const MAX_CACHE_SIZE: i64 = 1 << 24;

pub(crate) fn forward_proxy(cx: &mut Ctx<'_, '_>, raw: Option<&S<RawForwardProxy>>) -> ForwardProxy {
    let d = ForwardProxy::default();
    let Some(raw) = raw else { return d };
    let fp = raw.get_ref();
    let allow = rules(cx, fp.allow.as_ref(), "allow");
    let deny = rules(cx, fp.deny.as_ref(), "deny");
    let block_private = match &fp.block_private {
        Some(b) if !*b.get_ref() => {
            cx.warning(
                b.span(),
                "`forward_proxy.block_private = false`: the proxy can reach internal services and cloud \
                 metadata endpoints (169.254.169.254); prefer keeping it on and allowing the networks \
                 clients need, e.g. `allow = [\"10.1.2.0/24\"]`",
            );
            false
        }
        _ => d.block_private,
    };
    if block_private {
        warn_localhost_names(cx, fp.allow.as_ref(), "allow");
    }
    let connect_timeout =
        cx.duration(&fp.connect_timeout, d.connect_timeout, "`forward_proxy.connect_timeout`", true);
    let tunnel_idle_timeout = cx.duration(
        &fp.tunnel_idle_timeout,
        d.tunnel_idle_timeout,
        "`forward_proxy.tunnel_idle_timeout`",
        true,
    );
    let dns = fp.dns.as_ref().map_or_else(Dns::default, |raw| dns(cx, raw.get_ref()));
    let mut users = Vec::new();
    for (name, user) in fp.users.iter().flat_map(|u| &u.get_ref().0) {
        if let Some(user) = proxy_user(cx, name, user, block_private) {
            users.push(user);
        }
    }
    ForwardProxy { allow, deny, block_private, users, connect_timeout, tunnel_idle_timeout, dns }
}

/// Parses a rule list; `list` is the id prefix (`allow`, `users.alice.allow`).
fn rules(cx: &mut Ctx<'_, '_>, raw: Option<&S<Vec<S<String>>>>, list: &str) -> Vec<EgressRule> {
    let mut out = Vec::new();
    for (i, text) in raw.iter().flat_map(|r| r.get_ref()).enumerate() {
        let id = format!("{list}[{i}]");
        match parse_rule(text.get_ref()) {
            Ok((target, ports)) => out.push(EgressRule { id, text: text.get_ref().clone(), target, ports }),
            Err(e) => cx.error(text.span(), format!("forward_proxy `{id}`: {e}")),
        }
    }
    out
}

/// `allow = ["localhost"]` looks like it lets loopback through, but host rules never exempt
/// an address from `block_private`.
fn warn_localhost_names(cx: &mut Ctx<'_, '_>, raw: Option<&S<Vec<S<String>>>>, list: &str) {
    for (i, text) in raw.iter().flat_map(|r| r.get_ref()).enumerate() {
        let target = parse_rule(text.get_ref()).ok().map(|(t, _)| t);
        let local = match &target {
            Some(EgressTarget::Host(h)) => h == "localhost" || h.ends_with(".localhost"),
            Some(EgressTarget::Suffix(s)) => s == ".localhost" || s.ends_with(".localhost"),
            _ => false,
        };
        if local {
            cx.warning(
                text.span(),
                format!(
                    "forward_proxy `{list}[{i}]`: a host rule does not exempt loopback addresses from \
                     `block_private`; to reach local services allow their addresses, e.g. \
                     `127.0.0.0/8` and `::1`"
                ),
            );
        }
    }
}

fn dns(cx: &mut Ctx<'_, '_>, raw: &RawDns) -> Dns {
    let d = Dns::default();
    let timeout = cx.duration(&raw.timeout, d.timeout, "`forward_proxy.dns.timeout`", true);
    let min_ttl = cx.duration(&raw.min_ttl, d.min_ttl, "`forward_proxy.dns.min_ttl`", false);
    let mut max_ttl = cx.duration(&raw.max_ttl, d.max_ttl, "`forward_proxy.dns.max_ttl`", false);
    if max_ttl < min_ttl {
        let at = raw.max_ttl.as_ref().or(raw.min_ttl.as_ref()).map(|r| r.span()).unwrap_or(0..0);
        cx.error(
            at,
            format!(
                "`forward_proxy.dns.max_ttl` ({}) must not be below `min_ttl` ({})",
                show(max_ttl),
                show(min_ttl)
            ),
        );
        max_ttl = min_ttl;
    }
    let cache_size = raw
        .cache_size
        .as_ref()
        .and_then(|c| cx.int(c, 0, MAX_CACHE_SIZE, "`forward_proxy.dns.cache_size`"))
        .and_then(|c| usize::try_from(c).ok())
        .unwrap_or(d.cache_size);
    Dns { timeout, min_ttl, max_ttl, cache_size }
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

fn proxy_user(
    cx: &mut Ctx<'_, '_>,
    name: &S<String>,
    raw: &S<RawProxyUser>,
    block_private: bool,
) -> Option<ProxyUser> {
    let n = name.get_ref();
    let name_ok =
        !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if !name_ok {
        cx.error(
            name.span(),
            format!(
                "forward_proxy user name `{n}` must be non-empty and use only letters, digits, `-`, `_`, `.` and `@`"
            ),
        );
    }
    let u = raw.get_ref();
    let list = format!("users.{n}.allow");
    let allow = rules(cx, u.allow.as_ref(), &list);
    if block_private {
        warn_localhost_names(cx, u.allow.as_ref(), &list);
    }
    let what = format!("forward_proxy user `{n}`");
    let Some(hash) = &u.password_hash else {
        cx.missing(
            &format!("forward_proxy.users.{n}.password_hash"),
            raw.span(),
            format!("{what} needs `password_hash`: an argon2 (`$argon2id$…`) or bcrypt (`$2b$…`) hash; {HASH_HOWTO}"),
        );
        return None;
    };
    if let Err(reason) = check_password_hash(hash.get_ref()) {
        // Never repeat the value: it may be a password written where its hash belongs.
        cx.error(hash.span(), format!("{what}: `password_hash` {reason}; {HASH_HOWTO}"));
        return None;
    }
    name_ok.then(|| ProxyUser { name: n.clone(), password_hash: hash.get_ref().clone(), allow })
}

/// Checks the shape of an argon2 PHC string or a bcrypt hash, as the gateway's verifiers
/// (the `argon2` and `bcrypt` crates) accept them. The error never contains the value.
pub(crate) fn check_password_hash(hash: &str) -> Result<(), String> {
    const NOT_A_HASH: &str =
        "is not an argon2 or bcrypt hash (expected `$argon2id$v=19$m=…,t=…,p=…$SALT$HASH` or `$2b$12$…`)";
    if let Some(rest) = hash.strip_prefix("$argon2") {
        return check_argon2(rest).map_err(|e| format!("is not a valid argon2 hash: {e}"));
    }
    let bcrypt_prefix = ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| hash.starts_with(p));
    if bcrypt_prefix {
        return check_bcrypt(hash).map_err(|e| format!("is not a valid bcrypt hash: {e}"));
    }
    Err(NOT_A_HASH.into())
}

/// After `$argon2`: `id$v=19$m=19456,t=2,p=1$SALT$HASH` (`v=` may be left out).
fn check_argon2(rest: &str) -> Result<(), &'static str> {
    let mut parts: Vec<&str> = rest.split('$').collect();
    if !matches!(parts.first(), Some(&("id" | "i" | "d"))) {
        return Err("the algorithm must be `argon2id`, `argon2i` or `argon2d`");
    }
    if parts.get(1).is_some_and(|p| p.starts_with("v=")) {
        if !matches!(parts[1], "v=16" | "v=19") {
            return Err("the version must be `v=19` (or `v=16`)");
        }
        parts.remove(1);
    }
    let [_, params, salt, output] = parts[..] else {
        return Err("expected `$argon2id$v=19$m=…,t=…,p=…$SALT$HASH`");
    };
    let (mut m, mut t, mut p) = (None, None, None);
    for param in params.split(',') {
        let (key, value) = param.split_once('=').ok_or("parameters must look like `m=19456,t=2,p=1`")?;
        let value = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<u32>().ok())
            .flatten()
            .ok_or("parameters `m`, `t` and `p` must be integers")?;
        let slot = match key {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            _ => return Err("the only parameters allowed are `m`, `t` and `p`"),
        };
        if slot.replace(value).is_some() {
            return Err("a parameter appears twice");
        }
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else {
        return Err("it needs the parameters `m`, `t` and `p`");
    };
    if t < 1 || !(1..=0xFF_FFFF).contains(&p) || u64::from(m) < 8 * u64::from(p) {
        return Err("the parameters are out of range (t ≥ 1, 1 ≤ p < 2^24, m ≥ 8·p)");
    }
    let b64 =
        |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/') && s.len() % 4 != 1;
    if !(11..=64).contains(&salt.len()) || !b64(salt) {
        return Err("the salt must be 11 to 64 characters of unpadded base64 (8 to 48 bytes)");
    }
    if !(14..=86).contains(&output.len()) || !b64(output) {
        return Err("the hash must be 14 to 86 characters of unpadded base64 (10 to 64 bytes)");
    }
    Ok(())
}

/// `$2b$12$` + 22 characters of salt + 31 of hash, in bcrypt's base64 alphabet.
fn check_bcrypt(hash: &str) -> Result<(), &'static str> {
    if hash.len() != 60 || !hash.is_ascii() || hash.as_bytes()[6] != b'$' {
        return Err(
            "expected 60 characters: `$2b$`, a two-digit cost, `$` and 53 characters of salt and hash",
        );
    }
    let cost = &hash[4..6];
    if !cost.bytes().all(|b| b.is_ascii_digit()) || !(4..=31).contains(&cost.parse::<u32>().unwrap_or(0)) {
        return Err("the cost must be two digits between 04 and 31");
    }
    if !hash[7..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/') {
        return Err("the salt and hash may only use letters, digits, `.` and `/`");
    }
    Ok(())
}

/// Parses one allow/deny rule: `*`, `example.com`, `*.example.com`, an IP, a CIDR, each
/// optionally followed by `:PORT` or `:FROM-TO` (IPv6 in brackets when a port follows).
pub(crate) fn parse_rule(text: &str) -> Result<(EgressTarget, Option<(u16, u16)>), String> {
    const FORMS: &str = "write a host (`example.com`), `*.example.com`, an IP address or CIDR \
        (`10.0.0.0/8`, `[2001:db8::]/32`), or `*`, optionally followed by `:PORT` or `:FROM-TO`";
    if text.is_empty() {
        return Err(format!("empty rule; {FORMS}"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{text}` must not contain spaces"));
    }
    if let Some(rest) = text.strip_prefix('[') {
        return bracketed(text, rest);
    }
    if text.matches(':').count() > 1 {
        // A bare IPv6 address or network: no port (a port needs brackets).
        return match ip_network(text, text) {
            Ok(c) => Ok((c.into(), None)),
            Err(e) if text.contains('/') && text.rsplit_once('/').is_some_and(|(_, p)| p.contains(':')) => {
                let (net, port) = text.rsplit_once(':').unwrap_or((text, ""));
                let (addr, prefix) = net.split_once('/').unwrap_or((net, ""));
                Err(format!("{e}; an IPv6 network with a port needs brackets: `[{addr}]/{prefix}:{port}`"))
            }
            Err(_) if !text.contains('/') && text.parse::<Ipv6Addr>().is_err() => Err(format!(
                "`{text}` is not a valid IPv6 address; with a port, write it in brackets: `[::1]:443`"
            )),
            Err(e) => Err(e),
        };
    }
    let (host, ports) = match text.split_once(':') {
        Some((host, ports)) => (host, Some(port_range(ports)?)),
        None => (text, None),
    };
    if host.is_empty() {
        let p = text.trim_start_matches(':');
        return Err(format!("missing host before `:{p}`; `*:{p}` means any host on that port"));
    }
    Ok((host_target(host, text)?, ports))
}

/// `[v6]`, `[v6]:443`, `[v6]/32`, `[v6]/32:443` (also `[v6/32]:443`); `rest` follows `[`.
fn bracketed(text: &str, rest: &str) -> Result<(EgressTarget, Option<(u16, u16)>), String> {
    let (inside, after) = rest.split_once(']').ok_or_else(|| format!("`{text}`: missing `]`"))?;
    if inside.parse::<Ipv4Addr>().is_ok()
        || inside.split('/').next().is_some_and(|a| a.parse::<Ipv4Addr>().is_ok())
    {
        return Err(format!(
            "`{text}`: brackets are for IPv6 addresses; write IPv4 without them, e.g. `{inside}`"
        ));
    }
    let (prefix, ports) = match after.split_once(':') {
        Some((prefix, ports)) => (prefix, Some(port_range(ports)?)),
        None => (after, None),
    };
    let network = match prefix {
        "" => inside.to_string(),
        p if p.starts_with('/') && !inside.contains('/') => format!("{inside}{p}"),
        _ => return Err(format!("`{text}`: expected `[IPv6]`, `[IPv6]/PREFIX`, then optionally `:PORT`")),
    };
    if network.split('/').next().is_some_and(|a| a.parse::<Ipv6Addr>().is_err()) {
        return Err(format!("`[{inside}]` is not a valid IPv6 address"));
    }
    Ok((ip_network(&network, text)?.into(), ports))
}

/// `443` or `8000-8999`.
fn port_range(text: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| -> Result<u16, String> {
        if p.is_empty() {
            return Err("missing port after `:`".into());
        }
        match p.parse::<u16>() {
            Ok(0) => Err("port 0 is not a valid port (ports are 1-65535)".into()),
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("`{p}` is not a valid port (ports are 1-65535; a range is `FROM-TO`)")),
        }
    };
    match text.split_once('-') {
        None => port(text).map(|p| (p, p)),
        Some((from, to)) => {
            let (from_n, to_n) = (port(from)?, port(to)?);
            if from_n > to_n {
                return Err(format!("port range `{text}` is reversed; did you mean `{to}-{from}`?"));
            }
            Ok((from_n, to_n))
        }
    }
}

/// The part before the port, not in brackets: `*`, a host, `*.suffix`, IPv4 or IPv4/N.
fn host_target(host: &str, rule: &str) -> Result<EgressTarget, String> {
    if host == "*" {
        return Ok(EgressTarget::Any);
    }
    let glob_error = || {
        format!(
            "`{host}`: a wildcard is only allowed alone (`*`) or as the whole first label (`*.example.com`)"
        )
    };
    if host.contains('/') {
        return ip_network(host, rule).map(EgressTarget::from);
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(EgressTarget::Cidr { addr: IpAddr::V4(ip), prefix: 32 });
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if let Some(suffix) = name.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(glob_error());
        }
        check_host_name(suffix)?;
        return Ok(EgressTarget::Suffix(format!(".{suffix}")));
    }
    if name.contains('*') {
        return Err(glob_error());
    }
    check_host_name(name)?;
    Ok(EgressTarget::Host(name.to_string()))
}

fn check_host_name(name: &str) -> Result<(), String> {
    if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{name}` is not a valid IPv4 address"));
    }
    if !name.is_ascii() {
        return Err(format!(
            "`{name}` is not a valid host name; write internationalized names in their `xn--` form"
        ));
    }
    if !is_dns_name(name) {
        return Err(format!("`{name}` is not a valid host name, IP address or CIDR"));
    }
    if name.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("`{name}` is not a valid host name: its last label is all digits"));
    }
    Ok(())
}

/// `ADDR` or `ADDR/PREFIX`, IPv4 or IPv6 (no brackets); host bits must be zero. `rule` is
/// the whole rule, for messages.
pub(crate) fn ip_network(text: &str, rule: &str) -> Result<Cidr, String> {
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| match prefix_text {
        Some(_) => format!(
            "`{rule}`: `{addr_text}` is not an IP address; a network is `ADDRESS/PREFIX`, e.g. `10.0.0.0/8`"
        ),
        None => format!("`{rule}`: `{addr_text}` is not a valid IP address"),
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= max && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("`{rule}`: the prefix length must be 0-{max}, not `{p}`"))?,
    };
    let network = mask(addr, prefix);
    if network != addr {
        let suggestion = rule.replacen(addr_text, &network.to_string(), 1);
        return Err(format!("`{rule}` has host bits set; did you mean `{suggestion}`?"));
    }
    Ok(Cidr { addr, prefix })
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// Warnings that need the listeners: a forward-proxy listener that anyone can use, and a
/// `[forward_proxy]` table that no listener uses. `fp_listeners`: each listener with
/// `forward_proxy = true` and where that value was written.
pub(crate) fn listener_warnings(
    cx: &mut Ctx<'_, '_>,
    fp_listeners: &[(&Listener, Range<usize>)],
    fp: &ForwardProxy,
    table: Option<Range<usize>>,
) {
    if fp.users.is_empty() {
        for (l, span) in fp_listeners {
            if let BindAddr::Tcp(addr) = &l.bind {
                if !addr.ip().to_canonical().is_loopback() {
                    cx.warning(
                        span.clone(),
                        format!(
                            "listener `{}`: `forward_proxy = true` on `{addr}` without `[forward_proxy.users]` \
                             is an open proxy: anyone who can reach it can send traffic through it; bind a \
                             loopback address or add users",
                            l.name
                        ),
                    );
                }
            }
        }
    }
    if let Some(table) = table {
        if fp_listeners.is_empty() {
            cx.warning(table, "`[forward_proxy]` has no effect: no listener has `forward_proxy = true`");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(addr: &str, prefix: u8) -> EgressTarget {
        EgressTarget::Cidr { addr: addr.parse().unwrap(), prefix }
    }

    #[test]
    fn rule_forms() {
        let ok = |t: &str| parse_rule(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(ok("*"), (EgressTarget::Any, None));
        assert_eq!(ok("*:22"), (EgressTarget::Any, Some((22, 22))));
        assert_eq!(ok("*:8000-8999"), (EgressTarget::Any, Some((8000, 8999))));
        assert_eq!(ok("Example.COM."), (EgressTarget::Host("example.com".into()), None));
        assert_eq!(ok("example.org:443"), (EgressTarget::Host("example.org".into()), Some((443, 443))));
        assert_eq!(ok("*.Example.com"), (EgressTarget::Suffix(".example.com".into()), None));
        assert_eq!(
            ok("*.example.com.:1-65535"),
            (EgressTarget::Suffix(".example.com".into()), Some((1, 65535)))
        );
        assert_eq!(ok("svc_1.internal"), (EgressTarget::Host("svc_1.internal".into()), None));
        assert_eq!(ok("127.0.0.1"), (cidr("127.0.0.1", 32), None));
        assert_eq!(ok("127.0.0.1:8080"), (cidr("127.0.0.1", 32), Some((8080, 8080))));
        assert_eq!(ok("10.0.0.0/8"), (cidr("10.0.0.0", 8), None));
        assert_eq!(ok("0.0.0.0/0:443"), (cidr("0.0.0.0", 0), Some((443, 443))));
        assert_eq!(ok("::1"), (cidr("::1", 128), None));
        assert_eq!(ok("fd00::/8"), (cidr("fd00::", 8), None));
        assert_eq!(ok("[::1]"), (cidr("::1", 128), None));
        assert_eq!(ok("[::1]:443"), (cidr("::1", 128), Some((443, 443))));
        assert_eq!(ok("[2001:db8::]/32:443"), (cidr("2001:db8::", 32), Some((443, 443))));
        assert_eq!(ok("[2001:db8::/32]:443"), (cidr("2001:db8::", 32), Some((443, 443))));
        assert_eq!(ok("[2001:DB8::]/32"), (cidr("2001:db8::", 32), None));
    }

    #[test]
    fn rule_errors() {
        let err = |t: &str| parse_rule(t).expect_err(t);
        assert_eq!(
            err("foo*.com"),
            "`foo*.com`: a wildcard is only allowed alone (`*`) or as the whole first label (`*.example.com`)"
        );
        assert!(err("*.*.example.com").contains("wildcard"));
        assert!(err("a.*.com").contains("wildcard"));
        assert_eq!(err("10.0.0.1/8"), "`10.0.0.1/8` has host bits set; did you mean `10.0.0.0/8`?");
        assert_eq!(
            err("[2001:db8::1]/32:443"),
            "`[2001:db8::1]/32:443` has host bits set; did you mean `[2001:db8::]/32:443`?"
        );
        assert_eq!(
            err("10.1.2.3/16:22"),
            "`10.1.2.3/16:22` has host bits set; did you mean `10.1.0.0/16:22`?"
        );
        assert_eq!(err("fd00::1/8"), "`fd00::1/8` has host bits set; did you mean `fd00::/8`?");
        assert_eq!(err("10.0.0.0/33"), "`10.0.0.0/33`: the prefix length must be 0-32, not `33`");
        assert_eq!(err("10.0.0.0/"), "`10.0.0.0/`: the prefix length must be 0-32, not ``");
        assert!(err("example.com/24").contains("is not an IP address"));
        assert_eq!(err("999.1.1.1"), "`999.1.1.1` is not a valid IPv4 address");
        assert!(err("foo.123").contains("last label is all digits"));
        assert_eq!(err("example.com:0"), "port 0 is not a valid port (ports are 1-65535)");
        assert!(err("example.com:70000").contains("`70000` is not a valid port"));
        assert!(err("example.com:+443").contains("`+443` is not a valid port"));
        assert!(err("example.com:").contains("missing port"));
        assert_eq!(err("*:9000-8000"), "port range `9000-8000` is reversed; did you mean `8000-9000`?");
        assert!(err(":443").contains("`*:443` means any host"));
        assert!(err("").starts_with("empty rule"));
        assert!(err("a b").contains("spaces"));
        assert!(err("[10.0.0.1]:443").contains("brackets are for IPv6"));
        assert!(err("[::1").contains("missing `]`"));
        assert!(err("[::1]443").contains("expected `[IPv6]`"));
        assert!(err("[nope]").contains("not a valid IPv6 address"));
        assert!(err("fd00::/8:443").contains("`[fd00::]/8:443`"));
        assert!(err("gggg::1").contains("with a port, write it in brackets"));
        assert!(err("bücher.de").contains("xn--"));
        assert!(err("-a.com").contains("not a valid host name"));
    }

    #[test]
    fn password_hashes() {
        // Made by the argon2 0.6 and bcrypt 0.19 crates (password "correct horse").
        let argon = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$k9ohroejZy1PN5E1SbHNPug6vB8eQAahb5SOAp6iGF4";
        let bcrypt = "$2b$12$KBCwKxOzLha2MUDgW0PjXeTGMKFb5hDnV5DOsGQ7lkhTcSK8ioiQ2";
        assert_eq!(check_password_hash(argon), Ok(()));
        assert_eq!(check_password_hash(bcrypt), Ok(()));
        assert_eq!(check_password_hash(&argon.replace("v=19$", "")), Ok(()));
        assert_eq!(check_password_hash(&argon.replace("argon2id", "argon2i")), Ok(()));
        assert_eq!(check_password_hash(&bcrypt.replace("$2b$", "$2y$")), Ok(()));
        // From python bcrypt, python argon2-cffi, the argon2 CLI and htpasswd -B, as documented.
        for made in [
            "$2b$12$Ex2wrriTyf4Xqz5JQpE5v.OXBGq5tGIZUR9i0IsyN4HkoYA.16LqK",
            "$argon2id$v=19$m=65536,t=3,p=4$5emo2koaS/ONPGtVpaavVA$XLiJNMxXQpcjamlyDA45/h4eGYemDauAb+aeg+ULW5U",
            "$argon2id$v=19$m=19456,t=2,p=1$MjE3NTM4YWU0MGE5ZGU2NjAxMTFhMGNhY2I5ZjNkOGQ$tS3UrT67C854j+Lfe/rxBCtPwcJOpFB9GqcEqKqZZ14",
            "$2y$12$EsgUtr1orPLaPKrtKZL7g.CDhpDf.FsXJG7gPlbNRr25FXO95YGyu",
        ] {
            assert_eq!(check_password_hash(made), Ok(()), "{made}");
        }
        for (bad, why) in [
            ("hunter2", "is not an argon2 or bcrypt hash"),
            ("", "is not an argon2 or bcrypt hash"),
            ("$argon2x$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo", "algorithm"),
            ("$argon2id$v=20$m=19456,t=2,p=1$c29tZXNhbHRzb21l$aGFzaGhhc2hoYXNo", "version"),
            ("$argon2id$v=19$m=19456,t=2$c29tZXNhbHRzb21l$aGFzaGhhc2hoYXNo", "`m`, `t` and `p`"),
            ("$argon2id$v=19$m=4,t=2,p=1$c29tZXNhbHRzb21l$aGFzaGhhc2hoYXNo", "out of range"),
            ("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaGhhc2hoYXNo", "salt"),
            ("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21l$aGFz", "the hash must be"),
            ("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21l", "expected"),
            ("$2b$12$tooshort", "60 characters"),
            (&bcrypt.replace("$12$", "$03$"), "cost"),
            (&bcrypt.replace("KBC", "K-C"), "letters, digits"),
        ] {
            let e = check_password_hash(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            assert!(bad.len() < 4 || !e.contains(&bad[4..]), "echoes the value: {e}");
        }
    }
}
