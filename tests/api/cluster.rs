//! Redis Cluster: the gate refuses a Redis that is not what its settings say, and what must be
//! routed to a SKU's node is. (The rest of the suite runs on a cluster too: scripts/test.sh runs
//! it a second time with `FLASHGATE_REDIS_CLUSTER=true`.)

use std::time::{Duration, Instant};

use flashgate::domain::Sku;
use sqlx::PgPool;

use crate::helpers::{AppOptions, PrivateRedis, error_code, sale_body, spawn_app, spawn_app_with};

/// Two private `redis-server`s formed into a cluster: `first` serves slots 0–8191, `second`
/// 8192–16383. Stopped on drop.
struct TwoNodeCluster {
    first: PrivateRedis,
    /// Kept running for the test's length.
    _second: PrivateRedis,
}

impl TwoNodeCluster {
    fn start() -> Self {
        let node = || {
            PrivateRedis::start(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .expect("redis-server is not installed: run the suite through scripts/test.sh")
        };
        let (first, second) = (node(), node());
        let port = |url: &str| url.rsplit(':').next().expect("port").to_owned();
        let mut a = connection(&first.url);
        let mut b = connection(&second.url);
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(8191)
            .query(&mut a)
            .expect("ADDSLOTSRANGE");
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(8192)
            .arg(16383)
            .query(&mut b)
            .expect("ADDSLOTSRANGE");
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(port(&second.url))
            .query(&mut a)
            .expect("MEET");
        let started = Instant::now();
        loop {
            let ok = [&mut a, &mut b].into_iter().all(|conn| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(conn)
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return Self {
                    first,
                    _second: second,
                };
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the two-node cluster never reached cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A SKU whose keys live on `second`: a client of `first` alone gets `MOVED` for it.
    fn sku_on_second(&self) -> String {
        self.sku_where("moved", |slot| slot >= 8192)
    }

    /// A SKU named `prefix-N` whose keys live in a slot `wanted` accepts.
    fn sku_where(&self, prefix: &str, wanted: impl Fn(u16) -> bool) -> String {
        let mut conn = connection(&self.first.url);
        (0..)
            .map(|n| format!("{prefix}-{n}"))
            .find(|sku| {
                let slot: u16 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(format!("{{{sku}}}"))
                    .query(&mut conn)
                    .expect("KEYSLOT");
                wanted(slot)
            })
            .expect("some SKU hashes to the wanted slots")
    }

    /// The seed list of both masters, as `REDIS_URL` names a cluster.
    fn urls(&self) -> String {
        format!("{},{}", self.first.url, self._second.url)
    }

    /// Adds a replica of `first` (only `first`: `second` keeps none); returns it once in sync.
    fn replicate_first(&self) -> PrivateRedis {
        let replica =
            PrivateRedis::start(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .expect("redis-server");
        let port = |url: &str| url.rsplit(':').next().expect("port").to_owned();
        let mut first = connection(&self.first.url);
        let mut joining = connection(&replica.url);
        let first_id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut first)
            .expect("MYID");
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(port(&self.first.url))
            .query(&mut joining)
            .expect("MEET");
        let started = Instant::now();
        // REPLICATE needs the node to have heard of its master by gossip first; sent again once
        // accepted, it would restart the sync.
        while let Err(err) = redis::cmd("CLUSTER")
            .arg("REPLICATE")
            .arg(&first_id)
            .query::<()>(&mut joining)
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "REPLICATE never accepted: {err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            let synced = redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut joining)
                .is_ok_and(|info| info.contains("master_link_status:up"));
            if synced {
                return replica;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the replica never synced"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("client")
        .get_connection()
        .expect("connection")
}

/// `serve` on this Redis with this cluster setting: whether it succeeded and its stderr, once it
/// exited (`None`: it started listening).
fn serve(redis_url: &str, cluster: bool) -> Option<(bool, String)> {
    let cluster = cluster.to_string();
    crate::process::serve_against_redis(redis_url, &[("FLASHGATE_REDIS_CLUSTER", &cluster)]).map(
        |output| {
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        },
    )
}

#[test]
fn serve_refuses_a_cluster_node_behind_the_single_server_client() {
    let cluster = TwoNodeCluster::start();
    let (ok, stderr) = serve(&cluster.first.url, false).expect("serve exited");
    assert!(!ok);
    assert!(
        stderr.contains("REDIS_URL is a Redis Cluster node: set FLASHGATE_REDIS_CLUSTER=true"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_the_cluster_client_on_a_single_server() {
    let redis = PrivateRedis::start(&[])
        .expect("redis-server is not installed: run the suite through scripts/test.sh");
    let (ok, stderr) = serve(&redis.url, true).expect("serve exited");
    assert!(!ok);
    assert!(
        stderr.contains("FLASHGATE_REDIS_CLUSTER=true but REDIS_URL is not a Redis Cluster node"),
        "{stderr}"
    );
}

#[test]
fn several_urls_without_cluster_mode_are_refused() {
    let (ok, stderr) = serve("redis://127.0.0.1:1,redis://127.0.0.1:2", false).expect("exited");
    assert!(!ok);
    assert!(
        stderr.contains("REDIS_URL lists 2 nodes but FLASHGATE_REDIS_CLUSTER is not true"),
        "{stderr}"
    );
}

/// A `MOVED` used to count as an outage: 503 + `Retry-After` forever, which no retry can
/// cure. It is a configuration error: 500, logged as such, and no breaker trip.
#[sqlx::test]
async fn a_moved_reply_is_a_configuration_error_not_an_outage(pool: PgPool) {
    let cluster = TwoNodeCluster::start();
    let sku = cluster.sku_on_second();
    let app = spawn_app_with(pool, AppOptions::on_server(cluster.first.url.clone())).await;
    // A reserve first reads the sale's meta, in the SKU's slot: its node answers MOVED.
    for n in 0..10 {
        let reserve = app.reserve(&sku, "alice", &format!("k{n}"), 1).await;
        assert!(reserve.headers().get("retry-after").is_none());
        let (status, code, _) = error_code(reserve).await;
        assert_eq!((status, code.as_str()), (500, "internal_error"));
    }
    // Creating the sale runs a script whose KEYS name the namespace's channel too, outside the
    // SKU's slot: CROSSSLOT, the same configuration error.
    let put = app.put_sale(&sku, &sale_body(10, 1)).await;
    let (status, code, _) = error_code(put).await;
    assert_eq!((status, code.as_str()), (500, "internal_error"));
    assert!(
        !app.gate.breaker_open(),
        "a configuration error is not an outage: the breaker stays closed"
    );
}

/// The audit reads a SKU's holds with `SCAN`; on a cluster it must page the SKU's own node,
/// not whichever node the client picks, or it silently misses holds.
#[sqlx::test]
async fn the_audit_sees_every_hold_of_every_sku_wherever_it_lives(pool: PgPool) {
    let app = spawn_app(pool).await;
    let skus: Vec<String> = (0..12).map(|n| format!("spread-{n}")).collect();
    for sku in &skus {
        app.open_sale(sku, &sale_body(5, 5)).await;
        for key in ["k1", "k2"] {
            assert_eq!(app.reserve(sku, "alice", key, 1).await.status(), 201);
        }
    }
    for sku in &skus {
        let holds = app
            .gate
            .hold_summaries(&Sku::parse(sku).expect("sku"))
            .await
            .expect("holds");
        assert_eq!(holds.len(), 2, "{sku}: {holds:?}");
    }
}

/// The sweeper's look at which SKUs have a hold due: read against the latest master clock (every
/// master's `TIME` on a cluster, parsed from the client's per-node answer), then the earliest
/// deadline of each SKU in its own slot.
#[sqlx::test]
async fn the_sweeper_finds_the_skus_with_a_hold_due_wherever_they_live(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut due = Vec::new();
    let mut idle = Vec::new();
    for n in 0..6 {
        let sku = format!("due-{n}");
        let mut body = sale_body(5, 5);
        body["hold_ttl_seconds"] = serde_json::json!(1);
        app.open_sale(&sku, &body).await;
        if n % 2 == 0 {
            assert_eq!(app.reserve(&sku, "alice", "k", 1).await.status(), 201);
            due.push(Sku::parse(&sku).expect("sku"));
        } else {
            idle.push(Sku::parse(&sku).expect("sku"));
        }
    }
    let all: Vec<Sku> = due.iter().chain(&idle).cloned().collect();
    let mut before = app.gate.next_deadlines(&all).await.expect("deadlines");
    before.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    assert_eq!(
        before
            .iter()
            .map(|(sku, _)| sku.clone())
            .collect::<Vec<_>>(),
        due,
        "exactly the SKUs with a hold have a deadline"
    );
    assert!(
        before
            .iter()
            .all(|(_, due_in)| *due_in > Duration::ZERO && *due_in <= Duration::from_secs(1)),
        "nothing is due before the deadline: {before:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let after = app.gate.next_deadlines(&all).await.expect("deadlines");
    assert_eq!(after.len(), due.len());
    assert!(
        after.iter().all(|(_, due_in)| due_in.is_zero()),
        "every deadline has passed: {after:?}"
    );
}

/// `FLASHGATE_DURABILITY=replica` on a cluster: the redis crate routes a plain `WAIT` to every
/// master and answers the least count, so one master without a replica used to refuse every
/// reserve on every SKU (`503 not_replicated`), and each reserve waited on every master. The
/// decision is on the SKU's master alone: only its replicas count.
#[sqlx::test]
async fn replica_durability_on_a_cluster_waits_for_the_skus_own_master_only(pool: PgPool) {
    let cluster = TwoNodeCluster::start();
    let _replica = cluster.replicate_first();
    let replicated = cluster.sku_where("replicated", |slot| slot < 8192);
    let lonely = cluster.sku_where("lonely", |slot| slot >= 8192);
    let app = spawn_app_with(
        pool,
        AppOptions {
            redis_url: cluster.urls(),
            redis_cluster: true,
            durability: flashgate::gate::Durability::Replica {
                timeout: Duration::from_millis(500),
            },
            ..AppOptions::default()
        },
    )
    .await;
    for sku in [&replicated, &lonely] {
        app.open_sale(sku, &sale_body(10, 1)).await;
    }
    let held = app.reserve(&replicated, "alice", "k", 1).await;
    assert_eq!(
        held.status(),
        201,
        "its master has a replica: {}",
        held.text().await.unwrap_or_default()
    );
    let refused = app.reserve(&lonely, "alice", "k", 1).await;
    let (status, code, _) = error_code(refused).await;
    assert_eq!(
        (status, code.as_str()),
        (503, "not_replicated"),
        "its master has none"
    );
}

/// The eviction check reads `maxmemory-policy` with `CONFIG GET`; on a cluster it must ask every
/// master, or a node that may evict the keys of its SKUs goes unseen.
#[test]
fn serve_refuses_a_cluster_with_one_master_that_may_evict_keys() {
    let cluster = TwoNodeCluster::start();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut connection(&cluster._second.url))
        .expect("CONFIG SET");
    let (ok, stderr) = serve(&cluster.urls(), true).expect("serve exited");
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("maxmemory-policy is allkeys-lru"),
        "{stderr}"
    );
}
