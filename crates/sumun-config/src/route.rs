//! `[[route]]` tables → [`Route`]s: matchers, targets, rewrites and header edits.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::ops::Range;

use crate::diagnostics::did_you_mean;
use crate::headers::{check_header_value, header_edit, header_name, header_ops};
use crate::model::*;
use crate::raw::*;
use crate::validate::{Ctx, check_name, is_dns_name, is_token};

/// Names a route may refer to; `upstreams` is sorted, so a position is the upstream's index.
pub(crate) struct Names<'a> {
    pub listeners: &'a [String],
    pub upstreams: &'a [String],
    pub policies: crate::protect::PolicyNames<'a>,
    /// Sorted: a position is the topic's index.
    pub topics: &'a [String],
    /// Every subscription, and whether it is pulled.
    pub subscriptions: &'a [(String, bool)],
}

pub(crate) fn routes(cx: &mut Ctx<'_, '_>, raw: &[S<RawRoute>], names: &Names<'_>) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let (line, col) = cx.sink.lines.position(r.span().start);
        let location = Location { line, col };
        let name = match &r.get_ref().name {
            Some(n) => {
                check_name(cx, n, "route");
                if let Some(first) = seen.get(n.get_ref()) {
                    cx.error(
                        n.span(),
                        format!("duplicate route name `{}` (first used on line {first})", n.get_ref()),
                    );
                }
                n.get_ref().clone()
            }
            None => format!("route-{}", i + 1),
        };
        if let Some(first) = seen.get(&name).filter(|_| r.get_ref().name.is_none()) {
            let message = format!(
                "route {} has the default name `{name}`, already used on line {first}; give it a `name`",
                i + 1
            );
            cx.error(r.span(), message);
        }
        seen.entry(name.clone()).or_insert(line);
        if let Some(route) = route(cx, r, i, name, location, names) {
            routes.push(route);
        }
    }
    routes
}

fn route(
    cx: &mut Ctx<'_, '_>,
    raw: &S<RawRoute>,
    index: usize,
    name: String,
    location: Location,
    names: &Names<'_>,
) -> Option<Route> {
    let what = format!("route `{name}`");
    let r = raw.get_ref();
    let mut listeners = Vec::new();
    if let Some(list) = &r.listeners {
        if list.get_ref().is_empty() {
            cx.error(
                list.span(),
                format!("{what}: `listeners` is empty; omit it to serve on every listener"),
            );
        }
        for l in list.get_ref() {
            if names.listeners.contains(l.get_ref()) {
                if !listeners.contains(l.get_ref()) {
                    listeners.push(l.get_ref().clone());
                }
            } else {
                let message = unknown_reference(&what, "listener", l.get_ref(), names.listeners);
                cx.error(l.span(), message);
            }
        }
    }
    let matcher = r.matcher.as_ref().map(|m| matcher(cx, m.get_ref(), &what)).unwrap_or_default();
    let target = match &r.to {
        Some(to) => target(cx, to, index, &what, names),
        None => {
            let message = format!("{what} needs `to`, e.g. `to = {{ upstream = \"api\" }}`");
            cx.missing(&format!("route[{index}].to"), raw.span(), message);
            None
        }
    };
    let rewrite = r.rewrite.as_ref().map(|rw| rewrite(cx, rw, &what)).unwrap_or_default();
    let mut headers = HeaderRules::default();
    if let Some(h) = &r.headers {
        if let Some(ops) = &h.get_ref().request {
            headers.request = header_ops(cx, ops.get_ref(), &what, "headers.request");
        }
        if let Some(ops) = &h.get_ref().response {
            headers.response = header_ops(cx, ops.get_ref(), &what, "headers.response");
        }
    }
    let (protect, cache) = crate::protect::route_protection(cx, r, &what, &names.policies);
    Some(Route { name, location, listeners, matcher, target: target?, rewrite, headers, protect, cache })
}

pub(crate) fn unknown_reference(what: &str, kind: &str, name: &str, known: &[String]) -> String {
    let mut message = format!("{what}: unknown {kind} `{name}`");
    if let Some(hint) = did_you_mean(name, known.iter().map(String::as_str)) {
        message.push_str(&format!("; did you mean `{hint}`?"));
    } else if known.is_empty() {
        message.push_str(&format!(" (no {kind}s are defined)"));
    } else if known.len() <= 10 {
        let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        message.push_str(&format!(" (defined: {})", list.join(", ")));
    }
    message
}

