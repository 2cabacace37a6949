//! `Accept-Encoding` (RFC 9110 §12.5.3): the coding with the highest q-value among ours,
//! ties going to the route's order. Parsing allocates nothing; anything malformed means no
//! compression, never an error.

use http::HeaderMap;
use http::header::ACCEPT_ENCODING;
use sumun_config::Encoding;

/// q-values in thousandths.
type Q = u16;

const Q_MAX: Q = 1000;

/// What the header says about the codings that matter to us.
#[derive(Default)]
struct Prefs {
    gzip: Option<Q>,
    br: Option<Q>,
    zstd: Option<Q>,
    identity: Option<Q>,
    star: Option<Q>,
}

impl Prefs {
    fn slot(&mut self, coding: &str) -> Option<&mut Option<Q>> {
        Some(if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            &mut self.gzip
        } else if coding.eq_ignore_ascii_case("br") {
            &mut self.br
        } else if coding.eq_ignore_ascii_case("zstd") {
            &mut self.zstd
        } else if coding.eq_ignore_ascii_case("identity") {
            &mut self.identity
        } else if coding == "*" {
            &mut self.star
        } else {
            // Codings we do not produce are ignored.
            return None;
        })
    }

    /// A coding listed by name gets its own q; otherwise `*` speaks for it; otherwise it is
    /// not acceptable.
    fn q(&self, e: Encoding) -> Q {
        let own = match e {
            Encoding::Gzip => self.gzip,
            Encoding::Brotli => self.br,
            Encoding::Zstd => self.zstd,
        };
        own.or(self.star).unwrap_or(0)
    }
}

