//! The egress policy: which destinations a forward-proxy client may reach.
//!
//! Checked twice per request. [`EgressPolicy::check_name`] runs before any DNS query and refuses
//! what no resolution could make acceptable (a denied name, a name that no allow rule could
//! match), so refused names are never sent to DNS. [`EgressPolicy::check_addr`] runs on every
//! resolved address right before connecting: that is what makes the policy safe against DNS
//! rebinding, since a name that resolves to a private address is refused there unless a CIDR
//! rule names that address.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sumun_config::model::{EgressRule, EgressTarget, ForwardProxy};

/// Why a destination was refused: the rule to name in the 403 and the access log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail} ({rule})")]
pub struct Refusal {
    /// A rule id from the config (`deny[2]`), or `block_private`, `not_allowed`,
    /// `user_not_allowed`.
    pub rule: String,
    /// A short reason fit for a client.
    pub detail: &'static str,
}

impl Refusal {
    fn new(rule: impl Into<String>, detail: &'static str) -> Refusal {
        Refusal { rule: rule.into(), detail }
    }

    fn denied(rule: &str) -> Refusal {
        Refusal::new(rule, "destination denied by policy")
    }

    fn private() -> Refusal {
        Refusal::new("block_private", "destination is a private or reserved address")
    }

    fn not_allowed() -> Refusal {
        Refusal::new("not_allowed", "destination not in the allow list")
    }

    fn user_not_allowed() -> Refusal {
        Refusal::new("user_not_allowed", "destination not in this user's allow list")
    }
}

/// `[forward_proxy]` allow/deny lists compiled for lookups: exact hosts and `*.suffix` rules
/// in hash maps, networks as integer masks.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    deny: RuleSet,
    allow: RuleSet,
    block_private: bool,
    /// Only users with a non-empty allow list.
    users: HashMap<String, RuleSet>,
}

impl EgressPolicy {
    pub fn new(config: &ForwardProxy) -> EgressPolicy {
        EgressPolicy {
            deny: RuleSet::new(&config.deny),
            allow: RuleSet::new(&config.allow),
            block_private: config.block_private,
            users: config
                .users
                .iter()
                .filter(|u| !u.allow.is_empty())
                .map(|u| (u.name.clone(), RuleSet::new(&u.allow)))
                .collect(),
        }
    }

    /// The check before resolving `host`. A name that is denied, or that no allow rule could
    /// accept whatever it resolves to, is refused here; an IP literal gets the full
    /// [`check_addr`](Self::check_addr).
    pub fn check_name(&self, host: &str, port: u16, user: Option<&str>) -> Result<(), Refusal> {
        let host = normalize_host(host);
        if let Some(ip) = parse_ip_literal(&host) {
            return self.check_addr(&host, ip, port, user);
        }
        if let Some(rule) = self.deny.match_name(&host, port) {
            return Err(Refusal::denied(rule));
        }
        // A name can still be accepted by a CIDR rule once resolved, so only refuse early when
        // the list has none for this port: that keeps refused names out of DNS queries.
        if !self.allow.is_empty()
            && self.allow.match_name(&host, port).is_none()
            && !self.allow.has_cidr_for(port)
        {
            return Err(Refusal::not_allowed());
        }
        if let Some(user_rules) = self.user_rules(user)
            && user_rules.match_name(&host, port).is_none()
            && !user_rules.has_cidr_for(port)
        {
            return Err(Refusal::user_not_allowed());
        }
        Ok(())
    }

    /// The check on one resolved address of `host`, right before connecting to it.
    pub fn check_addr(&self, host: &str, ip: IpAddr, port: u16, user: Option<&str>) -> Result<(), Refusal> {
        let host = normalize_host(host);
        let ip = canonical_ip(ip);
        let user_rules = self.user_rules(user);

        if let Some(rule) = self.deny.match_target(&host, ip, port) {
            return Err(Refusal::denied(rule));
        }
        // Only a CIDR rule unlocks a private address: a name rule would let any DNS answer
        // (rebinding) reach the inside.
        if self.block_private
            && is_private(ip)
            && self.allow.match_addr(ip, port).is_none()
            && user_rules.is_none_or(|r| r.match_addr(ip, port).is_none())
        {
            return Err(Refusal::private());
        }
        if !self.allow.is_empty() && self.allow.match_target(&host, ip, port).is_none() {
            return Err(Refusal::not_allowed());
        }
        if let Some(user_rules) = user_rules
            && user_rules.match_target(&host, ip, port).is_none()
        {
            return Err(Refusal::user_not_allowed());
        }
        Ok(())
    }