fn matcher(cx: &mut Ctx<'_, '_>, m: &RawMatch, what: &str) -> RouteMatch {
    let mut out = RouteMatch::default();
    if let Some(host) = &m.host {
        match host_match(host.get_ref()) {
            Ok(h) => out.host = Some(h),
            Err(e) => cx.error(host.span(), format!("{what}: invalid `host` `{}`: {e}", host.get_ref())),
        }
    }
    let mut first_path: Option<&str> = None;
    for (key, value) in [("path", &m.path), ("path_prefix", &m.path_prefix), ("path_regex", &m.path_regex)] {
        let Some(value) = value else { continue };
        if let Some(first) = first_path {
            cx.error(value.span(), format!("{what}: `{first}` and `{key}` cannot be combined; use only one"));
            continue;
        }
        first_path = Some(key);
        let text = value.get_ref();
        let parsed = match key {
            "path_regex" => regex::Regex::new(&format!("^(?:{text})$"))
                .map(PathMatch::Regex)
                .map_err(|e| format!("invalid `path_regex`: {}", regex_reason(&e))),
            _ => check_path(text).map_err(|e| format!("invalid `{key}` `{text}`: {e}")).map(|()| {
                if key == "path" {
                    PathMatch::Exact(text.clone())
                } else {
                    PathMatch::Prefix(trim_trailing_slashes(text))
                }
            }),
        };
        match parsed {
            Ok(p) => out.path = Some(p),
            Err(e) => cx.error(value.span(), format!("{what}: {e}")),
        }
    }
    if let Some(methods) = &m.methods {
        if methods.get_ref().is_empty() {
            cx.error(methods.span(), format!("{what}: `methods` is empty; omit it to match any method"));
        }
        for method in methods.get_ref() {
            if !is_token(method.get_ref()) {
                cx.error(method.span(), format!("{what}: `{}` is not a valid method name", method.get_ref()));
                continue;
            }
            let upper = method.get_ref().to_ascii_uppercase();
            if !out.methods.contains(&upper) {
                out.methods.push(upper);
            }
        }
    }
    if let Some(headers) = &m.headers {
        for (name, value) in &headers.get_ref().0 {
            let Some(lower) = header_name(cx, name, &format!("{what}: `match.headers`")) else {
                continue;
            };
            if out.headers.iter().any(|(n, _)| *n == lower) {
                cx.error(name.span(), format!("{what}: header `{lower}` is matched twice"));
                continue;
            }
            let matched = match value.get_ref() {
                RawHeaderValue::Present(true) => HeaderValueMatch::Present,
                RawHeaderValue::Present(false) => {
                    let message = format!(
                        "{what}: header `{lower}` = false is not supported; use `true` to require the header, or a string to require a value"
                    );
                    cx.error(value.span(), message);
                    continue;
                }
                RawHeaderValue::Exact(v) => match check_header_value(v) {
                    Ok(()) => HeaderValueMatch::Exact(v.clone()),
                    Err(e) => {
                        cx.error(value.span(), format!("{what}: header `{lower}`: {e}"));
                        continue;
                    }
                },
            };
            out.headers.push((lower, matched));
        }
    }
    if let Some(version) = &m.version {
        let text = match version.get_ref() {
            StringOrInt::Str(s) => s.clone(),
            StringOrInt::Int(n) => n.to_string(),
        };
        let valid = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
        let v_prefixed = text.len() > 1
            && text.starts_with(['v', 'V'])
            && text[1..].starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            cx.error(
                version.span(),
                format!(
                    "{what}: `version` must be letters, digits and dots, e.g. \"2\" or \"2.1\", not `{text}`"
                ),
            );
        } else if v_prefixed {
            cx.error(version.span(), format!("{what}: write `version` without the `v`: \"{}\"", &text[1..]));
        } else {
            out.version = Some(text);
        }
    }
    out
}

/// regex errors span several lines with a caret diagram; keep the explanation.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(|| text.lines().last().unwrap_or("").trim().to_string(), str::to_string)
}

