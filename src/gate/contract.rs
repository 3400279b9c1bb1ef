//! The Lua contract: what each script in `lua/` is told (guards, operations) and what it
//! answers, as types, parsed here and nowhere else. Each script's header comment lists its KEYS,
//! ARGV and reply; the functions here follow those comments.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::holds::PackedHold;
use super::{BuyerRate, GateError, Hold, HoldQuota, ReserveRequest, optional_millis};
use crate::domain::{BuyerId, EventId, ReservationId, ReservationStatus, SaleState, Sku};

/// A stream id a script or Redis answered with.
pub(super) fn parse_id(raw: &str) -> Result<EventId, GateError> {
    EventId::parse(raw).map_err(|e| GateError::Protocol(e.to_string()))
}

/// A stream id a script answered with, `''` meaning none.
pub(super) fn optional_id(raw: &str) -> Result<Option<EventId>, GateError> {
    (!raw.is_empty()).then(|| parse_id(raw)).transpose()
}

fn status(raw: &str) -> Result<ReservationStatus, GateError> {
    ReservationStatus::parse(raw).map_err(|e| GateError::Protocol(e.to_string()))
}

// --- reserve.lua -------------------------------------------------------------------------

/// What the reserve script decided.
#[derive(Debug, Clone, PartialEq)]
pub enum ReserveOutcome {
    Created(Hold),
    /// The same request was seen before under this idempotency key; this is its stored answer.
    Replayed(Hold),
    Refused(Refusal),
}

/// Why a hold was not given. A refusal has no effect, so a retry is decided afresh.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("this idempotency key was used with a different request")]
    IdempotencyKeyReused,
    #[error("too many requests from this buyer")]
    RateLimited {
        retry_after: Duration,
        /// The quota: `burst` requests per `window`.
        burst: u32,
        window: Duration,
    },
    #[error("no sale is loaded for this SKU")]
    UnknownSku,
    #[error("the sale is not open")]
    SaleNotOpen { opens_at: Option<DateTime<Utc>> },
    #[error("the sale is paused")]
    SalePaused,
    /// The settler found the sale's event stream broken (Redis lost data, was rolled back or
    /// failed over): no new hold until a resync.
    #[error("the sale stopped taking holds until a resync: redis lost or rolled back its data")]
    ResyncRequired,
    #[error("this buyer has reached the per-buyer limit of {limit}")]
    BuyerLimitReached { limit: u32 },
    #[error("sold out")]
    SoldOut { available: u32 },
    #[error("this client address already has {limit} live holds on this sale")]
    ClientLimitReached { limit: u32 },
    /// The buyer took `limit` holds on this sale within the quota window (see
    /// `FLASHGATE_BUYER_HOLD_QUOTA`).
    #[error(
        "this buyer took {limit} holds on this sale within {window:?}; retry after {retry_after:?}"
    )]
    HoldQuotaReached {
        limit: u32,
        window: Duration,
        retry_after: Duration,
    },
    /// The sale has a waiting room and this ticket is not admitted yet (`ahead` places before
    /// the frontier reaches it), or no ticket was shown (`ahead` 0).
    #[error("it is not this ticket's turn yet")]
    NotYourTurn { ahead: u64 },
    /// The ticket was admitted, and its admission window closed without a hold.
    #[error("this ticket's admission window has closed")]
    TicketExpired,
    /// The ticket already took its one hold.
    #[error("this ticket already took its hold")]
    TicketUsed,
}