    fn user_rules(&self, user: Option<&str>) -> Option<&RuleSet> {
        user.and_then(|name| self.users.get(name))
    }
}

/// One list of rules. Lookups return the id of the first matching rule in config order.
#[derive(Debug, Clone, Default)]
struct RuleSet {
    /// Rule id and inclusive port range, indexed by position in the config list.
    rules: Vec<(String, (u16, u16))>,
    any: Vec<usize>,
    hosts: HashMap<String, Vec<usize>>,
    /// Keyed by the suffix with its leading dot: ".example.com".
    suffixes: HashMap<String, Vec<usize>>,
    v4: Vec<(u32, u32, usize)>,
    v6: Vec<(u128, u128, usize)>,
}

impl RuleSet {
    fn new(rules: &[EgressRule]) -> RuleSet {
        let mut set = RuleSet::default();
        for (i, rule) in rules.iter().enumerate() {
            set.rules.push((rule.id.clone(), rule.ports.unwrap_or((0, u16::MAX))));
            match &rule.target {
                EgressTarget::Any => set.any.push(i),
                EgressTarget::Host(host) => {
                    set.hosts.entry(normalize_host(host).into_owned()).or_default().push(i);
                }
                EgressTarget::Suffix(suffix) => {
                    let suffix = normalize_host(suffix);
                    let key =
                        if suffix.starts_with('.') { suffix.into_owned() } else { format!(".{suffix}") };
                    set.suffixes.entry(key).or_default().push(i);
                }
                EgressTarget::Cidr { addr, prefix } => match canonical_net(*addr, *prefix) {
                    (IpAddr::V4(net), prefix) => {
                        let mask = mask_v4(prefix);
                        set.v4.push((u32::from(net) & mask, mask, i));
                    }
                    (IpAddr::V6(net), prefix) => {
                        let mask = mask_v6(prefix);
                        set.v6.push((u128::from(net) & mask, mask, i));
                    }
                },
            }
        }
        set
    }

    fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn port_ok(&self, i: usize, port: u16) -> bool {
        self.rules.get(i).is_some_and(|(_, (lo, hi))| (*lo..=*hi).contains(&port))
    }

    fn id(&self, i: usize) -> Option<&str> {
        self.rules.get(i).map(|(id, _)| id.as_str())
    }

    fn has_cidr_for(&self, port: u16) -> bool {
        self.v4.iter().map(|r| r.2).chain(self.v6.iter().map(|r| r.2)).any(|i| self.port_ok(i, port))
    }

    /// `host` is normalized. `*` matches IP literals too; host and suffix rules never do.
    fn name_index(&self, host: &str, port: u16) -> Option<usize> {
        let mut best = self.any.iter().copied().find(|&i| self.port_ok(i, port));
        let mut consider = |candidates: Option<&Vec<usize>>| {
            for &i in candidates.into_iter().flatten() {
                if best.is_none_or(|b| i < b) && self.port_ok(i, port) {
                    best = Some(i);
                }
            }
        };
        consider(self.hosts.get(host));
        if !self.suffixes.is_empty() {
            // Every proper suffix starting at a dot, so `.example.com` matches `a.example.com`
            // and `a.b.example.com` but neither `example.com` nor `badexample.com`.
            for (pos, _) in host.match_indices('.').filter(|(pos, _)| *pos > 0) {
                consider(host.get(pos..).and_then(|s| self.suffixes.get(s)));
            }
        }
        best
    }

