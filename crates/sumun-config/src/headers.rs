//! Header names and values written in routes: matchers, `respond` headers and the
//! `headers.request` / `headers.response` edits.

use crate::model::*;
use crate::raw::*;
use crate::validate::{Ctx, is_token};

/// Connection-scoped headers a route may not set: they describe one hop, and the proxy
/// manages them itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(crate) fn header_ops(cx: &mut Ctx<'_, '_>, raw: &RawHeaderOps, what: &str, section: &str) -> HeaderOps {
    let mut ops = HeaderOps::default();
    if let Some(remove) = &raw.remove {
        for name in remove.get_ref() {
            if let Some(lower) = header_name(cx, name, &format!("{what}: `{section}.remove`")) {
                ops.remove.push(lower);
            }
        }
    }
    for (key, list, out) in [("set", &raw.set, &mut ops.set), ("add", &raw.add, &mut ops.add)] {
        let Some(list) = list else { continue };
        let ctx = format!("{what}: `{section}.{key}`");
        for (name, value) in &list.get_ref().0 {
            if let Some(entry) = header_edit(cx, name, value, &ctx, out) {
                out.push(entry);
            }
        }
    }
    ops
}

/// A header to write: valid lower-cased name, not hop-by-hop, not already given, clean value.
pub(crate) fn header_edit(
    cx: &mut Ctx<'_, '_>,
    name: &S<String>,
    value: &S<String>,
    what: &str,
    earlier: &[(String, String)],
) -> Option<(String, String)> {
    let lower = header_name(cx, name, what)?;
    if HOP_BY_HOP.contains(&lower.as_str()) || lower == "content-length" {
        cx.error(name.span(), format!("{what}: `{lower}` is managed by the proxy and cannot be set"));
        return None;
    }
    if earlier.iter().any(|(n, _)| *n == lower) {
        cx.error(name.span(), format!("{what}: header `{lower}` is given twice"));
        return None;
    }
    if let Err(e) = check_header_value(value.get_ref()) {
        cx.error(value.span(), format!("{what}: header `{lower}`: {e}"));
        return None;
    }
    Some((lower, value.get_ref().clone()))
}

pub(crate) fn header_name(cx: &mut Ctx<'_, '_>, name: &S<String>, what: &str) -> Option<String> {
    if is_token(name.get_ref()) {
        Some(name.get_ref().to_ascii_lowercase())
    } else {
        cx.error(name.span(), format!("{what}: `{}` is not a valid header name", name.get_ref()));
        None
    }
}

/// What `http::HeaderValue` accepts: no control characters except tab (so no CR, LF, NUL).
pub(crate) fn check_header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        Err("value must not contain CR, LF, NUL or other control characters".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        assert!(check_header_value("text/plain; q=1\tx").is_ok());
        assert!(check_header_value("caf\u{e9}").is_ok());
        for bad in ["a\rb", "a\nb", "a\0b", "a\u{7f}"] {
            assert!(check_header_value(bad).is_err());
        }
    }
}
