//! Key validation shared by every adapter.

use crate::error::{ErrorCode, Result, StorageError};

/// The longest key, in bytes, every adapter accepts.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a key against the rules every adapter shares.
///
/// # Behavior
/// - a key is non-empty UTF-8 of at most [`MAX_KEY_LEN`] bytes with no NUL byte;
/// - UTF-8 is guaranteed by `&str`, so only length and NUL are checked here.
///
/// # Errors
/// [`ErrorCode::InvalidKey`], with the offending length or position in the context.
///
/// # Example
/// ```
/// use storage_core::{validate_key, ErrorCode};
/// assert!(validate_key("user:1").is_ok());
/// assert_eq!(validate_key("").unwrap_err().code(), ErrorCode::InvalidKey);
/// assert_eq!(validate_key("a\0b").unwrap_err().code(), ErrorCode::InvalidKey);
/// assert_eq!(validate_key(&"k".repeat(1025)).unwrap_err().code(), ErrorCode::InvalidKey);
/// ```
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StorageError::new(ErrorCode::InvalidKey, "key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StorageError::new(
            ErrorCode::InvalidKey,
            format!("key is {} bytes, the limit is {MAX_KEY_LEN}", key.len()),
        ));
    }
    if let Some(pos) = key.bytes().position(|b| b == 0) {
        return Err(
            StorageError::new(ErrorCode::InvalidKey, "key contains a nul byte")
                .with_context("position", pos),
        );
    }
    Ok(())
}

/// Validates every key of a slice, failing on the first bad one.
///
/// # Errors
/// [`ErrorCode::InvalidKey`] naming the index of the bad key.
pub fn validate_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<()> {
    for (i, key) in keys.into_iter().enumerate() {
        validate_key(key).map_err(|e| e.with_context("index", i))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_key_is_accepted_and_one_more_byte_is_not() {
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        // 1024 bytes made of multi-byte characters are still fine.
        assert!(validate_key(&"é".repeat(MAX_KEY_LEN / 2)).is_ok());
    }

    #[test]
    fn validate_keys_names_the_index() {
        let err = validate_keys(["a", "", "b"]).unwrap_err();
        assert_eq!(err.context_value("index"), Some("1"));
    }
}
