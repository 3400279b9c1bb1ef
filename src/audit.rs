//! The audit: checks the seven invariants of docs/DESIGN.md §7 against Redis and Postgres.
//!
//! Used by `flashgate audit`, `GET /v1/admin/skus/{sku}/audit` and the load-test verdict. An
//! invariant that can only be judged once the settler has drained the stream (5 and 7) is
//! reported `pending` while events are still waiting, never `violated`.

use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::EventId;
use crate::domain::{ReservationStatus, Sku};
use crate::gate::{Gate, GateError, StreamRead};
use crate::store::{Store, StoreError};

/// How late a hold may be for the expiry sweeper before invariant 6 calls it overdue.
pub const EXPIRY_GRACE_MS: i64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("no SKU {0}")]
    UnknownSku(Sku),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AuditError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Held,
    Violated,
    /// Cannot be judged until the stream is drained.
    Pending,
}

/// One invariant's result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub invariant: u8,
    #[schema(value_type = String)]
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// The audit of one SKU.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SkuAudit {
    #[schema(value_type = String)]
    pub sku: Sku,
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// Redis `stock`, or `None` when the sale is not loaded in Redis.
    pub redis_stock: Option<i64>,
    /// Events in the stream that the settler has not applied (counted up to 100,000).
    pub backlog: usize,
    /// Age of the oldest unapplied event, in ms.
    pub oldest_unsettled_ms: Option<i64>,
    /// Holds Postgres refused (Redis had drifted).
    pub rejected: i64,
    /// Refusals not yet written back to Redis.
    pub pending_write_backs: i64,
    /// Holds buyers were told about (201) that Redis lost before they settled: found when
    /// their id came back (a read, commit or release answered `hold_lost`). No invariant can
    /// hold them — neither store has them — so they are counted here instead.
    pub lost_holds: i64,
    pub checks: Vec<Check>,
}

impl SkuAudit {
    /// True when no invariant is violated (pending ones do not count) and no hold a buyer was
    /// told about was found lost.
    pub fn ok(&self) -> bool {
        self.lost_holds == 0 && self.checks.iter().all(|c| c.verdict != Verdict::Violated)
    }
}

fn check(invariant: u8, name: &'static str, problems: Vec<String>) -> Check {
    Check {
        invariant,
        name,
        verdict: if problems.is_empty() {
            Verdict::Held
        } else {
            Verdict::Violated
        },
        detail: if problems.is_empty() {
            "ok".into()
        } else {
            problems.join("; ")
        },
    }
}

fn pending(invariant: u8, name: &'static str, backlog: usize) -> Check {
    Check {
        invariant,
        name,
        verdict: Verdict::Pending,
        detail: format!(
            "not judged yet: {backlog} decision(s) are still on their way to Postgres \
             (the settler applies them within milliseconds; audit again)"
        ),
    }
}

