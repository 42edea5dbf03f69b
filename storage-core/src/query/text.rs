//! Word splitting shared by the `text` operator and full-text indexes.

/// The words of `text`: maximal runs of Unicode alphanumeric characters, lowercased.
///
/// This is the tokenisation of [`crate::Operator::Text`]; a full-text index that wants
/// to agree with the reference evaluator splits text the same way.
///
/// # Example
/// ```
/// use storage_core::query::words;
/// assert_eq!(words("Hello, WORLD! Ünïcode-42"), ["hello", "world", "ünïcode", "42"]);
/// ```
pub fn words(text: &str) -> Vec<String> {
    raw_words(text).map(str::to_lowercase).collect()
}

/// The words of `text` as slices, not lowercased.
pub(crate) fn raw_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Whether a raw word, lowercased, equals `lower` (already lowercase), without allocating.
pub(crate) fn word_eq(raw: &str, lower: &str) -> bool {
    raw.chars().flat_map(char::to_lowercase).eq(lower.chars())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_alphanumeric_runs_lowercased() {
        assert_eq!(words("  "), Vec::<String>::new());
        assert_eq!(
            words("e-mail a_b ÄÖ x2"),
            ["e", "mail", "a", "b", "äö", "x2"]
        );
        assert!(word_eq("ÄÖ", "äö"));
        assert!(!word_eq("ÄÖx", "äö"));
    }
}