/// The encoding to use, from `order` (the route's preference, first wins ties).
pub(super) fn choose(headers: &HeaderMap, order: &[Encoding]) -> Option<Encoding> {
    let mut fields = headers.get_all(ACCEPT_ENCODING).iter().peekable();
    // No field: the client said nothing, and clients that decode always say so.
    fields.peek()?;
    let mut prefs = Prefs::default();
    for field in fields {
        let text = field.to_str().ok()?;
        for element in text.split(',') {
            let element = trim_ows(element);
            // Empty list elements are allowed (RFC 9110 §5.6.1).
            if element.is_empty() {
                continue;
            }
            let (coding, q) = parse_element(element)?;
            if let Some(slot) = prefs.slot(coding) {
                // The first mention of a coding counts.
                slot.get_or_insert(q);
            }
        }
    }
    let mut best: Option<(Encoding, Q)> = None;
    for &e in order {
        let q = prefs.q(e);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    let (e, q) = best?;
    // A client that explicitly ranks identity above every coding of ours gets identity.
    if prefs.identity.is_some_and(|i| i > q) {
        return None;
    }
    Some(e)
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// `coding [ OWS ";" OWS "q=" qvalue ]`; any other parameter makes the element malformed.
fn parse_element(element: &str) -> Option<(&str, Q)> {
    let mut parts = element.split(';');
    let coding = trim_ows(parts.next()?);
    if !is_token(coding) {
        return None;
    }
    let mut q = None;
    for param in parts {
        let (name, value) = trim_ows(param).split_once('=')?;
        if !trim_ows(name).eq_ignore_ascii_case("q") || q.is_some() {
            return None;
        }
        q = Some(parse_qvalue(trim_ows(value))?);
    }
    Some((coding, q.unwrap_or(Q_MAX)))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`
fn parse_qvalue(s: &str) -> Option<Q> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: Q = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += Q::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(Q_MAX),
        _ => None,
    }
}

/// RFC 9110 §5.6.2 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^')
                || matches!(b, b'_' | b'`' | b'|' | b'~')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const DEFAULT: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    fn pick(values: &[&str], order: &[Encoding]) -> Option<Encoding> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        choose(&h, order)
    }

    fn one(v: &str) -> Option<Encoding> {
        pick(&[v], &DEFAULT)
    }

    #[test]
    fn browsers_and_clients() {
        // Chrome 123+, Firefox 126+.
        assert_eq!(one("gzip, deflate, br, zstd"), Some(Encoding::Zstd));
        // Safari.
        assert_eq!(one("gzip, deflate, br"), Some(Encoding::Brotli));
        // python requests without brotli.
        assert_eq!(one("gzip, deflate"), Some(Encoding::Gzip));
        assert_eq!(one("deflate"), None);
        assert_eq!(pick(&[], &DEFAULT), None, "no header: no compression");
        assert_eq!(one(""), None, "empty header: identity only");
    }

    #[test]
    fn q_values_rank_and_exclude() {
        assert_eq!(one("zstd;q=0.5, br;q=0.8, gzip;q=0.9"), Some(Encoding::Gzip));
        assert_eq!(one("zstd;q=0, br;q=0.001"), Some(Encoding::Brotli));
        assert_eq!(one("gzip;q=0"), None);
        assert_eq!(one("GZIP;Q=1.000"), Some(Encoding::Gzip), "names and q are case-insensitive");
        assert_eq!(one("gzip ; q=0.5 , br"), Some(Encoding::Brotli), "OWS around ';'");
        assert_eq!(one("x-gzip"), Some(Encoding::Gzip));
        // The first mention of a coding wins.
        assert_eq!(one("br;q=0, br;q=1, gzip;q=0.1"), Some(Encoding::Gzip));
    }

    #[test]
    fn wildcard_and_identity() {
        assert_eq!(one("*"), Some(Encoding::Zstd));
        assert_eq!(one("*;q=0.5, zstd;q=0"), Some(Encoding::Brotli), "named q=0 beats *");
        assert_eq!(one("*;q=0"), None);
        assert_eq!(one("gzip;q=0.5, *;q=0.4"), Some(Encoding::Gzip));
        assert_eq!(one("identity"), None);
        assert_eq!(one("identity;q=1, gzip;q=0.5"), None, "identity ranked higher");
        assert_eq!(one("identity;q=0.5, gzip"), Some(Encoding::Gzip));
        assert_eq!(one("identity, gzip"), Some(Encoding::Gzip), "a tie with identity compresses");
    }

    #[test]
    fn ties_follow_the_configured_order() {
        assert_eq!(one("gzip, br, zstd"), Some(Encoding::Zstd));
        assert_eq!(pick(&["gzip, br, zstd"], &[Encoding::Gzip, Encoding::Brotli]), Some(Encoding::Gzip));
        assert_eq!(pick(&["zstd"], &[Encoding::Gzip, Encoding::Brotli]), None, "not enabled on the route");
        assert_eq!(
            pick(&["gzip;q=0.5, br;q=0.5"], &[Encoding::Gzip, Encoding::Brotli]),
            Some(Encoding::Gzip)
        );
        assert_eq!(pick(&["gzip"], &[]), None);
    }

    #[test]
    fn several_fields_are_one_list() {
        assert_eq!(pick(&["gzip;q=0.5", "br"], &DEFAULT), Some(Encoding::Brotli));
        assert_eq!(pick(&["gzip", "br;q=nope"], &DEFAULT), None, "one bad field spoils the header");
    }

    #[test]
    fn unknown_codings_are_ignored() {
        assert_eq!(one("compress, snappy;q=1, gzip;q=0.3"), Some(Encoding::Gzip));
        assert_eq!(one("compress, deflate"), None);
        assert_eq!(one(",, gzip ,"), Some(Encoding::Gzip), "empty elements");
    }

    #[test]
    fn malformed_means_no_compression() {
        for bad in [
            "gzip;q=2",
            "gzip;q=1.5",
            "gzip;q=0.1234",
            "gzip;q=",
            "gzip;q=.5",
            "gzip;q=-1",
            "gzip;q=0.5;q=0.6",
            "gzip;level=9",
            "gzip;q",
            "gz ip",
            "gzip, \"br\"",
            "gzip;",
            "br, ;q=1",
        ] {
            assert_eq!(one(bad), None, "{bad:?}");
        }
        // Bytes outside visible ASCII.
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_bytes(b"gzip, br\xff").unwrap());
        assert_eq!(choose(&h, &DEFAULT), None);
    }

    #[test]
    fn qvalue_grammar() {
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("0."), Some(0));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0.05"), Some(50));
        assert_eq!(parse_qvalue("0.999"), Some(999));
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.0"), Some(1000));
        assert_eq!(parse_qvalue("1.001"), None);
        assert_eq!(parse_qvalue("01"), None);
        assert_eq!(parse_qvalue("0.5x"), None);
    }
}
