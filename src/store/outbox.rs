//! The event outbox (docs/DESIGN.md §11): events appended in the transaction that records their
//! change, claimed by relays SKU by SKU, marked per sink, pruned after the retention period.

use std::sync::LazyLock;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::Sku;
use crate::events::{Draft, EventFilter};

/// Where a relay sends events; each sink has its own cursor per SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// RabbitMQ.
    Amqp,
    /// The webhook.
    Webhook,
}

impl Sink {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Amqp => "amqp",
            Self::Webhook => "webhook",
        }
    }
}

/// The rows of a batch of events, numbered after `before` (the SKU's last sequence).
struct Numbered {
    ids: Vec<Uuid>,
    sequences: Vec<i64>,
    kinds: Vec<&'static str>,
    bodies: Vec<String>,
    occurred: Vec<DateTime<Utc>>,
    recorded_at: DateTime<Utc>,
}

/// Keeps the drafts of kinds `filter` records, in order: only they are numbered, so the
/// sequence has no gaps among what consumers see.
pub(super) fn recorded_kinds(drafts: Vec<Draft>, filter: EventFilter) -> Vec<Draft> {
    drafts
        .into_iter()
        .filter(|d| filter.records(d.kind()))
        .collect()
}

fn number(sku: &Sku, drafts: Vec<Draft>, before: i64) -> Result<Numbered, StoreError> {
    let recorded_at = Utc::now();
    let mut rows = Numbered {
        ids: Vec::with_capacity(drafts.len()),
        sequences: Vec::with_capacity(drafts.len()),
        kinds: Vec::with_capacity(drafts.len()),
        bodies: Vec::with_capacity(drafts.len()),
        occurred: Vec::with_capacity(drafts.len()),
        recorded_at,
    };
    for (n, draft) in drafts.into_iter().enumerate() {
        let event = draft.into_event(sku, before + 1 + n as i64, recorded_at);
        rows.bodies.push(
            serde_json::to_string(&event)
                .map_err(|e| StoreError::Corrupt(format!("event of {sku}: {e}")))?,
        );
        rows.ids.push(event.id);
        rows.sequences.push(event.sequence);
        rows.kinds.push(event.kind().as_str());
        rows.occurred.push(event.occurred_at);
    }
    Ok(rows)
}

/// Inserting numbered events: `$1` the SKU, `$2`–`$7` the rows.
const INSERT_EVENTS: &str = "INSERT INTO event_outbox (id, sku, sequence, kind, body, \
       occurred_at, recorded_at) \
     SELECT t.id, $1, t.seq, t.kind, t.body, t.occurred, $7 \
     FROM UNNEST($2::uuid[], $3::int8[], $4::text[], $5::text[], $6::timestamptz[]) \
       AS t(id, seq, kind, body, occurred)";

fn bind_events<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    sku: &'q Sku,
    rows: &'q Numbered,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(sku.as_str())
        .bind(&rows.ids)
        .bind(&rows.sequences)
        .bind(&rows.kinds)
        .bind(&rows.bodies)
        .bind(&rows.occurred)
        .bind(rows.recorded_at)
}

/// Appends `drafts` (in the order given) to the SKU's events, numbering them after the SKU's
/// last sequence (see [`recorded_kinds`]). Returns how many were recorded.
///
/// Must run inside the transaction that records the change. The number is taken with an
/// `UPDATE ... RETURNING` of the SKU's inventory row, which holds the row until commit: every
/// writer of the SKU's events goes through that row, so the numbers commit in order.
pub(super) async fn append(
    tx: &mut PgConnection,
    sku: &Sku,
    drafts: Vec<Draft>,
    filter: EventFilter,
) -> Result<usize, StoreError> {
    let drafts = recorded_kinds(drafts, filter);
    if drafts.is_empty() {
        return Ok(0);
    }
    let count = drafts.len() as i64;
    let last: i64 = sqlx::query_scalar(
        "UPDATE inventory SET last_event_seq = last_event_seq + $2 WHERE sku = $1 \
         RETURNING last_event_seq",
    )
    .bind(sku.as_str())
    .bind(count)
    .fetch_one(&mut *tx)
    .await?;
    let rows = number(sku, drafts, last - count)?;
    bind_events(sqlx::query(INSERT_EVENTS), sku, &rows)
        .execute(&mut *tx)
        .await?;
    metrics::counter!("flashgate_outbox_recorded_total").increment(rows.ids.len() as u64);
    Ok(rows.ids.len())
}

