//! flashgate — a flash-sale inventory gate.
//!
//! Thousands of buyers hit one SKU in the same second; flashgate hands out exactly the units on
//! sale. Redis decides fast, Postgres decides last (see `docs/DESIGN.md`).
//!
//! Module map:
//!
//! - [`app`] — the application layer: every operation that spans Redis and Postgres (reserve,
//!   commit, release, sale changes, pause/resume, prewarm, resync).
//! - [`domain`] — validated values (`Sku`, `BuyerId`, `Quantity`, `IdempotencyKey`, `Money`, ...).
//! - [`gate`] — the Redis side: one atomic Lua script per decision, the key schema.
//! - [`store`] — the Postgres side: the authoritative inventory and reservations.
//! - [`settler`] — carries every decision from the Redis streams into Postgres, exactly once.
//! - [`sweeper`] — expires holds past their deadline.
//! - [`http`] — the axum API: routes, extractors, and the one place errors become responses.
//! - [`events`] — events out: the outbox's event kinds, the relays to RabbitMQ and webhooks, the
//!   AsyncAPI document.
//! - [`pulse`] — per-SKU outcomes and latencies, for Prometheus and the operator's console.
//! - [`audit`] — checks the seven invariants of docs/DESIGN.md §7 against both stores.
//! - [`auth`] — buyer tokens (JWT) and the admin token.
//! - [`cli`] — the `flashgate` command line.
//! - [`config`] — configuration from flags and environment variables.
//! - [`startup`] — wiring it together and running until shutdown.

pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod events;
pub mod gate;
pub mod http;
pub mod pulse;
pub mod settler;
pub mod startup;
pub mod store;
pub mod sweeper;
pub mod telemetry;
