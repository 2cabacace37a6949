//! Problems found in a config file, located by file, line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a [`Diagnostic`] is: errors refuse the config, warnings only inform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem in a config file. Lines and columns are 1-based; columns count characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {severity}: {message}")]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Maps byte offsets of the source text to 1-based line:column.
pub(crate) struct LineIndex<'a> {
    source: &'a str,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(source: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { source, starts }
    }

    /// 1-based (line, column) of a byte offset; the column counts characters, not bytes.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self.source.get(start..offset).map_or(offset - start, |s| s.chars().count()) + 1;
        (line, col)
    }
}

/// Collects diagnostics for one file.
pub(crate) struct Sink<'a> {
    pub(crate) file: &'a Path,
    pub(crate) lines: LineIndex<'a>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a Path, source: &'a str) -> Self {
        Sink { file, lines: LineIndex::new(source), diagnostics: Vec::new() }
    }

    pub(crate) fn at(&self, severity: Severity, offset: usize, message: String) -> Diagnostic {
        let (line, col) = self.lines.position(offset);
        Diagnostic { severity, file: self.file.to_path_buf(), line, col, message }
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let d = self.at(Severity::Error, span.start, message.into());
        self.diagnostics.push(d);
    }

    pub(crate) fn warning(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let d = self.at(Severity::Warning, span.start, message.into());
        self.diagnostics.push(d);
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// Every diagnostic in file order.
    pub(crate) fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.diagnostics.sort_by_key(|d| (d.line, d.col, d.severity));
        self.diagnostics
    }
}

/// The candidate closest to `word`, when it is close enough to be a likely typo: a high
/// Jaro-Winkler similarity (shared prefix, e.g. `path_prefx`) or, for words of three or more
/// characters, few edits (transpositions count as one, e.g. `wbe` → `web`).
pub(crate) fn did_you_mean<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let len = word.chars().count();
    candidates
        .into_iter()
        .map(|c| {
            let edits = strsim::damerau_levenshtein(word, c);
            (edits, strsim::jaro_winkler(word, c), c)
        })
        .filter(|&(edits, similarity, _)| similarity >= 0.8 || (len >= 3 && edits <= (len / 3).max(1)))
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_chars() {
        let idx = LineIndex::new("ab\n\u{e9}x = 1\n");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(1), (1, 2));
        assert_eq!(idx.position(3), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(idx.position(5), (2, 2));
        assert_eq!(idx.position(999), (3, 1));
    }

    #[test]
    fn display_format() {
        let d = Diagnostic {
            severity: Severity::Warning,
            file: PathBuf::from("a/sumun.toml"),
            line: 3,
            col: 7,
            message: "careful".into(),
        };
        assert_eq!(d.to_string(), "a/sumun.toml:3:7: warning: careful");
    }

    #[test]
    fn hints_only_close_words() {
        assert_eq!(did_you_mean("ednpoints", ["endpoints", "balance"]), Some("endpoints"));
        assert_eq!(did_you_mean("zzz", ["endpoints", "balance"]), None);
        assert_eq!(did_you_mean("wbe", ["web", "api"]), Some("web"));
        assert_eq!(did_you_mean("b", ["a"]), None);
        assert_eq!(did_you_mean("http2", ["http1", "h2c"]), Some("http1"));
    }
}
