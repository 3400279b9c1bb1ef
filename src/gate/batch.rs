//! Admission batching for a hot SKU (`FLASHGATE_RESERVE_BATCH`): reserves of one SKU that queue
//! up in this gate go to Redis as one `lua/reserve_batch.lua` call, decided in arrival order with
//! exactly `reserve.lua`'s semantics (the batch script runs `reserve.lua` itself per request).
//!
//! Each SKU has one worker task fed by a channel. It takes the first request waiting, adds what
//! is already queued (up to the batch size; `FLASHGATE_RESERVE_BATCH_WAIT_US` lets it wait that
//! long for more) and sends the batch; up to [`BATCHES_IN_FLIGHT`] batches of a SKU are in
//! flight at once, so an idle gate adds no latency and a busy one fills its batches while the
//! previous ones are decided.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::{Cmd, Script};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::scripts::run_script;
use super::{Gate, GateError, GateInner};
use crate::domain::Sku;

/// Batches of one SKU sent and not yet answered, at most.
const BATCHES_IN_FLIGHT: usize = 4;

/// How reserves are batched (`FLASHGATE_RESERVE_BATCH`, `FLASHGATE_RESERVE_BATCH_WAIT_US`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveBatching {
    /// Most requests in one call; 1 sends each alone (no batching).
    pub max: usize,
    /// How long a batch waits for more requests; zero sends what is already queued.
    pub wait: Duration,
}

impl Default for ReserveBatching {
    fn default() -> Self {
        Self {
            max: 64,
            wait: Duration::ZERO,
        }
    }
}

/// The keys and arguments of one `reserve.lua` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReserveCall {
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

impl ReserveCall {
    /// Where `reserve.lua` takes the letters of the optional groups sent (ARGV[9]).
    const GROUPS: usize = 8;

    /// Appends one of `reserve.lua`'s optional groups: its letter, keys and arguments.
    pub fn add_group<const K: usize, const A: usize>(
        &mut self,
        letter: char,
        keys: [String; K],
        args: [String; A],
    ) {
        self.args[Self::GROUPS].push(letter);
        self.keys.extend(keys);
        self.args.extend(args);
    }

    /// `EVALSHA` of `reserve.lua` with this call's keys and arguments. Written straight into
    /// one command: `redis::ScriptInvocation` first copied each key and argument into a vector
    /// of its own, then all of them again into the command.
    pub fn command(&self, reserve: &Script) -> Cmd {
        let mut cmd = evalsha(
            reserve,
            self.keys.len() + self.args.len(),
            self.text_len(),
            self.keys.len(),
        );
        self.write_keys(&mut cmd);
        self.write_args(&mut cmd);
        cmd
    }

    /// `EVALSHA` of `reserve_batch.lua` deciding `calls` in order: every call's keys, then
    /// the number of calls and, per call, its key and argument counts (calls differ in which
    /// optional groups they send) and its arguments.
    pub fn batch_command(reserve_batch: &Script, calls: &[&ReserveCall]) -> Cmd {
        let keys: usize = calls.iter().map(|call| call.keys.len()).sum();
        let args: usize = calls.iter().map(|call| call.args.len() + 2).sum();
        let text: usize = calls.iter().map(|call| call.text_len() + 8).sum();
        let mut cmd = evalsha(reserve_batch, keys + args + 1, text, keys);
        for call in calls {
            call.write_keys(&mut cmd);
        }
        cmd.arg(calls.len());
        for call in calls {
            cmd.arg(call.keys.len()).arg(call.args.len());
            call.write_args(&mut cmd);
        }
        cmd
    }

    fn text_len(&self) -> usize {
        self.keys.iter().chain(&self.args).map(String::len).sum()
    }

    fn write_keys(&self, cmd: &mut Cmd) {
        for key in &self.keys {
            cmd.arg(key.as_str());
        }
    }

    fn write_args(&self, cmd: &mut Cmd) {
        for arg in &self.args {
            cmd.arg(arg.as_str());
        }
    }
}

/// The start of an `EVALSHA` of `script` with `keys` keys, sized for `values` keys and
/// arguments of `text` bytes in all.
fn evalsha(script: &Script, values: usize, text: usize, keys: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(3 + values, text + 64);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    cmd
}

struct Pending {
    call: ReserveCall,
    answer: oneshot::Sender<Result<String, GateError>>,
}

/// The per-SKU queues of this gate.
#[derive(Debug, Default)]
pub(super) struct Batcher {
    queues: Mutex<HashMap<Sku, mpsc::UnboundedSender<Pending>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending(..)")
    }
}

