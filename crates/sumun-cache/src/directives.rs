//! Cache directive lists: `Cache-Control`, `CDN-Cache-Control` (RFC 9213) and
//! `Surrogate-Control` (Edge Architecture 1.0), parsed with quoted strings honoured, names
//! case-insensitive, and conflicting duplicates remembered (RFC 9111 §4.2.1 lets a cache
//! treat them as stale, which is what we do).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// RFC 9111 §1.2.2: delta-seconds too large to represent are treated as 2^31.
pub const DELTA_MAX: u64 = 2_147_483_648;

/// One directive: lower-cased name, unquoted value, and (Surrogate-Control only) the device
/// it targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub value: Option<String>,
    pub target: Option<String>,
}

/// A parsed directive list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    list: Vec<Directive>,
}

/// A delta-seconds directive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    Absent,
    Seconds(u64),
    /// Present but malformed, or given twice with different values.
    Invalid,
}

impl Directives {
    /// Parses every field line of `name` in `headers`.
    pub fn from_headers(headers: &HeaderMap, name: &HeaderName) -> Directives {
        Directives::parse(headers.get_all(name).iter())
    }

    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Directives {
        let mut list = Vec::new();
        for v in values {
            parse_line(v.as_bytes(), &mut list);
        }
        Directives { list }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Directive> {
        self.list.iter()
    }

    pub fn has(&self, name: &str) -> bool {
        self.list.iter().any(|d| d.name == name)
    }

    /// The value of the first occurrence of `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.list.iter().find(|d| d.name == name).and_then(|d| d.value.as_deref())
    }

    /// A delta-seconds value; several occurrences with different values are invalid.
    pub fn delta(&self, name: &str) -> Delta {
        let mut found = Delta::Absent;
        for d in self.list.iter().filter(|d| d.name == name) {
            let this = d.value.as_deref().map_or(Delta::Invalid, parse_delta);
            found = match (found, this) {
                (Delta::Absent, t) => t,
                (a, t) if a == t => a,
                _ => Delta::Invalid,
            };
        }
        found
    }

    /// Keeps the directives that apply to a device called `me`: untargeted ones and those
    /// targeted at `me` (Surrogate-Control). Returns None when none is left.
    pub fn targeted_at(&self, me: &str) -> Option<Directives> {
        let list: Vec<Directive> = self
            .list
            .iter()
            .filter(|d| d.target.as_deref().is_none_or(|t| t.eq_ignore_ascii_case(me)))
            .cloned()
            .collect();
        if list.is_empty() { None } else { Some(Directives { list }) }
    }
}

/// `1*DIGIT`, leading zeros allowed, capped at [`DELTA_MAX`]. A quoted value has already been
/// unquoted by the parser; anything else (sign, decimal point, letters) is invalid.
pub fn parse_delta(s: &str) -> Delta {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Delta::Invalid;
    }
    let trimmed = s.trim_start_matches('0');
    if trimmed.len() > 10 {
        return Delta::Seconds(DELTA_MAX);
    }
    Delta::Seconds(trimmed.parse::<u64>().unwrap_or(0).min(DELTA_MAX))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ows(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
        i += 1;
    }
    i
}