pub(super) fn parse_reserve(
    reply: &str,
    req: ReserveRequest<'_>,
    client_tiers: Option<&str>,
    rate: Option<BuyerRate>,
    quota: Option<HoldQuota>,
) -> Result<ReserveOutcome, GateError> {
    let bad = || GateError::Protocol(format!("reserve.lua answered {reply:?}"));
    // One string: `tag id q price cur created expires status ...`, a newline between fields.
    // After the tag, the hold's own field names in this order; the request supplies the rest.
    // Read in place: collecting them grew a vector three times per hold.
    let mut fields = reply.split('\n');
    let tag = fields.next().unwrap_or_default();
    let hold = |f: [&str; 7]| -> Result<Hold, GateError> {
        let id = ReservationId::parse(f[0]).map_err(|e| GateError::Protocol(e.to_string()))?;
        Hold::from_redis(id, req.sku.clone(), |name| match name {
            "q" => Some(f[1]),
            "price" => Some(f[2]),
            "cur" => Some(f[3]),
            "created" => Some(f[4]),
            "expires" => Some(f[5]),
            "status" => Some(f[6]),
            "buyer" => Some(req.buyer.as_str()),
            "idem" => Some(req.idempotency_key.as_str()),
            "client" => client_tiers,
            "ref" => req.reference.map(crate::domain::HoldReference::as_str),
            "meta" => req.metadata.map(crate::domain::HoldMetadata::as_str),
            _ => None,
        })
    };
    match tag {
        "created" => Ok(ReserveOutcome::Created(hold(
            next_fields(&mut fields).ok_or_else(bad)?,
        )?)),
        "replayed" => Ok(ReserveOutcome::Replayed(hold(
            next_fields(&mut fields).ok_or_else(bad)?,
        )?)),
        "refused" => {
            let [code, detail] = next_fields(&mut fields).ok_or_else(bad)?;
            let detail: u64 = detail.parse().map_err(|_| bad())?;
            let small = u32::try_from(detail).unwrap_or(u32::MAX);
            Ok(ReserveOutcome::Refused(match code {
                "idempotency_key_reused" => Refusal::IdempotencyKeyReused,
                "rate_limited" => Refusal::RateLimited {
                    retry_after: Duration::from_micros(detail),
                    burst: rate.map_or(0, |r| r.burst),
                    window: rate.map_or(Duration::ZERO, BuyerRate::window),
                },
                "unknown_sku" => Refusal::UnknownSku,
                "sale_not_open" => Refusal::SaleNotOpen {
                    opens_at: optional_millis(i64::try_from(detail).unwrap_or(0)),
                },
                "sale_paused" => Refusal::SalePaused,
                "resync_required" => Refusal::ResyncRequired,
                "buyer_limit_reached" => Refusal::BuyerLimitReached { limit: small },
                "sold_out" => Refusal::SoldOut { available: small },
                "client_limit_reached" => Refusal::ClientLimitReached { limit: small },
                "hold_quota_reached" => Refusal::HoldQuotaReached {
                    limit: quota.map_or(0, |q| q.holds),
                    window: quota.map_or(Duration::ZERO, |q| q.window),
                    retry_after: Duration::from_millis(detail),
                },
                "not_your_turn" => Refusal::NotYourTurn { ahead: detail },
                "ticket_expired" => Refusal::TicketExpired,
                "ticket_used" => Refusal::TicketUsed,
                _ => return Err(bad()),
            }))
        }
        _ => Err(bad()),
    }
}

/// The next `N` fields of an answer, if it has that many.
fn next_fields<'a, const N: usize>(
    fields: &mut impl Iterator<Item = &'a str>,
) -> Option<[&'a str; N]> {
    let mut next = [""; N];
    for slot in &mut next {
        *slot = fields.next()?;
    }
    Some(next)
}

// --- transition.lua ----------------------------------------------------------------------

/// A move out of `held` (`lua/transition.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Payment captured. Past the deadline this expires the hold instead.
    Commit,
    /// The buyer cancelled or payment failed.
    Release,
    /// The deadline passed (the sweeper). Before the deadline this changes nothing.
    Expire,
}

impl Transition {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Release => "release",
            Self::Expire => "expire",
        }
    }
}

/// Whose hold a transition may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mover<'a> {
    /// Any hold: a payments credential, the admin, the expiry sweeper.
    Anyone,
    /// Only this buyer's own holds.
    Buyer(&'a BuyerId),
}

