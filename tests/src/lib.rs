//! End-to-end tests live in `tests/*.rs` next to this package (see ARCHITECTURE.md); this
//! library holds the support code that is worth unit-testing on its own.

pub mod history;
