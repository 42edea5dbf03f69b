//! What a check returns, and the assertion macros checks use.

use std::fmt;

use storage_core::{ErrorCode, StorageError};

/// Why a check failed: one readable message naming the broken property.
#[derive(Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
}

impl Failure {
    /// A failure with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what the check was doing.
    #[must_use]
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<StorageError> for Failure {
    fn from(err: StorageError) -> Self {
        Self::new(format!("unexpected storage error: {err}"))
    }
}

/// The outcome of one check: `Ok(())` when the property holds.
pub type CheckResult = Result<(), Failure>;

/// Adds what the check was doing to an error on its way up.
pub trait Context<T> {
    /// Maps the error into a [`Failure`] prefixed with `what`.
    fn ctx(self, what: impl fmt::Display) -> Result<T, Failure>;
}

impl<T> Context<T> for Result<T, StorageError> {
    fn ctx(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| Failure::from(e).context(what))
    }
}

impl<T> Context<T> for Result<T, Failure> {
    fn ctx(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| e.context(what))
    }
}

/// Checks that `result` failed with one of `codes`.
///
/// # Errors
/// A [`Failure`] when it succeeded or failed with another code.
pub fn expect_error<T: fmt::Debug>(
    result: Result<T, StorageError>,
    codes: &[ErrorCode],
    what: impl fmt::Display,
) -> CheckResult {
    match result {
        Ok(v) => Err(Failure::new(format!(
            "{what}: expected an error with code {}, got Ok({v:?})",
            codes_list(codes)
        ))),
        Err(e) if codes.contains(&e.code()) => Ok(()),
        Err(e) => Err(Failure::new(format!(
            "{what}: expected an error with code {}, got {e}",
            codes_list(codes)
        ))),
    }
}

fn codes_list(codes: &[ErrorCode]) -> String {
    codes
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Fails the check with a formatted message (and the source line) unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return ::std::result::Result::Err($crate::Failure::new(format!(
                "{} (at {}:{})",
                format_args!($($arg)+),
                file!(),
                line!()
            )));
        }
    };
}

/// Fails the check unless both sides are equal, showing both.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (left, right) => {
                if !(*left == *right) {
                    return ::std::result::Result::Err($crate::Failure::new(format!(
                        "{}: got {:?}, expected {:?} (at {}:{})",
                        format_args!($($arg)+),
                        left,
                        right,
                        file!(),
                        line!()
                    )));
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails_when_false(x: u32) -> CheckResult {
        ensure!(x > 1, "x is {x}");
        ensure_eq!(x, 2, "x");
        Ok(())
    }

    #[test]
    fn ensure_macros_report_the_property() -> Result<(), String> {
        let err = fails_when_false(0).err().ok_or("0 should fail")?;
        assert!(err.message().starts_with("x is 0"), "{err}");
        let err = fails_when_false(3).err().ok_or("3 should fail")?;
        assert!(err.message().contains("got 3, expected 2"), "{err}");
        assert!(fails_when_false(2).is_ok());
        Ok(())
    }

    #[test]
    fn expect_error_accepts_only_listed_codes() {
        let bad: Result<(), StorageError> = Err(StorageError::new(ErrorCode::InvalidKey, "x"));
        assert!(expect_error(bad, &[ErrorCode::InvalidKey], "get").is_ok());
        let bad: Result<(), StorageError> = Err(StorageError::new(ErrorCode::Io, "x"));
        assert!(expect_error(bad, &[ErrorCode::InvalidKey], "get").is_err());
        assert!(expect_error(Ok::<u8, StorageError>(1), &[ErrorCode::InvalidKey], "get").is_err());
    }
}
