//! The verdict: the gate's own audit of invariants 1–7 (through `GET /v1/admin/skus/{sku}/audit`,
//! after the streams drained) plus what only the buyers can see.

use serde_json::Value;

use crate::config::Config;
use crate::drive::Drive;
use crate::events::EventTally;
use crate::ledger::Ledger;

/// One check and whether it passed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

fn finding(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Finding {
    Finding {
        name: name.into(),
        passed,
        detail: detail.into(),
    }
}

pub fn judge(
    config: &Config,
    drive: &Drive,
    audit: &Value,
    ledger: Option<&Ledger>,
    events: Option<&(EventTally, i64)>,
) -> Vec<Finding> {
    let mut findings = Vec::new();

    // The gate's audit, invariant by invariant. After the drain nothing may still be pending.
    match audit["checks"].as_array() {
        Some(checks) => {
            for check in checks {
                let verdict = check["verdict"].as_str().unwrap_or("missing");
                findings.push(finding(
                    format!(
                        "invariant {}: {}",
                        check["invariant"],
                        check["name"].as_str().unwrap_or("?")
                    ),
                    verdict == "held",
                    format!("{verdict}: {}", check["detail"].as_str().unwrap_or("")),
                ));
            }
        }
        None => findings.push(finding(
            "audit",
            false,
            format!("the audit answered {audit}"),
        )),
    }
    let backlog = audit["backlog"].as_u64().unwrap_or(u64::MAX);
    findings.push(finding(
        "the settler drained the stream",
        backlog == 0,
        format!("backlog {backlog}"),
    ));
    let stocks = ["available", "reserved", "sold", "redis_stock"];
    let none_negative = stocks
        .iter()
        .all(|f| audit[*f].as_i64().is_none_or(|v| v >= 0));
    let values: Vec<String> = stocks
        .iter()
        .map(|f| format!("{} {}", f.replace('_', " "), audit[*f]))
        .collect();
    findings.push(finding(
        "no stock is negative anywhere",
        none_negative,
        values.join(", "),
    ));

    // Holds the gate itself found lost (an id it gave out came back and neither store had it).
    let lost = audit["lost_holds"].as_i64().unwrap_or(0);
    findings.push(finding(
        "the gate found no hold lost",
        lost == 0,
        format!("{lost} hold(s) told 201 were answered hold_lost"),
    ));

    // Invariant 3 as buyers see it: one key, one reservation, however often it was sent.
    let split = drive.buyers.iter().filter(|b| b.ids.len() > 1).count();
    findings.push(finding(
        "no idempotency key answered with two reservations",
        split == 0,
        format!("{split} buyers saw more than one reservation id"),
    ));

    // Invariant 7 as buyers see it: every hold a buyer was told about is in Postgres once the
    // stream drained. The gate's own audit cannot see a hold Redis lost before it settled.
    match ledger {
        Some(ledger) => {
            let missing: Vec<&String> = drive
                .buyers
                .iter()
                .flat_map(|b| b.ids.iter())
                .filter(|id| !ledger.statuses.contains_key(*id))
                .collect();
            let told: usize = drive.buyers.iter().map(|b| b.ids.len()).sum();
            findings.push(finding(
                "every hold a buyer was told about (201) is in postgres",
                missing.is_empty(),
                if missing.is_empty() {
                    format!("{told} holds told, all in postgres")
                } else {
                    format!(
                        "{} of {told} holds told 201 are not in postgres, e.g. {}",
                        missing.len(),
                        listed(missing.iter().map(|s| s.as_str()))
                    )
                },
            ));
        }
        None => findings.push(finding(
            "holds told 201 against postgres (skipped: no --database-url)",
            true,
            "give --database-url (or DATABASE_URL) to check them",
        )),
    }
    if let (Some(ledger), Some((tally, before))) = (ledger, events) {
        judge_events(&mut findings, ledger, tally, *before);
    }

    // Exactly min(stock, demand) holds — when no unit could come back during the run.
    let holds: usize = drive.buyers.iter().map(|b| b.ids.len()).sum();
    let nothing_returned =
        config.release == 0.0 && u64::from(config.hold_ttl_seconds) > drive.duration.as_secs() + 1;
    if config.create && nothing_returned {
        let expected = (config.stock as usize).min(config.buyers);
        findings.push(finding(
            "holds handed out = min(stock, demand)",
            holds == expected,
            format!("{holds} holds, expected {expected}"),
        ));
    } else {
        findings.push(finding(
            "holds handed out (units came back during the run, so no exact count applies)",
            true,
            format!("{holds} holds"),
        ));
    }

    // A buyer who holds a unit can always pay (docs/DESIGN.md §9): shedding and admission guard new
    // buyers only.
    let refused_payments = drive
        .samples
        .iter()
        .filter(|s| s.op != crate::drive::Op::Reserve && s.shed_or_overloaded())
        .count();
    findings.push(finding(
        "no commit or release was refused by shedding or admission",
        refused_payments == 0,
        format!("{refused_payments} commits or releases answered 429 shed or 503 overloaded"),
    ));

    // `503 overloaded` is admission doing its job (answered fast, retried by the buyer), not a
    // server error; every other 5xx is.
    let server_errors = drive
        .samples
        .iter()
        .filter(|s| s.status.is_some_and(|c| c >= 500) && s.outcome != "503 overloaded")
        .count();
    findings.push(finding(
        "no 5xx answers",
        server_errors == 0 || config.allow_5xx,
        format!(
            "{server_errors} answers were 5xx{}",
            if config.allow_5xx { " (allowed)" } else { "" }
        ),
    ));
    findings
}

/// At most five items, for a finding's detail.
fn listed<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    let mut shown = items.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        shown.push_str(&format!(" and {} more", items.len() - 5));
    }
    shown
}

