//! Cache keys. The primary key is built from the route's `key` parts (method, host, path, the
//! query with its parameters sorted and `ignore_query` ones dropped) and hashed to 128 bits.
//! The secondary key is what `Vary` (and the route's `vary_cookies`) select from a request,
//! normalized so that equivalent requests share a variant.

use http::header::{self, HeaderMap, HeaderName};
use sumun_config::CacheKeyPart;

/// The request parts a key is made of, as the client addressed them.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Host and port, as received (lower-cased here).
    pub host: &'a str,
    /// The normalized path.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// A primary key: the 128-bit hash the store is indexed by, and the URL it stands for (the
/// purge index and invalidation work on URLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryKey {
    pub hash: u128,
    pub url: String,
}

/// Sorts the query's parameters and drops the ignored ones; empty parameters disappear.
pub fn canonical_query(query: &str, ignore: &[String]) -> String {
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !ignore.iter().any(|i| i == name)
        })
        .collect();
    params.sort_unstable();
    params.join("&")
}

/// `scheme://host/path?query` with the query canonical.
pub fn canonical_url(t: &Target<'_>, ignore: &[String]) -> String {
    let q = t.query.map(|q| canonical_query(q, ignore)).unwrap_or_default();
    let mut url = String::with_capacity(t.scheme.len() + t.host.len() + t.path.len() + q.len() + 4);
    url.push_str(t.scheme);
    url.push_str("://");
    for c in t.host.chars() {
        url.push(c.to_ascii_lowercase());
    }
    url.push_str(t.path);
    if !q.is_empty() {
        url.push('?');
        url.push_str(&q);
    }
    url
}

pub fn primary(t: &Target<'_>, parts: &[CacheKeyPart], ignore: &[String]) -> PrimaryKey {
    let url = canonical_url(t, ignore);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let host_end = t.scheme.len() + 3 + t.host.len();
    let (origin, rest) =
        if url.is_char_boundary(host_end) { url.split_at(host_end) } else { (url.as_str(), "") };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    for p in parts {
        // Every GET/HEAD maps to the GET entry; other methods are never looked up.
        let piece: &str = match p {
            CacheKeyPart::Method => "GET",
            CacheKeyPart::Host => origin,
            CacheKeyPart::Path => path,
            CacheKeyPart::Query => query,
        };
        h.update(piece.as_bytes());
        h.update(&[0]);
    }
    PrimaryKey { hash: h.digest128(), url }
}

/// What a variant was selected by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Header(HeaderName),
    Cookie(String),
}

/// The selecting values a stored variant was made for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secondary {
    pub values: Vec<(Selector, Option<String>)>,
}

impl Secondary {
    /// The selectors a response's `Vary` names plus the route's cookies, with the request's
    /// values.
    pub fn capture(vary: &HeaderMap, request: &HeaderMap, cookies: &[String]) -> Secondary {
        let mut names: Vec<HeaderName> = Vec::new();
        for v in vary.get_all(header::VARY).iter().filter_map(|v| v.to_str().ok()) {
            for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(n.as_bytes())
                    && !names.contains(&name)
                {
                    names.push(name);
                }
            }
        }
        let mut values: Vec<(Selector, Option<String>)> = names
            .into_iter()
            .map(|n| {
                let v = normalized(request, &n);
                (Selector::Header(n), v)
            })
            .collect();
        for c in cookies {
            values.push((Selector::Cookie(c.clone()), cookie(request, c).map(str::to_owned)));
        }
        Secondary { values }
    }

    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.values.iter().all(|(sel, want)| match sel {
            Selector::Header(n) => normalized(request, n) == *want,
            Selector::Cookie(c) => cookie(request, c) == want.as_deref(),
        })
    }
}

/// Fields whose members are case-insensitive and whose order carries no meaning beyond
/// their weights.
fn is_negotiation(name: &HeaderName) -> bool {
    *name == header::ACCEPT_LANGUAGE
        || *name == header::ACCEPT_ENCODING
        || *name == header::ACCEPT
        || *name == header::ACCEPT_CHARSET
}

