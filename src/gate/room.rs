//! The waiting room (docs/DESIGN.md §12): taking a place in a sale's line (`lua/take_place.lua`),
//! and the line as each gate caches it to answer polls (`lua/room_state.lua`). The rules that
//! move the line are in `lua/room.lua`; `reserve.lua` checks a ticket against them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Gate, GateError};
use crate::domain::{BuyerId, ClientAddr, Sku, Ticket};

/// How long a gate answers polls from the line it read last: polls cost no Redis call, and a
/// line moves at most this much behind Redis.
pub const LINE_REFRESH: Duration = Duration::from_millis(100);

/// What taking a place answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceOutcome {
    /// The buyer's place; `again` when the buyer had it already (the same ticket).
    Placed {
        ticket: Ticket,
        again: bool,
    },
    Refused(PlaceRefusal),
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceRefusal {
    UnknownSku,
    /// The sale has no waiting room: buyers reserve directly.
    RoomOff,
    /// The sale is closed or past its end.
    SaleNotOpen,
    /// The places already handed out can take everything that is left or may come back.
    SoldOut {
        available: u32,
    },
    /// This client address has its cap of places (`FLASHGATE_PLACES_PER_CLIENT`).
    ClientLimitReached {
        limit: u32,
    },
}

/// One sale's line, as `room_state.lua` read it (see `lua/room.lua` for the fields' rules).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Redis's clock when the line was read, in ms.
    pub read_at_ms: u64,
    pub enabled: bool,
    pub admit_per_second: u32,
    pub admission_window: Duration,
    pub per_buyer_limit: u32,
    /// Whether the sale sells now (open, inside its window, not halted): the line moves only then.
    pub selling: bool,
    pub issued: u64,
    pub frontier: u64,
    pub expired_through: u64,
    /// Admitted places whose window closed without a hold.
    pub expired: u64,
    /// The first place told it cannot be served; every later one is too.
    pub sold_out_from: Option<u64>,
    /// Admitted places that may still reserve.
    pub live: u64,
    pub stock: u64,
    /// Stock plus the units that may come back (live holds × the buyer limit).
    pub left: u64,
    /// When the frontier passed each value: `(ms, frontier)`, oldest first, for every window
    /// still open.
    admits: Vec<(u64, u64)>,
}

/// Where one place stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceStatus {
    Waiting {
        /// Places before this one that are not admitted yet.
        ahead: u64,
        estimated_wait: Duration,
    },
    /// May reserve (once) until `until_ms`.
    Admitted { until_ms: u64 },
    /// Will never be admitted: the places ahead can take everything left.
    SoldOut,
    /// Was admitted and its window closed.
    Expired,
}

impl Line {
    /// Where `position` stands in this line. Only a sold-out verdict Redis recorded is given:
    /// it is final, so nobody told `sold_out` is admitted later.
    pub fn status(&self, position: u64) -> PlaceStatus {
        if self.sold_out_from.is_some_and(|first| position >= first) {
            return PlaceStatus::SoldOut;
        }
        if position <= self.expired_through {
            return PlaceStatus::Expired;
        }
        if position <= self.frontier {
            let admitted_ms = self
                .admits
                .iter()
                .find(|(_, reached)| *reached >= position)
                .map_or(self.read_at_ms, |(at, _)| *at);
            let window = u64::try_from(self.admission_window.as_millis()).unwrap_or(u64::MAX);
            return PlaceStatus::Admitted {
                until_ms: admitted_ms.saturating_add(window),
            };
        }
        let ahead = position - self.frontier - 1;
        PlaceStatus::Waiting {
            ahead,
            estimated_wait: Duration::from_secs_f64(
                (ahead + 1) as f64 / f64::from(self.admit_per_second.max(1)),
            ),
        }
    }

    /// Places waiting to be admitted (not told sold out).
    pub fn waiting(&self) -> u64 {
        let end = self.sold_out_from.map_or(self.issued, |first| {
            first.saturating_sub(1).min(self.issued)
        });
        end.saturating_sub(self.frontier)
    }

    /// Places told they cannot be served.
    pub fn sold_out(&self) -> u64 {
        self.sold_out_from
            .map_or(0, |first| (self.issued + 1).saturating_sub(first))
    }

    /// How long until the stock is gone if every admitted place takes the buyer limit.
    pub fn estimated_sell_out(&self) -> Duration {
        let places = self.stock.div_ceil(u64::from(self.per_buyer_limit.max(1)));
        Duration::from_secs_f64(places as f64 / f64::from(self.admit_per_second.max(1)))
    }

