//! Maps a dotted key path back to its line in the source text, so that validation errors
//! (found after parsing, when spans are gone) still point at a line.

use toml_edit::{ImDocument, Item};

/// 1-based line of byte offset `at`.
pub fn line_at(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line of the deepest part of `path` that exists in `text`.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let doc = ImDocument::parse(text).ok()?;
    let mut item: &Item = doc.as_item();
    let mut best = None;
    for seg in path.split('.') {
        let Some(table) = item.as_table_like() else {
            break;
        };
        let Some((key, next)) = table.get_key_value(seg) else {
            break;
        };
        if let Some(s) = key.span().or_else(|| next.span()) {
            best = Some(line_at(text, s.start));
        }
        item = next;
    }
    best
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_lines() {
        let t = "\n[server]\nlisten = \"x\"\n\n[models.\"a-b\"]\nprovider = \"p\"\n";
        assert_eq!(super::line_of(t, "server.listen"), Some(3));
        assert_eq!(super::line_of(t, "models.a-b"), Some(5));
        assert_eq!(super::line_of(t, "models.a-b.provider"), Some(6));
    }
}
