//! A buyer's calls: reserve, read, commit, release.

use super::App;
use crate::domain::{ReservationId, ReservationStatus, Sku};
use crate::gate::{
    GateError, Hold, Mover, Refusal, ReserveOutcome, ReserveRequest, Transition, TransitionOutcome,
};
use crate::settler::SettleError;
use crate::store::{MissingHold, StoreError};

/// Longest a read or replay waits for Postgres to say whether the hold is settled; past it the
/// answer says `settled: false`. A settled read takes about a millisecond.
const SETTLED_LOOKUP_BUDGET: std::time::Duration = std::time::Duration::from_millis(250);

/// Where a hold was found.
enum Found {
    /// In Redis, which decides its next move.
    Live(Hold),
    /// Only in Postgres, which has it out of `held`: nothing moves it any more.
    Settled(Hold),
}

/// Why a buyer's call was not done.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The gate refused the reservation; nothing was written, so a retry is decided afresh.
    #[error(transparent)]
    Refused(Refusal),
    #[error("no SKU {0}")]
    UnknownSku(String),
    /// The sale exists in Postgres but was never loaded into Redis.
    #[error("sale {0} was never pre-warmed")]
    NotPrewarmed(String),
    /// No such hold — or another buyer's, which answers the same so ids cannot be probed.
    #[error("no such reservation")]
    NotFound,
    /// A gate of this deployment gave out this hold, and neither Redis nor Postgres has it:
    /// Redis lost it before it settled (a flush, a rollback, a failover to a lagging replica).
    #[error("the reservation was lost before it was recorded")]
    Lost,
    /// The hold is in a state the call cannot move it from.
    #[error("the reservation is {0}")]
    HoldIs(ReservationStatus),
    /// Redis has the commit; Postgres does not have its record yet.
    #[error("the commit is not recorded in postgres yet")]
    NotRecorded,
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Settle(#[from] SettleError),
}

/// A hold given (or given before, and replayed).
#[derive(Debug, Clone)]
pub struct Reserved {
    pub hold: Hold,
    /// The same request was answered before under this idempotency key: its hold, as it is now.
    pub replayed: bool,
    /// Whether Postgres has the hold's current state.
    pub settled: bool,
}

