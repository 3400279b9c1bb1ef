//! `flashgate-loadtest` — drives thousands of concurrent buyers at one SKU of a running gate,
//! then proves that the invariants of DESIGN.md §7 held.
//!
//! Modules: [`config`] (the command line), [`drive`] (virtual buyers and what they record),
//! [`report`] (percentiles, JSON and the HTML page), [`verdict`] (the invariant checks).

mod config;
mod drive;
mod report;
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
async fn run(config: config::Config) -> anyhow::Result<bool> {
    let admin = drive::Admin::new(&config)?;
    if config.create {
        admin
            .create_sale(&config)
            .await
            .context("cannot create the sale")?;
    }
    let drive = drive::drive(&config).await?;
    eprintln!("waiting for the settler to drain the stream ...");
    let settle_started = Instant::now();
    let audit = admin.wait_for_settlement(&config).await?;
    let settlement_lag = settle_started.elapsed();
    let server_peak_memory_kib = config.server_pid.and_then(report::peak_memory_kib);
    let verdict = verdict::judge(&config, &drive, &audit);
    let report = report::Report::new(
        &config,
        &drive,
        settlement_lag,
        audit,
        verdict,
        server_peak_memory_kib,
    );
    print!("{}", report.text());
    if let Some(path) = &config.report_json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)
            .with_context(|| format!("cannot write {path}"))?;
        eprintln!("report: {path}");
    }
    if let Some(path) = &config.report_html {
        std::fs::write(path, report.html()).with_context(|| format!("cannot write {path}"))?;
        eprintln!("report: {path}");
    }
    Ok(report.passed())
}
