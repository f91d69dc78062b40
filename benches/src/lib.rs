//! Benchmarks live in `*.rs` beside this package manifest; see BENCHMARKS.md.