    /// `ip` is canonical (see [`canonical_ip`]).
    fn addr_index(&self, ip: IpAddr, port: u16) -> Option<usize> {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                self.v4
                    .iter()
                    .filter(|(net, mask, i)| bits & mask == *net && self.port_ok(*i, port))
                    .map(|r| r.2)
                    .min()
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                self.v6
                    .iter()
                    .filter(|(net, mask, i)| bits & mask == *net && self.port_ok(*i, port))
                    .map(|r| r.2)
                    .min()
            }
        }
    }

    fn match_name(&self, host: &str, port: u16) -> Option<&str> {
        self.name_index(host, port).and_then(|i| self.id(i))
    }

    fn match_addr(&self, ip: IpAddr, port: u16) -> Option<&str> {
        self.addr_index(ip, port).and_then(|i| self.id(i))
    }

    fn match_target(&self, host: &str, ip: IpAddr, port: u16) -> Option<&str> {
        let by_name = self.name_index(host, port);
        let by_addr = self.addr_index(ip, port);
        let first = match (by_name, by_addr) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        first.and_then(|i| self.id(i))
    }
}

/// Lower-case, without brackets around an IPv6 literal and without a trailing dot.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    host.parse().ok()
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) reaches the IPv4 host, so it is matched as
/// that host: `10.0.0.0/8` must catch it.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A rule written as an IPv4-mapped network (`::ffff:10.0.0.0/104`) becomes the IPv4 network,
/// matching [`canonical_ip`].
fn canonical_net(addr: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match addr {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), (prefix - 96).min(32)),
            None => (addr, prefix.min(128)),
        },
        IpAddr::V6(_) => (addr, prefix),
        IpAddr::V4(_) => (addr, prefix.min(32)),
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0)
}

/// Addresses that reach this host, the local network or nothing routable: what
/// `block_private` refuses.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    const NETS: &[(u32, u8)] = &[
        (0x0000_0000, 8),  // 0.0.0.0/8 "this network"; Linux connects 0.0.0.0 to itself
        (0x0a00_0000, 8),  // 10/8
        (0x6440_0000, 10), // 100.64/10 CGNAT
        (0x7f00_0000, 8),  // 127/8 loopback
        (0xa9fe_0000, 16), // 169.254/16 link-local, cloud metadata
        (0xac10_0000, 12), // 172.16/12
        (0xc000_0000, 24), // 192.0.0/24 IETF protocol assignments
        (0xc0a8_0000, 16), // 192.168/16
        (0xc612_0000, 15), // 198.18/15 benchmarking, used for internal fake-IP ranges
        (0xe000_0000, 4),  // 224/4 multicast
        (0xf000_0000, 4),  // 240/4 reserved, incl. 255.255.255.255 broadcast
    ];
    NETS.iter().any(|&(net, prefix)| bits & mask_v4(prefix) == net)
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let segments = ip.segments();
    // Forms that embed an IPv4 address the packet may end up at: mapped (::ffff:0:0/96),
    // compatible (::/96, which also covers :: and ::1) and NAT64 (64:ff9b::/96).
    let embedded = bits >> 32 == 0xffff || bits >> 32 == 0 || bits >> 32 == 0x0064_ff9b << 64;
    if embedded {
        let v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
        return is_private_v4(v4) || ip.is_loopback() || ip.is_unspecified();
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || segments[0] & 0xffc0 == 0xfe80 // fe80::/10 link-local
        || segments[0] & 0xffc0 == 0xfec0 // fec0::/10 deprecated site-local
        || segments[0] & 0xfe00 == 0xfc00 // fc00::/7 unique-local
        || segments[0] & 0xff00 == 0xff00 // ff00::/8 multicast
}

#[cfg(test)]
mod tests {
    use super::*;
    use sumun_config::model::ProxyUser;

    fn rule(id: &str, target: EgressTarget, ports: Option<(u16, u16)>) -> EgressRule {
        EgressRule { id: id.into(), text: id.into(), target, ports }
    }

    fn host(h: &str) -> EgressTarget {
        EgressTarget::Host(h.into())
    }

