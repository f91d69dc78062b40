//! End-to-end tests live in `tests/*.rs` next to this package (see ARCHITECTURE.md).
