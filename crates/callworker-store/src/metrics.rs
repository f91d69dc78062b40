//! Metrics the store exports itself (names in base units, counters end in `_total`). The
//! worker's Prometheus recorder serves them at `/metrics` with its own.

/// Connections to Redis rebuilt after timeouts in a row (`redis_store::reconnect`).
pub const STORE_RECONNECTS: &str = "callworker_store_reconnects_total";
/// Webhook events a call's outbox had no room for (`webhooks.call_events_max`; the end's
/// events are always kept).
pub const WEBHOOK_EVENTS_DROPPED: &str = "callworker_webhook_events_dropped_total";