    fn suffix(s: &str) -> EgressTarget {
        EgressTarget::Suffix(s.into())
    }

    fn cidr(s: &str) -> EgressTarget {
        let (addr, prefix) = s.split_once('/').unwrap();
        EgressTarget::Cidr { addr: addr.parse().unwrap(), prefix: prefix.parse().unwrap() }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(allow: Vec<EgressRule>, deny: Vec<EgressRule>) -> EgressPolicy {
        EgressPolicy::new(&ForwardProxy { allow, deny, ..ForwardProxy::default() })
    }

    fn refused_by(r: Result<(), Refusal>) -> String {
        r.unwrap_err().rule
    }

    const PUBLIC: &str = "93.184.215.14";

    #[test]
    fn empty_policy_allows_public_and_blocks_private() {
        let p = policy(vec![], vec![]);
        assert_eq!(p.check_name("example.com", 443, None), Ok(()));
        assert_eq!(p.check_addr("example.com", ip(PUBLIC), 443, None), Ok(()));
        assert_eq!(refused_by(p.check_addr("example.com", ip("10.1.2.3"), 443, None)), "block_private");
    }

    #[test]
    fn metadata_address_blocked_by_default() {
        let p = EgressPolicy::new(&ForwardProxy::default());
        let r = p.check_name("169.254.169.254", 80, None).unwrap_err();
        assert_eq!(r.rule, "block_private");
        assert_eq!(r.detail, "destination is a private or reserved address");
        assert_eq!(refused_by(p.check_name("[fd00:ec2::254]", 80, None)), "block_private");
        assert_eq!(
            refused_by(p.check_addr("metadata.internal", ip("169.254.169.254"), 80, None)),
            "block_private"
        );
    }

    #[test]
    fn private_ranges() {
        for private in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "64:ff9b::10.0.0.1",
            "::127.0.0.1",
        ] {
            assert!(is_private(ip(private)), "{private} should be private");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            PUBLIC,
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "100.63.255.255",
            "169.253.0.1",
            "192.169.0.1",
            "11.0.0.1",
            "2606:4700::1111",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(!is_private(ip(public)), "{public} should be public");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_is_checked_as_ipv4() {
        let p = policy(vec![], vec![rule("deny[0]", cidr("203.0.113.0/24"), None)]);
        assert_eq!(refused_by(p.check_name("::ffff:203.0.113.9", 443, None)), "deny[0]");
        assert_eq!(refused_by(p.check_addr("x.test", ip("::ffff:203.0.113.9"), 443, None)), "deny[0]");
        assert_eq!(refused_by(p.check_name("[::ffff:127.0.0.1]", 80, None)), "block_private");
        // A rule written in mapped form matches the plain IPv4 address too.
        let p = policy(vec![], vec![rule("deny[0]", cidr("::ffff:203.0.113.0/120"), None)]);
        assert_eq!(refused_by(p.check_addr("x.test", ip("203.0.113.7"), 443, None)), "deny[0]");
        // And a mapped loopback is unlocked by the IPv4 rule that names it.
        let p = policy(vec![rule("allow[0]", cidr("127.0.0.0/8"), None)], vec![]);
        assert_eq!(p.check_addr("localhost", ip("::ffff:127.0.0.1"), 80, None), Ok(()));
    }

    #[test]
    fn suffix_matching() {
        let p = policy(vec![], vec![rule("deny[0]", suffix(".example.com"), None)]);
        assert_eq!(refused_by(p.check_name("a.example.com", 443, None)), "deny[0]");
        assert_eq!(refused_by(p.check_name("a.b.example.com", 443, None)), "deny[0]");
        assert_eq!(refused_by(p.check_name("A.Example.COM.", 443, None)), "deny[0]");
        assert_eq!(p.check_name("example.com", 443, None), Ok(()));
        assert_eq!(p.check_name("badexample.com", 443, None), Ok(()));
        assert_eq!(p.check_name("example.com.evil.test", 443, None), Ok(()));
        assert_eq!(p.check_name(".example.com", 443, None), Ok(()));
    }

    #[test]
    fn exact_host_matching() {
        let p = policy(vec![], vec![rule("deny[0]", host("example.com"), None)]);
        assert_eq!(refused_by(p.check_name("example.com", 80, None)), "deny[0]");
        assert_eq!(refused_by(p.check_name("EXAMPLE.com.", 80, None)), "deny[0]");
        assert_eq!(p.check_name("a.example.com", 80, None), Ok(()));
        assert_eq!(refused_by(p.check_addr("example.com", ip(PUBLIC), 80, None)), "deny[0]");
    }

    #[test]
    fn port_ranges() {
        let p = policy(
            vec![],
            vec![
                rule("deny[0]", EgressTarget::Any, Some((22, 22))),
                rule("deny[1]", host("example.com"), Some((8000, 8999))),
            ],
        );
        assert_eq!(refused_by(p.check_name("example.com", 22, None)), "deny[0]");
        assert_eq!(refused_by(p.check_name(PUBLIC, 22, None)), "deny[0]");
        assert_eq!(refused_by(p.check_name("example.com", 8000, None)), "deny[1]");
        assert_eq!(refused_by(p.check_name("example.com", 8999, None)), "deny[1]");
        assert_eq!(p.check_name("example.com", 7999, None), Ok(()));
        assert_eq!(p.check_name("example.com", 9000, None), Ok(()));
        assert_eq!(p.check_name("other.test", 8500, None), Ok(()));
        assert_eq!(p.check_addr("example.com", ip(PUBLIC), 443, None), Ok(()));

        let p = policy(vec![rule("allow[0]", suffix(".example.com"), Some((443, 443)))], vec![]);
        assert_eq!(p.check_addr("a.example.com", ip(PUBLIC), 443, None), Ok(()));
        assert_eq!(refused_by(p.check_addr("a.example.com", ip(PUBLIC), 80, None)), "not_allowed");
        assert_eq!(refused_by(p.check_name("a.example.com", 80, None)), "not_allowed");
    }

    #[test]
    fn deny_by_cidr_applies_to_resolved_address() {
        let p = policy(vec![], vec![rule("deny[0]", cidr("203.0.113.0/24"), Some((443, 443)))]);
        // Unknown before resolving, so the name passes...
        assert_eq!(p.check_name("evil.test", 443, None), Ok(()));
        // ...and the resolved address is refused.
        assert_eq!(refused_by(p.check_addr("evil.test", ip("203.0.113.5"), 443, None)), "deny[0]");
        assert_eq!(p.check_addr("evil.test", ip("203.0.113.5"), 80, None), Ok(()));
        assert_eq!(p.check_addr("evil.test", ip("203.0.114.5"), 443, None), Ok(()));
        let p = policy(vec![], vec![rule("deny[0]", cidr("2001:db8::/32"), None)]);
        assert_eq!(refused_by(p.check_name("[2001:db8::1]", 443, None)), "deny[0]");
        assert_eq!(p.check_name("[2001:db9::1]", 443, None), Ok(()));
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = policy(
            vec![rule("allow[0]", suffix(".example.com"), None), rule("allow[1]", cidr("10.0.0.0/8"), None)],
            vec![
                rule("deny[0]", host("secret.example.com"), None),
                rule("deny[1]", cidr("10.9.0.0/16"), None),
            ],
        );
        assert_eq!(refused_by(p.check_name("secret.example.com", 443, None)), "deny[0]");
        assert_eq!(refused_by(p.check_addr("secret.example.com", ip(PUBLIC), 443, None)), "deny[0]");
        assert_eq!(p.check_addr("www.example.com", ip(PUBLIC), 443, None), Ok(()));
        assert_eq!(p.check_addr("db.internal", ip("10.1.0.1"), 5432, None), Ok(()));
        assert_eq!(refused_by(p.check_addr("db.internal", ip("10.9.0.1"), 5432, None)), "deny[1]");
    }

    #[test]
    fn first_matching_deny_is_named() {
        let p = policy(
            vec![],
            vec![
                rule("deny[0]", suffix(".example.com"), Some((80, 80))),
                rule("deny[1]", cidr("0.0.0.0/0"), Some((443, 443))),
                rule("deny[2]", host("a.example.com"), None),
            ],
        );
        assert_eq!(refused_by(p.check_addr("a.example.com", ip(PUBLIC), 80, None)), "deny[0]");
        assert_eq!(refused_by(p.check_addr("a.example.com", ip(PUBLIC), 443, None)), "deny[1]");
        assert_eq!(refused_by(p.check_addr("a.example.com", ip(PUBLIC), 8080, None)), "deny[2]");
    }

    #[test]
    fn name_allow_does_not_unlock_private_address() {
        // DNS rebinding: an allowed name that resolves inside is still refused.
        let p = policy(vec![rule("allow[0]", suffix(".example.com"), None)], vec![]);
        assert_eq!(p.check_name("rebind.example.com", 80, None), Ok(()));
        assert_eq!(
            refused_by(p.check_addr("rebind.example.com", ip("127.0.0.1"), 80, None)),
            "block_private"
        );
        assert_eq!(
            refused_by(p.check_addr("rebind.example.com", ip("::ffff:169.254.169.254"), 80, None)),
            "block_private"
        );
        let p = policy(vec![rule("allow[0]", host("localhost"), None)], vec![]);
        assert_eq!(refused_by(p.check_addr("localhost", ip("127.0.0.1"), 80, None)), "block_private");
    }

    #[test]
    fn cidr_allow_unlocks_private_address_on_its_ports() {
        let p = policy(vec![rule("allow[0]", cidr("127.0.0.1/32"), Some((8000, 8100)))], vec![]);
        assert_eq!(p.check_name("127.0.0.1", 8080, None), Ok(()));
        assert_eq!(p.check_name("localhost", 8080, None), Ok(()));
        assert_eq!(p.check_addr("localhost", ip("127.0.0.1"), 8080, None), Ok(()));
        assert_eq!(refused_by(p.check_addr("localhost", ip("127.0.0.1"), 22, None)), "block_private");
        assert_eq!(refused_by(p.check_addr("localhost", ip("127.0.0.2"), 8080, None)), "block_private");
    }

    #[test]
    fn block_private_off() {
        let p = EgressPolicy::new(&ForwardProxy { block_private: false, ..ForwardProxy::default() });
        assert_eq!(p.check_name("127.0.0.1", 80, None), Ok(()));
        assert_eq!(p.check_addr("localhost", ip("::1"), 80, None), Ok(()));
    }

    #[test]
    fn allow_list_requires_a_match() {
        let p = policy(
            vec![
                rule("allow[0]", host("api.example.com"), None),
                rule("allow[1]", cidr("198.51.100.0/24"), Some((443, 443))),
            ],
            vec![],
        );
        assert_eq!(p.check_name("api.example.com", 443, None), Ok(()));
        assert_eq!(p.check_addr("api.example.com", ip(PUBLIC), 443, None), Ok(()));
        // Could still resolve into allow[1], so the name passes on 443 but not on 80.
        assert_eq!(p.check_name("other.test", 443, None), Ok(()));
        assert_eq!(refused_by(p.check_name("other.test", 80, None)), "not_allowed");
        assert_eq!(p.check_addr("other.test", ip("198.51.100.1"), 443, None), Ok(()));
        assert_eq!(refused_by(p.check_addr("other.test", ip(PUBLIC), 443, None)), "not_allowed");
        assert_eq!(refused_by(p.check_name(PUBLIC, 443, None)), "not_allowed");
    }

    #[test]
    fn allow_list_without_cidr_refuses_before_resolving() {
        let p = policy(vec![rule("allow[0]", suffix(".example.com"), None)], vec![]);
        assert_eq!(refused_by(p.check_name("exfil-data.attacker.test", 443, None)), "not_allowed");
    }

    #[test]
    fn any_rule_matches_ip_literals() {
        let p = policy(vec![], vec![rule("deny[0]", EgressTarget::Any, Some((25, 25)))]);
        assert_eq!(refused_by(p.check_name("[2606:4700::1111]", 25, None)), "deny[0]");
        assert_eq!(refused_by(p.check_addr("mail.test", ip(PUBLIC), 25, None)), "deny[0]");
        // Host rules don't match a literal by its text.
        let p = policy(vec![], vec![rule("deny[0]", host("mail.test"), None)]);
        assert_eq!(p.check_name(PUBLIC, 25, None), Ok(()));
    }

    fn with_users(allow: Vec<EgressRule>, deny: Vec<EgressRule>) -> EgressPolicy {
        EgressPolicy::new(&ForwardProxy {
            allow,
            deny,
            users: vec![
                ProxyUser {
                    name: "alice".into(),
                    password_hash: String::new(),
                    allow: vec![
                        rule("users.alice.allow[0]", suffix(".corp.example"), None),
                        rule("users.alice.allow[1]", cidr("10.20.0.0/16"), Some((443, 443))),
                    ],
                },
                ProxyUser { name: "bob".into(), password_hash: String::new(), allow: vec![] },
            ],
            ..ForwardProxy::default()
        })
    }

    #[test]
    fn user_allow_list() {
        let p = with_users(vec![], vec![rule("deny[0]", host("blocked.corp.example"), None)]);
        let alice = Some("alice");
        assert_eq!(p.check_addr("git.corp.example", ip(PUBLIC), 443, alice), Ok(()));
        assert_eq!(refused_by(p.check_addr("example.com", ip(PUBLIC), 443, alice)), "user_not_allowed");
        assert_eq!(refused_by(p.check_name("example.com", 80, alice)), "user_not_allowed");
        assert_eq!(p.check_name("example.com", 443, alice), Ok(()));
        // The user's CIDR rule unlocks a private address; the global deny still wins.
        assert_eq!(p.check_addr("db.corp.internal", ip("10.20.1.1"), 443, alice), Ok(()));
        assert_eq!(
            refused_by(p.check_addr("db.corp.internal", ip("10.20.1.1"), 5432, alice)),
            "block_private"
        );
        assert_eq!(refused_by(p.check_addr("blocked.corp.example", ip(PUBLIC), 443, alice)), "deny[0]");
        // No list: only the global policy; unknown user or none likewise.
        assert_eq!(p.check_addr("example.com", ip(PUBLIC), 443, Some("bob")), Ok(()));
        assert_eq!(p.check_addr("example.com", ip(PUBLIC), 443, None), Ok(()));
        assert_eq!(refused_by(p.check_addr("db.corp.internal", ip("10.20.1.1"), 443, None)), "block_private");
    }

    #[test]
    fn user_allow_list_and_global_allow_list_both_apply() {
        let p = with_users(vec![rule("allow[0]", suffix(".example"), None)], vec![]);
        let alice = Some("alice");
        assert_eq!(p.check_addr("git.corp.example", ip(PUBLIC), 443, alice), Ok(()));
        assert_eq!(refused_by(p.check_addr("www.other.example", ip(PUBLIC), 443, alice)), "user_not_allowed");
        assert_eq!(refused_by(p.check_addr("git.corp.test", ip(PUBLIC), 443, alice)), "not_allowed");
        // Unlocked by alice's CIDR rule, but the global allow list names no such address.
        assert_eq!(refused_by(p.check_addr("db.internal", ip("10.20.1.1"), 443, alice)), "not_allowed");
    }

    #[test]
    fn masks() {
        assert_eq!(mask_v4(0), 0);
        assert_eq!(mask_v4(8), 0xff00_0000);
        assert_eq!(mask_v4(32), u32::MAX);
        assert_eq!(mask_v6(0), 0);
        assert_eq!(mask_v6(128), u128::MAX);
        let p = policy(vec![], vec![rule("deny[0]", cidr("0.0.0.0/0"), None)]);
        assert_eq!(refused_by(p.check_addr("x.test", ip(PUBLIC), 1, None)), "deny[0]");
        assert_eq!(p.check_addr("x.test", ip("2606:4700::1111"), 1, None), Ok(()));
    }
}
