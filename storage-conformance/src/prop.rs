//! Running proptest from inside an async check: case counts, regression files, failures.

use std::fmt::Debug;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};

use crate::check::{CheckResult, Failure};

/// Where a property check persists the seeds of failing cases.
///
/// The suite macros point it at `proptest-regressions/<suite>-<check>.txt` in the crate that
/// runs the suite, so an adapter's regressions are committed beside its tests and replayed
/// first on every run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Regressions(Option<&'static str>);

impl Regressions {
    /// Persist to (and replay from) this file.
    pub const fn file(path: &'static str) -> Self {
        Self(Some(path))
    }

    /// Do not persist (for one-off runs).
    pub const fn none() -> Self {
        Self(None)
    }
}

/// Property cases per check: `PROPTEST_CASES`, or 32 so the workspace's tests stay fast.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// Runs `test` on `cases()` values of `strategy`, shrinking a failure to a minimal input.
///
/// `test` runs synchronously; async checks call this inside `block_in_place` and drive their
/// store with `Handle::block_on`.
///
/// # Errors
/// A [`Failure`] with the minimal failing input and its reason.
pub fn run<S>(
    strategy: &S,
    regressions: Regressions,
    test: impl Fn(S::Value) -> CheckResult,
) -> CheckResult
where
    S: Strategy,
    S::Value: Debug,
{
    let persistence: Option<Box<dyn proptest::test_runner::FailurePersistence>> =
        match regressions.0 {
            Some(path) => Some(Box::new(FileFailurePersistence::Direct(path))),
            None => None,
        };
    let config = Config {
        cases: cases(),
        failure_persistence: persistence,
        // Shrinking replays whole sequences against a real store; bound the time it takes.
        max_shrink_iters: 512,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    match runner.run(strategy, |value| {
        test(value).map_err(|f| TestCaseError::fail(f.to_string()))
    }) {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, value)) => {
            let mut input = format!("{value:?}");
            if input.len() > 2000 {
                let mut cut = 2000;
                while !input.is_char_boundary(cut) {
                    cut -= 1;
                }
                input.truncate(cut);
                input.push_str(" …");
            }
            Err(Failure::new(format!(
                "property failed: {reason}\nminimal failing input: {input}"
            )))
        }
        Err(TestError::Abort(reason)) => Err(Failure::new(format!("property aborted: {reason}"))),
    }
}

/// Runs a property whose body is async, from an async check on a multi-threaded runtime.
///
/// # Errors
/// As [`run`].
pub fn run_async<S, F, Fut>(strategy: &S, regressions: Regressions, test: F) -> CheckResult
where
    S: Strategy,
    S::Value: Debug,
    F: Fn(S::Value) -> Fut,
    Fut: std::future::Future<Output = CheckResult>,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| run(strategy, regressions, |v| handle.block_on(test(v))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn failures_are_shrunk_to_a_minimal_input() {
        let err = run(&(0u32..1000), Regressions::none(), |n| {
            if n >= 10 {
                Err(Failure::new("too big"))
            } else {
                Ok(())
            }
        });
        let msg = err.err().map(|f| f.to_string()).unwrap_or_default();
        assert!(msg.contains("minimal failing input: 10"), "{msg}");
    }

    #[test]
    fn passing_properties_pass() {
        assert!(run(&any::<u8>(), Regressions::none(), |_| Ok(())).is_ok());
    }
}