    fn parse(reply: &[String]) -> Result<Option<Self>, GateError> {
        let bad = || GateError::Protocol(format!("room_state.lua answered {reply:?}"));
        match reply.first().map(String::as_str) {
            Some("unknown_sku") => return Ok(None),
            Some("line") if reply.len() >= 15 => {}
            _ => return Err(bad()),
        }
        let n = |i: usize| -> Result<u64, GateError> { reply[i].parse().map_err(|_| bad()) };
        let small = |i: usize| -> Result<u32, GateError> {
            n(i).map(|v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        let admits = reply[15..]
            .iter()
            .map(|entry| {
                let (at, reached) = entry.split_once(':').ok_or_else(bad)?;
                Ok((
                    at.parse().map_err(|_| bad())?,
                    reached.parse().map_err(|_| bad())?,
                ))
            })
            .collect::<Result<_, GateError>>()?;
        let sold_out_from = n(11)?;
        Ok(Some(Self {
            read_at_ms: n(1)?,
            enabled: reply[2] == "1",
            admit_per_second: small(3)?,
            admission_window: Duration::from_secs(n(4)?),
            per_buyer_limit: small(5)?,
            selling: reply[6] == "1",
            issued: n(7)?,
            frontier: n(8)?,
            expired_through: n(9)?,
            expired: n(10)?,
            sold_out_from: (sold_out_from > 0).then_some(sold_out_from),
            live: n(12)?,
            stock: n(13)?,
            left: n(14)?,
            admits,
        }))
    }
}

/// The lines this gate read last, per SKU.
#[derive(Debug, Default)]
pub(super) struct LineCache {
    slots: Mutex<HashMap<Sku, Arc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    line: Mutex<Option<(Instant, Arc<Line>)>>,
    /// One read of the line at a time: the others wait for it and use its answer.
    reading: tokio::sync::Mutex<()>,
}

impl Slot {
    fn fresh(&self) -> Option<Arc<Line>> {
        let line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        line.as_ref()
            .filter(|(read, _)| read.elapsed() < LINE_REFRESH)
            .map(|(_, line)| line.clone())
    }
}

impl LineCache {
    fn slot(&self, sku: &Sku) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(sku.clone()).or_default().clone()
    }

    fn forget(&self, sku: &Sku) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sku);
    }
}

impl Gate {
    /// Hands `buyer` a place in the sale's line (the same one again if it has one).
    #[tracing::instrument(skip_all, fields(sku = %sku, buyer = %buyer))]
    pub async fn take_place(
        &self,
        sku: &Sku,
        buyer: &BuyerId,
        client: Option<ClientAddr>,
    ) -> Result<PlaceOutcome, GateError> {
        let keys = self.namespace().sku(sku);
        // Places are capped per IPv4 address or IPv6 /64: the narrowest tier.
        let client = client.map(|client| client.to_string()).unwrap_or_default();
        let mut conn = self.connection().await?;
        let reply: Vec<String> = self
            .inner
            .scripts
            .take_place
            .key(line_keys(&keys))
            .key(keys.room_place(buyer))
            .key(keys.room_client(&client))
            .arg(self.inner.settings.waiting_room.places_per_client)
            .arg(&client)
            .invoke_async(&mut conn)
            .await?;
        let bad = || GateError::Protocol(format!("take_place.lua answered {reply:?}"));
        let number = |raw: &String| raw.parse::<u64>().map_err(|_| bad());
        match reply.as_slice() {
            [tag, position, issued_ms, again, _frontier] if tag == "placed" => {
                let again = again == "again";
                if !again {
                    metrics::counter!("flashgate_room_places_total", "sku" => sku.to_string())
                        .increment(1);
                }
                Ok(PlaceOutcome::Placed {
                    ticket: Ticket {
                        position: number(position)?,
                        issued_ms: number(issued_ms)?,
                    },
                    again,
                })
            }
            [tag, code, detail] if tag == "refused" => {
                let detail = u32::try_from(number(detail)?).unwrap_or(u32::MAX);
                Ok(PlaceOutcome::Refused(match code.as_str() {
                    "unknown_sku" => PlaceRefusal::UnknownSku,
                    "waiting_room_off" => PlaceRefusal::RoomOff,
                    "sale_not_open" => PlaceRefusal::SaleNotOpen,
                    "sold_out" => PlaceRefusal::SoldOut { available: detail },
                    "client_limit_reached" => PlaceRefusal::ClientLimitReached { limit: detail },
                    _ => return Err(bad()),
                }))
            }
            _ => Err(bad()),
        }
    }

