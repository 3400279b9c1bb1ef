//! `spawn_app()` and friends: a real server on 127.0.0.1:0 per test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashgate::auth::{AdminToken, BearerTokens};
use flashgate::domain::{BuyerId, Sku};
use flashgate::gate::{BuyerRate, Gate, GateSettings, Namespace, RedisSettings};
use flashgate::http::{
    Admission, AdmissionSettings, AppState, ClientAddrPolicy, ClientShedder, ForwardedHeader,
    Readiness, ServerSettings, Services, TrustedProxies,
};
use flashgate::settler::{Settler, SettlerSettings};
use flashgate::store::Store;
use flashgate::sweeper::{Sweeper, SweeperSettings};
use reqwest::Response;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Both at least 32 long, as `serve` demands.
pub const JWT_SECRET: &str = "test-secret-0123456789abcdef-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// The test Redis: one URL, or a cluster's seed nodes (all its masters) when [`on_cluster`].
/// The URL of this test's own database (`#[sqlx::test]` made it), for a process or a pool the
/// test builds itself.
pub async fn database_url(pool: &PgPool) -> String {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("database name");
    let server = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let server = server.rsplit_once('/').map_or(server.as_str(), |(s, _)| s);
    format!("{server}/{database}")
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Each server `REDIS_URL` names: one Redis, or every node of a cluster.
pub fn redis_servers() -> Vec<String> {
    redis_url()
        .split(',')
        .map(|url| url.trim().to_owned())
        .collect()
}

/// Whether this run's Redis is a cluster (`FLASHGATE_REDIS_CLUSTER=true`): scripts/test.sh runs
/// the suite once against one Redis and once against a local 3-master cluster.
pub fn on_cluster() -> bool {
    std::env::var("FLASHGATE_REDIS_CLUSTER").is_ok_and(|v| v == "true")
}

/// For a test that breaks one Redis server on purpose (a proxy in front of it, a port nothing
/// listens on): true on the cluster pass, where the test returns at once, having run on the
/// single-server pass. Says so on stderr.
pub fn single_server_test(name: &str) -> bool {
    let skip = on_cluster();
    if skip {
        eprintln!("{name}: a single-server fault test; it runs on the single-server pass");
    }
    skip
}

/// A port nothing listens on right now, for a server a test starts on it next. It lies below the
/// kernel's ephemeral range: any of the suite's thousands of outgoing connections may take a port
/// of that range as its source between the moment it was found free and the server's bind (a
/// private RabbitMQ node then exited with `eaddrinuse`), and a client retrying a closed port there
/// can be given that very port as its own source and connect to itself. Ports come from 10,000 up
/// to 20,000 so a cluster node's bus port (its port + 10,000) is never a port this gives; each call
/// goes on from the last one, so two servers of a test never get the same port.
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    // A range starting lower than 10,000 leaves no port outside it: take ports from it then.
    let high = if ephemeral_low > 10_000 {
        ephemeral_low.min(20_000)
    } else {
        20_000
    };
    let mut next = NEXT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !(10_000..high).contains(&*next) {
        *next = 10_000 + (std::process::id() % 1_000) as u16 * 7 % (high - 10_000);
    }
    let start = *next;
    let port = (start..high)
        .chain(10_000..start)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range");
    *next = port + 1;
    port
}

/// A private `redis-server` with the given extra arguments, stopped on drop; `None` where the
/// binary is not installed (scripts/services.sh installs it with the other services).
pub struct PrivateRedis {
    child: Child,
    pub url: String,
    /// Its own folder, removed on drop.
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    /// A `redis-server` of the test's own on a free port. The port is free when asked for, but
    /// another process may bind it before the server does: a server that exits at once is
    /// started again on another port.
    pub fn start(args: &[&str]) -> Option<Self> {
        for _ in 0..5 {
            match Self::start_once(args)? {
                Started::Up(server) => return Some(server),
                Started::PortTaken => continue,
            }
        }
        None
    }

    /// A `redis-server` of the test's own on `port` (which the test chose and told others
    /// about before the server existed).
    pub fn start_on(port: u16, args: &[&str]) -> Option<Self> {
        match Self::start_once_on(port, args)? {
            Started::Up(server) => Some(server),
            Started::PortTaken => None,
        }
    }

