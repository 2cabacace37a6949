//! Raw model → validated [`Config`]: defaults, units, addresses, references. Every problem is
//! reported; validation carries on with a default after each so later problems show too.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diagnostics::{Sink, did_you_mean};
use crate::listener::{bind_addr, check_duplicate_binds, listener};
use crate::model::*;
use crate::raw::*;
use crate::units::{parse_duration, parse_size};
use crate::upstream::upstream;

pub(crate) struct Ctx<'s, 'a> {
    pub sink: &'s mut Sink<'a>,
    /// Relative paths in the file are relative to the file's directory.
    pub base_dir: PathBuf,
    /// Paths already reported by the parser; not reported again as missing.
    pub removed: HashSet<String>,
}

impl Ctx<'_, '_> {
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.sink.error(&span, message);
    }

    pub fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.sink.warning(&span, message);
    }

    /// Whether the parser already reported a problem at `path` (or inside it) and removed it.
    pub fn reported(&self, path: &str) -> bool {
        self.removed.iter().any(|r| {
            r == path
                || r.strip_prefix(path).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    /// Reports a missing required key unless the parser already reported something there.
    pub fn missing(&mut self, path: &str, span: Range<usize>, message: impl Into<String>) {
        if !self.reported(path) {
            self.error(span, message);
        }
    }

    pub fn resolve(&self, path: &str) -> PathBuf {
        // Collecting components drops interior `.`s: "/etc/sumun/./data" → "/etc/sumun/data".
        self.base_dir.join(path).components().collect()
    }

    /// A duration key with its default; `positive` refuses zero.
    pub fn duration(
        &mut self,
        raw: &Option<S<String>>,
        default: Duration,
        what: &str,
        positive: bool,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match parse_duration(raw.get_ref()) {
            Ok(d) if positive && d.is_zero() => {
                self.error(raw.span(), format!("{what} must be greater than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(raw.span(), format!("{what}: {e}"));
                default
            }
        }
    }

    /// An integer key within `min..=max`.
    pub fn int(&mut self, raw: &S<i64>, min: i64, max: i64, what: &str) -> Option<i64> {
        let v = *raw.get_ref();
        if (min..=max).contains(&v) {
            Some(v)
        } else {
            self.error(raw.span(), format!("{what} must be between {min} and {max}, not {v}"));
            None
        }
    }

    pub fn size(&mut self, raw: &S<RawSize>, what: &str) -> Option<u64> {
        let parsed = match raw.get_ref() {
            RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| format!("invalid size `{n}`")),
            RawSize::Text(t) => parse_size(t),
        };
        parsed.map_err(|e| self.error(raw.span(), format!("{what}: {e}"))).ok()
    }
}

pub(crate) fn validate(raw: RawConfig, source: &Path, cx: &mut Ctx<'_, '_>) -> Option<Config> {
    let data_dir = match &raw.data_dir {
        Some(d) if d.get_ref().is_empty() => {
            cx.error(d.span(), "`data_dir` must not be empty");
            PathBuf::new()
        }
        Some(d) => cx.resolve(d.get_ref()),
        None => cx.resolve("./sumun-data"),
    };
    let via = match &raw.via {
        Some(v) if !is_token(v.get_ref()) => {
            cx.error(
                v.span(),
                format!(
                    "`via` must be one token (letters, digits, `-`, `.`, `_` and a few other symbols; no spaces, `/` or `:`), not `{}`",
                    v.get_ref()
                ),
            );
            String::new()
        }
        Some(v) => v.get_ref().clone(),
        None => "sumun".to_string(),
    };
    let shutdown_grace = cx.duration(&raw.shutdown_grace, Duration::from_secs(30), "`shutdown_grace`", false);
    let access_log = match raw.access_log.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
        None | Some(("stdout", _)) => AccessLog::Stdout,
        Some(("stderr", _)) => AccessLog::Stderr,
        Some(("off", _)) => AccessLog::Off,
        Some(("", span)) => {
            cx.error(span, "`access_log` must be `stdout`, `stderr`, `off` or a file path");
            AccessLog::Off
        }
        Some((path, _)) => AccessLog::File(cx.resolve(path)),
    };

    let mut binds: Vec<(BindAddr, String, Range<usize>)> = Vec::new();
    let admin = raw.admin.as_ref().and_then(|admin| {
        let Some(bind) = &admin.get_ref().bind else {
            cx.missing("admin.bind", admin.span(), "`admin` needs `bind`, e.g. `127.0.0.1:9901`");
            return None;
        };
        let addr = bind_addr(cx, bind, "admin")?;
        binds.push((addr.clone(), "the admin listener".into(), bind.span()));
        Some(Admin { bind: addr })
    });

    let mut listeners = Vec::new();
    let mut listener_names = Vec::new();
    match &raw.listener {
        Some(table) if !table.get_ref().0.is_empty() => {
            for (name, l) in &table.get_ref().0 {
                check_name(cx, name, "listener");
                listener_names.push(name.get_ref().clone());
                if let Some((l, span)) = listener(cx, name.get_ref(), l) {
                    binds.push((l.bind.clone(), format!("listener `{}`", l.name), span));
                    listeners.push(l);
                }
            }
        }
        Some(table) => cx.error(table.span(), "at least one `[listener.NAME]` is required"),
        None => cx.missing("listener", 0..0, "at least one `[listener.NAME]` is required"),
    }
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    check_duplicate_binds(cx, &binds);

    let mut raw_upstreams: Vec<_> = raw.upstream.iter().flat_map(|u| &u.get_ref().0).collect();
    raw_upstreams.sort_by(|a, b| a.0.get_ref().cmp(b.0.get_ref()));
    let upstream_names: Vec<String> = raw_upstreams.iter().map(|(n, _)| n.get_ref().clone()).collect();
    let mut upstreams = Vec::new();
    for (name, u) in raw_upstreams {
        check_name(cx, name, "upstream");
        if let Some(u) = upstream(cx, name.get_ref(), u) {
            upstreams.push(u);
        }
    }

    let forward_proxy = crate::forward_proxy::forward_proxy(cx, raw.forward_proxy.as_ref());
    let fp_listeners: Vec<(&Listener, Range<usize>)> = raw
        .listener
        .iter()
        .flat_map(|t| &t.get_ref().0)
        .filter_map(|(name, l)| {
            let flag = l.get_ref().forward_proxy.as_ref().filter(|f| *f.get_ref())?;
            let listener = listeners.iter().find(|v| &v.name == name.get_ref())?;
            Some((listener, flag.span()))
        })
        .collect();
    let table = raw.forward_proxy.as_ref().map(|t| t.span());
    crate::forward_proxy::listener_warnings(cx, &fp_listeners, &forward_proxy, table);

    let policies = crate::protect::policies(cx, &raw);
    let topic_names = crate::bus::topic_names(&raw);
    let topics = crate::bus::topics(cx, &raw);
    let subscriptions = crate::bus::subscriptions(
        cx,
        &raw,
        &crate::bus::BusNames { topics: &topic_names, upstreams: &upstream_names },
    );
    let names = crate::route::Names {
        listeners: &listener_names,
        upstreams: &upstream_names,
        policies: crate::protect::PolicyNames {
            auth: &policies.auth,
            rate_limits: &policies.rate_limits,
            cors: &policies.cors,
            redis: policies.redis.is_some(),
        },
        topics: &topic_names,
        subscriptions: &crate::bus::subscription_kinds(&raw),
    };
    let routes = crate::route::routes(cx, raw.route.as_deref().unwrap_or_default(), &names);

    if cx.sink.has_errors() {
        return None;
    }
    Some(Config {
        source: source.to_path_buf(),
        data_dir,
        via,
        shutdown_grace,
        access_log,
        admin,
        listeners,
        upstreams,
        routes,
        forward_proxy,
        auth: policies.auth,
        passport: policies.passport,
        rate_limits: policies.rate_limits,
        cors: policies.cors,
        redis: policies.redis,
        cache: policies.cache,
        compression: policies.compression,
        topics,
        subscriptions,
    })
}

/// Names show up in logs, metrics and admin paths: keep them plain.
pub(crate) fn check_name(cx: &mut Ctx<'_, '_>, name: &S<String>, kind: &str) {
    let n = name.get_ref();
    let ok = !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        cx.error(
            name.span(),
            format!("{kind} name `{n}` must be non-empty and use only letters, digits, `-`, `_` and `.`"),
        );
    }
}

/// "`what` `value`; valid values: …" with a "did you mean" when one is close.
pub(crate) fn one_of(what: &str, value: &str, valid: &[&str]) -> String {
    let list: Vec<String> = valid.iter().map(|v| format!("`{v}`")).collect();
    let mut message = format!("{what} `{value}`");
    if let Some(hint) = did_you_mean(value, valid.iter().copied()) {
        message.push_str(&format!("; did you mean `{hint}`?"));
    }
    message.push_str(&format!(" (valid: {})", list.join(", ")));
    message
}

/// RFC 1123 host name (underscores tolerated: service names use them).
pub(crate) fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// RFC 9110 token: method names, header names, the Via pseudonym.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_names() {
        assert!(is_token("GET") && is_token("x-api-key") && is_token("sumun-1.0"));
        assert!(!is_token("") && !is_token("a b") && !is_token("a:b") && !is_token("é"));
        assert!(is_dns_name("a.example.com") && is_dns_name("svc_1.local"));
        assert!(!is_dns_name("-a.com") && !is_dns_name("a..com") && !is_dns_name(""));
    }
}