/// `a.example.com`, `a.example.com:8080`, `*.example.com`, `[::1]:8080`; lower-cased.
fn host_match(text: &str) -> Result<HostMatch, String> {
    let text = text.to_ascii_lowercase();
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']').ok_or("missing `]` after an IPv6 address")?;
        let (host, rest) = text.split_at(end + 1);
        host[1..end].parse::<Ipv6Addr>().map_err(|_| format!("`{host}` is not an IPv6 address"))?;
        match rest {
            "" => (host.to_string(), None),
            _ => (host.to_string(), Some(rest.strip_prefix(':').ok_or("expected `:PORT` after `]`")?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err("IPv6 addresses need brackets, e.g. `[::1]:8080`".into());
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (text.clone(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(format!("`{p}` is not a valid port"))?)
        }
    };
    if host.starts_with('[') {
        return Ok(HostMatch::Exact { host, port });
    }
    let host = host.strip_suffix('.').unwrap_or(&host).to_string();
    if host == "*" {
        return Err("`*` alone matches every host; leave `host` out instead".into());
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        if !is_dns_name(suffix) {
            return Err(format!("`{suffix}` is not a valid host name"));
        }
        return Ok(HostMatch::Wildcard { suffix: format!(".{suffix}"), port });
    }
    if host.contains('*') {
        return Err("a wildcard is only allowed as the whole first label, e.g. `*.example.com`".into());
    }
    if !is_dns_name(&host) {
        return Err(format!("`{host}` is not a valid host name or IP address"));
    }
    Ok(HostMatch::Exact { host, port })
}

/// A path as the router compares it: absolute, no query or fragment, no whitespace.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with `/`".into());
    }
    if path.contains(['?', '#']) {
        return Err("must not contain a query (`?`) or fragment (`#`)".into());
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

/// "/v1/" → "/v1"; "/" stays "/".
fn trim_trailing_slashes(path: &str) -> String {
    match path.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    }
}

fn target(
    cx: &mut Ctx<'_, '_>,
    to: &S<RawTarget>,
    index: usize,
    what: &str,
    names: &Names<'_>,
) -> Option<Target> {
    let t = to.get_ref();
    let given: Vec<(&str, Range<usize>)> = [
        ("upstream", t.upstream.as_ref().map(|v| v.span())),
        ("respond", t.respond.as_ref().map(|v| v.span())),
        ("redirect", t.redirect.as_ref().map(|v| v.span())),
        ("echo", t.echo.as_ref().map(|v| v.span())),
        ("topic", t.topic.as_ref().map(|v| v.span())),
        ("subscription", t.subscription.as_ref().map(|v| v.span())),
    ]
    .into_iter()
    .filter_map(|(k, span)| span.map(|s| (k, s)))
    .collect();
    match given.as_slice() {
        [] => {
            let message = format!(
                "{what}: `to` needs one of `upstream`, `topic`, `subscription`, `respond`, `redirect` or `echo`"
            );
            cx.missing(&format!("route[{index}].to"), to.span(), message);
            return None;
        }
        [_] => {}
        [(first, _), (second, span), ..] => {
            cx.error(
                span.clone(),
                format!("{what}: `to` has both `{first}` and `{second}`; a route has one target"),
            );
            return None;
        }
    }
    if let Some(name) = &t.upstream {
        let Some(index) = names.upstreams.iter().position(|u| u == name.get_ref()) else {
            let message = unknown_reference(what, "upstream", name.get_ref(), names.upstreams);
            cx.error(name.span(), message);
            return None;
        };
        return Some(Target::Upstream { index, name: name.get_ref().clone() });
    }
    if let Some(topic) = &t.topic {
        let index = crate::bus::check_target_topic(cx, topic, what, names.topics)?;
        return Some(Target::Topic { index, name: topic.get_ref().clone() });
    }
    if let Some(sub) = &t.subscription {
        return crate::bus::check_target_subscription(cx, sub, what, names.subscriptions)
            .map(|name| Target::Subscription { name });
    }
    if let Some(respond) = &t.respond {
        return respond_target(cx, respond.get_ref(), what).map(Target::Respond);
    }
    if let Some(redirect) = &t.redirect {
        let (location, status) = match redirect.get_ref() {
            RawRedirect::Short(url) => ((url.as_str(), redirect.span()), 308),
            RawRedirect::Full(table) => {
                let status = match &table.status {
                    Some(s) if [301, 302, 303, 307, 308].contains(s.get_ref()) => *s.get_ref(),
                    Some(s) => {
                        cx.error(
                            s.span(),
                            format!(
                                "{what}: redirect `status` must be 301, 302, 303, 307 or 308, not {}",
                                s.get_ref()
                            ),
                        );
                        return None;
                    }
                    None => 308,
                };
                let Some(location) = &table.location else {
                    let message = format!("{what}: `redirect` needs `location`");
                    cx.missing(&format!("route[{index}].to.redirect.location"), redirect.span(), message);
                    return None;
                };
                ((location.get_ref().as_str(), location.span()), status)
            }
        };
        let bad = location.0.is_empty() || location.0.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad {
            cx.error(
                location.1,
                format!(
                    "{what}: redirect location must be a non-empty URL without spaces or control characters"
                ),
            );
            return None;
        }
        let status = u16::try_from(status).unwrap_or(308);
        return Some(Target::Redirect { location: location.0.to_string(), status });
    }
    match &t.echo {
        Some(echo) if !*echo.get_ref() => {
            cx.error(
                echo.span(),
                format!("{what}: `echo = false` is not a target; use `echo = true` or another target"),
            );
            None
        }
        _ => Some(Target::Echo),
    }
}