    /// The sale's line, read from Redis at most once per [`LINE_REFRESH`] per gate: every poll
    /// in between is answered from the line read last. `None` for a sale not loaded.
    pub async fn line(&self, sku: &Sku) -> Result<Option<Arc<Line>>, GateError> {
        let slot = self.inner.lines.slot(sku);
        if let Some(line) = slot.fresh() {
            return Ok(Some(line));
        }
        let _reading = slot.reading.lock().await;
        if let Some(line) = slot.fresh() {
            return Ok(Some(line));
        }
        let line = self.read_line(sku).await?;
        match line {
            Some(line) => {
                let line = Arc::new(line);
                publish(sku, &line);
                *slot.line.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), line.clone()));
                Ok(Some(line))
            }
            None => {
                // Unknown SKUs are not kept: a caller naming many cannot grow the cache.
                self.inner.lines.forget(sku);
                Ok(None)
            }
        }
    }

    /// Moves the sale's line to now in Redis and reads it (one `room_state.lua` call).
    pub async fn read_line(&self, sku: &Sku) -> Result<Option<Line>, GateError> {
        metrics::counter!("flashgate_room_line_reads_total").increment(1);
        let keys = self.namespace().sku(sku);
        let mut conn = self.connection().await?;
        let reply: Vec<String> = self
            .inner
            .scripts
            .room_state
            .key(line_keys(&keys))
            .invoke_async(&mut conn)
            .await?;
        Line::parse(&reply)
    }
}

/// KEYS 1–6 of the scripts that move the line: meta, room, admits, used, stock, holds.
fn line_keys(keys: &super::SkuKeys) -> Vec<String> {
    vec![
        keys.meta(),
        keys.room(),
        keys.room_admits(),
        keys.room_used(),
        keys.stock(),
        keys.holds(),
    ]
}

/// The line's figures as metrics: the totals are the line's own (the same on every gate), so
/// `rate()` over them gives places issued, admitted, expired and told sold out per second.
fn publish(sku: &Sku, line: &Line) {
    if !line.enabled {
        return;
    }
    let sku = sku.to_string();
    metrics::gauge!("flashgate_room_waiting", "sku" => sku.clone()).set(line.waiting() as f64);
    metrics::gauge!("flashgate_room_frontier", "sku" => sku.clone()).set(line.frontier as f64);
    metrics::gauge!("flashgate_room_admit_per_second", "sku" => sku.clone())
        .set(f64::from(line.admit_per_second));
    metrics::gauge!("flashgate_room_sell_out_eta_seconds", "sku" => sku.clone())
        .set(line.estimated_sell_out().as_secs_f64());
    metrics::counter!("flashgate_room_tickets_issued_total", "sku" => sku.clone())
        .absolute(line.issued);
    metrics::counter!("flashgate_room_tickets_admitted_total", "sku" => sku.clone())
        .absolute(line.frontier);
    metrics::counter!("flashgate_room_tickets_expired_total", "sku" => sku.clone())
        .absolute(line.expired);
    metrics::counter!("flashgate_room_tickets_sold_out_total", "sku" => sku)
        .absolute(line.sold_out());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line {
        Line {
            read_at_ms: 10_000,
            enabled: true,
            admit_per_second: 10,
            admission_window: Duration::from_secs(60),
            per_buyer_limit: 1,
            selling: true,
            issued: 100,
            frontier: 20,
            expired_through: 5,
            expired: 2,
            sold_out_from: Some(80),
            live: 10,
            stock: 50,
            left: 70,
            admits: vec![(1_000, 10), (2_000, 20)],
        }
    }

    #[test]
    fn a_place_is_expired_admitted_waiting_or_sold_out_by_where_it_stands() {
        let line = line();
        assert_eq!(line.status(5), PlaceStatus::Expired);
        assert_eq!(line.status(6), PlaceStatus::Admitted { until_ms: 61_000 });
        assert_eq!(line.status(11), PlaceStatus::Admitted { until_ms: 62_000 });
        assert_eq!(
            line.status(21),
            PlaceStatus::Waiting {
                ahead: 0,
                estimated_wait: Duration::from_millis(100)
            }
        );
        assert_eq!(
            line.status(79),
            PlaceStatus::Waiting {
                ahead: 58,
                estimated_wait: Duration::from_millis(5_900)
            }
        );
        assert_eq!(line.status(80), PlaceStatus::SoldOut);
        assert_eq!(line.status(1_000), PlaceStatus::SoldOut);
        assert_eq!(line.waiting(), 59);
        assert_eq!(line.sold_out(), 21);
    }

    #[test]
    fn the_reply_of_room_state_parses() {
        let reply: Vec<String> = [
            "line", "10000", "1", "10", "60", "1", "1", "100", "20", "5", "2", "80", "10", "50",
            "70", "1000:10", "2000:20",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(Line::parse(&reply).expect("parse"), Some(line()));
        assert_eq!(
            Line::parse(&["unknown_sku".to_owned()]).expect("parse"),
            None
        );
        assert!(Line::parse(&["line".to_owned()]).is_err());
    }
}
