//! The HTTP API against real Redis and real Postgres.
//!
//! Each test gets a fresh database (`#[sqlx::test]`) and its own Redis key namespace, so tests
//! run in parallel and leave nothing behind.

mod broker;
mod helpers;
mod lifecycle;
mod proxy;
mod repair;

mod edge;
mod first_hour;
mod process;
mod seams;

mod admin;
mod auth;
mod background;
mod cluster;
mod concurrency;
mod console;
mod event_faults;
mod events;
mod faults;
mod hostile;
mod identity_provider;
mod reference;
mod reserve;
mod reserve_batch;
mod settlement;
mod skus;
mod sold_out;
mod unavailable;
mod waiting_room;
