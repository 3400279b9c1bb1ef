//! `flashgate-loadtest` — drives thousands of concurrent buyers at one SKU of a running gate,
//! then proves that the invariants of docs/DESIGN.md §7 held.
//!
//! Modules: [`config`] (the command line), [`drive`] (virtual buyers and what they record),
//! [`events`] (`--consume-events`), [`ledger`] (what Postgres recorded), [`report`]
//! (percentiles, JSON and the HTML page), [`verdict`] (the invariant checks), [`room`] (the
//! waiting-room fairness run, `--waiting-room`).

mod config;
mod drive;
mod events;
mod ledger;
mod report;
mod room;
mod verdict;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = config::Config::parse();
    match run(config).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether the verdict passed.
async fn run(mut config: config::Config) -> anyhow::Result<bool> {
    if config.waiting_room {
        let run = room::run(&config).await?;
        print!("{}", run.text());
        write_report(&config.report_json, &serde_json::to_vec_pretty(&run)?)?;
        return Ok(run.passed());
    }
    let admin = drive::Admin::new(&config)?;
    if config.create {
        admin
            .create_sale(&config)
            .await
            .context("cannot create the sale")?;
    } else {
        // An existing sale: its units on sale now and its limit are what the run is judged
        // against, not the defaults of --stock and --per-buyer-limit.
        let sale = admin.sale().await.context("cannot read the sale")?;
        let number = |field: &str| {
            sale[field]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .with_context(|| format!("the sale's {field} is not a count: {}", sale[field]))
        };
        config.stock = number("available")?;
        config.per_buyer_limit = number("per_buyer_limit")?;
    }
    use secrecy::ExposeSecret as _;
    let database_url = config
        .database_url
        .as_ref()
        .map(|url| url.expose_secret().to_owned());
    // Bound before the run, so the events of the run itself are all seen.
    let watch = if config.consume_events {
        let Some(database_url) = &database_url else {
            anyhow::bail!(
                "--consume-events compares the events with Postgres: give --database-url (or DATABASE_URL)"
            );
        };
        let url = config
            .amqp_url
            .as_ref()
            .context("--consume-events needs --amqp-url (or FLASHGATE_AMQP_URL)")?;
        let before = ledger::read(database_url, &config.sku).await?.last_sequence;
        let watch =
            events::EventWatch::start(url.expose_secret(), &config.amqp_exchange, &config.sku)
                .await?;
        Some((watch, before))
    } else {
        None
    };
    let drive = drive::drive(&config).await?;
    eprintln!("waiting for the settler to drain the stream ...");
    let settle_started = Instant::now();
    let audit = admin.wait_for_settlement(&config).await?;
    let settlement_lag = settle_started.elapsed();
    let ledger = match &database_url {
        Some(url) => Some(ledger::read(url, &config.sku).await?),
        None => None,
    };
    let events = match (&watch, &ledger) {
        (Some((watch, before)), Some(ledger)) => {
            eprintln!("waiting for the events of {} ...", watch.sku());
            let received = watch
                .wait_for(
                    ledger.last_sequence - before,
                    std::time::Duration::from_secs(config.settle_timeout_seconds),
                )
                .await;
            Some((events::tally(&received), *before))
        }
        _ => None,
    };
    let server_peak_memory_kib = config.server_pid.and_then(report::peak_memory_kib);
    let verdict = verdict::judge(&config, &drive, &audit, ledger.as_ref(), events.as_ref());
    let report = report::Report::new(
        &config,
        &drive,
        settlement_lag,
        audit,
        verdict,
        server_peak_memory_kib,
        events.as_ref().map(|(tally, _)| tally),
    );
    print!("{}", report.text());
    write_report(
        &config.report_json,
        &serde_json::to_vec_pretty(&report.json())?,
    )?;
    write_report(&config.report_html, report.html().as_bytes())?;
    Ok(report.passed())
}

/// Writes one report file, creating its folder; an empty path writes nothing.
fn write_report(path: &str, contents: &[u8]) -> anyhow::Result<()> {
    if path.is_empty() {
        return Ok(());
    }
    if let Some(folder) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {path}"))?;
    eprintln!("report: {path}");
    Ok(())
}