/// A buyer's calls.
impl App<'_> {
    /// Decides one reservation.
    ///
    /// Order: Redis alone decides (`reserve.lua`: idempotency, rate and buyer limits, stock, the
    /// hold and its event in one atomic script); Postgres follows through the settler. With
    /// `FLASHGATE_DURABILITY=replica` the answer also waits for a replica to have the decision.
    /// Retry: the idempotency key — the same key and body replay the stored hold (with its
    /// current status), a refusal stored nothing. A timeout: send the same request with the same
    /// key; it is answered, never decided twice.
    pub async fn reserve(&self, request: ReserveRequest<'_>) -> Result<Reserved, HoldError> {
        let (hold, replayed) = match self.gate.reserve(request).await? {
            ReserveOutcome::Created(hold) => {
                // Its event is in the stream: this process's settler takes it now; and this
                // process's sweeper expires it when it falls due.
                self.settler.hint(&hold.sku);
                self.settler.board().falls_due(&hold.sku, hold.lifetime());
                (hold, false)
            }
            ReserveOutcome::Replayed(hold) => (hold, true),
            ReserveOutcome::Refused(Refusal::UnknownSku) => {
                return Err(self.not_loaded(request).await);
            }
            ReserveOutcome::Refused(refusal) => return Err(HoldError::Refused(refusal)),
        };
        // A fresh hold cannot be settled yet; a replay may be, and replays are rare enough to ask.
        let settled = replayed && self.is_settled(&hold).await;
        Ok(Reserved {
            hold,
            replayed,
            settled,
        })
    }

    /// The gate has no sale for the SKU: one that exists but was never pre-warmed, or one that
    /// does not exist. Only refused requests pay for this Postgres read.
    async fn not_loaded(&self, request: ReserveRequest<'_>) -> HoldError {
        match self.store.find_sku(request.sku).await {
            // It was live, and Redis no longer has it: Redis lost its data (or this gate looks
            // in the wrong namespace). Selling it afresh would sell units held but not settled
            // twice; a resync puts it back.
            Ok(Some(record)) if record.launched_at.is_some() => {
                HoldError::Refused(Refusal::ResyncRequired)
            }
            Ok(Some(_)) => HoldError::NotPrewarmed(request.sku.to_string()),
            Ok(None) => HoldError::UnknownSku(request.sku.to_string()),
            Err(err) => err.into(),
        }
    }

    /// The hold `id` with whether Postgres has its state, if `mover` may see it.
    /// Redis only reads; nothing is written.
    pub async fn find(
        &self,
        id: ReservationId,
        mover: Mover<'_>,
    ) -> Result<(Hold, bool), HoldError> {
        match self.owned(id, mover).await? {
            Found::Live(hold) => {
                let settled = self.is_settled(&hold).await;
                Ok((hold, settled))
            }
            Found::Settled(hold) => Ok((hold, true)),
        }
    }

    /// Payment captured: `held` → `committed`, answered only once Postgres has it.
    ///
    /// Order: 1. Redis decides (`transition.lua`: the race with the expiry sweeper has exactly
    /// one winner, on Redis time), 2. the settler applies the SKU's stream up to this decision
    /// (fenced by the cursor, safe beside any number of background settlers) together with every
    /// other commit waiting on the SKU in this process (group commit), 3. the answer is read
    /// from Postgres, in one query for the whole group. Retry: committing a committed hold
    /// answers it again; a hold Postgres refused at settlement answers `rejected`, so the caller
    /// refunds. A timeout (or 503): Redis may have decided; send the commit again.
    pub async fn commit(&self, id: ReservationId, mover: Mover<'_>) -> Result<Hold, HoldError> {
        use ReservationStatus::Committed;
        let (hold, through) = match self.gate.transition(id, Transition::Commit, mover).await? {
            TransitionOutcome::Changed { hold, event } if hold.status == Committed => {
                (hold, Some(event))
            }
            TransitionOutcome::Unchanged(hold) if hold.status == Committed => (hold, None),
            TransitionOutcome::Changed { hold, .. } | TransitionOutcome::Unchanged(hold) => {
                return Err(HoldError::HoldIs(hold.status));
            }
            TransitionOutcome::NotYours => return Err(HoldError::NotFound),
            TransitionOutcome::Missing => {
                let hold = self.not_in_redis(id, mover).await?;
                return match hold.status {
                    Committed => Ok(hold),
                    other => Err(HoldError::HoldIs(other)),
                };
            }
        };
        // A fresh commit settles through its own event. A repeated one first asks whether
        // Postgres has it already, else settles through whatever the stream holds now (which
        // includes it).
        let already = match through {
            Some(_) => None,
            None => self.store.reservation_status(hold.id).await?,
        };
        let recorded = if already == Some(ReservationStatus::Committed) {
            ReservationStatus::Committed
        } else {
            let through = match through {
                Some(event) => Some(event),
                None => self.gate.last_event_id(&hold.sku).await?,
            };
            match through {
                Some(event) => self.settler.settle_for(&hold.sku, hold.id, event).await?,
                None => self.store.reservation_status(hold.id).await?,
            }
            .ok_or(HoldError::NotRecorded)?
        };
        match recorded {
            // Redis already answered `committed`: the hold says so.
            ReservationStatus::Committed => Ok(hold),
            // Redis decided the commit, yet Postgres, settled through its event, still has the
            // hold held: the event never reached Postgres (the stream was replaced under the
            // cursor). Not a refusal — the commit stands in Redis: retry, after a resync.
            ReservationStatus::Held => Err(HoldError::NotRecorded),
            other => Err(HoldError::HoldIs(other)),
        }
    }

    /// The buyer cancelled or payment failed: `held` → `released`; returns the hold and whether
    /// Postgres has it released yet.
    ///
    /// Order: Redis alone (`transition.lua`): the units are on sale again at once and this gate's
    /// own sold-out shortcut is off before the answer; Postgres follows through the settler.
    /// Retry: releasing a released hold answers it again. A timeout: send it again.
    pub async fn release(
        &self,
        id: ReservationId,
        mover: Mover<'_>,
    ) -> Result<(Hold, bool), HoldError> {
        use ReservationStatus::Released;
        let (hold, fresh) = match self.gate.transition(id, Transition::Release, mover).await? {
            TransitionOutcome::Changed { hold, .. } if hold.status == Released => (hold, true),
            TransitionOutcome::Unchanged(hold) if hold.status == Released => (hold, false),
            TransitionOutcome::Changed { hold, .. } | TransitionOutcome::Unchanged(hold) => {
                return Err(HoldError::HoldIs(hold.status));
            }
            TransitionOutcome::NotYours => return Err(HoldError::NotFound),
            TransitionOutcome::Missing => {
                let hold = self.not_in_redis(id, mover).await?;
                return match hold.status {
                    Released => Ok((hold, true)),
                    other => Err(HoldError::HoldIs(other)),
                };
            }
        };
        // A release decided just now cannot be in Postgres yet: no need to ask. Its event is in
        // the stream, for this process's settler to take on its next pass.
        let settled = if fresh {
            self.settler.hint(&hold.sku);
            false
        } else {
            self.is_settled(&hold).await
        };
        Ok((hold, settled))
    }

    /// The hold `id`, if `may_see` allows its buyer: from Redis while Redis keeps it, else, for
    /// an id this deployment gave out, from Postgres once it left `held` there (Redis lets a
    /// settled released or expired hold go after [`crate::gate::SETTLED_HOLD_GRACE`], and every
    /// other after the idempotency window). Ids nobody was given never reach Postgres.
    async fn owned(&self, id: ReservationId, mover: Mover<'_>) -> Result<Found, HoldError> {
        match self.gate.hold(id).await? {
            Some(hold) if mover.may_move(&hold.buyer) => Ok(Found::Live(hold)),
            Some(_) => Err(HoldError::NotFound),
            None => self.not_in_redis(id, mover).await.map(Found::Settled),
        }
    }

    /// A hold Redis does not have: for an id this deployment gave out, Postgres's record once it
    /// left `held` there, if `mover` may see it; else not found, or lost.
    async fn not_in_redis(&self, id: ReservationId, mover: Mover<'_>) -> Result<Hold, HoldError> {
        if !self.gate.minted(id) {
            return Err(HoldError::NotFound);
        }
        match self.settled(id).await? {
            Some(hold) if mover.may_move(&hold.buyer) => Ok(hold),
            Some(_) => Err(HoldError::NotFound),
            None => Err(self.missing(id).await),
        }
    }

    /// The hold as Postgres recorded it once it left `held` there, if it did.
    async fn settled(&self, id: ReservationId) -> Result<Option<Hold>, HoldError> {
        let Some(settled) = self.store.settled_reservation(id).await? else {
            return Ok(None);
        };
        let hold = Sku::parse(&settled.sku)
            .and_then(|sku| Hold::from_record(sku, settled.row))
            .map_err(|e| StoreError::Corrupt(format!("reservation {id}: {e}")))?;
        Ok(Some(hold))
    }

    /// A hold a gate of this deployment minted that Redis does not have: forgotten after the
    /// idempotency window if Postgres recorded it, else lost — said as such, counted and
    /// recorded for the audit, never answered as an id nobody was given.
    async fn missing(&self, id: ReservationId) -> HoldError {
        match self.store.trace_missing_hold(id).await {
            Ok(MissingHold::Recorded) => HoldError::NotFound,
            Ok(MissingHold::Lost { first_report }) => {
                if first_report {
                    metrics::counter!("flashgate_lost_holds_total").increment(1);
                    tracing::error!(
                        reservation = %id,
                        "a hold a buyer was told about is in neither Redis nor Postgres: Redis lost it before it settled"
                    );
                }
                HoldError::Lost
            }
            Err(err) => err.into(),
        }
    }

    /// Whether Postgres has the hold's current state. The gate answers from Redis alone, so an
    /// unreachable or slow Postgres only hides `settled`: the lookup gets
    /// [`SETTLED_LOOKUP_BUDGET`], never the pool's acquire timeout (a same-key retry used to
    /// wait 3 s for it while Postgres was down).
    async fn is_settled(&self, hold: &Hold) -> bool {
        let lookup = self.store.reservation_status(hold.id);
        match tokio::time::timeout(SETTLED_LOOKUP_BUDGET, lookup).await {
            Ok(Ok(recorded)) => recorded == Some(hold.status),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not tell whether the hold is settled");
                false
            }
            Err(_) => {
                tracing::debug!(hold = %hold.id, "postgres too slow to tell whether the hold is settled");
                false
            }
        }
    }
}