/// Reads a quoted-string starting at the opening quote; returns the unescaped text and the
/// index after the closing quote (or the end, for an unterminated string).
fn quoted(s: &[u8], start: usize) -> (String, usize) {
    let mut out = Vec::new();
    let mut i = start + 1;
    while i < s.len() {
        match s[i] {
            b'"' => return (String::from_utf8_lossy(&out).into_owned(), i + 1),
            b'\\' if i + 1 < s.len() => {
                out.push(s[i + 1]);
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), i)
}

/// Skips to just after the next top-level comma (commas inside quoted strings don't count).
fn skip_to_comma(s: &[u8], mut i: usize) -> usize {
    while i < s.len() {
        match s[i] {
            b',' => return i + 1,
            b'"' => i = quoted(s, i).1,
            _ => i += 1,
        }
    }
    i
}

fn parse_line(s: &[u8], out: &mut Vec<Directive>) {
    let mut i = 0;
    while i < s.len() {
        i = skip_ows(s, i);
        if i >= s.len() {
            break;
        }
        if s[i] == b',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && is_tchar(s[i]) {
            i += 1;
        }
        if i == start {
            // Not a directive name: skip this member.
            i = skip_to_comma(s, i);
            continue;
        }
        let name = String::from_utf8_lossy(&s[start..i]).to_ascii_lowercase();
        let mut value = None;
        let mut target = None;
        let mut valid = true;
        if i < s.len() && s[i] == b'=' {
            i += 1;
            if i < s.len() && s[i] == b'"' {
                let (v, next) = quoted(s, i);
                value = Some(v);
                i = next;
            } else {
                let vs = i;
                // `+` keeps Surrogate-Control's `max-age=60+30` in one value.
                while i < s.len() && is_tchar(s[i]) {
                    i += 1;
                }
                // `max-age= 3600` is not a value: an empty value is invalid.
                value = Some(String::from_utf8_lossy(&s[vs..i]).into_owned());
            }
        }
        let after = skip_ows(s, i);
        if after < s.len() && s[after] == b';' {
            let ts = skip_ows(s, after + 1);
            let mut te = ts;
            while te < s.len() && is_tchar(s[te]) {
                te += 1;
            }
            if te > ts {
                target = Some(String::from_utf8_lossy(&s[ts..te]).into_owned());
            }
            i = te;
        } else {
            i = after;
        }
        let next = skip_ows(s, i);
        if next < s.len() && s[next] != b',' {
            // Trailing garbage (`max-age =3600`, `max-age=3600a"x"`): the member is malformed.
            valid = false;
        }
        i = skip_to_comma(s, next);
        if !valid {
            // A value no parser accepts: the directive counts as present but malformed.
            value = Some(String::from("\0"));
        }
        out.push(Directive { name, value, target });
    }
}

/// The standard fields a cache reads, as names.
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
pub static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Directives {
        Directives::parse([&HeaderValue::from_str(s).unwrap()])
    }

    #[test]
    fn names_are_case_insensitive_and_values_unquoted() {
        let x = d("MaX-AgE=60, nO-StOrE, private=\"set-cookie, foo\"");
        assert_eq!(x.delta("max-age"), Delta::Seconds(60));
        assert!(x.has("no-store"));
        assert_eq!(x.value("private"), Some("set-cookie, foo"));
    }

    #[test]
    fn quoted_strings_hide_directives() {
        assert_eq!(d("extension=\"max-age=3600\", max-age=1").delta("max-age"), Delta::Seconds(1));
        assert_eq!(d("max-age=1, extension=\"max-age=3600\"").delta("max-age"), Delta::Seconds(1));
        assert_eq!(d("max-age=\"1\", extension=\"max-age=3600\"").delta("max-age"), Delta::Seconds(1));
    }

    #[test]
    fn malformed_deltas_are_invalid() {
        for bad in [
            "max-age='3600'",
            "max-age=3600.0",
            "max-age=-1",
            "max-age=a1",
            "max-age=1a",
            "max-age= 3600",
            "max-age =3600",
            "max-age",
        ] {
            assert_eq!(d(bad).delta("max-age"), Delta::Invalid, "{bad}");
        }
        assert_eq!(d("max-age=003600").delta("max-age"), Delta::Seconds(3600));
        assert_eq!(d("max-age=99999999999").delta("max-age"), Delta::Seconds(DELTA_MAX));
        assert_eq!(d("max-age=2147483647").delta("max-age"), Delta::Seconds(2147483647));
    }

    #[test]
    fn conflicting_duplicates_are_invalid_equal_ones_are_not() {
        assert_eq!(d("max-age=1, max-age=1800").delta("max-age"), Delta::Invalid);
        assert_eq!(d("max-age=5, max-age=5").delta("max-age"), Delta::Seconds(5));
        let two = Directives::parse([
            &HeaderValue::from_static("max-age=1"),
            &HeaderValue::from_static("max-age=2"),
        ]);
        assert_eq!(two.delta("max-age"), Delta::Invalid);
    }

    #[test]
    fn surrogate_targets() {
        let x = d("max-age=3600;sumun, no-store;other, max-age=60+30");
        let mine = x.targeted_at("sumun").unwrap();
        assert!(!mine.has("no-store"));
        assert_eq!(mine.value("max-age"), Some("3600"));
        assert!(d("no-store;other").targeted_at("sumun").is_none());
    }

    #[test]
    fn garbage_never_panics() {
        for s in ["", ",,,", "=", "\"", "a=\"unterminated", ";", "a;", "a=;b", "\u{7f}"] {
            let _ = Directives::parse([
                &HeaderValue::from_bytes(s.as_bytes()).unwrap_or(HeaderValue::from_static(""))
            ]);
        }
    }
}
