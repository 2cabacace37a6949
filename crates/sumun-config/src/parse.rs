//! TOML text → raw model, collecting every unknown key and type error.
//!
//! serde stops at the first error, so the document is parsed once into a spanned tree
//! (`toml::de::DeTable`), and each error is recorded and its key (or array element) removed
//! from the tree before deserializing again. Spans stay those of the original text.

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};

use crate::diagnostics::{Sink, did_you_mean};
use crate::raw::RawConfig;

/// Enough for any hand-written file; a bound so a pathological one cannot spin.
const MAX_ROUNDS: usize = 100;

pub(crate) struct Parsed {
    pub raw: RawConfig,
    /// Paths (`listener.web.bind`, `route[0].to`) removed because of an error, so validation
    /// does not report them a second time as missing.
    pub removed: HashSet<String>,
}

/// None when no raw model could be built (syntax error or an error that cannot be located);
/// the reasons are in `sink`.
pub(crate) fn parse(source: &str, sink: &mut Sink<'_>) -> Option<Parsed> {
    let mut root = match DeTable::parse(source) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut message = syntax_message(e.message());
            // toml says "duplicate key" without naming it; the span does.
            if let Some(key) = source.get(span.clone()).filter(|k| !k.is_empty()) {
                if message.ends_with("duplicate key") {
                    message.push_str(&format!(" `{key}`"));
                }
            }
            sink.error(&span, message);
            return None;
        }
    };
    let mut removed = HashSet::new();
    for _ in 0..MAX_ROUNDS {
        let error = match RawConfig::deserialize(Deserializer::from(root.clone())) {
            Ok(raw) => return Some(Parsed { raw, removed }),
            Err(e) => e,
        };
        let Some(span) = error.span() else {
            sink.error(&(0..0), clean_message(error.message(), ""));
            return None;
        };
        let Some(path) = remove_at(root.get_mut(), &span) else {
            sink.error(&span, clean_message(error.message(), ""));
            return None;
        };
        let (parent, _) = path.split_at(path.len().saturating_sub(1));
        let message = match unknown_field(error.message()) {
            Some((key, expected)) => unknown_key_message(key, &expected, &render(parent)),
            None => clean_message(error.message(), &render(&path)),
        };
        sink.error(&span, message);
        removed.insert(render(&path));
    }
    sink.error(&(0..0), "too many errors; fix the ones above and check again");
    None
}

fn syntax_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or("invalid TOML").trim();
    format!("TOML syntax error: {first}")
}

enum Segment {
    Key(String),
    Index(usize),
}

/// `listener.web.limits`, `route[2].match`.
fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes the key or array element whose key or value is at `span`; returns its path.
fn remove_at(table: &mut DeTable<'_>, span: &Range<usize>) -> Option<Vec<Segment>> {
    let hit = table
        .iter()
        .find(|(k, v)| k.span() == *span || v.span() == *span)
        .map(|(k, _)| k.get_ref().to_string());
    if let Some(key) = hit {
        table.remove(key.as_str());
        return Some(vec![Segment::Key(key)]);
    }
    for (key, value) in table.iter_mut() {
        if let Some(mut path) = remove_in_value(value.get_mut(), span) {
            path.insert(0, Segment::Key(key.get_ref().to_string()));
            return Some(path);
        }
    }
    None
}

fn remove_in_value(value: &mut DeValue<'_>, span: &Range<usize>) -> Option<Vec<Segment>> {
    match value {
        DeValue::Table(table) => remove_at(table, span),
        DeValue::Array(array) => {
            if let Some(i) = array.iter().position(|item| item.span() == *span) {
                let kept: DeArray<'_> =
                    array.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, item)| item.clone()).collect();
                *array = kept;
                return Some(vec![Segment::Index(i)]);
            }
            for (i, item) in array.iter_mut().enumerate() {
                if let Some(mut path) = remove_in_value(item.get_mut(), span) {
                    path.insert(0, Segment::Index(i));
                    return Some(path);
                }
            }
            None
        }
        _ => None,
    }
}

/// Splits serde's "unknown field `k`, expected one of `a`, `b`" into `k` and `[a, b]`.
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest.split('`').skip(1).step_by(2).collect();
    Some((key, expected))
}

fn unknown_key_message(key: &str, expected: &[&str], table: &str) -> String {
    let mut message = format!("unknown key `{key}`");
    if !table.is_empty() {
        message.push_str(&format!(" in `{table}`"));
    }
    if let Some(hint) = did_you_mean(key, expected.iter().copied()) {
        message.push_str(&format!("; did you mean `{hint}`?"));
    } else if expected.is_empty() {
        message.push_str("; this table takes no keys");
    } else {
        let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
        message.push_str(&format!("; expected one of {}", list.join(", ")));
    }
    message
}

/// serde's wording with Rust's vocabulary replaced by TOML's, prefixed by the key's path.
fn clean_message(message: &str, path: &str) -> String {
    let mut text = message.lines().next().unwrap_or("invalid value").to_string();
    for (rust, toml) in [
        ("invalid type: map", "invalid type: table"),
        ("invalid type: sequence", "invalid type: array"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("floating point", "float"),
    ] {
        text = text.replace(rust, toml);
    }
    for int in ["u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize"] {
        if let Some(stripped) = text.strip_suffix(&format!("expected {int}")) {
            text = format!("{stripped}expected an integer");
        }
    }
    if path == "route" && text.ends_with("expected an array") {
        text.push_str("; write each route as a `[[route]]` table");
    }
    if path.is_empty() { text } else { format!("`{path}`: {text}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_unknown_field_messages() {
        let (k, e) = unknown_field("unknown field `zz`, expected one of `x`, `y`, `req`").unwrap();
        assert_eq!((k, e), ("zz", vec!["x", "y", "req"]));
        let (k, e) = unknown_field("unknown field `zz`, expected `x`").unwrap();
        assert_eq!((k, e), ("zz", vec!["x"]));
        let (k, e) = unknown_field("unknown field `zz`, there are no fields").unwrap();
        assert_eq!((k, e), ("zz", vec![]));
        assert!(unknown_field("invalid type: integer `5`, expected a string").is_none());
    }

    #[test]
    fn messages_use_toml_words() {
        assert_eq!(
            clean_message("invalid type: map, expected a sequence", "route"),
            "`route`: invalid type: table, expected an array; write each route as a `[[route]]` table"
        );
        assert_eq!(
            clean_message("invalid type: floating point `1.5`, expected i64", "x.y"),
            "`x.y`: invalid type: float `1.5`, expected an integer"
        );
    }
}
