//! Driving a check to completion: a runtime per test, a time limit, a readable panic.

use std::future::Future;
use std::time::Duration;

use crate::check::{CheckResult, Failure};

/// The longest a single check may run: `CONFORMANCE_CHECK_TIMEOUT_SECS`, or 300 seconds.
pub fn check_time_limit() -> Duration {
    let secs = std::env::var("CONFORMANCE_CHECK_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Runs a check on a fresh two-worker multi-threaded runtime and returns its outcome.
///
/// A check that outlives [`check_time_limit`] fails instead of hanging the test run.
///
/// # Errors
/// The check's [`Failure`], or one saying the runtime could not start or the check timed out.
pub fn block_on_check<F: Future<Output = CheckResult>>(check: F) -> CheckResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("could not start a tokio runtime: {e}")))?;
    let limit = check_time_limit();
    let outcome = runtime.block_on(async {
        tokio::time::timeout(limit, check)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::new(format!(
                    "the check did not finish within {limit:?}"
                )))
            })
    });
    // Tasks a failed check left blocked must not hold the test thread forever.
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome
}

/// Runs a check and panics with its failure message: what each generated `#[test]` calls.
pub fn run<F: Future<Output = CheckResult>>(name: &str, check: F) {
    if let Err(failure) = block_on_check(check) {
        panic!("conformance check `{name}` failed: {failure}");
    }
}
