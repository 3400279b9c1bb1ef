//! The `flashgate serve` process itself: what it refuses at start and how it stops.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use flashgate::gate::Namespace;

use crate::helpers::{
    ADMIN_TOKEN, JWT_SECRET, PrivateRedis, database_url, delete_namespace, free_port,
    redis_servers, redis_url, sale_body,
};

pub(crate) fn flashgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flashgate"))
}

/// Runs `flashgate serve` on this Redis with these extra settings and a Postgres it never
/// reaches (the Redis checks come first): its output once it exited, or `None` once it listens
/// (started: the checks passed). Waits for one or the other, not for a guessed time: on a
/// loaded machine a debug build once took longer than 3 s to refuse.
pub fn serve_against_redis(
    redis_url: &str,
    settings: &[(&str, &str)],
) -> Option<std::process::Output> {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = flashgate()
        .arg("serve")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("REDIS_URL", redis_url)
        .env("FLASHGATE_LISTEN", &listen)
        .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
        .env("FLASHGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .envs(settings.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        if std::net::TcpStream::connect(&listen).is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve neither exited nor listened within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `serve` with the given secrets against stores that need not exist: it must refuse before
/// connecting to anything.
fn serve_with_secrets(jwt_secret: &str, admin_token: &str) -> std::process::Output {
    flashgate()
        .arg("serve")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("FLASHGATE_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("FLASHGATE_JWT_SECRET", jwt_secret)
        .env("FLASHGATE_ADMIN_TOKEN", admin_token)
        .stdin(Stdio::null())
        .output()
        .expect("run flashgate")
}

#[test]
fn serve_refuses_weak_secrets_and_says_how_to_make_one() {
    for (jwt, admin, named) in [
        ("", ADMIN_TOKEN, "FLASHGATE_JWT_SECRET"),
        ("abc", ADMIN_TOKEN, "FLASHGATE_JWT_SECRET"),
        (JWT_SECRET, "admin", "FLASHGATE_ADMIN_TOKEN"),
        (JWT_SECRET, "a", "FLASHGATE_ADMIN_TOKEN"),
    ] {
        let output = serve_with_secrets(jwt, admin);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{jwt:?}/{admin:?} started");
        assert!(stderr.contains(named), "{stderr}");
        assert!(stderr.contains("flashgate secret"), "{stderr}");
    }
}

#[test]
fn flashgate_secret_prints_a_secret_serve_accepts() {
    let output = flashgate().arg("secret").output().expect("run");
    let secret = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(output.status.success());
    assert!(secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()));
}

/// `flashgate token --role payments --subject checkout-svc` mints the payment service's
/// credential: it commits any buyer's hold and takes none of its own.
#[sqlx::test]
async fn flashgate_token_mints_a_payments_credential(pool: PgPool) {
    use crate::helpers::{error_code, sale_body, spawn_app};
    let output = flashgate()
        .args(["token", "--role", "payments", "--subject", "checkout-svc"])
        .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let payments = String::from_utf8_lossy(&output.stdout).trim().to_owned();

    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let id = app.hold("sneaker", "alice", "k1").await;
    assert_eq!(app.act(&id, "commit", &payments).await.status(), 200);
    let reserve = app
        .reserve_with_token(&payments, "sneaker", "svc-1", 1)
        .await;
    assert_eq!(error_code(reserve).await.0, 403);
}

/// `FLASHGATE_LOG_FORMAT=json`: every line is one JSON object, and a line logged while serving a
/// request names the request's id, as a log pipeline joins them.
#[sqlx::test]
async fn json_logs_name_the_request_on_every_line_logged_for_it(pool: PgPool) {
    let path = std::env::temp_dir().join(format!("flashgate-log-{}.json", uuid::Uuid::new_v4()));
    let file = std::fs::File::create(&path).expect("log file");
    let mut served = Served::start_with(
        &pool,
        0,
        &[
            ("FLASHGATE_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,tower_http=debug"),
        ],
        Stdio::from(file),
    )
    .await;
    let answer = reqwest::get(format!("{}/v1/skus/nothing-here", served.base))
        .await
        .expect("request");
    assert_eq!(answer.status(), 404);
    let request_id = answer.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    served.signal("TERM");
    served.exit(Duration::from_secs(20)).await;

    let log = std::fs::read_to_string(&path).expect("log");
    let _ = std::fs::remove_file(&path);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|line| line["level"].is_string() && line["timestamp"].is_string())
    );
    let of_the_request: Vec<_> = lines
        .iter()
        .filter(|line| {
            line["spans"].as_array().is_some_and(|spans| {
                spans
                    .iter()
                    .any(|span| span["request_id"] == request_id.as_str())
            })
        })
        .collect();
    assert!(
        !of_the_request.is_empty(),
        "no line names request {request_id}:\n{log}"
    );
    assert!(
        of_the_request
            .iter()
            .any(|line| line["spans"][0]["path"] == "/v1/skus/nothing-here"),
        "{log}"
    );
}

