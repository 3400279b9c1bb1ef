//! `flashgate-loadtest` — drives thousands of concurrent buyers at one SKU of a running gate,
//! then proves that the invariants of docs/DESIGN.md §7 held.
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