impl Mover<'_> {
    /// Whether this mover may see and move a hold of `owner`.
    pub fn may_move(&self, owner: &BuyerId) -> bool {
        match self {
            Self::Anyone => true,
            Self::Buyer(buyer) => *buyer == owner,
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            Self::Anyone => "",
            Self::Buyer(buyer) => buyer.as_str(),
        }
    }
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq)]
pub enum TransitionOutcome {
    /// Redis has no such hold.
    Missing,
    /// The hold is another buyer's and the mover may move only its own: nothing was read out or
    /// changed, and to this caller the hold is as unknown as a missing one.
    NotYours,
    /// The hold was not moved; this is it.
    Unchanged(Hold),
    /// The hold moved to its new status; `event` is the stream entry that records it.
    Changed { hold: Hold, event: EventId },
}

pub(super) fn parse_transition(
    reply: &str,
    id: ReservationId,
    sku: &Sku,
) -> Result<TransitionOutcome, GateError> {
    let bad = || GateError::Protocol(format!("transition.lua answered {reply:?}"));
    let hold = |pairs: &str| -> Result<Hold, GateError> {
        let fields = hold_fields(pairs).ok_or_else(bad)?;
        Hold::from_redis(id, sku.clone(), |name| fields.get(name).copied())
    };
    match reply.split_once('\n') {
        None if reply == "missing" => Ok(TransitionOutcome::Missing),
        None if reply == "not_yours" => Ok(TransitionOutcome::NotYours),
        Some(("unchanged", pairs)) => Ok(TransitionOutcome::Unchanged(hold(pairs)?)),
        Some(("changed", rest)) => {
            let (event, pairs) = rest.split_once('\n').ok_or_else(bad)?;
            Ok(TransitionOutcome::Changed {
                event: parse_id(event)?,
                hold: hold(pairs)?,
            })
        }
        _ => Err(bad()),
    }
}

/// A hold hash's names and values as a script answers them (`HGETALL`'s list, a newline
/// between each), where the packed `hold` value spans its eight lines; `None` when a name has no
/// value.
fn hold_fields(mut text: &str) -> Option<std::collections::HashMap<&str, &str>> {
    let mut fields = std::collections::HashMap::with_capacity(8);
    while !text.is_empty() {
        let (name, rest) = text.split_once('\n')?;
        let lines = if name == PackedHold::FIELD {
            PackedHold::NAMES.len()
        } else {
            1
        };
        let end = match rest.match_indices('\n').nth(lines - 1) {
            Some((at, _)) => at,
            None => rest.len(),
        };
        fields.insert(name, &rest[..end]);
        text = rest.get(end + 1..).unwrap_or("");
    }
    Some(fields)
}

// --- reject.lua --------------------------------------------------------------------------

/// The hold's status before the refusal was written back; `None` when Redis no longer has it.
pub(super) fn parse_reject(reply: &str) -> Result<Option<ReservationStatus>, GateError> {
    match reply {
        "missing" => Ok(None),
        other => status(other).map(Some),
    }
}

// --- restore_hold.lua --------------------------------------------------------------------

/// What [`Gate::restore_hold`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Redis had lost the hold; it is back.
    Restored,
    /// Redis had the hold `held`; it now has Postgres's terminal status.
    Followed,
    /// Redis already agreed (or is further along: the settler brings Postgres there).
    Kept,
}

pub(super) fn parse_restore(reply: &str) -> Result<Restored, GateError> {
    match reply {
        "restored" => Ok(Restored::Restored),
        "followed" => Ok(Restored::Followed),
        "kept" => Ok(Restored::Kept),
        other => Err(GateError::Protocol(format!(
            "restore_hold.lua answered {other:?}"
        ))),
    }
}

// --- load_sale.lua -----------------------------------------------------------------------

