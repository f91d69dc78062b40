//! criterion benchmarks live in `*.rs` beside this package manifest (`cargo bench -p
//! callworker-benches`); this library is empty so the package has a target to hang them on.
