//! Request path normalization, decided once for routing and forwarding alike:
//! - percent-encoded unreserved characters (ALPHA DIGIT `-` `.` `_` `~`) are decoded, other
//!   escapes keep their encoding with upper-case hex;
//! - runs of `/` collapse to one;
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4), never climbing above `/`;
//! - encoded slashes (`%2F`) and backslashes (`%5C`) stay encoded, but a path whose fully
//!   decoded form would contain a dot-segment is refused: `/public%2F..%2Fadmin` never reaches
//!   a backend that decodes it into `/admin`;
//! - `%00`, a raw backslash and malformed escapes are refused.
//!
//! The upstream receives the normalized path, so it sees exactly what the router matched.

use std::borrow::Cow;

/// Why a path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    NulByte,
    Backslash,
    EncodedTraversal,
}

impl PathError {
    pub fn detail(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::BadEscape => "the request path has a malformed percent-escape",
            PathError::NulByte => "the request path contains an encoded NUL",
            PathError::Backslash => "the request path contains a backslash",
            PathError::EncodedTraversal => "the request path hides a dot-segment behind encoded slashes",
        }
    }
}

/// Normalizes `path` (without query). Borrowed when nothing changes, the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let has_escape = bytes.contains(&b'%');
    if !has_escape && !needs_segment_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if has_escape { decode_unreserved(bytes)? } else { path.to_owned() };
    let out = remove_dot_segments(&decoded);
    if has_escape && out.contains('%') && decoded_has_traversal(&out) {
        return Err(PathError::EncodedTraversal);
    }
    Ok(Cow::Owned(out))
}

/// True when the path has `//`, or a `.`/`..` segment.
fn needs_segment_work(b: &[u8]) -> bool {
    memchr::memmem::find(b, b"//").is_some() || memchr::memmem::find(b, b"/.").is_some()
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(b: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&x| hex(x)), b.get(i + 2).and_then(|&x| hex(x)))
            else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            if v == 0 {
                return Err(PathError::NulByte);
            }
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
            }
            i += 3;
        } else {
            // The URI parser already limited the path to visible ASCII.
            out.push(c as char);
            i += 1;
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path, also collapsing empty segments.
fn remove_dot_segments(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/').skip(1) {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

/// Would the path, once a backend decodes `%2F` and `%5C` into separators, have a dot-segment?
fn decoded_has_traversal(path: &str) -> bool {
    let decoded = path.replace("%2F", "/").replace("%5C", "/");
    decoded.split('/').any(|s| s == "." || s == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        assert!(matches!(normalize("/api/v1/users?x").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize("/").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/admin/../public"), "/public");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("//a///b//"), "/a/b/");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/.hidden/x"), "/.hidden/x");
        assert_eq!(n("/a..b/c"), "/a..b/c");
    }

    #[test]
    fn escapes() {
        assert_eq!(n("/%61%62c"), "/abc");
        assert_eq!(n("/%2e%2e/admin"), "/admin");
        assert_eq!(n("/public/%2E%2E/admin"), "/admin");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(n("/a%7Eb"), "/a~b");
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%00b"), Err(PathError::NulByte));
        assert_eq!(normalize("/a\\..\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/public%2F..%2Fadmin"), Err(PathError::EncodedTraversal));
        assert_eq!(normalize("/public%5C..%5Cadmin"), Err(PathError::EncodedTraversal));
        assert_eq!(normalize("/x/%2e%2e%2Fadmin"), Err(PathError::EncodedTraversal));
    }
}
