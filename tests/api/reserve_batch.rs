//! `reserve_batch.lua` decides exactly as `reserve.lua` called once per request in the same
//! order: random request sequences run through both, on two fresh namespaces of the same Redis,
//! and every reply and the final state must agree (times and stream ids aside, which come from
//! Redis's clock).

use std::time::Duration;

use flashgate::domain::{
    BuyerId, ClientAddr, HoldReference, IdempotencyKey, Quantity, ReservationId, Sku,
};
use flashgate::gate::{
    BuyerRate, ClientHoldCaps, Gate, GateSettings, HoldQuota, Namespace, RedisSettings,
    ReserveRequest,
};
use proptest::prelude::*;

use crate::helpers::{delete_namespace, on_cluster, redis_url};

#[derive(Debug, Clone)]
struct Request {
    buyer: u8,
    key: u8,
    quantity: u32,
    client: u8,
    reference: bool,
}

fn request() -> impl Strategy<Value = Request> {
    (0..4u8, 0..3u8, 1..=3u32, 0..4u8, any::<bool>()).prop_map(
        |(buyer, key, quantity, client, reference)| Request {
            buyer,
            key,
            quantity,
            client,
            reference,
        },
    )
}

fn gate(namespace: &Namespace) -> Gate {
    Gate::connect(
        &RedisSettings {
            cluster: on_cluster(),
            ..RedisSettings::new(&redis_url(), 4, Duration::from_secs(5))
        },
        GateSettings {
            namespace: namespace.clone(),
            idempotency_ttl: Duration::from_secs(3600),
            // Tight enough that a sequence meets every check: 2 attempts a second, burst 4; 3
            // live holds per client; 5 holds per buyer per hour.
            buyer_rate: Some(BuyerRate {
                per_second: 2.0,
                burst: 4,
            }),
            sold_out_shortcut: false,
            holds_per_client: ClientHoldCaps::per_client(3),
            hold_quota: Some(HoldQuota {
                holds: 5,
                window: Duration::from_secs(3600),
            }),
            durability: Default::default(),
            reservation_seal: None,
            waiting_room: Default::default(),
            reserve_batching: Default::default(),
        },
    )
    .expect("gate")
}

/// The parts of a reply (one string, a newline between fields) that do not come from the clock.
fn comparable(reply: &str) -> Vec<&str> {
    let fields: Vec<&str> = reply.split('\n').collect();
    match fields.first() {
        // tag, id, q, price, cur, (created, expires), status
        Some(&("created" | "replayed")) => [0, 1, 2, 3, 4, 7]
            .iter()
            .filter_map(|&i| fields.get(i).copied())
            .collect(),
        // A retry-after or a quota window's end is a time.
        Some(&"refused") if matches!(fields[1], "rate_limited" | "hold_quota_reached") => {
            fields[..2].to_vec()
        }
        _ => fields,
    }
}