/// A gate process that sold a hold leaves nothing in Redis once its test is over (before, every
/// run left the sale, the hold, the counters and the stream behind, most of them without a TTL).
#[sqlx::test]
async fn a_served_gate_leaves_no_keys_behind(pool: PgPool) {
    let served = Served::start(&pool, 0).await;
    served.open_sale("sneaker", &sale_body(5, 1)).await;
    let client = reqwest::Client::new();
    let tokens =
        flashgate::auth::BearerTokens::new(&secrecy::SecretString::from(JWT_SECRET.to_owned()));
    let alice = flashgate::domain::BuyerId::parse("alice").expect("buyer");
    let held = client
        .post(format!("{}/v1/skus/sneaker/reservations", served.base))
        .bearer_auth(
            tokens
                .mint(&alice, Duration::from_secs(600))
                .expect("token"),
        )
        .header("Idempotency-Key", "a1")
        .json(&serde_json::json!({"quantity": 1}))
        .send()
        .await
        .expect("reserve");
    assert_eq!(held.status().as_u16(), 201);
    let namespace = served.namespace.clone();
    let keys_left = || -> usize {
        redis_servers()
            .iter()
            .map(|server| {
                let mut conn = redis::Client::open(server.as_str())
                    .and_then(|client| client.get_connection())
                    .expect("redis");
                redis::Commands::scan_match::<_, String>(&mut conn, namespace.pattern())
                    .expect("scan")
                    .count()
            })
            .sum()
    };
    assert!(keys_left() > 0, "the hold was written");
    drop(served);
    assert_eq!(keys_left(), 0, "keys left in {}", namespace.as_str());
}

