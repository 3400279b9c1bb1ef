//! The event outbox (docs/DESIGN.md §11): events appended in the transaction that records their
//! change, claimed by relays SKU by SKU, marked per sink, pruned after the retention period.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::Sku;
use crate::events::{Draft, EventFilter};

/// Where a relay sends events; each sink marks its own column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// RabbitMQ: `published_at`.
    Amqp,
    /// The webhook: `webhook_at`.
    Webhook,
}

impl Sink {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Amqp => "amqp",
            Self::Webhook => "webhook",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Self::Amqp => "published_at",
            Self::Webhook => "webhook_at",
        }
    }
}

/// Appends `drafts` (in the order given) to the SKU's events, numbering them after the SKU's
/// last sequence. Drafts of kinds `filter` does not record are dropped before numbering, so the
/// sequence has no gaps among what consumers see.
///
/// Must run inside the transaction that records the change; the inventory row it updates
/// serialises every writer of the SKU's events (the settler's batch already holds it), so the
/// numbers commit in order.
pub(super) async fn append(
    tx: &mut PgConnection,
    sku: &Sku,
    drafts: Vec<Draft>,
    filter: EventFilter,
) -> Result<usize, StoreError> {
    let drafts: Vec<Draft> = drafts
        .into_iter()
        .filter(|d| filter.records(d.kind()))
        .collect();
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
    let first = last - count + 1;
    let recorded_at = Utc::now();
    let mut ids = Vec::with_capacity(drafts.len());
    let mut sequences = Vec::with_capacity(drafts.len());
    let mut kinds = Vec::with_capacity(drafts.len());
    let mut bodies = Vec::with_capacity(drafts.len());
    let mut occurred = Vec::with_capacity(drafts.len());
    for (n, draft) in drafts.into_iter().enumerate() {
        let event = draft.into_event(sku, first + n as i64, recorded_at);
        bodies.push(
            serde_json::to_string(&event)
                .map_err(|e| StoreError::Corrupt(format!("event of {sku}: {e}")))?,
        );
        ids.push(event.id);
        sequences.push(event.sequence);
        kinds.push(event.kind().as_str());
        occurred.push(event.occurred_at);
    }
    sqlx::query(
        "INSERT INTO event_outbox (id, sku, sequence, kind, body, occurred_at, recorded_at) \
         SELECT t.id, $1, t.seq, t.kind, t.body, t.occurred, $7 \
         FROM UNNEST($2::uuid[], $3::int8[], $4::text[], $5::text[], $6::timestamptz[]) \
           AS t(id, seq, kind, body, occurred)",
    )
    .bind(sku.as_str())
    .bind(&ids)
    .bind(&sequences)
    .bind(&kinds)
    .bind(&bodies)
    .bind(&occurred)
    .bind(recorded_at)
    .execute(&mut *tx)
    .await?;
    metrics::counter!("flashgate_outbox_recorded_total").increment(ids.len() as u64);
    Ok(ids.len())
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
    /// Per SKU, its oldest unsent rows in sequence order.
    pub rows: Vec<OutboxRow>,
}

impl Claim {
    /// Marks `sent` as sent to this claim's sink, and ends the claim.
    pub async fn finish(mut self, sent: &[Uuid]) -> Result<(), StoreError> {
        if !sent.is_empty() {
            let marked = sqlx::query(&format!(
                "UPDATE event_outbox SET {} = now() WHERE id = ANY($1)",
                self.sink.column()
            ))
            .bind(sent)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            if marked != sent.len() as u64 {
                // Pruned meanwhile, or marked by a relay that got there first: the sink has
                // them either way, so this is only worth a word.
                tracing::debug!(
                    marked,
                    sent = sent.len(),
                    "some sent events were already gone"
                );
            }
        }
        self.tx.commit().await?;
        Ok(())
    }

