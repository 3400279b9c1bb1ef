//! Redis key names (docs/DESIGN.md §4).
//!
//! Every key of one SKU is `<namespace>:{<sku>}:<name>`: the `{sku}` hash tag puts them all in
//! one cluster slot, so each Lua script touches a single slot and runs unchanged on Redis
//! Cluster. The namespace lets several deployments (and every test) share one Redis.

use crate::domain::{BuyerId, IdempotencyKey, ReservationId, Sku, ValidationError};

/// The validated key prefix of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    /// 1–64 characters of `A-Z a-z 0-9 . _ -`: no braces, which would steal the hash tag.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                "redis_namespace",
                "must be 1 to 64 characters of letters, digits, '.', '_' and '-'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The keys of one SKU.
    pub fn sku(&self, sku: &Sku) -> SkuKeys {
        SkuKeys {
            prefix: joined(&[&self.0, ":{", sku.as_str(), "}:"]),
        }
    }

    /// `<ns>:sku-numbers` — number → SKU, for routing reservation ids. Deliberately outside any
    /// SKU's slot: it is written by prewarm, never by a decision script.
    pub fn sku_numbers(&self) -> String {
        format!("{}:sku-numbers", self.0)
    }

    /// The pub/sub channel on which scripts announce that a SKU's units came back or its sale
    /// changed (see `gate::shortcut`).
    pub fn sale_changed_channel(&self) -> String {
        format!("{}:sale-changed", self.0)
    }

    /// A `SCAN MATCH` pattern for every key of this namespace.
    pub fn pattern(&self) -> String {
        format!("{}:*", self.0)
    }
}

/// The key names of one SKU, all sharing its hash tag.
#[derive(Debug, Clone)]
pub struct SkuKeys {
    prefix: String,
}

impl SkuKeys {
    /// `<namespace>:{<sku>}:`, for a script that derives the keys a hold names from its fields
    /// (`transition.lua`): it must build them exactly as the methods below do.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        joined(&[&self.prefix, name])
    }

    pub fn meta(&self) -> String {
        self.key("meta")
    }
    pub fn stock(&self) -> String {
        self.key("stock")
    }
    pub fn buyer(&self, buyer: &BuyerId) -> String {
        joined(&[&self.prefix, "buyer:", buyer.as_str()])
    }
    pub fn idempotency(&self, buyer: &BuyerId, key: &IdempotencyKey) -> String {
        joined(&[&self.prefix, "idem:", buyer.as_str(), ":", key.as_str()])
    }
    pub fn rate_limit(&self, buyer: &BuyerId) -> String {
        joined(&[&self.prefix, "rl:", buyer.as_str()])
    }
    /// Holds the buyer took on the SKU in the current quota window (`FLASHGATE_BUYER_HOLD_QUOTA`).
    pub fn hold_quota(&self, buyer: &BuyerId) -> String {
        joined(&[&self.prefix, "quota:", buyer.as_str()])
    }
    pub fn hold(&self, id: ReservationId) -> String {
        joined(&[
            &self.prefix,
            "hold:",
            id.encode(&mut ReservationId::text_buffer()),
        ])
    }
    /// What every hold key of the SKU starts with.
    pub fn hold_prefix(&self) -> String {
        self.key("hold:")
    }
    pub fn holds(&self) -> String {
        self.key("holds")
    }
    pub fn events(&self) -> String {
        self.key("events")
    }
    /// Every buyer who got a hold on the SKU.
    pub fn buyers(&self) -> String {
        self.key("buyers")
    }
    /// The SKU's sharded pub/sub channel on a cluster (see `gate::shortcut`).
    pub fn sale_changed(&self) -> String {
        self.key("sale-changed")
    }
    /// The waiting room's line (see `lua/room.lua`).
    pub fn room(&self) -> String {
        self.key("room")
    }
    /// When the room's frontier passed each value (see `lua/room.lua`).
    pub fn room_admits(&self) -> String {
        self.key("room:admits")
    }
    /// Admitted places that took their hold.
    pub fn room_used(&self) -> String {
        self.key("room:used")
    }
    /// One buyer's place in the room's line.
    pub fn room_place(&self, buyer: &BuyerId) -> String {
        joined(&[&self.prefix, "room:place:", buyer.as_str()])
    }
    /// Places handed out to one client address (IPv4, or IPv6 /64).
    pub fn room_client(&self, client: &str) -> String {
        joined(&[&self.prefix, "room:client:", client])
    }
    /// The state of one background resync job, as JSON.
    pub fn resync_job(&self, job: uuid::Uuid) -> String {
        self.key(&format!("resync:{job}"))
    }
    /// The id of the SKU's running resync job, if one runs: a second request answers it.
    pub fn resync_running(&self) -> String {
        self.key("resync:running")
    }
    /// Who is changing the sale right now (a lease): changes and prewarms of one sale wait
    /// for each other.
    pub fn sale_change(&self) -> String {
        self.key("sale-change")
    }
    /// The record of one admin operation on the sale (a restock under an `Idempotency-Key`).
    pub fn admin_operation(&self, key: &IdempotencyKey) -> String {
        joined(&[&self.prefix, "admin:", key.as_str()])
    }
    /// Live holds of one client tier on the SKU (`FLASHGATE_HOLDS_PER_CLIENT*`): an IPv4
    /// address or an IPv6 /64, /56 or /48, which carry no braces to steal the hash tag.
    pub fn client(&self, client: &str) -> String {
        joined(&[&self.prefix, "client:", client])
    }
    /// The live-hold counters of the client tiers a hold records (its `client` field: tiers
    /// narrowest first, space-separated), in the order the scripts take them. A tier the hold
    /// does not record is named by a key of the SKU the scripts leave alone.
    pub fn client_counters(&self, recorded: Option<&str>) -> [String; 3] {
        let mut tiers = recorded.unwrap_or("").split_whitespace();
        std::array::from_fn(|_| self.client(tiers.next().unwrap_or("")))
    }
}