/// What `load_sale.lua` checks before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LoadGuard {
    /// Refuse a sale already live (prewarm).
    New,
    /// Load only if the stream ends exactly at `settled_through` — the settlement cursor
    /// Postgres `available` was read at (`None`: an empty stream) (resync).
    Drained { settled_through: Option<EventId> },
}

impl LoadGuard {
    /// ARGV 1 and 2.
    pub(super) fn args(self) -> (&'static str, String) {
        match self {
            Self::New => ("new", String::new()),
            Self::Drained { settled_through } => (
                "drained",
                settled_through.map(|id| id.to_string()).unwrap_or_default(),
            ),
        }
    }
}

/// What `load_sale.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loaded {
    Done,
    /// Guard `new`: the sale is already live; nothing written.
    Live,
    /// Guard `drained`: the stream moved on; nothing written.
    Moved,
}

impl Loaded {
    pub(super) fn parse(reply: &str) -> Result<Self, GateError> {
        match reply {
            "ok" => Ok(Self::Done),
            "live" => Ok(Self::Live),
            "moved" => Ok(Self::Moved),
            other => Err(GateError::Protocol(format!(
                "load_sale.lua answered {other:?}"
            ))),
        }
    }
}

// --- sale_admin.lua ----------------------------------------------------------------------

/// A change `sale_admin.lua` makes to a live sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SaleAdmin {
    State(SaleState),
    Room(crate::domain::WaitingRoom),
}

impl SaleAdmin {
    /// ARGV 1 and 2.
    pub(super) fn args(self) -> (&'static str, String) {
        match self {
            Self::State(state) => ("state", state.as_str().to_owned()),
            Self::Room(room) => (
                "room",
                format!(
                    "{} {} {}",
                    u8::from(room.enabled),
                    room.admit_per_second,
                    room.admission_window_seconds
                ),
            ),
        }
    }
}

// --- adjust_sale.lua ---------------------------------------------------------------------

/// How a live sale's stock changes (`lua/adjust_sale.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockChange {
    /// A new total: absolute, so a retry finds nothing to move.
    Total(u32),
    /// Units added: relative, made retry-safe by an operation key.
    Add(u32),
}

/// What `adjust_sale.lua` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjusted {
    /// The sale is not live in Redis: Postgres alone holds it.
    NotLive,
    /// The new total is below the units already held or sold; nothing was changed.
    BelowHeld { total: i64, stock: i64 },
    /// Changed (or already as asked): the sale's total and stock now, and the stream entry that
    /// carries the change to Postgres, if stock moved.
    Done {
        total: i64,
        stock: i64,
        event: Option<EventId>,
    },
    /// This operation key was applied before; its result then.
    Replayed { total: i64, stock: i64 },
}

impl StockChange {
    /// ARGV 1 and 2.
    pub(super) fn args(self) -> (&'static str, u32) {
        match self {
            Self::Total(units) => ("total", units),
            Self::Add(units) => ("add", units),
        }
    }
}

pub(super) fn parse_adjusted(reply: &[String]) -> Result<Adjusted, GateError> {
    let bad = || GateError::Protocol(format!("adjust_sale.lua answered {reply:?}"));
    let number = |raw: &String| raw.parse::<i64>().map_err(|_| bad());
    match reply {
        [tag] if tag == "not_live" => Ok(Adjusted::NotLive),
        [tag, total, stock] if tag == "below_held" => Ok(Adjusted::BelowHeld {
            total: number(total)?,
            stock: number(stock)?,
        }),
        [tag, total, stock] if tag == "replayed" => Ok(Adjusted::Replayed {
            total: number(total)?,
            stock: number(stock)?,
        }),
        [tag, total, stock, event] if tag == "done" => Ok(Adjusted::Done {
            total: number(total)?,
            stock: number(stock)?,
            event: optional_id(event)?,
        }),
        _ => Err(bad()),
    }
}

// --- fence_stream.lua --------------------------------------------------------------------

/// What [`Gate::fence_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The stream held the cursor's entry; nothing was changed.
    Intact,
    /// The stream was recreated from the cursor; `dropped` entries sorted below it.
    Fenced { dropped: usize },
}

