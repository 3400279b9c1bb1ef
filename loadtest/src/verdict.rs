//! The verdict: the gate's own audit of invariants 1–7 (through `GET /v1/admin/skus/{sku}/audit`,
//! after the streams drained) plus what only the buyers can see.

use serde_json::Value;

use crate::config::Config;
use crate::drive::Drive;

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

pub fn judge(config: &Config, drive: &Drive, audit: &Value) -> Vec<Finding> {
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
    let negative: Vec<String> = ["available", "reserved", "sold", "redis_stock"]
        .iter()
        .filter(|f| audit[**f].as_i64().is_some_and(|v| v < 0))
        .map(|f| format!("{f} = {}", audit[*f]))
        .collect();
    findings.push(finding(
        "no stock is negative anywhere",
        negative.is_empty(),
        negative.join(", "),
    ));

    // Invariant 3 as buyers see it: one key, one reservation, however often it was sent.
    let split = drive.buyers.iter().filter(|b| b.ids.len() > 1).count();
    findings.push(finding(
        "no idempotency key answered with two reservations",
        split == 0,
        format!("{split} buyers saw more than one reservation id"),
    ));

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