/// `--consume-events`: the events received against what Postgres recorded.
fn judge_events(findings: &mut Vec<Finding>, ledger: &Ledger, tally: &EventTally, before: i64) {
    let with_status = |status: &str| -> Vec<&String> {
        ledger
            .statuses
            .iter()
            .filter(|(_, s)| s.as_str() == status)
            .map(|(id, _)| id)
            .collect()
    };
    let committed = with_status("committed");
    let not_once: Vec<&str> = committed
        .iter()
        .filter(|id| tally.committed.get(id.as_str()).map_or(0, |e| e.len()) != 1)
        .map(|id| id.as_str())
        .collect();
    let stray: Vec<&str> = tally
        .committed
        .keys()
        .filter(|id| ledger.statuses.get(*id).map(String::as_str) != Some("committed"))
        .map(String::as_str)
        .collect();
    findings.push(finding(
        "every committed hold has exactly one reservation.committed event",
        not_once.is_empty() && stray.is_empty(),
        format!(
            "{} committed in postgres; {} without exactly one event{}; {} events for holds postgres has not committed{}",
            committed.len(),
            not_once.len(),
            if not_once.is_empty() { String::new() } else { format!(" ({})", listed(not_once.iter().copied())) },
            stray.len(),
            if stray.is_empty() { String::new() } else { format!(" ({})", listed(stray.iter().copied())) },
        ),
    ));
    let rejected = with_status("rejected");
    let unannounced: Vec<&str> = rejected
        .iter()
        .filter(|id| !tally.rejected.contains_key(id.as_str()))
        .map(|id| id.as_str())
        .collect();
    findings.push(finding(
        "every rejected hold has a reservation.rejected event",
        unannounced.is_empty(),
        format!(
            "{} rejected in postgres, {} rejection events{}",
            rejected.len(),
            tally.rejected.len(),
            if unannounced.is_empty() {
                String::new()
            } else {
                format!("; without one: {}", listed(unannounced.iter().copied()))
            }
        ),
    ));
    let expected: std::collections::BTreeSet<i64> = (before + 1..=ledger.last_sequence).collect();
    let missing: Vec<String> = expected
        .difference(&tally.sequences)
        .map(|s| s.to_string())
        .collect();
    findings.push(finding(
        "the SKU's event sequences have no gap",
        missing.is_empty(),
        format!(
            "{} events ({} to {}), {} received{}",
            expected.len(),
            before + 1,
            ledger.last_sequence,
            tally.sequences.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing {}", listed(missing.iter().map(String::as_str)))
            }
        ),
    ));
    let sold_out = ledger.available == 0;
    let last = tally.last_availability.as_deref();
    findings.push(finding(
        "the last availability event says what postgres says",
        if sold_out {
            last == Some("sale.sold_out")
        } else {
            last != Some("sale.sold_out")
        },
        format!(
            "postgres available {}, last availability event {}",
            ledger.available,
            last.unwrap_or("none")
        ),
    ));
    findings.push(finding(
        "duplicates (at-least-once delivery: counted, never a failure)",
        true,
        format!(
            "{} messages, {} event ids received more than once{}",
            tally.messages,
            tally.duplicates.len(),
            if tally.duplicates.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    listed(tally.duplicates.iter().map(|(id, _)| id.as_str()))
                )
            }
        ),
    ));
}
