//! Tracing spans adapters wrap their operations in when debugging is on.

use tracing::Span;

/// A `DEBUG` span named `storage` with `backend` and `operation` fields, or a
/// disabled span when `enabled` is false (so a store with `debug = false` pays
/// nothing beyond a branch).
///
/// Wrap an async body with [`tracing::Instrument::instrument`]; never hold the
/// span's `Entered` guard across an `.await`.
///
/// # Example
/// ```
/// let span = storage_core::trace::op_span(true, "memory", "get");
/// let _entered = span.enter();
/// ```
pub fn op_span(enabled: bool, backend: &'static str, operation: &'static str) -> Span {
    if enabled {
        tracing::debug_span!("storage", backend, operation)
    } else {
        Span::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_span_is_none() {
        assert!(op_span(false, "memory", "get").is_none());
    }

    #[test]
    fn enabled_span_carries_backend_and_operation() {
        // Without a subscriber the span is disabled, so check its metadata through one.
        let subscriber = tracing_subscriber_stub::Capture::default();
        let fields = subscriber.fields.clone();
        tracing::subscriber::with_default(subscriber, || {
            let span = op_span(true, "memory", "set");
            assert!(!span.is_none());
        });
        let seen = fields.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(seen.contains(&"backend".to_owned()));
        assert!(seen.contains(&"operation".to_owned()));
    }

    /// A minimal subscriber recording the field names of new spans.
    mod tracing_subscriber_stub {
        use std::sync::{Arc, Mutex};

        use tracing::span::{Attributes, Id, Record};
        use tracing::{Event, Metadata, Subscriber};

        #[derive(Default)]
        pub struct Capture {
            pub fields: Arc<Mutex<Vec<String>>>,
        }

        impl Subscriber for Capture {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, span: &Attributes<'_>) -> Id {
                if let Ok(mut f) = self.fields.lock() {
                    f.extend(span.metadata().fields().iter().map(|f| f.name().to_owned()));
                }
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, _: &Event<'_>) {}
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
    }
}