    /// Marks `given_up` as done for this sink without it having confirmed them (the webhook's
    /// retry period ran out): they stay readable through the pull API.
    pub async fn give_up(&mut self, given_up: &[Uuid]) -> Result<(), StoreError> {
        if given_up.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "UPDATE event_outbox SET {} = now(), webhook_gave_up = true WHERE id = ANY($1)",
            self.sink.column()
        ))
        .bind(given_up)
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
    pub oldest: DateTime<Utc>,
}

/// The advisory-lock class of the relays (`pg_try_advisory_xact_lock(class, hashtext(sku))`);
/// one per sink so the two sinks never wait for each other.
fn lock_class(sink: Sink) -> i32 {
    match sink {
        Sink::Amqp => 0x0f1a_5401,
        Sink::Webhook => 0x0f1a_5402,
    }
}

impl Store {
    /// Claims up to `limit` unsent rows for `sink`: the SKUs among the oldest unsent rows whose
    /// lock no other relay holds (leaving out `skip`), and their oldest unsent rows, in
    /// per-SKU sequence order. `None` when nothing is to be sent (or everything is claimed).
    ///
    /// Per SKU the rows are always a prefix of what is unsent: every writer of a SKU's events
    /// holds its inventory row until commit, so a row committed later has a larger sequence and
    /// a larger position.
    pub async fn claim_events(
        &self,
        sink: Sink,
        limit: usize,
        skip: &[String],
    ) -> Result<Option<Claim>, StoreError> {
        let column = sink.column();
        let mut tx = self.pool.begin().await?;
        let skus: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT sku FROM (SELECT DISTINCT sku FROM \
               (SELECT sku FROM event_outbox WHERE {column} IS NULL ORDER BY position LIMIT $1) oldest \
             WHERE NOT (sku = ANY($2))) candidates \
             WHERE pg_try_advisory_xact_lock($3, hashtext(sku))"
        ))
        .bind(limit as i64)
        .bind(skip.to_vec())
        .bind(lock_class(sink))
        .fetch_all(&mut *tx)
        .await?;
        if skus.is_empty() {
            return Ok(None);
        }
        let mut rows: Vec<OutboxRow> = sqlx::query_as(&format!(
            "SELECT id, sku, sequence, kind, body, occurred_at FROM event_outbox \
             WHERE {column} IS NULL AND sku = ANY($1) ORDER BY position LIMIT $2"
        ))
        .bind(&skus)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        rows.sort_by(|a, b| (&a.sku, a.sequence).cmp(&(&b.sku, b.sequence)));
        Ok(Some(Claim { tx, sink, rows }))
    }

    /// Per SKU, the events not yet sent to `sink` and the oldest one's decision time; at most
    /// `cap` rows are counted, so a huge backlog costs a bounded read.
    pub async fn event_backlog(&self, sink: Sink, cap: i64) -> Result<Vec<Backlog>, StoreError> {
        let column = sink.column();
        let rows: Vec<(String, i64, DateTime<Utc>)> = super::timed(
            "event_backlog",
            sqlx::query_as(&format!(
                "SELECT sku, count(*), min(occurred_at) FROM \
                   (SELECT sku, occurred_at FROM event_outbox WHERE {column} IS NULL \
                    ORDER BY position LIMIT $1) pending \
                 GROUP BY sku ORDER BY sku"
            ))
            .bind(cap)
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
    /// has marked (every row when `done` is empty: a pull-only deployment keeps events for
    /// the retention period). Returns how many went.
    pub async fn prune_events(
        &self,
        retention: Duration,
        done: &[Sink],
        limit: i64,
    ) -> Result<u64, StoreError> {
        let condition: String = done
            .iter()
            .map(|sink| format!(" AND {} IS NOT NULL", sink.column()))
            .collect();
        let pruned = sqlx::query(&format!(
            "DELETE FROM event_outbox WHERE id IN (SELECT id FROM event_outbox \
               WHERE recorded_at < now() - make_interval(secs => $1){condition} LIMIT $2)"
        ))
        .bind(retention.as_secs_f64())
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(pruned)
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
