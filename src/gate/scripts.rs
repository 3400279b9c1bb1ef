//! The Lua decision scripts, loaded once. `lua/room.lua` is not a script but the waiting room's
//! rules, put in front of each script that moves the line; `lua/idempotency.lua` is the
//! idempotency record's format, put in front of each script that writes, reads or moves one;
//! `lua/sale.lua` packs the sale's `decide` field, put in front of reserve.lua and of each
//! script that writes the sale's meta hash; `lua/hold.lua` packs and reads a hold's fields (its
//! hash and its stream entry), in front of each script that writes or reads them.
//!
//! `redis::Script` sends `EVALSHA` and, when Redis answers `NOSCRIPT` (after `SCRIPT FLUSH` or a
//! restart), loads the script and retries, so no start-up `SCRIPT LOAD` is needed. Reserves
//! write their `EVALSHA` themselves (`batch::ReserveCall`, the hot path) and send it through
//! [`run_script`], which does the same.

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind};

/// Every script the gate runs. Each script's header comment lists its KEYS, ARGV and reply.
#[derive(Debug)]
pub struct Scripts {
    pub reserve: Script,
    pub reserve_batch: Script,
    pub take_place: Script,
    pub room_state: Script,
    pub transition: Script,
    pub load_sale: Script,
    pub reject: Script,
    pub sale_admin: Script,
    pub adjust_sale: Script,
    pub restore_hold: Script,
    pub fence_stream: Script,
    pub rerecord_hold: Script,
    pub due_holds: Script,
    pub halt_sale: Script,
    pub set_buyer_counts: Script,
    pub claim_lease: Script,
    pub release_lease: Script,
}

impl Scripts {
    pub fn load() -> Self {
        Self {
            reserve: Script::new(concat!(
                include_str!("../../lua/idempotency.lua"),
                include_str!("../../lua/sale.lua"),
                include_str!("../../lua/hold.lua"),
                include_str!("../../lua/room.lua"),
                include_str!("../../lua/reserve.lua")
            )),
            reserve_batch: Script::new(concat!(
                include_str!("../../lua/idempotency.lua"),
                include_str!("../../lua/sale.lua"),
                include_str!("../../lua/hold.lua"),
                include_str!("../../lua/room.lua"),
                "local function decide(KEYS, ARGV)\n",
                include_str!("../../lua/reserve.lua"),
                "\nend\n",
                include_str!("../../lua/reserve_batch.lua")
            )),
            take_place: Script::new(concat!(
                include_str!("../../lua/room.lua"),
                include_str!("../../lua/take_place.lua")
            )),
            room_state: Script::new(concat!(
                include_str!("../../lua/room.lua"),
                include_str!("../../lua/room_state.lua")
            )),
            transition: Script::new(concat!(
                include_str!("../../lua/idempotency.lua"),
                include_str!("../../lua/hold.lua"),
                include_str!("../../lua/transition.lua")
            )),
            load_sale: Script::new(concat!(
                include_str!("../../lua/sale.lua"),
                include_str!("../../lua/load_sale.lua")
            )),
            reject: Script::new(concat!(
                include_str!("../../lua/idempotency.lua"),
                include_str!("../../lua/reject.lua")
            )),
            sale_admin: Script::new(concat!(
                include_str!("../../lua/sale.lua"),
                include_str!("../../lua/sale_admin.lua")
            )),
            adjust_sale: Script::new(concat!(
                include_str!("../../lua/sale.lua"),
                include_str!("../../lua/adjust_sale.lua")
            )),
            restore_hold: Script::new(concat!(
                include_str!("../../lua/idempotency.lua"),
                include_str!("../../lua/hold.lua"),
                include_str!("../../lua/restore_hold.lua")
            )),
            fence_stream: Script::new(include_str!("../../lua/fence_stream.lua")),
            rerecord_hold: Script::new(concat!(
                include_str!("../../lua/hold.lua"),
                include_str!("../../lua/rerecord_hold.lua")
            )),
            due_holds: Script::new(include_str!("../../lua/due_holds.lua")),
            halt_sale: Script::new(concat!(
                include_str!("../../lua/sale.lua"),
                include_str!("../../lua/halt_sale.lua")
            )),
            set_buyer_counts: Script::new(include_str!("../../lua/set_buyer_counts.lua")),
            claim_lease: Script::new(include_str!("../../lua/claim_lease.lua")),
            release_lease: Script::new(include_str!("../../lua/release_lease.lua")),
        }
    }
}

/// Sends `command`, an `EVALSHA` of `script`; after `NOSCRIPT` loads the script and sends the
/// command again, as `redis::ScriptInvocation::invoke_async` does.
pub(super) async fn run_script<T: FromRedisValue>(
    script: &Script,
    command: &Cmd,
    conn: &mut impl ConnectionLike,
) -> RedisResult<T> {
    match command.query_async(conn).await {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(conn).await?;
            command.query_async(conn).await
        }
        answered => answered,
    }
}