fn respond_target(cx: &mut Ctx<'_, '_>, r: &RawRespond, what: &str) -> Option<Respond> {
    let status = match &r.status {
        Some(s) => cx.int(s, 100, 599, &format!("{what}: respond `status`"))?,
        None => 200,
    };
    let mut headers = Vec::new();
    if let Some(list) = &r.headers {
        let ctx = format!("{what}: `respond.headers`");
        for (name, value) in &list.get_ref().0 {
            if let Some(entry) = header_edit(cx, name, value, &ctx, &headers) {
                headers.push(entry);
            }
        }
    }
    Some(Respond {
        status: u16::try_from(status).unwrap_or(200),
        body: r.body.as_ref().map(|b| b.get_ref().clone()).unwrap_or_default(),
        headers,
    })
}

fn rewrite(cx: &mut Ctx<'_, '_>, rw: &S<RawRewrite>, what: &str) -> Rewrite {
    let r = rw.get_ref();
    if let (Some(_), Some(path)) = (&r.strip_prefix, &r.path) {
        cx.error(path.span(), format!("{what}: `rewrite` takes `strip_prefix` or `path`, not both"));
        return Rewrite::default();
    }
    let mut out = Rewrite::default();
    for (key, value) in [("strip_prefix", &r.strip_prefix), ("path", &r.path)] {
        let Some(value) = value else { continue };
        if let Err(e) = check_path(value.get_ref()) {
            cx.error(value.span(), format!("{what}: invalid rewrite `{key}` `{}`: {e}", value.get_ref()));
        } else if key == "path" {
            out.path = Some(value.get_ref().clone());
        } else {
            out.strip_prefix = Some(trim_trailing_slashes(value.get_ref()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let exact = |h: &str, p| Ok(HostMatch::Exact { host: h.into(), port: p });
        assert_eq!(host_match("API.Example.com"), exact("api.example.com", None));
        assert_eq!(host_match("a.example.com:8080"), exact("a.example.com", Some(8080)));
        assert_eq!(host_match("example.com."), exact("example.com", None));
        assert_eq!(host_match("10.0.0.1"), exact("10.0.0.1", None));
        assert_eq!(host_match("[::1]:8080"), exact("[::1]", Some(8080)));
        assert_eq!(host_match("[::1]"), exact("[::1]", None));
        assert_eq!(
            host_match("*.Example.com"),
            Ok(HostMatch::Wildcard { suffix: ".example.com".into(), port: None })
        );
        assert_eq!(
            host_match("*.example.com:443"),
            Ok(HostMatch::Wildcard { suffix: ".example.com".into(), port: Some(443) })
        );
        for bad in [
            "*",
            "a.*.com",
            "*example.com",
            "::1",
            "[::1",
            "[zz]:80",
            "a.com:0",
            "a.com:x",
            "a b",
            "",
            "[::1]x",
        ] {
            assert!(host_match(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(check_path("/a/b").is_ok());
        assert!(check_path("a").is_err() && check_path("/a?b").is_err() && check_path("/a b").is_err());
        assert_eq!(trim_trailing_slashes("/v1/"), "/v1");
        assert_eq!(trim_trailing_slashes("/v1//"), "/v1");
        assert_eq!(trim_trailing_slashes("/"), "/");
        assert_eq!(trim_trailing_slashes("//"), "/");
    }

    #[test]
    fn regex_errors_are_one_line() {
        // Built at run time: clippy checks regex literals.
        let pattern = ["^(?:", "(a", ")$"].concat();
        let e = regex::Regex::new(&pattern).unwrap_err();
        assert_eq!(regex_reason(&e), "unclosed group");
    }
}