    fn start_once(args: &[&str]) -> Option<Started> {
        Self::start_once_on(free_port(), args)
    }

    fn start_once_on(port: u16, args: &[&str]) -> Option<Started> {
        // Its own new folder: a replica writes the RDB of its full sync there, not into the
        // checkout, and a cluster node its nodes.conf. A folder named by the port alone was
        // reused when a later test got the same port, and the node loaded the slots of an earlier
        // one ("Slot 8192 is already busy").
        let dir = std::env::temp_dir().join(format!(
            "flashgate-redis-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str()?,
            ])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let url = format!("redis://127.0.0.1:{port}");
        // Dropped on any early return below: stopped, its folder removed.
        let mut server = Self { child, url, dir };
        let client = redis::Client::open(server.url.as_str()).ok()?;
        let started = Instant::now();
        while client.get_connection().is_err() {
            if server.child.try_wait().ok().flatten().is_some() {
                return Some(Started::PortTaken);
            }
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Started::Up(server))
    }
}

enum Started {
    Up(PrivateRedis),
    /// The server exited at once: most likely its port was taken meanwhile.
    PortTaken,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test Redis as a socket address, for a proxy in front of it.
pub async fn redis_socket_addr() -> std::net::SocketAddr {
    let redis = redis_url();
    let host_port = redis.trim_start_matches("redis://").trim_end_matches('/');
    tokio::net::lookup_host(host_port)
        .await
        .expect("resolve redis")
        .next()
        .expect("redis address")
}

/// Knobs a test may turn; the defaults switch every limiter off except the buyer limit.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub redis_url: String,
    /// Whether `redis_url` lists cluster nodes (the test Redis's kind unless a test says else).
    pub redis_cluster: bool,
    pub redis_pool_size: usize,
    pub redis_timeout: Duration,
    pub buyer_rate: Option<BuyerRate>,
    pub client_rate: u32,
    pub client_burst: u32,
    /// `FLASHGATE_TRUSTED_PROXIES`.
    pub trusted_proxies: String,
    pub admission: AdmissionSettings,
    pub server: ServerSettings,
    /// Serve the operators' routes on a listener of their own (`FLASHGATE_ADMIN_LISTEN`).
    pub operations_listener: bool,
    pub holds_per_client: u32,
    /// `FLASHGATE_PLACES_PER_CLIENT` (off unless a test sets it).
    pub places_per_client: u32,
    /// `FLASHGATE_RESERVE_BATCH*` (the defaults: batches of up to 64, no wait).
    pub reserve_batching: flashgate::gate::ReserveBatching,
    /// `FLASHGATE_BUYER_HOLD_QUOTA` (off unless a test sets it).
    pub hold_quota: Option<flashgate::gate::HoldQuota>,
    pub request_timeout: Duration,
    /// Serve the benchmarks' floor route (`FLASHGATE_FLOOR_ROUTE`).
    pub floor_route: bool,
    pub durability: flashgate::gate::Durability,
    /// The pace of the app's own settler (the one its handlers post work to).
    pub settler: SettlerSettings,
    /// Which events the app's store records (`FLASHGATE_EVENTS`).
    pub events: flashgate::events::EventFilter,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            redis_url: redis_url(),
            redis_cluster: on_cluster(),
            redis_pool_size: 32,
            // A cluster pass runs three Redis processes beside the debug-built tests on the
            // same cores: a burst test's slowest answers there took past 2 s (1 run in 3).
            redis_timeout: Duration::from_secs(if on_cluster() { 5 } else { 2 }),
            buyer_rate: None,
            client_rate: 0,
            client_burst: 0,
            trusted_proxies: String::new(),
            admission: AdmissionSettings {
                // Tests burst hundreds of requests at once (many as one buyer, all from this
                // machine); they are not about admission.
                new_buyer_limit: 4096,
                new_buyer_queue: Duration::from_secs(5),
                per_client_in_flight: 0,
                per_buyer_in_flight: 0,
                ..AdmissionSettings::default()
            },
            server: ServerSettings {
                // Every test client is 127.0.0.1, with hundreds of connections in a burst.
                max_connections_per_client: 0,
                ..ServerSettings::default()
            },
            operations_listener: false,
            holds_per_client: 0,
            places_per_client: 0,
            reserve_batching: Default::default(),
            hold_quota: None,
            durability: Default::default(),
            request_timeout: Duration::from_secs(10),
            floor_route: false,
            settler: settler_settings(),
            events: flashgate::events::EventFilter::default(),
        }
    }
}

