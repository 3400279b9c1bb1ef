//! The `flashgate` command line (docs/DESIGN.md §6). `main.rs` parses and dispatches to [`run`].

use std::time::Duration;

use crate::auth::{BearerTokens, Role};
use crate::config::{
    DatabaseConfig, HttpConfig, RedisConfig, RelayConfig, SettlerConfig, ShutdownConfig,
    TokenConfig,
};
use crate::domain::{BuyerId, Currency, Money, SaleDefinition, Sku, WaitingRoom};
use crate::gate::GateError;
use crate::settler::Settler;
use crate::startup::{self, Application};
use crate::store::Store;
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// flashgate — a flash-sale inventory gate.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object per line, with
    /// the request's span — its `request_id` — on every line logged while serving it) for a
    /// log pipeline.
    #[arg(long, global = true, env = "FLASHGATE_LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the settler.
    Serve {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        redis: RedisConfig,
        #[command(flatten)]
        http: HttpConfig,
        #[command(flatten)]
        settler: SettlerConfig,
        #[command(flatten)]
        relay: RelayConfig,
        #[command(flatten)]
        shutdown: ShutdownConfig,
    },
    /// Run only the settler, the sweeper and the relay (any number may run beside `serve`).
    Settle {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        redis: RedisConfig,
        #[command(flatten)]
        settler: SettlerConfig,
        #[command(flatten)]
        relay: RelayConfig,
        #[command(flatten)]
        shutdown: ShutdownConfig,
    },
    /// Run only the relay: publish the outbox's events to RabbitMQ and the webhook.
    Relay {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        relay: RelayConfig,
        #[command(flatten)]
        shutdown: ShutdownConfig,
    },
    /// Print the AsyncAPI document of the events (or write it and the JSON Schemas to a folder).
    Asyncapi {
        /// Write `asyncapi.json` and `events/<kind>.schema.json` into this folder (the
        /// repository keeps them in `docs/`) instead of printing the document.
        #[arg(long)]
        write: Option<std::path::PathBuf>,
        /// The exchange the document names.
        #[arg(long, env = "FLASHGATE_AMQP_EXCHANGE", default_value = crate::events::contract::DEFAULT_EXCHANGE)]
        amqp_exchange: String,
    },
    /// Create the database if it is missing and apply the migrations.
    Migrate {
        #[command(flatten)]
        database: DatabaseConfig,
        /// Keep trying this long while Postgres is unreachable or still starting (a container
        /// that starts beside it), with a growing, jittered pause; 0 tries once.
        #[arg(long, env = "FLASHGATE_MIGRATE_WAIT_SECONDS", default_value_t = 0)]
        wait_seconds: u64,
    },
    /// Ask a running gate whether it is ready (`GET /readyz`); exits 0 when it answers 200.
    /// For container healthchecks: the image has no curl.
    Healthcheck {
        /// The gate's address; an unspecified address (0.0.0.0, [::]) means this machine.
        #[arg(long, env = "FLASHGATE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Create, update or list sales.
    #[command(subcommand)]
    Sku(SkuCommand),
    /// Load sales from Postgres into Redis before they open.
    Prewarm {
        #[command(flatten)]
        target: PrewarmTarget,
        /// Refresh a sale that is already live in Redis: its metadata, state and total are
        /// brought to Postgres's; its stock is never reset (units held but not yet settled
        /// would be sold twice). With or without --resync: load a sale launched in another
        /// FLASHGATE_REDIS_NAMESPACE into this one (refused otherwise: two live copies would
        /// sell the same units) — only once nothing serves it from there.
        #[arg(long)]
        force: bool,
        /// Repair a live sale after Redis lost data or drifted: pause it, drain the settler,
        /// restore lost holds and set Redis stock from Postgres, resume.
        #[arg(long)]
        resync: bool,
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        redis: RedisConfig,
    },
    /// Check invariants 1–7 against Redis and Postgres; exits 1 if one is violated.
    Audit {
        /// Audit only this SKU (default: every SKU).
        #[arg(long)]
        sku: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        redis: RedisConfig,
    },
    /// Mint a token: a buyer's (for tests and load runs), or a scoped service credential
    /// (`--role payments` for the checkout's payment service, `--role admin`).
    Token {
        /// Who the token names (its `sub`): the buyer id, or the service holding the credential.
        #[arg(long, visible_alias = "buyer")]
        subject: String,
        /// What the token may do: `buyer` (reserve, and its own holds), `payments` (read,
        /// commit and release any hold; nothing else), `admin` (as the admin token).
        #[arg(long, value_enum, default_value_t = Role::Buyer)]
        role: Role,
        /// How long the token is valid, in seconds (at most FLASHGATE_JWT_MAX_LIFETIME_SECONDS).
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
        #[command(flatten)]
        tokens: TokenConfig,
    },
    /// Print a fresh random secret, long enough for FLASHGATE_JWT_SECRET or FLASHGATE_ADMIN_TOKEN.
    Secret {
        /// A `whsec_` secret for FLASHGATE_WEBHOOK_SECRET instead.
        #[arg(long)]
        webhook: bool,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PrewarmTarget {
    /// The SKU to pre-warm.
    #[arg(long)]
    sku: Option<String>,
    /// Pre-warm every SKU.
    #[arg(long)]
    all: bool,
}

// Parsed once per process, like `Command`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum SkuCommand {
    /// Create a sale, or update it (`--stock` is the new total).
    Upsert {
        sku: String,
        #[arg(long)]
        name: String,
        /// Unit price as a decimal, e.g. 199.99.
        #[arg(long)]
        price: String,
        #[arg(long, default_value = SaleDefinition::DEFAULT_CURRENCY)]
        currency: String,
        /// Units on sale in total.
        #[arg(long)]
        stock: u32,
        #[arg(long, default_value_t = SaleDefinition::DEFAULT_PER_BUYER_LIMIT)]
        per_buyer_limit: u32,
        #[arg(long, default_value_t = SaleDefinition::DEFAULT_HOLD_TTL_SECONDS)]
        hold_ttl_seconds: u32,
        /// RFC 3339, e.g. 2026-11-27T00:00:00Z.
        #[arg(long)]
        starts_at: Option<DateTime<Utc>>,
        #[arg(long)]
        ends_at: Option<DateTime<Utc>>,
        /// Turn the sale's waiting room on or off (left out: an existing sale keeps its room, a
        /// new one gets FLASHGATE_WAITING_ROOM's default).
        #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
        waiting_room: Option<bool>,
        /// With --waiting-room: places admitted per second.
        #[arg(long, default_value_t = WaitingRoom::DEFAULT_ADMIT_PER_SECOND, requires = "waiting_room")]
        admit_per_second: u32,
        /// With --waiting-room: how long an admitted place may reserve, in seconds.
        #[arg(long, default_value_t = WaitingRoom::DEFAULT_ADMISSION_WINDOW_SECONDS, requires = "waiting_room")]
        admission_window_seconds: u32,
        #[command(flatten)]
        database: DatabaseConfig,
        /// A sale live in Redis is changed there too (its total through its event stream).
        #[command(flatten)]
        redis: RedisConfig,
    },
    /// List every sale with its Postgres inventory.
    List {
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            database,
            redis,
            http,
            settler,
            relay,
            shutdown: stopping,
        } => {
            startup::raise_file_limit();
            let gate = startup::gate(
                &redis,
                Some(secrecy::ExposeSecret::expose_secret(&http.tokens.jwt_secret).as_bytes()),
            )?;
            let redis_check = startup::check_redis(&gate, redis.allow_evicting_redis).await?;
            let store = startup::store(&database)?;
            startup::report_postgres_budget(&store, database.database_pool_size).await;
            startup::check_migrations(&store).await?;
            let relay = startup::relay(&relay, &store).await?;
            let background = Settler::new(gate.clone(), store.clone(), settler.settings());
            let sweeper = settler.sweeper(gate.clone(), store.clone(), &background);
            let settler = background;
            let app =
                Application::build(&http, gate, store, settler.clone(), relay.status()).await?;
            tracing::info!(addr = %app.local_addr()?, "flashgate listening");
            if let Some(operations) = app.operations_addr()? {
                tracing::info!(addr = %operations, "operators' listener (metrics, admin, console)");
            }
            let shutdown = CancellationToken::new();
            startup::cancel_on_signal(shutdown.clone());
            let tasks = startup::Tasks {
                app: Some(app),
                settler: Some(settler),
                sweeper: Some(sweeper),
                relay: Some(relay),
                redis_check,
            };
            startup::run(tasks, shutdown, stopping.settings()).await
        }
        Command::Settle {
            database,
            redis,
            settler,
            relay,
            shutdown: stopping,
        } => {
            let gate = startup::gate(&redis, None)?;
            let redis_check = startup::check_redis(&gate, redis.allow_evicting_redis).await?;
            let store = startup::store(&database)?;
            startup::report_postgres_budget(&store, database.database_pool_size).await;
            startup::check_migrations(&store).await?;
            let relay = startup::relay(&relay, &store).await?;
            let background = Settler::new(gate.clone(), store.clone(), settler.settings());
            let sweeper = settler.sweeper(gate, store, &background);
            let shutdown = CancellationToken::new();
            startup::cancel_on_signal(shutdown.clone());
            tracing::info!("settler, sweeper and relay running");
            let tasks = startup::Tasks {
                app: None,
                settler: Some(background),
                sweeper: Some(sweeper),
                relay: Some(relay),
                redis_check,
            };
            startup::run(tasks, shutdown, stopping.settings()).await
        }
        Command::Relay {
            database,
            relay,
            shutdown: stopping,
        } => {
            let store = startup::store(&database)?;
            startup::check_migrations(&store).await?;
            let relay = startup::relay(&relay, &store).await?;
            let shutdown = CancellationToken::new();
            startup::cancel_on_signal(shutdown.clone());
            tracing::info!("relay running");
            let tasks = startup::Tasks {
                relay: Some(relay),
                ..startup::Tasks::default()
            };
            startup::run(tasks, shutdown, stopping.settings()).await
        }
        Command::Asyncapi {
            write,
            amqp_exchange,
        } => {
            use crate::events::contract;
            match write {
                Some(folder) => {
                    contract::write(&folder)
                        .with_context(|| format!("cannot write into {}", folder.display()))?;
                    println!("wrote {}", folder.display());
                }
                None => print!("{}", contract::pretty(&contract::asyncapi(&amqp_exchange))),
            }
            Ok(())
        }
        Command::Migrate {
            database,
            wait_seconds,
        } => {
            use secrecy::ExposeSecret;
            let url = database.database_url.expose_secret();
            let deadline = std::time::Instant::now() + Duration::from_secs(wait_seconds);
            let mut pauses = backon::BackoffBuilder::build(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .without_max_times(),
            );
            loop {
                match migrate(url).await {
                    Err(err) if err.is_transient() && std::time::Instant::now() < deadline => {
                        let pause = pauses.next().unwrap_or(Duration::from_secs(5));
                        eprintln!("postgres is not ready ({err}); trying again in {pause:.1?}");
                        tokio::time::sleep(pause).await;
                    }
                    outcome => return outcome.context("migration failed"),
                }
            }
        }
        Command::Healthcheck { listen, path } => healthcheck(&listen, &path).await,
        Command::Sku(SkuCommand::Upsert {
            sku,
            name,
            price,
            currency,
            stock,
            per_buyer_limit,
            hold_ttl_seconds,
            starts_at,
            ends_at,
            waiting_room,
            admit_per_second,
            admission_window_seconds,
            database,
            redis,
        }) => {
            let sku = Sku::parse(&sku)?;
            let sale = SaleDefinition {
                name,
                price: Money::parse(&price)?,
                currency: Currency::parse(&currency)?,
                stock,
                per_buyer_limit,
                hold_ttl_seconds,
                starts_at,
                ends_at,
                waiting_room: waiting_room.map(|enabled| WaitingRoom {
                    enabled,
                    admit_per_second,
                    admission_window_seconds,
                }),
            }
            .validate()?;
            let (gate, store) = (startup::gate(&redis, None)?, startup::store(&database)?);
            let settler = Settler::new(gate.clone(), store.clone(), Default::default());
            let sales = crate::app::App {
                gate: &gate,
                store: &store,
                settler: &settler,
            };
            let changed = sales.upsert(&sku, &sale).await?;
            let record = changed.record;
            println!(
                "{}: {} at {} {}, total {}, available {}, reserved {}, sold {}",
                record.sku,
                record.name,
                record.price,
                record.currency,
                record.total,
                record.available,
                record.reserved,
                record.sold
            );
            Ok(())
        }
        Command::Sku(SkuCommand::List { database }) => {
            println!(
                "{:<24} {:>10} {:>10} {:>10} {:>10}  state",
                "sku", "total", "available", "reserved", "sold"
            );
            for r in startup::store(&database)?.list_skus().await? {
                println!(
                    "{:<24} {:>10} {:>10} {:>10} {:>10}  {}",
                    r.sku.as_str(),
                    r.total,
                    r.available,
                    r.reserved,
                    r.sold,
                    r.state.as_str()
                );
            }
            Ok(())
        }
        Command::Prewarm {
            target,
            force,
            resync,
            database,
            redis,
        } => {
            let store = startup::store(&database)?;
            let gate = startup::gate(&redis, None)?;
            if resync {
                let settler = Settler::new(gate.clone(), store.clone(), Default::default());
                let skus = match target.sku {
                    Some(raw) => vec![Sku::parse(&raw)?],
                    None => store.settlement_skus(crate::store::Share::ALL).await?,
                };
                for sku in &skus {
                    let report =
                        crate::app::resync::resync(&gate, &store, &settler, sku, force).await?;
                    println!(
                        "{}: resynced, {} events settled, {} holds restored, {} followed postgres, \
                         {} recorded again from redis, stock {}{}, {}",
                        report.sku,
                        report.settled_events,
                        report.restored_holds,
                        report.followed_holds,
                        report.rerecorded_holds,
                        report.stock,
                        if report.stream_fenced {
                            format!(
                                ", stream recreated from the cursor ({} entries below it dropped)",
                                report.dropped_events
                            )
                        } else {
                            String::new()
                        },
                        report.state.as_str()
                    );
                }
                return Ok(());
            }
            let skus = match target.sku {
                Some(raw) => vec![Sku::parse(&raw)?],
                None => store
                    .list_skus()
                    .await?
                    .into_iter()
                    .map(|r| r.sku)
                    .collect(),
            };
            let settler = Settler::new(gate.clone(), store.clone(), Default::default());
            let sales = crate::app::App {
                gate: &gate,
                store: &store,
                settler: &settler,
            };
            let mut refused = 0;
            for sku in &skus {
                match sales.prewarm(sku, force).await {
                    Ok(changed) => println!(
                        "{}: live, total {}, {} units available in Postgres",
                        changed.record.sku, changed.record.total, changed.record.available
                    ),
                    Err(crate::app::SaleError::Gate(GateError::SaleLive(sku))) => {
                        refused += 1;
                        eprintln!(
                            "{sku}: already live in Redis; left alone (use --force to refresh it)"
                        );
                    }
                    Err(crate::app::SaleError::UnknownSku(sku)) => {
                        bail!("no SKU {sku} in Postgres")
                    }
                    Err(other) => return Err(other.into()),
                }
            }
            if refused > 0 {
                bail!("{refused} sale(s) were live and left alone");
            }
            Ok(())
        }
        Command::Audit {
            sku,
            json,
            database,
            redis,
        } => {
            let store = startup::store(&database)?;
            let gate = startup::gate(&redis, None)?;
            let skus = match sku {
                Some(raw) => vec![Sku::parse(&raw)?],
                None => store.settlement_skus(crate::store::Share::ALL).await?,
            };
            let mut audits = Vec::with_capacity(skus.len());
            for sku in &skus {
                audits.push(crate::audit::audit_sku(&gate, &store, sku).await?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&audits)?);
            } else {
                print!("{}", crate::audit::render_table(&audits));
            }
            let broken = audits.iter().filter(|a| !a.ok()).count();
            if broken > 0 {
                bail!("{broken} SKU(s) violate an invariant or lost holds told 201");
            }
            Ok(())
        }
        Command::Token {
            subject,
            role,
            ttl_seconds,
            tokens,
        } => {
            // A token signed with a key `serve` refuses would only fail later, at the gate.
            crate::auth::check_jwt_secret(&tokens.jwt_secret)?;
            let policy = tokens.policy();
            if ttl_seconds > policy.max_lifetime.as_secs() {
                bail!(
                    "--ttl-seconds {ttl_seconds} is longer than the {} s a token may live \
                     (FLASHGATE_JWT_MAX_LIFETIME_SECONDS)",
                    policy.max_lifetime.as_secs()
                );
            }
            let subject = BuyerId::parse(&subject)?;
            let token = BearerTokens::with_policy(&tokens.jwt_secret, policy).mint_for(
                &subject,
                role,
                Duration::from_secs(ttl_seconds),
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Secret { webhook } => {
            if webhook {
                println!("{}", crate::events::generate_webhook_secret());
            } else {
                println!("{}", crate::auth::generate_secret());
            }
            Ok(())
        }
    }
}

/// Creates the database if missing and applies the migrations, once.
async fn migrate(url: &str) -> Result<(), crate::store::StoreError> {
    if Store::create_database_if_missing(url).await? {
        println!("database created");
    }
    // No lock timeout here: a migration may rightly wait for another gate's.
    Store::connect_lazy(url, 2, None)?.migrate().await?;
    println!("migrations applied");
    Ok(())
}

/// `GET path` on the gate at `listen`; Ok when it answers 200 within two seconds.
async fn healthcheck(listen: &str, path: &str) -> anyhow::Result<()> {
    use http_body_util::Empty;
    let mut address: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("{listen:?} is not an address such as 127.0.0.1:8080"))?;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let ask = async {
        let stream = tokio::net::TcpStream::connect(address).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, address.to_string())
            .body(Empty::<hyper::body::Bytes>::new())?;
        anyhow::Ok(sender.send_request(request).await?.status())
    };
    let status = tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .map_err(|_| anyhow::anyhow!("{address}{path} did not answer within 2 s"))??;
    anyhow::ensure!(
        status == hyper::StatusCode::OK,
        "{address}{path} answered {status}"
    );
    println!("{address}{path}: {status}");
    Ok(())
}