/// Audits one SKU.
pub async fn audit_sku(gate: &Gate, store: &Store, sku: &Sku) -> Result<SkuAudit, AuditError> {
    let ledger = store
        .audit_ledger(sku, EXPIRY_GRACE_MS)
        .await?
        .ok_or_else(|| AuditError::UnknownSku(sku.clone()))?;
    let limit = i64::from(ledger.per_buyer_limit);
    let over_limit_pg = store.buyers_over_limit(sku, limit).await?;

    let redis_stock = gate.stock(sku).await?;
    let cursor = ledger.cursor;
    let (backlog, oldest) = gate.backlog(sku, cursor, 100_000).await?;
    let oldest_unsettled_ms = oldest
        .and_then(EventId::time)
        .map(|t| (Utc::now() - t).num_milliseconds().max(0));
    let holds = gate.hold_summaries(sku).await?;
    let overdue_redis = gate
        .overdue_holds(sku, Utc::now().timestamp_millis() - EXPIRY_GRACE_MS)
        .await?;
    // A stream that no longer holds the cursor's entry was lost or replaced: events may be
    // missing, so nothing can be called drained until a resync fences it.
    // A settler committing past `cursor` meanwhile trims the cursor's entry: only a cursor that
    // has not moved since proves the stream broken.
    let stream_intact = !matches!(gate.events_after(sku, cursor, 1).await?, StreamRead::Broken)
        || store.settlement_cursor(sku).await? != Some(cursor);
    let drained = stream_intact && backlog == 0 && ledger.outbox == 0;

    // 1. Stock never negative, always balanced, and equal to the reservations it stands for.
    let mut problems = Vec::new();
    for (name, value) in [
        ("available", ledger.available),
        ("reserved", ledger.reserved),
        ("sold", ledger.sold),
    ] {
        if value < 0 {
            problems.push(format!("{name} is {value}"));
        }
    }
    if ledger.available + ledger.reserved + ledger.sold != ledger.total {
        problems.push(format!(
            "available {} + reserved {} + sold {} != total {}",
            ledger.available, ledger.reserved, ledger.sold, ledger.total
        ));
    }
    if ledger.held_units != ledger.reserved {
        problems.push(format!(
            "held reservations sum to {} but reserved is {}",
            ledger.held_units, ledger.reserved
        ));
    }
    if ledger.committed_units != ledger.sold {
        problems.push(format!(
            "committed reservations sum to {} but sold is {}",
            ledger.committed_units, ledger.sold
        ));
    }
    let mut checks = vec![check(
        1,
        "postgres stock is never negative and always balanced",
        problems,
    )];

    // 2. No oversell, in either store.
    let mut problems = Vec::new();
    if ledger.held_units + ledger.committed_units > ledger.total {
        problems.push(format!(
            "postgres holds {} units held or sold of {}",
            ledger.held_units + ledger.committed_units,
            ledger.total
        ));
    }
    let live =
        |s: ReservationStatus| matches!(s, ReservationStatus::Held | ReservationStatus::Committed);
    let redis_units: i64 = holds
        .iter()
        .filter(|h| live(h.status))
        .map(|h| i64::from(h.quantity))
        .sum();
    if redis_units > ledger.total {
        problems.push(format!(
            "redis holds {redis_units} units held or sold of {}",
            ledger.total
        ));
    }
    if let Some(stock) = redis_stock.filter(|s| *s < 0) {
        problems.push(format!("redis stock is {stock}"));
    }
    checks.push(check(
        2,
        "units held and sold never exceed the stock on sale",
        problems,
    ));

    // 3. One reservation per (sku, buyer, idempotency key).
    let mut problems = Vec::new();
    if ledger.duplicate_keys > 0 {
        problems.push(format!(
            "{} idempotency keys have several reservations in postgres",
            ledger.duplicate_keys
        ));
    }
    let mut per_key: HashMap<(&str, &str), usize> = HashMap::new();
    for hold in holds
        .iter()
        .filter(|h| h.status != ReservationStatus::Rejected)
    {
        *per_key
            .entry((&hold.buyer, &hold.idempotency_key))
            .or_default() += 1;
    }
    let duplicated = per_key.values().filter(|n| **n > 1).count();
    if duplicated > 0 {
        problems.push(format!(
            "{duplicated} idempotency keys have several live holds in redis"
        ));
    }
    checks.push(check(
        3,
        "one idempotency key yields at most one reservation",
        problems,
    ));

    // 4. No buyer over the per-buyer limit.
    let mut problems: Vec<String> = over_limit_pg
        .iter()
        .map(|(buyer, units)| {
            format!("buyer {buyer} has {units} units in postgres (limit {limit})")
        })
        .collect();
    let mut per_buyer: HashMap<&str, i64> = HashMap::new();
    for hold in holds.iter().filter(|h| live(h.status)) {
        *per_buyer.entry(&hold.buyer).or_default() += i64::from(hold.quantity);
    }
    let mut over: Vec<_> = per_buyer
        .iter()
        .filter(|(_, units)| **units > limit)
        .collect();
    over.sort();
    problems.extend(
        over.iter().take(10).map(|(buyer, units)| {
            format!("buyer {buyer} has {units} units in redis (limit {limit})")
        }),
    );
    checks.push(check(
        4,
        "no buyer holds more than the per-buyer limit",
        problems,
    ));

    // 5. Drained streams: Redis stock equals Postgres available.
    const STOCK_MATCHES: &str = "once drained, redis stock equals postgres available";
    checks.push(match redis_stock {
        _ if !drained => pending(5, STOCK_MATCHES, backlog),
        // Postgres has settled this SKU's decisions, so Redis had it loaded: it lost the sale,
        // or this is not the namespace the gate uses.
        None if !ledger.cursor.is_start() => check(
            5,
            STOCK_MATCHES,
            vec![format!(
                "postgres has settled events up to {} but redis has no sale under namespace {:?} \
                 (wrong FLASHGATE_REDIS_NAMESPACE, or redis lost the sale: `flashgate prewarm --resync`)",
                ledger.cursor,
                gate.namespace().as_str()
            )],
        ),
        None => Check {
            invariant: 5,
            name: STOCK_MATCHES,
            verdict: Verdict::Held,
            detail: "not loaded in redis".into(),
        },
        Some(stock) if stock == ledger.available => check(5, STOCK_MATCHES, vec![]),
        Some(stock) => check(
            5,
            STOCK_MATCHES,
            vec![format!("redis stock {stock} != postgres available {} (drift; `flashgate prewarm --resync` repairs it)", ledger.available)],
        ),
    });

    // 5, the sale's state: Redis sells in the state Postgres records, except while a resync
    // runs (it pauses the sale). A resync killed mid-way left it paused: the sweepers put it
    // back within a scan interval; until then the audit says so.
    let recorded = store.find_sku(sku).await?;
    let live = gate.live_sale(sku).await?;
    let mut problems = Vec::new();
    if let (Some(recorded), Some(live)) = (&recorded, &live)
        && recorded.state != live.state
    {
        let resyncing = match store.lock_resync(sku).await? {
            Some(lock) => {
                lock.release().await;
                false
            }
            None => true,
        };
        if !resyncing {
            problems.push(format!(
                "redis has the sale {} while postgres records it {} (a resync that died mid-way \
                 leaves it so until a sweeper puts it back)",
                live.state.as_str(),
                recorded.state.as_str()
            ));
        }
    }
    // Part of invariant 5 (Redis mirrors what Postgres settled): seven checks, one each.
    if !problems.is_empty()
        && let Some(mirror) = checks.iter_mut().rev().find(|c| c.invariant == 5)
    {
        if mirror.verdict == Verdict::Violated {
            problems.insert(0, mirror.detail.clone());
        }
        mirror.verdict = Verdict::Violated;
        mirror.detail = problems.join("; ");
    }

    // 6. Every hold ends, or is held with a deadline in the future.
    let mut problems = Vec::new();
    if ledger.overdue > 0 {
        problems.push(format!(
            "{} holds in postgres are held past their deadline",
            ledger.overdue
        ));
    }
    if overdue_redis > 0 {
        problems.push(format!(
            "{overdue_redis} holds in redis are held past their deadline"
        ));
    }
    checks.push(check(
        6,
        "every hold reaches a terminal state or is held with a future deadline",
        problems,
    ));

    // 7. Every hold a buyer was told about is in Postgres once settled, or was reported lost.
    const ALL_RECORDED: &str =
        "every hold told to a buyer is in postgres once settled, or reported lost";
    checks.push(if !stream_intact {
        check(
            7,
            ALL_RECORDED,
            vec![format!(
                "the event stream no longer holds the settlement cursor {}: redis lost or \
                 replaced it, so decisions may be missing from postgres (`flashgate prewarm --resync` \
                 records them again from the holds)",
                ledger.cursor
            )],
        )
    } else if drained {
        let ids: Vec<Uuid> = holds.iter().map(|h| h.id.as_uuid()).collect();
        let recorded = store.recorded_reservations(&ids).await?;
        // A hold rejected in Redis without a Postgres row was refused as a duplicate key and
        // reported (a warning and a metric) when it was refused.
        let missing: Vec<String> = holds
            .iter()
            .filter(|h| {
                !recorded.contains(&h.id.as_uuid()) && h.status != ReservationStatus::Rejected
            })
            .take(10)
            .map(|h| h.id.to_string())
            .collect();
        check(
            7,
            ALL_RECORDED,
            missing
                .into_iter()
                .map(|id| format!("hold {id} is not in postgres"))
                .collect(),
        )
    } else {
        pending(7, ALL_RECORDED, backlog)
    });

    Ok(SkuAudit {
        sku: sku.clone(),
        total: ledger.total,
        available: ledger.available,
        reserved: ledger.reserved,
        sold: ledger.sold,
        redis_stock,
        backlog,
        oldest_unsettled_ms,
        rejected: ledger.rejected,
        pending_write_backs: ledger.outbox,
        lost_holds: store.lost_holds(sku).await?,
        checks,
    })
}

/// A readable table of the audits, for the command line.
pub fn render_table(audits: &[SkuAudit]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for a in audits {
        let _ = writeln!(
            out,
            "{}: total {} | postgres available {} reserved {} sold {} | redis stock {} | backlog {} (oldest {}) | rejected {}",
            a.sku,
            a.total,
            a.available,
            a.reserved,
            a.sold,
            a.redis_stock.map_or("-".into(), |s| s.to_string()),
            a.backlog,
            a.oldest_unsettled_ms
                .map_or("-".into(), |ms| format!("{ms} ms")),
            a.rejected,
        );
        if a.lost_holds > 0 {
            let _ = writeln!(
                out,
                "  LOST: {} hold(s) told 201 that Redis lost before they settled (answered hold_lost)",
                a.lost_holds
            );
        }
        for c in &a.checks {
            let verdict = match c.verdict {
                Verdict::Held => "held",
                Verdict::Violated => "VIOLATED",
                Verdict::Pending => "pending",
            };
            let _ = writeln!(
                out,
                "  {}. {:<9} {} — {}",
                c.invariant, verdict, c.name, c.detail
            );
        }
    }
    out
}