impl AppOptions {
    /// The defaults, on a single Redis server of the test's own (a private one, a proxy).
    pub fn on_server(url: impl Into<String>) -> Self {
        Self {
            redis_url: url.into(),
            redis_cluster: false,
            ..Self::default()
        }
    }
}

pub struct TestApp {
    pub address: String,
    /// The operators' listener, when the app has one of its own.
    pub operations_address: Option<String>,
    pub client: reqwest::Client,
    pub gate: Gate,
    pub store: Store,
    pub namespace: Namespace,
    /// The settler the app's handlers post work to; it runs only once a test starts it
    /// ([`TestApp::run_background`]).
    own_settler: Settler,
    /// What the app's `/readyz` shows of the relays a test starts ([`TestApp::relay`]).
    pub events: flashgate::events::RelayStatus,
    tokens: BearerTokens,
    /// Every server of the shared test Redis (each master of a cluster), for cleaning up: an
    /// app on a proxy wrote through it to the shared Redis; one on a private Redis leaves
    /// nothing behind when that server stops.
    redis_servers: Vec<String>,
    /// Whether reserve.lua writes a rate-limit key per attempt (a buyer rate is set), which is
    /// what `reached_redis` looks for.
    counts_attempts: bool,
    shutdown: Option<oneshot::Sender<()>>,
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, AppOptions::default()).await
}