/// `parts` one after the other, in a string allocated once at its final length: a reserve builds
/// a dozen keys, and `format!` went through the formatting machinery and grew its buffer for
/// each.
fn joined(parts: &[&str]) -> String {
    let mut joined = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        joined.push_str(part);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_sku_carries_its_hash_tag() {
        let ns = Namespace::parse("fg").expect("namespace");
        let keys = ns.sku(&Sku::parse("A-1").expect("sku"));
        let buyer = BuyerId::parse("b1").expect("buyer");
        let idem = IdempotencyKey::parse("k{x}:y").expect("key");
        for key in [
            keys.meta(),
            keys.stock(),
            keys.buyer(&buyer),
            keys.idempotency(&buyer, &idem),
            keys.rate_limit(&buyer),
            keys.hold(crate::domain::ReservationId::generate(7)),
            keys.holds(),
            keys.events(),
            keys.buyers(),
            keys.client("2001:db8:1:2::/64"),
            keys.admin_operation(&idem),
            keys.hold_prefix(),
            keys.sale_changed(),
            keys.resync_job(uuid::Uuid::new_v4()),
            keys.resync_running(),
            keys.sale_change(),
            keys.room(),
            keys.room_admits(),
            keys.room_used(),
            keys.room_place(&buyer),
            keys.room_client("192.0.2.1"),
        ] {
            assert!(key.starts_with("fg:{A-1}:"), "{key}");
        }
    }

    #[test]
    fn keys_are_named_as_the_key_schema_says() {
        // Redis already holds keys by these names: a gate that spelt one differently would not
        // find a live sale's holds, counts or idempotency records.
        let ns = Namespace::parse("fg").expect("namespace");
        let keys = ns.sku(&Sku::parse("A-1").expect("sku"));
        let buyer = BuyerId::parse("b1").expect("buyer");
        let idem = IdempotencyKey::parse("k{x}:y").expect("key");
        let id = crate::domain::ReservationId::generate(7);
        assert_eq!(keys.meta(), "fg:{A-1}:meta");
        assert_eq!(keys.buyer(&buyer), "fg:{A-1}:buyer:b1");
        assert_eq!(keys.idempotency(&buyer, &idem), "fg:{A-1}:idem:b1:k{x}:y");
        assert_eq!(keys.rate_limit(&buyer), "fg:{A-1}:rl:b1");
        assert_eq!(keys.hold_quota(&buyer), "fg:{A-1}:quota:b1");
        assert_eq!(keys.hold(id), format!("fg:{{A-1}}:hold:{}", id.as_uuid()));
        assert_eq!(keys.room_place(&buyer), "fg:{A-1}:room:place:b1");
        assert_eq!(
            keys.room_client("192.0.2.1"),
            "fg:{A-1}:room:client:192.0.2.1"
        );
        assert_eq!(keys.admin_operation(&idem), "fg:{A-1}:admin:k{x}:y");
        assert_eq!(
            keys.client("2001:db8::/64"),
            "fg:{A-1}:client:2001:db8::/64"
        );
    }

    #[test]
    fn namespace_refuses_braces() {
        assert!(Namespace::parse("a{b").is_err());
        assert!(Namespace::parse("").is_err());
        assert!(Namespace::parse("flashgate-test_1").is_ok());
    }
}