/// A settlement batch's last statement: its events (already filtered, see [`recorded_kinds`])
/// numbered after `last_sequence` — the SKU's `last_event_seq` as the batch read it under the
/// inventory row lock it holds — and the settlement cursor advanced from `from` to `through`,
/// in one round trip: a batch with events costs no more round trips than one without, and each
/// group commit waits for one statement less. Errs, so the batch rolls back, unless the
/// sequence and the cursor were still what the batch read.
pub(super) async fn append_and_advance(
    tx: &mut PgConnection,
    sku: &Sku,
    drafts: Vec<Draft>,
    last_sequence: i64,
    from: &str,
    through: &str,
) -> Result<usize, StoreError> {
    let count = drafts.len() as i64;
    let rows = number(sku, drafts, last_sequence)?;
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH recorded AS ({INSERT_EVENTS} RETURNING 1), \
               numbered AS (UPDATE inventory SET last_event_seq = $8 + $9 \
                 WHERE sku = $1 AND last_event_seq = $8 RETURNING 1), \
               advanced AS (UPDATE settlement_cursor SET last_event_id = $10, updated_at = now() \
                 WHERE sku = $1 AND last_event_id = $11 RETURNING 1) \
             SELECT (SELECT count(*) FROM recorded), (SELECT count(*) FROM numbered), \
               (SELECT count(*) FROM advanced)"
        )
    });
    let (recorded, numbered, advanced): (i64, i64, i64) =
        bind_events(sqlx::query(STATEMENT.as_str()), sku, &rows)
            .bind(last_sequence)
            .bind(count)
            .bind(through)
            .bind(from)
            .try_map(|row: sqlx::postgres::PgRow| {
                use sqlx::Row as _;
                Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
            })
            .fetch_one(&mut *tx)
            .await?;
    if (recorded, numbered, advanced) != (count, 1, 1) {
        return Err(StoreError::Invariant(format!(
            "{sku}: {recorded} of {count} events recorded, sequence moved {numbered}, \
             cursor advanced {advanced}"
        )));
    }
    metrics::counter!("flashgate_outbox_recorded_total").increment(count as u64);
    Ok(count as usize)
}

/// One outbox row as a relay sends it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub sku: String,
    pub sequence: i64,
    pub kind: String,
    pub body: String,
    pub occurred_at: DateTime<Utc>,
}

/// Rows a relay holds for one sink: a transaction holding the advisory lock of each of their
/// SKUs, so no other relay sends those SKUs meanwhile. Dropped without [`Claim::finish`], it
/// rolls back and the rows are sent again later.
#[derive(Debug)]
pub struct Claim {
    tx: Transaction<'static, Postgres>,
    sink: Sink,
    /// Per SKU, the events after the sink's cursor, in sequence order.
    pub rows: Vec<OutboxRow>,
}

