//! The non-standard header names the gate reads or writes on every request, built once: a
//! lookup by `&str` parses, validates and lower-cases the name each time (~400 instructions,
//! five times per reserve), a lookup by `HeaderName` only hashes it.

use axum::http::HeaderName;

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The header a reserve shows its waiting-room ticket in.
pub static QUEUE_TICKET: HeaderName = HeaderName::from_static("queue-ticket");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