/// A dashboard or an alert on a fresh gate finds its metrics at zero, each with `# HELP`, rather
/// than nothing until the first event (before: a fresh gate showed none of them).
#[sqlx::test]
async fn a_fresh_gate_shows_its_metrics_at_zero_with_help(pool: PgPool) {
    let served = Served::start(&pool, 0).await;
    let text = reqwest::get(format!("{}/metrics", served.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in flashgate::telemetry::shown_from_start() {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
        assert!(
            text.lines()
                .any(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{'])),
            "no sample of {name}"
        );
    }
}

/// A running `flashgate serve` on this test's database and a fresh Redis namespace, whose keys
/// go when it is dropped.
pub(crate) struct Served {
    child: Child,
    pub(crate) base: String,
    namespace: Namespace,
}

impl Served {
    async fn start(pool: &PgPool, drain_delay_ms: u64) -> Self {
        Self::start_with(
            pool,
            drain_delay_ms,
            &[("RUST_LOG", "warn")],
            Stdio::inherit(),
        )
        .await
    }

    /// As [`Served::start`], with more settings and its stderr sent to `stderr`.
    pub(crate) async fn start_with(
        pool: &PgPool,
        drain_delay_ms: u64,
        settings: &[(&str, &str)],
        stderr: Stdio,
    ) -> Self {
        let port = free_port();
        let namespace = Namespace::parse(&format!("fgproc-{}", uuid::Uuid::new_v4().simple()))
            .expect("namespace");
        let child = flashgate()
            .arg("serve")
            .env("DATABASE_URL", database_url(pool).await)
            .env("REDIS_URL", redis_url())
            .env("FLASHGATE_REDIS_NAMESPACE", namespace.as_str())
            .env("FLASHGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
            .env("FLASHGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env(
                "FLASHGATE_SHUTDOWN_DRAIN_DELAY_MS",
                drain_delay_ms.to_string(),
            )
            .env("FLASHGATE_SHUTDOWN_TIMEOUT_MS", "10000")
            .envs(settings.iter().copied())
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn flashgate serve");
        let served = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            namespace,
        };
        let started = Instant::now();
        while served.status("/healthz").await != Some(200) {
            assert!(started.elapsed() < Duration::from_secs(20), "never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served
    }

    /// Opens `sku` with `body` and pre-warms it, as the admin.
    pub(crate) async fn open_sale(&self, sku: &str, body: &serde_json::Value) {
        let client = reqwest::Client::new();
        let admin = format!("{}/v1/admin/skus/{sku}", self.base);
        for request in [
            client.put(&admin).json(body),
            client.post(format!("{admin}/prewarm")),
        ] {
            let answer = request
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("admin");
            assert!(answer.status().is_success(), "{sku}: {}", answer.status());
        }
    }

    async fn status(&self, path: &str) -> Option<u16> {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Waits for the process to exit; its exit code and how long it took.
    async fn exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code(), started.elapsed());
            }
            assert!(started.elapsed() < within, "still running after {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Served {
    /// Stops the process, then deletes its namespace: nothing it wrote is left in a shared Redis
    /// (before, every run left the holds, counters and stream it made, most without a TTL).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = delete_namespace(&redis_servers(), &self.namespace);
    }
}

#[sqlx::test]
async fn sigterm_turns_readyz_unready_first_then_exits_cleanly(pool: PgPool) {
    let mut served = Served::start(&pool, 1_500).await;
    let started = Instant::now();
    while served.status("/readyz").await != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    served.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(served.status("/readyz").await, Some(503), "draining");
    assert_eq!(served.status("/healthz").await, Some(200), "still serving");

    let (code, _) = served.exit(Duration::from_secs(12)).await;
    assert_eq!(code, Some(0));
}

#[sqlx::test]
async fn a_second_sigterm_exits_at_once(pool: PgPool) {
    let mut served = Served::start(&pool, 60_000).await;
    served.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    served.signal("TERM");
    let (code, took) = served.exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(130));
    assert!(took < Duration::from_secs(5));
}

#[test]
fn serve_refuses_a_redis_that_may_evict_keys() {
    let Some(redis) = PrivateRedis::start(&["--maxmemory-policy", "allkeys-lru"]) else {
        panic!("redis-server is not installed: run the suite through scripts/test.sh");
    };
    let serve = |allow: &str| {
        serve_against_redis(
            &redis.url,
            &[
                ("FLASHGATE_REDIS_CLUSTER", "false"),
                ("FLASHGATE_ALLOW_EVICTING_REDIS", allow),
            ],
        )
    };

    let refused = serve("false").expect("serve exited");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("maxmemory-policy is allkeys-lru"),
        "{stderr}"
    );
    assert!(serve("true").is_none(), "allowed: it keeps running");
}

#[test]
fn a_redis_unreachable_at_start_is_checked_when_it_first_answers() {
    // Nothing listens on the port yet: serve starts (the gate answers 503 until Redis is there).
    // Outside the ephemeral range: the gate's retries must not connect to themselves on it.
    let port = free_port();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = flashgate()
        .arg("serve")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .env("FLASHGATE_LISTEN", &listen)
        .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
        .env("FLASHGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FLASHGATE_REDIS_TIMEOUT_MS", "200")
        // The cluster pass of the suite sets it; this Redis is a single server.
        .env("FLASHGATE_REDIS_CLUSTER", "false")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(child.try_wait().expect("wait").is_none(), "serve exited");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then the Redis comes up — one that would have stopped serve at start. On main the check
    // never ran again and the gate went on writing into an evicting Redis.
    let Some(_redis) = PrivateRedis::start_on(port, &["--maxmemory-policy", "allkeys-lru"]) else {
        let _ = child.kill();
        panic!("cannot start redis-server on port {port}");
    };
    let answered = Instant::now();
    let exited = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if answered.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("serve kept running on an evicting redis");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!exited.success());
    assert!(
        stderr.contains("maxmemory-policy is allkeys-lru"),
        "{stderr}"
    );
}

/// Sources scripts/services.sh and calls `flashgate_services` with this `DATABASE_URL`; the
/// process's output, stdout being the `DATABASE_URL` it left.
fn services_sh(database_url: &str) -> std::process::Output {
    Command::new("bash")
        .arg("-c")
        .arg("source scripts/services.sh && flashgate_services && printf '%s' \"$DATABASE_URL\"")
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("bash")
}

#[test]
fn services_sh_keeps_a_database_url_whose_database_does_not_exist_yet() {
    let server = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let server = server.rsplit_once('/').map_or(server.as_str(), |(s, _)| s);
    let url = format!(
        "{server}/flashgate_not_yet_{}",
        uuid::Uuid::new_v4().simple()
    );
    let output = services_sh(&url);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        url,
        "the caller's URL, unchanged"
    );

    let dead = services_sh("postgres://postgres@127.0.0.1:1/none");
    assert!(
        !dead.status.success(),
        "a dead server is reported, not replaced"
    );
    assert!(String::from_utf8_lossy(&dead.stderr).contains("DATABASE_URL is set"));
}

/// A failing command says its error once, on one line, and a log that is not a terminal carries
/// no colour escapes (it used to print the database error twice, once as a coloured log line).
#[sqlx::test(migrations = false)]
async fn a_cli_error_is_printed_once_in_plain_text(pool: PgPool) {
    // No migrations ran: the table is missing.
    let output = flashgate()
        .args([
            "sku", "upsert", "sneaker", "--name", "Sneaker", "--price", "1", "--stock", "1",
        ])
        .env("DATABASE_URL", database_url(&pool).await)
        .env("REDIS_URL", redis_url())
        .env(
            "FLASHGATE_REDIS_NAMESPACE",
            format!("fgproc-{}", uuid::Uuid::new_v4().simple()),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.matches("does not exist").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour escapes: {stderr:?}");
}

/// The container healthcheck: 0 against a ready gate, not 0 where nothing answers.
#[sqlx::test]
async fn healthcheck_asks_the_gate_it_names(pool: PgPool) {
    let served = Served::start(&pool, 0).await;
    let listen = served.base.trim_start_matches("http://").to_owned();
    let port = listen.rsplit(':').next().expect("port").to_owned();
    let ready = flashgate()
        .args(["healthcheck", "--listen", &format!("0.0.0.0:{port}")])
        .output()
        .expect("run");
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    let nobody = flashgate()
        .args([
            "healthcheck",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .expect("run");
    assert!(!nobody.status.success());
}

/// `migrate` beside a Postgres that is still starting keeps trying for its wait, then says why
/// it gave up; without a wait it gives up at once.
#[test]
fn migrate_waits_for_postgres_only_as_long_as_it_is_told() {
    let run = |wait: &str| {
        let started = Instant::now();
        let output = flashgate()
            .args(["migrate", "--wait-seconds", wait])
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/none", free_port()),
            )
            .output()
            .expect("run");
        (output, started.elapsed())
    };
    let (once, quick) = run("0");
    assert!(!once.status.success());
    assert!(quick < Duration::from_secs(2), "{quick:?}");
    let (waited, slow) = run("2");
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(!waited.status.success());
    assert!(slow >= Duration::from_secs(2), "{slow:?}");
    assert!(stderr.contains("trying again"), "{stderr}");
}

#[sqlx::test(migrations = false)]
async fn serve_refuses_a_database_without_its_migrations(pool: PgPool) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = flashgate()
        .arg("serve")
        .env("DATABASE_URL", database_url(&pool).await)
        .env("REDIS_URL", redis_url())
        .env(
            "FLASHGATE_REDIS_NAMESPACE",
            format!("fgproc-{}", uuid::Uuid::new_v4().simple()),
        )
        .env("FLASHGATE_LISTEN", &listen)
        .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
        .env("FLASHGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Before, it started, answered /readyz 200, and every reserve 500.
    let started = Instant::now();
    let output = loop {
        if child.try_wait().expect("wait").is_some() {
            break child.wait_with_output().expect("output");
        }
        if std::net::TcpStream::connect(&listen).is_ok() {
            let _ = child.kill();
            panic!("serve started on a database without its migrations");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "neither exited nor listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("flashgate migrate"), "{stderr}");
}

/// An OTLP/HTTP trace receiver: the bodies POSTed to `/v1/traces`.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use axum::routing::post;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push(body.to_vec());
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

#[sqlx::test]
async fn with_an_otlp_endpoint_request_spans_are_exported_in_the_callers_trace(pool: PgPool) {
    let (collector, received) = otlp_receiver().await;
    let mut served = Served::start_with(
        &pool,
        0,
        &[
            ("RUST_LOG", "info"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        Stdio::inherit(),
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/skus/nothing", served.base))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 404);

    // The span carries the caller's trace id (16 raw bytes in the protobuf body).
    let wanted: Vec<u8> = (0..trace_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).expect("hex"))
        .collect();
    let started = Instant::now();
    loop {
        let bodies = received.lock().expect("lock").clone();
        let found = bodies.iter().any(|body| {
            body.windows(wanted.len()).any(|w| w == wanted.as_slice())
                && body.windows(b"flashgate".len()).any(|w| w == b"flashgate")
        });
        if found {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no span of the caller's trace reached the collector ({} bodies)",
            bodies.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.signal("TERM");
    let (code, _) = served.exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0));
}

/// The process's resident memory, from `/proc/<pid>/status`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A request naming a SKU that is no sale (no token, shed, or unknown) must leave nothing
/// behind: each one made the sale pulse keep its history and latency histograms (~130 KB) for
/// that SKU for good, and 5,000 such requests grew a release gate by 622 MiB.
#[sqlx::test]
async fn requests_naming_made_up_skus_do_not_grow_the_process(pool: PgPool) {
    let served = Served::start(&pool, 0).await;
    let client = reqwest::Client::new();
    let ask = |n: usize| {
        client
            .post(format!("{}/v1/skus/made-up-{n}/reservations", served.base))
            .header("Idempotency-Key", format!("key-{n}"))
            .json(&serde_json::json!({ "quantity": 1 }))
            .send()
    };
    // Connections, buffers and the allocator's caches settle first.
    for n in 0..200 {
        ask(n).await.expect("POST");
    }
    let before = resident_kib(served.child.id());
    for n in 200..3_200 {
        ask(n).await.expect("POST");
    }
    let grown = resident_kib(served.child.id()).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "3,000 requests naming made-up SKUs grew the gate by {} MiB",
        grown / 1024
    );
}