impl Claim {
    /// Moves each SKU's cursor for this claim's sink over the rows in `done` (per SKU a prefix
    /// of the claim's rows: confirmed by the sink, or given up), and ends the claim.
    pub async fn finish(mut self, done: &[Uuid]) -> Result<(), StoreError> {
        let done: std::collections::HashSet<&Uuid> = done.iter().collect();
        let mut through: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for row in self.rows.iter().filter(|r| done.contains(&r.id)) {
            let last = through.entry(row.sku.as_str()).or_insert(row.sequence);
            *last = (*last).max(row.sequence);
        }
        if !through.is_empty() {
            sqlx::query(
                "INSERT INTO outbox_cursor (sku, sink, sent_through) \
                 SELECT t.sku, $1, t.through FROM UNNEST($2::text[], $3::int8[]) AS t(sku, through) \
                 ON CONFLICT (sku, sink) DO UPDATE \
                 SET sent_through = GREATEST(outbox_cursor.sent_through, EXCLUDED.sent_through), \
                     updated_at = now()",
            )
            .bind(self.sink.as_str())
            .bind(through.keys().copied().collect::<Vec<_>>())
            .bind(through.values().copied().collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }

    /// Records `given_up` (the webhook's retry period ran out): they are skipped, and stay
    /// readable through the pull API. The caller passes them to [`Claim::finish`] too.
    pub async fn give_up(&mut self, given_up: &[Uuid], reason: &str) -> Result<(), StoreError> {
        let rows: Vec<&OutboxRow> = self
            .rows
            .iter()
            .filter(|r| given_up.contains(&r.id))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO webhook_given_up (event_id, sku, sequence, reason) \
             SELECT t.id, t.sku, t.seq, $4 FROM UNNEST($1::uuid[], $2::text[], $3::int8[]) \
               AS t(id, sku, seq) \
             ON CONFLICT DO NOTHING",
        )
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.sku.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(reason)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

/// A SKU's events still to send to one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Backlog {
    pub sku: String,
    pub pending: i64,
    /// The decision time of the first event not sent (`None` when it was pruned meanwhile).
    pub oldest: Option<DateTime<Utc>>,
}

/// The advisory-lock class of the relays (`pg_try_advisory_xact_lock(class, hashtext(sku))`);
/// one per sink so the two sinks never wait for each other.
fn lock_class(sink: Sink) -> i32 {
    match sink {
        Sink::Amqp => 0x0f1a_5401,
        Sink::Webhook => 0x0f1a_5402,
    }
}

/// Most SKUs one claim takes.
const SKUS_PER_CLAIM: i64 = 500;

impl Store {
    /// Claims up to about `limit` unsent rows for `sink`: the SKUs with events after their
    /// cursor whose lock no other relay holds (leaving out `skip`), and each one's events after
    /// the cursor, in sequence order. `None` when nothing is to be sent (or all of it is
    /// claimed by other relays).
    pub async fn claim_events(
        &self,
        sink: Sink,
        limit: usize,
        skip: &[String],
    ) -> Result<Option<Claim>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let skus: Vec<String> = sqlx::query_scalar(
            "SELECT sku FROM (SELECT i.sku FROM inventory i \
               LEFT JOIN outbox_cursor c ON c.sku = i.sku AND c.sink = $1 \
               WHERE i.last_event_seq > COALESCE(c.sent_through, 0) AND NOT (i.sku = ANY($2)) \
               ORDER BY i.sku LIMIT $3) candidates \
             WHERE pg_try_advisory_xact_lock($4, hashtext(sku))",
        )
        .bind(sink.as_str())
        .bind(skip.to_vec())
        .bind(SKUS_PER_CLAIM)
        .bind(lock_class(sink))
        .fetch_all(&mut *tx)
        .await?;
        if skus.is_empty() {
            return Ok(None);
        }
        // Read the cursors again now that the locks are held: the statement above saw them
        // before, and a relay that held a lock then may have moved its SKU's cursor since.
        let per_sku = (limit / skus.len()).max(50) as i64;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT e.id, e.sku, e.sequence, e.kind, e.body, e.occurred_at \
             FROM UNNEST($2::text[]) AS s(sku) \
             LEFT JOIN outbox_cursor c ON c.sku = s.sku AND c.sink = $1 \
             CROSS JOIN LATERAL (SELECT * FROM event_outbox e \
               WHERE e.sku = s.sku AND e.sequence > COALESCE(c.sent_through, 0) \
               ORDER BY e.sequence LIMIT $3) e \
             ORDER BY e.sku, e.sequence",
        )
        .bind(sink.as_str())
        .bind(&skus)
        .bind(per_sku)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(Claim { tx, sink, rows }))
    }

    /// Per SKU with events not yet sent to `sink`: how many, and the first one's decision time.
    pub async fn event_backlog(&self, sink: Sink) -> Result<Vec<Backlog>, StoreError> {
        let rows: Vec<(String, i64, Option<DateTime<Utc>>)> = super::timed(
            "event_backlog",
            sqlx::query_as(
                "SELECT i.sku, i.last_event_seq - COALESCE(c.sent_through, 0), e.occurred_at \
                 FROM inventory i \
                 LEFT JOIN outbox_cursor c ON c.sku = i.sku AND c.sink = $1 \
                 LEFT JOIN event_outbox e \
                   ON e.sku = i.sku AND e.sequence = COALESCE(c.sent_through, 0) + 1 \
                 WHERE i.last_event_seq > COALESCE(c.sent_through, 0) ORDER BY i.sku",
            )
            .bind(sink.as_str())
            .fetch_all(&self.pool),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(sku, pending, oldest)| Backlog {
                sku,
                pending,
                oldest,
            })
            .collect())
    }

    /// Deletes up to `limit` rows recorded more than `retention` ago that every sink in `done`
    /// has sent (every such row when `done` is empty: a pull-only deployment keeps events for
    /// the retention period). Returns how many went.
    pub async fn prune_events(
        &self,
        retention: Duration,
        done: &[Sink],
        limit: i64,
    ) -> Result<u64, StoreError> {
        let cutoff =
            Utc::now() - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
        let sinks: Vec<&str> = done.iter().map(|s| s.as_str()).collect();
        let pruned = sqlx::query(
            "DELETE FROM event_outbox WHERE (sku, sequence) IN (SELECT e.sku, e.sequence \
               FROM event_outbox e WHERE e.recorded_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM UNNEST($2::text[]) AS s(sink) \
                   WHERE NOT EXISTS (SELECT 1 FROM outbox_cursor c \
                     WHERE c.sku = e.sku AND c.sink = s.sink AND c.sent_through >= e.sequence)) \
               LIMIT $3)",
        )
        .bind(cutoff)
        .bind(&sinks)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(pruned)
    }

    /// Events recorded but not yet sent to `sink`, over every SKU.
    pub async fn events_unsent(&self, sink: Sink) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(sum(i.last_event_seq - COALESCE(c.sent_through, 0)), 0)::int8 \
             FROM inventory i LEFT JOIN outbox_cursor c ON c.sku = i.sku AND c.sink = $1",
        )
        .bind(sink.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// The SKU's events after sequence `after`, in order, at most `limit`: the stored bodies,
    /// exactly as the sinks send them. `None` for an unknown SKU.
    pub async fn events_after(
        &self,
        sku: &Sku,
        after: i64,
        limit: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let known: Option<i64> =
            sqlx::query_scalar("SELECT last_event_seq FROM inventory WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            return Ok(None);
        }
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM event_outbox WHERE sku = $1 AND sequence > $2 \
             ORDER BY sequence LIMIT $3",
        )
        .bind(sku.as_str())
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(bodies))
    }

    /// Records `drafts` for the SKU in a transaction of their own (a change Postgres made
    /// outside settlement, such as the end of a resync).
    pub async fn record_events(&self, sku: &Sku, drafts: Vec<Draft>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let recorded = append(&mut tx, sku, drafts, self.events).await?;
        self.commit_recorded(tx, recorded).await
    }

    /// Commits `tx`; when it recorded events, wakes this process's relays.
    pub(super) async fn commit_recorded(
        &self,
        tx: Transaction<'static, Postgres>,
        recorded: usize,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        if recorded > 0 {
            self.signal_recorded();
        }
        Ok(())
    }
}
