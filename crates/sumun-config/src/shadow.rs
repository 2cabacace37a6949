//! Warnings for routes that can never match because an earlier route takes every request
//! they would. Conservative: warn only when the earlier route's matcher provably covers the
//! later one's; anything undecidable here (regex against prefix, …) is assumed reachable.

use std::path::Path;

use crate::diagnostics::{Diagnostic, Severity};
use crate::model::*;

pub(crate) fn shadow_warnings(config: &Config, file: &Path) -> Vec<Diagnostic> {
    let all_listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    let mut warnings = Vec::new();
    for (i, later) in config.routes.iter().enumerate() {
        let shadowing = config.routes[..i].iter().find(|earlier| covers(earlier, later, &all_listeners));
        if let Some(earlier) = shadowing {
            warnings.push(Diagnostic {
                severity: Severity::Warning,
                file: file.to_path_buf(),
                line: later.location.line,
                col: later.location.col,
                message: format!(
                    "route `{}` can never match: route `{}` (line {}) matches every request it does",
                    later.name, earlier.name, earlier.location.line
                ),
            });
        }
    }
    warnings
}

/// Does every request `b` matches also match `a`?
fn covers(a: &Route, b: &Route, all_listeners: &[&str]) -> bool {
    let (ma, mb) = (&a.matcher, &b.matcher);
    listeners_cover(&a.listeners, &b.listeners, all_listeners)
        && option_covers(&ma.host, &mb.host, host_covers)
        && option_covers(&ma.path, &mb.path, path_covers)
        && (ma.methods.is_empty()
            || (!mb.methods.is_empty() && mb.methods.iter().all(|m| ma.methods.contains(m))))
        && ma.headers.iter().all(|(name, want)| {
            mb.headers.iter().any(|(n, have)| {
                n == name
                    && match want {
                        HeaderValueMatch::Present => true,
                        HeaderValueMatch::Exact(_) => want == have,
                    }
            })
        })
        && (ma.version.is_none() || ma.version == mb.version)
}

/// None on `a` matches anything; None on `b` (anything) is covered only by None.
fn option_covers<T>(a: &Option<T>, b: &Option<T>, f: impl Fn(&T, &T) -> bool) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => f(a, b),
    }
}

/// Empty means every listener.
fn listeners_cover(a: &[String], b: &[String], all: &[&str]) -> bool {
    if a.is_empty() {
        return true;
    }
    if b.is_empty() {
        return all.iter().all(|l| a.iter().any(|x| x == l));
    }
    b.iter().all(|l| a.contains(l))
}

fn host_covers(a: &HostMatch, b: &HostMatch) -> bool {
    let port_ok = a.port().is_none() || a.port() == b.port();
    let host_ok = match (a, b) {
        (HostMatch::Exact { host: ha, .. }, HostMatch::Exact { host: hb, .. }) => ha == hb,
        (HostMatch::Wildcard { suffix, .. }, HostMatch::Exact { host, .. }) => {
            host.len() > suffix.len() && host.ends_with(suffix.as_str())
        }
        (HostMatch::Wildcard { suffix: sa, .. }, HostMatch::Wildcard { suffix: sb, .. }) => {
            sb.ends_with(sa.as_str())
        }
        (HostMatch::Exact { .. }, HostMatch::Wildcard { .. }) => false,
    };
    port_ok && host_ok
}

