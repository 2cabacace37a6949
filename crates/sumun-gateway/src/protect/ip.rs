//! A route's IP allow/deny lists: deny wins; a non-empty allow list admits only its networks.

use std::net::IpAddr;

use http::StatusCode;
use sumun_config::IpFilter;

use super::Rejection;

pub fn check(filter: &IpFilter, ip: Option<IpAddr>) -> Result<(), Rejection> {
    let refused =
        || Rejection::new(StatusCode::FORBIDDEN, "ip_denied", "this client address may not use this route");
    // A unix-socket client has no address: only an open route admits it.
    let Some(ip) = ip else {
        return if filter.allow.is_empty() { Ok(()) } else { Err(refused()) };
    };
    if filter.deny.iter().any(|c| c.contains(ip)) {
        return Err(refused());
    }
    if !filter.allow.is_empty() && !filter.allow.iter().any(|c| c.contains(ip)) {
        return Err(refused());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sumun_config::Cidr;

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr { addr: a.parse().unwrap(), prefix: p.parse().unwrap() }
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let f = IpFilter { allow: vec![cidr("10.0.0.0/8")], deny: vec![cidr("10.1.0.0/16")] };
        assert!(check(&f, Some("10.2.3.4".parse().unwrap())).is_ok());
        assert!(check(&f, Some("10.1.3.4".parse().unwrap())).is_err());
        assert!(check(&f, Some("192.168.1.1".parse().unwrap())).is_err());
        assert!(check(&f, Some("::ffff:10.2.3.4".parse().unwrap())).is_ok());
        assert!(check(&f, None).is_err());
        let open = IpFilter { allow: vec![], deny: vec![cidr("::1/128")] };
        assert!(check(&open, Some("::1".parse().unwrap())).is_err());
        assert!(check(&open, Some("127.0.0.1".parse().unwrap())).is_ok());
        assert!(check(&open, None).is_ok());
    }
}