/// Everything the decisions wrote, read back without the clock's parts.
async fn state(gate: &Gate, namespace: &Namespace, ids: &[ReservationId]) -> Vec<String> {
    let keys = namespace.sku(&Sku::parse("hot").expect("sku"));
    let mut conn = gate.raw_connection().await.expect("redis");
    let mut out = Vec::new();
    let get = |key: String| redis::cmd("GET").arg(key).clone();
    let mut pipe = redis::pipe();
    pipe.add_command(get(keys.stock()));
    let mut records = redis::cmd("MGET");
    for b in 0..4 {
        let buyer = BuyerId::parse(&format!("b{b}")).expect("buyer");
        pipe.add_command(get(keys.buyer(&buyer)));
        pipe.add_command(get(keys.hold_quota(&buyer)));
        for k in 0..3 {
            let key = IdempotencyKey::parse(&format!("k{k}")).expect("key");
            records.arg(keys.idempotency(&buyer, &key));
        }
    }
    let records: Vec<Option<String>> = records
        .query_async(&mut conn)
        .await
        .expect("idempotency records");
    // status, id, q, price, cur, (created, expires), fingerprint
    out.extend(records.into_iter().map(|record| {
        record.map_or_else(String::new, |record| {
            let fields: Vec<&str> = record.split('\n').collect();
            [0, 1, 2, 3, 4, 7]
                .iter()
                .filter_map(|&i| fields.get(i).copied())
                .collect::<Vec<_>>()
                .join(" ")
        })
    }));
    for c in 1..4 {
        pipe.add_command(get(keys.client(&format!("192.0.2.{c}"))));
    }
    let counts = pipe.cmd_iter().count();
    for id in ids {
        pipe.add_command(
            redis::cmd("HMGET")
                .arg(keys.hold(*id))
                .arg(&["status", "hold", "client", "ref"])
                .clone(),
        );
    }
    let values: Vec<redis::Value> = pipe.query_async(&mut conn).await.expect("state");
    let (counts, holds) = values.split_at(counts);
    out.extend(counts.iter().map(|value| format!("{value:?}")));
    for hold in holds {
        let fields: Vec<Option<String>> = redis::from_redis_value_ref(hold).expect("HMGET");
        out.push(
            fields
                .iter()
                .map(|field| field.as_deref().map_or_else(String::new, untimed))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    // Members only: the holds' deadlines are times, and a set has no order.
    for members in [
        redis::cmd("ZRANGE")
            .arg(keys.holds())
            .arg(0)
            .arg(-1)
            .clone(),
        redis::cmd("SMEMBERS").arg(keys.buyers()).clone(),
    ] {
        let mut members: Vec<String> = members.query_async(&mut conn).await.expect("members");
        members.sort_unstable();
        out.push(members.join(" "));
    }
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(keys.events())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    for (_, fields) in entries {
        // Every field but the times, in the order written.
        out.push(
            fields
                .into_iter()
                .filter(|(name, _)| name != "created" && name != "expires")
                .map(|(name, value)| format!("{name}={}", untimed(&value)))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    out
}

/// A hold's packed fields (lua/hold.lua: the hash's `hold` and its stream entry's) without the
/// two times they end with; any other value as it is.
fn untimed(value: &str) -> String {
    let fields: Vec<&str> = value.split('\n').collect();
    if fields.len() == 8 {
        fields[..6].join("|")
    } else {
        value.to_owned()
    }
}

async fn open_sale(gate: &Gate, namespace: &Namespace, stock: u32) {
    let keys = namespace.sku(&Sku::parse("hot").expect("sku"));
    let mut conn = gate.raw_connection().await.expect("redis");
    let _: () = redis::pipe()
        .hset_multiple(
            keys.meta(),
            &[
                ("state", "open"),
                ("starts_ms", "0"),
                ("ends_ms", "0"),
                ("limit", "3"),
                ("ttl_s", "300"),
                ("price", "9.99"),
                ("currency", "USD"),
                ("name", "Hot"),
            ],
        )
        .set(keys.stock(), stock)
        .query_async(&mut conn)
        .await
        .expect("open the sale");
}

async fn equivalent(requests: Vec<Request>, stock: u32) -> Result<(), TestCaseError> {
    let one_by_one =
        Namespace::parse(&format!("fgbatch-{}", uuid::Uuid::new_v4().simple())).expect("namespace");
    let batched =
        Namespace::parse(&format!("fgbatch-{}", uuid::Uuid::new_v4().simple())).expect("namespace");
    let (alone_gate, batch_gate) = (gate(&one_by_one), gate(&batched));
    open_sale(&alone_gate, &one_by_one, stock).await;
    open_sale(&batch_gate, &batched, stock).await;
    let sku = Sku::parse("hot").expect("sku");
    let buyers: Vec<BuyerId> = (0..4)
        .map(|b| BuyerId::parse(&format!("b{b}")).expect("buyer"))
        .collect();
    let keys: Vec<IdempotencyKey> = (0..3)
        .map(|k| IdempotencyKey::parse(&format!("k{k}")).expect("key"))
        .collect();
    let clients = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        .map(|ip| ClientAddr::of(ip.parse().expect("an IPv4 address")));
    let reference = HoldReference::parse("order-1").expect("reference");
    let ids: Vec<ReservationId> = requests
        .iter()
        .map(|_| ReservationId::generate(1))
        .collect();
    let calls: Vec<(ReservationId, ReserveRequest<'_>)> = requests
        .iter()
        .zip(&ids)
        .map(|(r, id)| {
            (
                *id,
                ReserveRequest {
                    sku: &sku,
                    buyer: &buyers[usize::from(r.buyer)],
                    quantity: Quantity::parse(i64::from(r.quantity)).expect("quantity"),
                    idempotency_key: &keys[usize::from(r.key)],
                    client: (r.client > 0).then(|| clients[usize::from(r.client) - 1]),
                    reference: r.reference.then_some(&reference),
                    metadata: None,
                    ticket: None,
                },
            )
        })
        .collect();
    let alone = alone_gate
        .decide_sequence(&calls, false)
        .await
        .expect("one by one");
    let together = batch_gate
        .decide_sequence(&calls, true)
        .await
        .expect("batched");
    let alone_state = state(&alone_gate, &one_by_one, &ids).await;
    let together_state = state(&batch_gate, &batched, &ids).await;
    let servers: Vec<String> = redis_url().split(',').map(str::to_owned).collect();
    let _ = delete_namespace(&servers, &one_by_one);
    let _ = delete_namespace(&servers, &batched);
    prop_assert_eq!(alone.len(), together.len());
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        prop_assert_eq!(
            comparable(a),
            comparable(b),
            "reply {} of {:?}",
            i,
            requests
        );
    }
    prop_assert_eq!(alone_state, together_state);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn a_batch_decides_as_the_same_requests_one_by_one(
        requests in prop::collection::vec(request(), 1..48),
        stock in 0..12u32,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(equivalent(requests, stock))?;
    }
}