/// A request's selecting value for `name`: field lines combined, whitespace around list and
/// parameter separators removed; negotiation fields lower-cased and ordered by weight.
pub fn normalized(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut members: Vec<String> = Vec::new();
    let mut any = false;
    for v in request.get_all(name) {
        any = true;
        let s = String::from_utf8_lossy(v.as_bytes());
        for m in s.split(',') {
            let m: String = m
                .split(';')
                .map(|p| p.split('=').map(str::trim).collect::<Vec<_>>().join("="))
                .collect::<Vec<_>>()
                .join(";");
            if !m.is_empty() {
                members.push(m);
            }
        }
    }
    if !any {
        return None;
    }
    if is_negotiation(name) {
        for m in &mut members {
            m.make_ascii_lowercase();
        }
        // Highest weight first, then by text so equal weights compare equal in any order.
        members.sort_by(|a, b| weight(b).total_cmp(&weight(a)).then_with(|| a.cmp(b)));
    }
    Some(members.join(","))
}

fn weight(member: &str) -> f32 {
    member
        .split(';')
        .skip(1)
        .find_map(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()))
        .unwrap_or(1.0)
}

/// The value of cookie `name` in the request's `Cookie` fields.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn t<'a>(host: &'a str, path: &'a str, query: Option<&'a str>) -> Target<'a> {
        Target { scheme: "http", host, path, query }
    }

    fn all() -> Vec<CacheKeyPart> {
        vec![CacheKeyPart::Method, CacheKeyPart::Host, CacheKeyPart::Path, CacheKeyPart::Query]
    }

    #[test]
    fn query_order_and_ignored_parameters_do_not_matter() {
        let ignore = vec!["utm_source".to_owned()];
        let a = primary(&t("Example.com", "/a", Some("b=2&a=1&utm_source=x")), &all(), &ignore);
        let b = primary(&t("example.com", "/a", Some("a=1&b=2")), &all(), &ignore);
        assert_eq!(a, b);
        assert_eq!(a.url, "http://example.com/a?a=1&b=2");
        let c = primary(&t("example.com", "/a", Some("a=1&b=3")), &all(), &ignore);
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn key_parts_select_what_counts() {
        let path_only = vec![CacheKeyPart::Path];
        let a = primary(&t("a.example", "/x", Some("q=1")), &path_only, &[]);
        let b = primary(&t("b.example", "/x", Some("q=2")), &path_only, &[]);
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.url, b.url);
        let c = primary(&t("a.example", "/y", None), &path_only, &[]);
        assert_ne!(a.hash, c.hash);
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn vary_values_are_normalized() {
        let vary = h(&[("vary", "Accept-Language, Foo")]);
        let stored =
            Secondary::capture(&vary, &h(&[("accept-language", "en-US, fr;q=0.5"), ("foo", "a, b")]), &[]);
        assert!(stored.matches(&h(&[("accept-language", "fr; q=0.5,EN-us"), ("foo", "a"), ("foo", "b")])));
        assert!(!stored.matches(&h(&[("accept-language", "fr;q=0.5,en-us"), ("foo", "b, a")])));
        assert!(!stored.matches(&h(&[("accept-language", "en-US, fr;q=0.5")])), "omitted header");
        let none = Secondary::capture(&vary, &h(&[]), &[]);
        assert!(none.matches(&h(&[("other", "1")])));
        assert!(!none.matches(&h(&[("foo", "1")])));
    }

    #[test]
    fn vary_cookies_select_variants() {
        let s = Secondary::capture(
            &HeaderMap::new(),
            &h(&[("cookie", "session=abc; lang=fr")]),
            &["lang".to_owned()],
        );
        assert!(s.matches(&h(&[("cookie", "lang=fr; other=1")])));
        assert!(!s.matches(&h(&[("cookie", "lang=de")])));
        assert!(!s.matches(&h(&[])));
    }
}