pub(super) fn parse_fence(reply: (String, usize)) -> Result<Fence, GateError> {
    match reply {
        (outcome, 0) if outcome == "intact" => Ok(Fence::Intact),
        (outcome, dropped) if outcome == "fenced" => Ok(Fence::Fenced { dropped }),
        other => Err(GateError::Protocol(format!(
            "fence_stream.lua answered {other:?}"
        ))),
    }
}

// --- due_holds.lua -----------------------------------------------------------------------

/// What `due_holds.lua` found: the holds past their deadline, and when the next one falls due.
#[derive(Debug, Clone, PartialEq)]
pub struct DueHolds {
    pub due: Vec<ReservationId>,
    /// How long until the earliest hold not yet due falls due; `None` when there is none.
    pub next_due_in: Option<Duration>,
}

pub(super) fn parse_due_holds(reply: (i64, Vec<String>)) -> Result<DueHolds, GateError> {
    let (next_in_ms, ids) = reply;
    let due = ids
        .iter()
        .map(|raw| ReservationId::parse(raw).map_err(|e| GateError::Protocol(e.to_string())))
        .collect::<Result<_, _>>()?;
    let next_due_in = match next_in_ms {
        -1 => None,
        ms if ms >= 0 => Some(Duration::from_millis(ms as u64)),
        other => {
            return Err(GateError::Protocol(format!(
                "due_holds.lua answered a span of {other} ms"
            )));
        }
    };
    Ok(DueHolds { due, next_due_in })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transition.lua answers the hold hash's names and values a line each; the packed `hold`
    /// spans eight, and an earlier version's hold has its fields one by one. Both read as the
    /// same hold.
    #[test]
    fn a_transition_answer_reads_the_packed_hold_and_the_fields_one_by_one_alike() {
        let id = ReservationId::generate(1);
        let sku = Sku::parse("sneaker").expect("sku");
        let packed = format!(
            "unchanged\nhold\n{id}\nalice\nk 1\n2\n19.99\nEUR\n1700000000000\n1700000600000\n\
             status\ncommitted\nref\norder-7"
        );
        let one_by_one = "unchanged\nbuyer\nalice\nidem\nk 1\nq\n2\nprice\n19.99\ncur\nEUR\n\
             created\n1700000000000\nexpires\n1700000600000\nstatus\ncommitted\nref\norder-7";
        let read = |reply: &str| match parse_transition(reply, id, &sku) {
            Ok(TransitionOutcome::Unchanged(hold)) => hold,
            other => panic!("{reply:?}: {other:?}"),
        };
        let hold = read(&packed);
        assert_eq!(hold, read(one_by_one));
        assert_eq!(
            (hold.buyer.as_str(), hold.quantity.get(), hold.status),
            ("alice", 2, ReservationStatus::Committed)
        );
        assert_eq!(hold.reference.as_ref().map(|r| r.as_str()), Some("order-7"));

        // The status last, as a changed hold's answer may have it, and a value left empty.
        let changed = format!(
            "changed\n1-0\nclient\n\nhold\n{id}\nalice\nk 1\n2\n19.99\nEUR\n1\n2\nstatus\nreleased"
        );
        match parse_transition(&changed, id, &sku) {
            Ok(TransitionOutcome::Changed { hold, .. }) => {
                assert_eq!(hold.status, ReservationStatus::Released);
                assert_eq!(hold.client, None);
            }
            other => panic!("{other:?}"),
        }
        // Seven packed values, or a name without its value, are refused.
        let short = format!("unchanged\nhold\n{id}\nalice\nk 1\n2\n19.99\nEUR\n1");
        assert!(parse_transition(&short, id, &sku).is_err());
        assert!(parse_transition("unchanged\nstatus", id, &sku).is_err());
        assert!(matches!(
            parse_transition("missing", id, &sku),
            Ok(TransitionOutcome::Missing)
        ));
    }
}