fn path_covers(a: &PathMatch, b: &PathMatch) -> bool {
    match (a, b) {
        // A prefix covers exactly the paths it matches, and a narrower prefix's paths all
        // start with that narrower prefix.
        (PathMatch::Prefix(_), PathMatch::Exact(pb) | PathMatch::Prefix(pb)) => a.matches(pb),
        (PathMatch::Exact(pa), PathMatch::Exact(pb)) => pa == pb,
        (PathMatch::Regex(ra), PathMatch::Regex(rb)) => ra.as_str() == rb.as_str(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, line: usize, matcher: RouteMatch) -> Route {
        Route {
            name: name.into(),
            location: Location { line, col: 1 },
            listeners: vec![],
            matcher,
            target: Target::Echo,
            rewrite: Rewrite::default(),
            headers: HeaderRules::default(),
            protect: crate::RouteProtection::default(),
            cache: None,
        }
    }

    fn exact(h: &str, port: Option<u16>) -> Option<HostMatch> {
        Some(HostMatch::Exact { host: h.into(), port })
    }

    fn wild(s: &str, port: Option<u16>) -> Option<HostMatch> {
        Some(HostMatch::Wildcard { suffix: s.into(), port })
    }

    fn prefix(p: &str) -> Option<PathMatch> {
        Some(PathMatch::Prefix(p.into()))
    }

    fn path(p: &str) -> Option<PathMatch> {
        Some(PathMatch::Exact(p.into()))
    }

    fn regex(r: &str) -> Option<PathMatch> {
        Some(PathMatch::Regex(regex::Regex::new(r).unwrap()))
    }

    fn m() -> RouteMatch {
        RouteMatch::default()
    }

    fn shadows(a: RouteMatch, b: RouteMatch) -> bool {
        covers(&route("a", 1, a), &route("b", 2, b), &["web"])
    }

    #[test]
    fn catch_all_shadows_everything() {
        assert!(shadows(m(), m()));
        assert!(shadows(
            m(),
            RouteMatch { host: exact("a.com", None), path: prefix("/x"), methods: vec!["GET".into()], ..m() }
        ));
    }

    #[test]
    fn hosts() {
        assert!(shadows(
            RouteMatch { host: exact("a.com", None), ..m() },
            RouteMatch { host: exact("a.com", Some(80)), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { host: exact("a.com", Some(80)), ..m() },
            RouteMatch { host: exact("a.com", None), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { host: exact("a.com", Some(80)), ..m() },
            RouteMatch { host: exact("a.com", Some(81)), ..m() }
        ));
        assert!(shadows(
            RouteMatch { host: wild(".a.com", None), ..m() },
            RouteMatch { host: exact("x.y.a.com", None), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { host: wild(".a.com", None), ..m() },
            RouteMatch { host: exact("a.com", None), ..m() }
        ));
        assert!(shadows(
            RouteMatch { host: wild(".a.com", None), ..m() },
            RouteMatch { host: wild(".b.a.com", None), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { host: wild(".b.a.com", None), ..m() },
            RouteMatch { host: wild(".a.com", None), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { host: exact("x.a.com", None), ..m() },
            RouteMatch { host: wild(".a.com", None), ..m() }
        ));
        assert!(!shadows(RouteMatch { host: exact("a.com", None), ..m() }, m()));
        assert!(!shadows(
            RouteMatch { host: wild(".xa.com", None), ..m() },
            RouteMatch { host: exact("y.a.com", None), ..m() }
        ));
    }

    #[test]
    fn paths() {
        assert!(shadows(
            RouteMatch { path: prefix("/api"), ..m() },
            RouteMatch { path: prefix("/api/v1"), ..m() }
        ));
        assert!(shadows(
            RouteMatch { path: prefix("/api"), ..m() },
            RouteMatch { path: path("/api"), ..m() }
        ));
        assert!(shadows(RouteMatch { path: prefix("/"), ..m() }, RouteMatch { path: path("/x"), ..m() }));
        assert!(!shadows(
            RouteMatch { path: prefix("/api"), ..m() },
            RouteMatch { path: prefix("/apix"), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { path: prefix("/api/v1"), ..m() },
            RouteMatch { path: prefix("/api"), ..m() }
        ));
        assert!(shadows(RouteMatch { path: path("/a"), ..m() }, RouteMatch { path: path("/a"), ..m() }));
        assert!(!shadows(RouteMatch { path: path("/a"), ..m() }, RouteMatch { path: prefix("/a"), ..m() }));
        assert!(shadows(
            RouteMatch { path: regex("^(?:/a.*)$"), ..m() },
            RouteMatch { path: regex("^(?:/a.*)$"), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { path: regex("^(?:/.*)$"), ..m() },
            RouteMatch { path: path("/a"), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { path: prefix("/"), ..m() },
            RouteMatch { path: regex("^(?:/a)$"), ..m() }
        ));
        // Conservative: "/" does not claim requests without a path constraint.
        assert!(!shadows(RouteMatch { path: prefix("/"), ..m() }, m()));
    }

    #[test]
    fn methods_headers_version() {
        let get = vec!["GET".to_string()];
        let get_post = vec!["GET".to_string(), "POST".to_string()];
        assert!(shadows(
            RouteMatch { methods: get_post.clone(), ..m() },
            RouteMatch { methods: get.clone(), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { methods: get.clone(), ..m() },
            RouteMatch { methods: get_post, ..m() }
        ));
        assert!(!shadows(RouteMatch { methods: get, ..m() }, m()));

        let present = vec![("x-a".to_string(), HeaderValueMatch::Present)];
        let exact_1 = vec![("x-a".to_string(), HeaderValueMatch::Exact("1".into()))];
        let exact_2 = vec![("x-a".to_string(), HeaderValueMatch::Exact("2".into()))];
        assert!(shadows(
            RouteMatch { headers: present.clone(), ..m() },
            RouteMatch { headers: exact_1.clone(), ..m() }
        ));
        assert!(shadows(
            RouteMatch { headers: exact_1.clone(), ..m() },
            RouteMatch { headers: exact_1.clone(), ..m() }
        ));
        assert!(!shadows(
            RouteMatch { headers: exact_1.clone(), ..m() },
            RouteMatch { headers: exact_2, ..m() }
        ));
        assert!(!shadows(
            RouteMatch { headers: exact_1, ..m() },
            RouteMatch { headers: present.clone(), ..m() }
        ));
        assert!(!shadows(RouteMatch { headers: present, ..m() }, m()));

        let v = |s: &str| Some(s.to_string());
        assert!(shadows(m(), RouteMatch { version: v("2"), ..m() }));
        assert!(shadows(RouteMatch { version: v("2"), ..m() }, RouteMatch { version: v("2"), ..m() }));
        assert!(!shadows(RouteMatch { version: v("2"), ..m() }, RouteMatch { version: v("3"), ..m() }));
        assert!(!shadows(RouteMatch { version: v("2"), ..m() }, m()));
    }

    #[test]
    fn listener_sets() {
        let all = ["web", "admin"];
        assert!(listeners_cover(&[], &["web".into()], &all));
        assert!(!listeners_cover(&["web".into()], &[], &all));
        assert!(listeners_cover(&["web".into(), "admin".into()], &[], &all));
        assert!(listeners_cover(&["web".into(), "admin".into()], &["admin".into()], &all));
        assert!(!listeners_cover(&["web".into()], &["admin".into()], &all));
    }

    #[test]
    fn warning_names_both_routes() {
        let config = Config {
            source: "s.toml".into(),
            data_dir: "d".into(),
            via: "sumun".into(),
            shutdown_grace: std::time::Duration::from_secs(1),
            access_log: AccessLog::Off,
            admin: None,
            listeners: vec![],
            upstreams: vec![],
            routes: vec![
                route("a", 3, RouteMatch { path: prefix("/api"), ..m() }),
                route("b", 9, RouteMatch { path: prefix("/other"), ..m() }),
                route("c", 12, RouteMatch { path: path("/api/x"), ..m() }),
            ],
            forward_proxy: ForwardProxy::default(),
            auth: vec![],
            passport: crate::Passport::default(),
            rate_limits: vec![],
            cors: vec![],
            redis: None,
            cache: crate::CacheStore::default(),
            compression: crate::Compression::default(),
            topics: vec![],
            subscriptions: vec![],
        };
        let w = shadow_warnings(&config, Path::new("s.toml"));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].line, 12);
        assert_eq!(w[0].severity, Severity::Warning);
        assert_eq!(
            w[0].message,
            "route `c` can never match: route `a` (line 3) matches every request it does"
        );
    }
}
