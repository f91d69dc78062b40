//! Metrics the store exports itself (names in base units, counters end in `_total`). The
//! worker's Prometheus recorder serves them at `/metrics` with its own.

/// Connections to Redis rebuilt after timeouts in a row (`redis_store::reconnect`).
pub const STORE_RECONNECTS: &str = "callworker_store_reconnects_total";