pub async fn spawn_app_with(pool: PgPool, options: AppOptions) -> TestApp {
    let namespace =
        Namespace::parse(&format!("fgtest-{}", uuid::Uuid::new_v4().simple())).expect("namespace");
    let gate = Gate::connect(
        &RedisSettings {
            cluster: options.redis_cluster,
            ..RedisSettings::new(
                &options.redis_url,
                options.redis_pool_size,
                options.redis_timeout,
            )
        },
        GateSettings {
            namespace: namespace.clone(),
            idempotency_ttl: Duration::from_secs(3600),
            buyer_rate: options.buyer_rate,
            sold_out_shortcut: true,
            holds_per_client: flashgate::gate::ClientHoldCaps::per_client(options.holds_per_client),
            hold_quota: options.hold_quota,
            durability: options.durability,
            reservation_seal: Some(flashgate::domain::ReservationSeal::derive(
                JWT_SECRET.as_bytes(),
            )),
            waiting_room: flashgate::gate::RoomSettings {
                places_per_client: options.places_per_client,
                ticket_seal: Some(flashgate::domain::TicketSeal::derive(JWT_SECRET.as_bytes())),
                ..Default::default()
            },
            reserve_batching: options.reserve_batching,
        },
    )
    .expect("gate");
    let store = Store::from_pool(pool).with_events(options.events);
    let secret = SecretString::from(JWT_SECRET.to_owned());
    let own_settler = Settler::new(gate.clone(), store.clone(), options.settler.clone());
    let events = flashgate::events::RelayStatus::default();
    let state = AppState::from(Services {
        settler: own_settler.clone(),
        gate: gate.clone(),
        store: store.clone(),
        tokens: BearerTokens::new(&secret),
        admin: AdminToken::new(SecretString::from(ADMIN_TOKEN.to_owned())),
        admission: Admission::new(
            options.admission,
            ClientShedder::new(options.client_rate, options.client_burst),
        ),
        client_addr: std::sync::Arc::new(ClientAddrPolicy {
            trusted: TrustedProxies::parse(&options.trusted_proxies).expect("trusted proxies"),
            header: ForwardedHeader::Auto,
        }),
        readiness: Readiness::default(),
        events: events.clone(),
        request_timeout: options.request_timeout,
        metrics: flashgate::telemetry::metrics(),
        floor_route: options.floor_route,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("addr"));
    let operations = if options.operations_listener {
        Some(TcpListener::bind("127.0.0.1:0").await.expect("bind"))
    } else {
        None
    };
    let operations_address = operations
        .as_ref()
        .map(|listener| format!("http://{}", listener.local_addr().expect("addr")));
    let (tx, rx) = oneshot::channel();
    tokio::spawn(flashgate::http::serve(
        flashgate::http::Listeners {
            public: listener,
            operations,
        },
        state,
        options.server,
        async {
            let _ = rx.await;
        },
    ));
    TestApp {
        address,
        operations_address,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()
            .expect("client"),
        gate,
        store,
        namespace,
        own_settler,
        events,
        tokens: BearerTokens::new(&secret),
        redis_servers: redis_servers(),
        counts_attempts: options.buyer_rate.is_some(),
        shutdown: Some(tx),
    }
}

/// A settler and a sweeper running in the background; both stop when this is dropped.
pub struct Background {
    stop: tokio_util::sync::CancellationToken,
}

impl Background {
    pub fn start(settler: Settler, sweeper: Sweeper) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let (s, sweep) = (stop.clone(), stop.clone());
        tokio::spawn(async move { settler.run(s).await });
        tokio::spawn(async move { sweeper.run(sweep).await });
        Self { stop }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn settler_settings() -> SettlerSettings {
    SettlerSettings {
        batch_size: 100,
        idle_interval: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        // Tests run settlers beside the app's, which find the app's events only by scanning.
        scan_interval: Duration::from_millis(100),
        ..SettlerSettings::default()
    }
}

pub fn sale_body(stock: u32, per_buyer_limit: u32) -> Value {
    json!({
        "name": "Test sneaker",
        "price": "19.99",
        "currency": "USD",
        "stock": stock,
        "per_buyer_limit": per_buyer_limit,
        "hold_ttl_seconds": 300,
    })
}

impl TestApp {
    /// `path` on the listener that serves it: the operators' routes on the operators' listener
    /// when the app has one.
    pub fn url(&self, path: &str) -> String {
        let operators = ["/v1/admin", "/metrics", "/console", "/asyncapi"];
        match &self.operations_address {
            Some(operations) if operators.iter().any(|prefix| path.starts_with(prefix)) => {
                format!("{operations}{path}")
            }
            _ => format!("{}{}", self.address, path),
        }
    }

    pub fn token(&self, buyer: &str) -> String {
        self.tokens
            .mint(
                &BuyerId::parse(buyer).expect("buyer"),
                Duration::from_secs(600),
            )
            .expect("token")
    }

    pub async fn put_sale(&self, sku: &str, body: &Value) -> Response {
        self.client
            .put(self.url(&format!("/v1/admin/skus/{sku}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .expect("put sale")
    }

    pub async fn prewarm(&self, sku: &str, force: bool) -> Response {
        self.client
            .post(self.url(&format!("/v1/admin/skus/{sku}/prewarm?force={force}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("prewarm")
    }

    /// Creates the sale and opens it in Redis.
    pub async fn open_sale(&self, sku: &str, body: &Value) {
        let put = self.put_sale(sku, body).await;
        assert_eq!(
            put.status(),
            200,
            "{}",
            put.text().await.unwrap_or_default()
        );
        let warm = self.prewarm(sku, false).await;
        assert_eq!(
            warm.status(),
            200,
            "{}",
            warm.text().await.unwrap_or_default()
        );
    }

    pub async fn reserve(&self, sku: &str, buyer: &str, key: &str, quantity: i64) -> Response {
        self.reserve_with_token(&self.token(buyer), sku, key, quantity)
            .await
    }

    /// A reserve under any bearer token (a service credential, a forged one).
    pub async fn reserve_with_token(
        &self,
        token: &str,
        sku: &str,
        key: &str,
        quantity: i64,
    ) -> Response {
        self.reserve_raw(token, sku, key, &json!({ "quantity": quantity }))
            .await
    }

    /// A reserve of `buyer` with any JSON body.
    pub async fn reserve_body(&self, sku: &str, buyer: &str, key: &str, body: &Value) -> Response {
        self.reserve_raw(&self.token(buyer), sku, key, body).await
    }

    async fn reserve_raw(&self, token: &str, sku: &str, key: &str, body: &Value) -> Response {
        self.client
            .post(self.url(&format!("/v1/skus/{sku}/reservations")))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("reserve")
    }

    /// The id of a new one-unit hold of `buyer` under `key` (asserted 201).
    pub async fn hold(&self, sku: &str, buyer: &str, key: &str) -> String {
        let held = self.reserve(sku, buyer, key, 1).await;
        assert_eq!(held.status(), 201, "{buyer} could not hold a unit of {sku}");
        let body: Value = held.json().await.expect("json");
        body["id"].as_str().expect("id").to_owned()
    }

    /// A reserve sent through a proxy that says the client is `client` (`X-Forwarded-For`).
    pub async fn reserve_via(&self, client: &str, sku: &str, buyer: &str, key: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/skus/{sku}/reservations")))
            .bearer_auth(self.token(buyer))
            .header("Idempotency-Key", key)
            .header("X-Forwarded-For", client)
            .json(&json!({ "quantity": 1 }))
            .send()
            .await
            .expect("reserve")
    }

    /// POST /v1/admin/skus/{sku}/resync[?force=true]: the answer, as it came.
    pub async fn start_resync(&self, sku: &str, force: bool) -> Response {
        self.client
            .post(self.url(&format!("/v1/admin/skus/{sku}/resync?force={force}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("resync")
    }

    /// Starts a resync job (`202` + `Location`) and polls its status URL until it ends; the job.
    pub async fn resync(&self, sku: &str) -> Value {
        self.resync_with(sku, false).await
    }

    /// [`Self::resync`], forced when `force`.
    pub async fn resync_with(&self, sku: &str, force: bool) -> Value {
        let started = self.start_resync(sku, force).await;
        assert_eq!(started.status(), 202);
        let location = started.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let job: Value = started.json().await.expect("json");
        assert_eq!(job["status_url"], location.as_str());
        for _ in 0..600 {
            let job = self.get_json(&location, Some(ADMIN_TOKEN)).await;
            if job["status"] != "running" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the resync job never ended");
    }

    /// Runs the app's own settler and a sweeper on its board, as `flashgate serve` does, until
    /// the returned guard is dropped.
    pub fn run_background(&self, sweeper: SweeperSettings) -> Background {
        Background::start(
            self.own_settler.clone(),
            Sweeper::new(
                self.gate.clone(),
                self.store.clone(),
                self.own_settler.board(),
                sweeper,
            ),
        )
    }

    /// A relay on this app's database (woken by its commits), reporting to its `/readyz`;
    /// without a sink until the test adds one.
    pub fn relay(&self) -> flashgate::events::Relay {
        flashgate::events::Relay::new(
            self.store.clone(),
            flashgate::events::RelaySettings {
                poll_interval: Duration::from_millis(100),
                max_backoff: Duration::from_millis(500),
                ..Default::default()
            },
        )
        .reporting_to(self.events.clone())
    }

    /// Every event the outbox holds for the SKU, in sequence order (through the pull API).
    pub async fn events_of(&self, sku: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get_json(
                    &format!("/v1/admin/events?sku={sku}&after={after}&limit=1000"),
                    Some(ADMIN_TOKEN),
                )
                .await;
            let events = page["events"].as_array().expect("events").clone();
            after = page["next_after"].as_i64().expect("next_after");
            all.extend(events);
            if page["more"] != true {
                return all;
            }
        }
    }

    /// A settler on this app's Redis namespace and database, settling in small batches. It is
    /// not the one the app's handlers post work to: it finds work by scanning.
    pub fn settler(&self) -> Settler {
        Settler::new(self.gate.clone(), self.store.clone(), settler_settings())
    }

    /// Overwrites Redis stock, as a Redis failover that lost or replayed writes would.
    pub async fn set_redis_stock(&self, sku: &str, stock: i64) {
        let mut conn = self.redis_connection().await;
        let key = self.namespace.sku(&Sku::parse(sku).expect("sku")).stock();
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(stock)
            .query_async(&mut conn)
            .await
            .expect("SET");
    }

    pub async fn audit(&self, sku: &str) -> flashgate::audit::SkuAudit {
        flashgate::audit::audit_sku(&self.gate, &self.store, &Sku::parse(sku).expect("sku"))
            .await
            .expect("audit")
    }

    /// Postgres inventory of the SKU: (total, available, reserved, sold).
    pub async fn inventory(&self, sku: &str) -> (i64, i64, i64, i64) {
        sqlx::query_as("SELECT total, available, reserved, sold FROM inventory WHERE sku = $1")
            .bind(sku)
            .fetch_one(self.store.pool())
            .await
            .expect("inventory")
    }

    /// GET `path` with a bearer token (or none); the answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("GET")
    }

    /// GET `path` with a bearer token (or none); the JSON body.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> Value {
        self.get(path, token).await.json().await.expect("JSON body")
    }

    /// POST /v1/reservations/{id}/{action} with the given bearer token.
    pub async fn act(&self, id: &str, action: &str, token: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/reservations/{id}/{action}")))
            .bearer_auth(token)
            .send()
            .await
            .expect(action)
    }

    /// A connection to the test Redis (one server or the cluster), for reading or breaking
    /// what the gate wrote.
    pub async fn redis_connection(&self) -> flashgate::gate::RedisConnection {
        self.gate.raw_connection().await.expect("redis")
    }

    /// Appends an event the settler cannot parse to the SKU's stream: a SKU that cannot settle.
    pub async fn corrupt_stream(&self, sku: &str) {
        let events = self.namespace.sku(&Sku::parse(sku).expect("sku")).events();
        let _: String = redis::cmd("XADD")
            .arg(events)
            .arg("*")
            .arg(&["type", "reserved", "id", "not-a-reservation-id"])
            .query_async(&mut self.redis_connection().await)
            .await
            .expect("XADD a corrupt event");
    }

    /// Deletes every key of this test's namespace, as a Redis that lost its data would.
    pub fn flush_redis(&self) {
        delete_namespace(&self.redis_servers, &self.namespace).expect("delete the namespace");
    }

    /// Whether the per-buyer rate-limit key exists: `reserve.lua` writes it on every attempt, so
    /// a buyer without one was never decided by Redis. Only an app with a buyer rate writes the
    /// key; without one every answer would be "never reached", so that is refused.
    pub async fn reached_redis(&self, sku: &str, buyer: &str) -> bool {
        assert!(
            self.counts_attempts,
            "reached_redis needs an app with a buyer rate (AppOptions::buyer_rate)"
        );
        let mut conn = self.redis_connection().await;
        let key = self
            .namespace
            .sku(&Sku::parse(sku).expect("sku"))
            .rate_limit(&BuyerId::parse(buyer).expect("buyer"));
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<bool>(&mut conn)
            .await
            .expect("EXISTS")
    }

    pub async fn redis_stock(&self, sku: &str) -> i64 {
        let mut conn = self.redis_connection().await;
        let key = self.namespace.sku(&Sku::parse(sku).expect("sku")).stock();
        redis::cmd("GET")
            .arg(key)
            .query_async::<Option<i64>>(&mut conn)
            .await
            .expect("GET stock")
            .unwrap_or(0)
    }
}

/// The body of an error response, checked to have the API's error shape.
pub async fn error_code(response: Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    let code = body["error"].as_str().expect("error code").to_owned();
    assert!(body["message"].is_string(), "{body}");
    (status, code, body)
}

impl Drop for TestApp {
    /// Stops the server and deletes every key of this test's namespace.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = delete_namespace(&self.redis_servers, &self.namespace);
    }
}

/// Deletes every key of `namespace` from each of `servers` (one Redis, or every master of a
/// cluster): `SCAN` on each server, not `KEYS`, which would block a shared Redis; and one `DEL`
/// per key, since on a cluster a multi-key `DEL` across slots is refused.
pub fn delete_namespace(servers: &[String], namespace: &Namespace) -> redis::RedisResult<()> {
    for server in servers {
        let mut conn = redis::Client::open(server.as_str())?
            .get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.set_write_timeout(Some(Duration::from_secs(5)))?;
        let keys: Vec<String> =
            redis::Commands::scan_match::<_, String>(&mut conn, namespace.pattern())?
                .filter_map(Result::ok)
                .collect();
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.del(key).ignore();
            }
            pipe.exec(&mut conn)?;
        }
    }
    Ok(())
}

/// Sends one raw HTTP/1.1 request on `socket` and reads until the JSON body is complete.
pub async fn round_trip(socket: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.ends_with(b"}") {
        let n = socket.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed mid-answer");
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}
