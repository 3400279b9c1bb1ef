//! The Lua decision scripts, loaded once.
//!
//! `redis::Script` sends `EVALSHA` and, when Redis answers `NOSCRIPT` (after `SCRIPT FLUSH` or a
//! restart), loads the script and retries, so no start-up `SCRIPT LOAD` is needed.

use redis::Script;

/// Every script the gate runs. Each script's header comment lists its KEYS, ARGV and reply.
#[derive(Debug)]
pub struct Scripts {
    pub reserve: Script,
    pub prewarm: Script,
    pub reject: Script,
}

impl Scripts {
    pub fn load() -> Self {
        Self {
            reserve: Script::new(include_str!("../../lua/reserve.lua")),
            prewarm: Script::new(include_str!("../../lua/prewarm.lua")),
            reject: Script::new(include_str!("../../lua/reject.lua")),
        }
    }
}
