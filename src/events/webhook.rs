//! The webhook sink, for systems without a broker: POSTs each event to `FLASHGATE_WEBHOOK_URL`
//! as the Standard Webhooks specification describes (<https://www.standardwebhooks.com>).
//!
//! Each call carries the event's body and the headers `webhook-id` (the event id),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,` + base64 of
//! HMAC-SHA256 over `id.timestamp.body`, keyed with the `whsec_` secret). A 2xx answer marks the
//! event delivered. Per SKU the events go one at a time, in sequence order; SKUs go side by side.
//! A SKU whose call failed is retried with a jittered backoff, from the same event, for
//! `FLASHGATE_WEBHOOK_RETRY_FOR`; after that the event is given up (counted, logged, and still
//! readable from the pull API) and the SKU goes on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use super::relay::Delivered;
use crate::domain::ValidationError;
use crate::store::OutboxRow;

/// Where and how events are POSTed (`FLASHGATE_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    /// `whsec_` followed by the base64 of 24 to 64 random bytes (`flashgate secret --webhook`).
    pub secret: SecretString,
    /// Longest one call may take.
    pub timeout: Duration,
    /// How long a failing event is retried before it is given up.
    pub retry_for: Duration,
}

/// SKUs delivered side by side in one pass.
const PARALLEL_SKUS: usize = 16;

/// The webhook sink.
#[derive(Debug)]
pub struct WebhookSink {
    url: reqwest::Url,
    key: Vec<u8>,
    client: reqwest::Client,
    retry_for: Duration,
    /// When each event's first failed call was made, for the retry period.
    failing_since: HashMap<Uuid, Instant>,
}

impl WebhookSink {
    /// Checks the URL and the secret: either wrong refuses to start, naming the setting.
    pub fn new(settings: WebhookSettings) -> Result<Self, ValidationError> {
        let url = reqwest::Url::parse(&settings.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                ValidationError::new(
                    "FLASHGATE_WEBHOOK_URL",
                    "must be an http:// or https:// URL",
                )
            })?;
        let key = decode_secret(settings.secret.expose_secret())?;
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("flashgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ValidationError::new("FLASHGATE_WEBHOOK_URL", e.to_string()))?;
        Ok(Self {
            url,
            key,
            client,
            retry_for: settings.retry_for,
            failing_since: HashMap::new(),
        })
    }

    /// Delivers `rows` (per SKU in sequence order); see the module doc.
    pub async fn deliver(&mut self, rows: &[OutboxRow]) -> Delivered {
        let mut by_sku: Vec<&[OutboxRow]> = rows.chunk_by(|a, b| a.sku == b.sku).collect();
        by_sku.sort_by_key(|run| run[0].sku.as_str());
        let mut outcomes = Vec::with_capacity(by_sku.len());
        for group in by_sku.chunks(PARALLEL_SKUS) {
            let calls = group
                .iter()
                .map(|run| self.deliver_sku(run, &self.failing_since));
            outcomes.extend(futures::future::join_all(calls).await);
        }
        let mut delivered = Delivered::default();
        for (sent, given_up, failed) in outcomes {
            for id in sent.iter().chain(&given_up) {
                self.failing_since.remove(id);
            }
            delivered.sent.extend(sent);
            delivered.given_up.extend(given_up);
            if let Some((sku, event)) = failed {
                self.failing_since.entry(event).or_insert_with(Instant::now);
                delivered.failed_skus.push(sku);
            }
        }
        delivered
    }

    /// One SKU's events, one at a time: (delivered, given up, the SKU and event that failed).
    async fn deliver_sku(
        &self,
        run: &[OutboxRow],
        failing_since: &HashMap<Uuid, Instant>,
    ) -> (Vec<Uuid>, Vec<Uuid>, Option<(String, Uuid)>) {
        let (mut sent, mut given_up) = (Vec::new(), Vec::new());
        for row in run {
            match self.post(row).await {
                Ok(()) => {
                    metrics::counter!("flashgate_webhook_deliveries_total", "outcome" => "delivered")
                        .increment(1);
                    sent.push(row.id);
                }
                Err(reason) => {
                    metrics::counter!("flashgate_webhook_deliveries_total", "outcome" => "failed")
                        .increment(1);
                    let since = failing_since.get(&row.id).copied();
                    if since.is_some_and(|since| since.elapsed() >= self.retry_for) {
                        metrics::counter!("flashgate_webhook_deliveries_total", "outcome" => "given_up")
                            .increment(1);
                        tracing::error!(event = %row.id, sku = %row.sku, sequence = row.sequence,
                            %reason, "webhook kept failing for FLASHGATE_WEBHOOK_RETRY_FOR; \
                            given up (replay it from GET /v1/admin/events)");
                        given_up.push(row.id);
                        continue;
                    }
                    tracing::warn!(event = %row.id, sku = %row.sku, %reason,
                        "webhook call failed; retrying the SKU from this event");
                    return (sent, given_up, Some((row.sku.clone(), row.id)));
                }
            }
        }
        (sent, given_up, None)
    }

    async fn post(&self, row: &OutboxRow) -> Result<(), String> {
        let timestamp = chrono::Utc::now().timestamp();
        let id = row.id.to_string();
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                sign(&self.key, &id, timestamp, &row.body),
            )
            .body(row.body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }
}

/// The key inside a `whsec_` secret.
fn decode_secret(secret: &str) -> Result<Vec<u8>, ValidationError> {
    let invalid = |reason: &str| ValidationError::new("FLASHGATE_WEBHOOK_SECRET", reason);
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| invalid("must start with whsec_ (flashgate secret --webhook makes one)"))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| invalid("whsec_ must be followed by base64"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(invalid("the key must be 24 to 64 bytes"));
    }
    Ok(key)
}

/// A fresh `whsec_` secret of 32 random bytes.
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The `webhook-signature` of one call: `v1,` + base64(HMAC-SHA256(key, "id.timestamp.body")).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference implementations.
    #[test]
    fn signatures_match_the_specification() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_must_be_whsec_base64_of_a_real_key() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
        assert!(decode_secret(&generate_secret()).is_ok());
    }
}