impl Gate {
    /// Whether reserves go through the batcher: batching is on, and a hold is answered when
    /// the master decided it (a `WAIT` for replicas needs the connection of its own decision).
    pub(super) fn batches_reserves(&self) -> bool {
        self.inner.settings.reserve_batching.max > 1
            && self.inner.settings.durability == super::Durability::Master
            && tokio::runtime::Handle::try_current().is_ok()
    }

    /// `reserve.lua`'s reply for `call`, decided in a batch with the SKU's other reserves.
    pub(super) async fn decide_batched(
        &self,
        sku: &Sku,
        call: ReserveCall,
    ) -> Result<String, GateError> {
        let (answer, answered) = oneshot::channel();
        let queue = self.batch_queue(sku);
        queue
            .send(Pending { call, answer })
            .map_err(|_| GateError::Unavailable("the reserve batcher stopped".into()))?;
        answered
            .await
            .map_err(|_| GateError::Unavailable("the reserve batch was dropped".into()))?
    }

    fn batch_queue(&self, sku: &Sku) -> mpsc::UnboundedSender<Pending> {
        let mut queues = self
            .inner
            .batcher
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(sku).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(work(
            Arc::downgrade(&self.inner),
            requests,
            self.inner.settings.reserve_batching,
        ));
        queues.insert(sku.clone(), queue.clone());
        queue
    }

    /// Decides `requests` in order, with the ids given: one `reserve.lua` call each, or all in
    /// one `reserve_batch.lua` call. The raw replies, for the test that proves the two agree.
    #[doc(hidden)]
    pub async fn decide_sequence(
        &self,
        requests: &[(crate::domain::ReservationId, super::ReserveRequest<'_>)],
        batched: bool,
    ) -> Result<Vec<String>, GateError> {
        let calls: Vec<ReserveCall> = requests
            .iter()
            .map(|(id, req)| self.reserve_call(req, *id, self.client_tiers(req).as_deref()))
            .collect();
        let mut conn = self.connection().await?;
        let scripts = &self.inner.scripts;
        if batched {
            let calls: Vec<&ReserveCall> = calls.iter().collect();
            let batch = ReserveCall::batch_command(&scripts.reserve_batch, &calls);
            return Ok(run_script(&scripts.reserve_batch, &batch, &mut conn).await?);
        }
        let mut replies = Vec::with_capacity(calls.len());
        for call in &calls {
            let command = call.command(&scripts.reserve);
            replies.push(run_script(&scripts.reserve, &command, &mut conn).await?);
        }
        Ok(replies)
    }

    /// Sends one batch and hands each request its reply.
    async fn send_batch(&self, batch: Vec<Pending>) {
        metrics::histogram!("flashgate_reserve_batch_size").record(batch.len() as f64);
        let decided: Result<Vec<String>, GateError> = async {
            let mut conn = self.connection().await?;
            let scripts = &self.inner.scripts;
            if let [one] = batch.as_slice() {
                let command = one.call.command(&scripts.reserve);
                return Ok(vec![
                    run_script(&scripts.reserve, &command, &mut conn).await?,
                ]);
            }
            let calls: Vec<&ReserveCall> = batch.iter().map(|pending| &pending.call).collect();
            let command = ReserveCall::batch_command(&scripts.reserve_batch, &calls);
            let replies: Vec<String> =
                run_script(&scripts.reserve_batch, &command, &mut conn).await?;
            if replies.len() != batch.len() {
                return Err(GateError::Protocol(format!(
                    "reserve_batch.lua answered {} replies to {} requests",
                    replies.len(),
                    batch.len()
                )));
            }
            Ok(replies)
        }
        .await;
        match decided {
            Ok(replies) => {
                for (pending, reply) in batch.into_iter().zip(replies) {
                    // A caller that went away (its request timed out) is answered by nobody.
                    let _ = pending.answer.send(Ok(reply));
                }
            }
            Err(err) => {
                for pending in batch {
                    let _ = pending.answer.send(Err(err.clone()));
                }
            }
        }
    }
}

/// One SKU's worker: forms batches in arrival order while the gate lives.
async fn work(
    gate: Weak<GateInner>,
    mut requests: mpsc::UnboundedReceiver<Pending>,
    batching: ReserveBatching,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        // A place for the batch first: while every place is taken, requests queue up and the
        // next batch is fuller.
        let Ok(place) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = requests.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + batching.wait;
        while batch.len() < batching.max {
            match requests.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) if batching.wait.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, requests.recv()).await {
                    Ok(Some(pending)) => batch.push(pending),
                    _ => break,
                },
            }
        }
        let Some(inner) = gate.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            Gate { inner }.send_batch(batch).await;
            drop(place);
        });
    }
}
