//! A builder that reads well in Rust: `field("age").gt(30)`.

/// A field reference that builds conditions.
#[derive(Debug, Clone)]
pub struct FieldRef {
    path: String,
}

/// Starts a condition on a dotted field path.
pub fn field(path: impl Into<String>) -> FieldRef {
    FieldRef { path: path.into() }
}
