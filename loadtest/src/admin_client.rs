//! What the load-test tools ask of a gate before they drive it: a sale of their own, loaded into
//! Redis, and buyer tokens. Shared by `flashgate-shortcut-race` and `flashgate-settle-bench`
//! (included with `#[path]`: the bins share no library).

use std::time::Duration;

use anyhow::{Context, bail};
use flashgate::auth::BearerTokens;
use flashgate::domain::BuyerId;
use serde_json::json;

/// Creates (or resets) `sku` with `stock` units, one per buyer, through the gate at `base_url`
/// and pre-warms it with `force`.
pub async fn open_sale(
    client: &reqwest::Client,
    base_url: &str,
    admin_token: &str,
    sku: &str,
    stock: usize,
) -> anyhow::Result<()> {
    let base = format!("{base_url}/v1/admin/skus/{sku}");
    let body = json!({"name": sku, "price": "1.00", "currency": "USD", "stock": stock,
        "per_buyer_limit": 1, "hold_ttl_seconds": 600});
    for request in [
        client.put(&base).json(&body),
        client.post(format!("{base}/prewarm?force=true")),
    ] {
        let answer = request.bearer_auth(admin_token).send().await?;
        if !answer.status().is_success() {
            bail!("{sku}: {} {}", answer.status(), answer.text().await?);
        }
    }
    Ok(())
}

/// A token for `buyer`, valid for an hour.
pub fn buyer_token(tokens: &BearerTokens, buyer: &str) -> anyhow::Result<String> {
    let buyer = BuyerId::parse(buyer).context("buyer id")?;
    Ok(tokens.mint(&buyer, Duration::from_secs(3600))?)
}
