//! Tokens an identity provider signs (RS256 / ES256 / EdDSA) with keys it publishes as a JWKS.
//! The keys are made by the test (`openssl genpkey`), served by a local JWKS endpoint that
//! counts its reads, and checked by a real `flashgate serve`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{ADMIN_TOKEN, JWT_SECRET, database_url, redis_url, sale_body};
use crate::process::{Served, flashgate};

const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "flashgate";

/// Runs `openssl` on `input`; its output.
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input).expect("write");
    let out = child.wait_with_output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
}

/// A signing key of the provider, made now by `openssl genpkey`, and its public JWK under
/// `kid`. jsonwebtoken reads PKCS#8 DER (a DER `genpkey` writes an EC key in SEC1, hence
/// `pkcs8 -topk8`); it writes JWKs of EC keys but not of Ed25519 ones, whose public key is
/// the last 32 bytes of its SPKI DER.
fn provider_key(kid: &str, algorithm: Algorithm) -> (EncodingKey, Jwk) {
    use base64::Engine as _;
    let generate: &[&str] = match algorithm {
        Algorithm::ES256 => &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        Algorithm::EdDSA => &["genpkey", "-algorithm", "ED25519"],
        Algorithm::RS256 => &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        other => panic!("no test key for {other:?}"),
    };
    let pem = openssl(generate, b"");
    let der = openssl(&["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"], &pem);
    let (key, mut jwk) = match algorithm {
        Algorithm::EdDSA => {
            let public = openssl(&["pkey", "-pubout", "-outform", "DER"], &pem);
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&public[public.len() - 32..]);
            let jwk: Jwk = serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
                .expect("jwk");
            (EncodingKey::from_ed_der(&der), jwk)
        }
        _ => {
            let key = if algorithm == Algorithm::RS256 {
                // jsonwebtoken reads RSA keys as PKCS#1.
                EncodingKey::from_rsa_der(&openssl(
                    &["pkey", "-traditional", "-outform", "DER"],
                    &pem,
                ))
            } else {
                EncodingKey::from_ec_der(&der)
            };
            let jwk = Jwk::from_encoding_key(&key, algorithm).expect("jwk");
            (key, jwk)
        }
    };
    jwk.common.key_id = Some(kid.to_owned());
    (key, jwk)
}

fn token(key: &EncodingKey, algorithm: Algorithm, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

fn claims(sub: &str) -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"sub": sub, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE})
}

/// A JWKS endpoint: serves the current set, counts how often it was read.
struct KeySetServer {
    url: String,
    reads: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<Jwk>>>,
}

impl KeySetServer {
    async fn start(keys: Vec<Jwk>) -> Self {
        let reads = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(keys));
        let app = {
            let (reads, keys) = (reads.clone(), keys.clone());
            axum::Router::new().route(
                "/jwks.json",
                axum::routing::get(move || {
                    let (reads, keys) = (reads.clone(), keys.clone());
                    async move {
                        reads.fetch_add(1, Ordering::SeqCst);
                        let set = JwkSet {
                            keys: keys.lock().expect("keys").clone(),
                        };
                        axum::Json(set)
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, reads, keys }
    }
}

async fn reserve(client: &reqwest::Client, base: &str, token: &str, key: &str) -> u16 {
    client
        .post(format!("{base}/v1/skus/sneaker/reservations"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .expect("reserve")
        .status()
        .as_u16()
}

/// The provider's ES256 and RS256 tokens, and (after a rotation) its EdDSA ones, are accepted with the issuer and
/// audience the gate expects, the gate's own HS256 tokens still are, and an unknown `kid`
/// makes the gate read the key set again at most once per interval, however many arrive.
#[sqlx::test]
async fn tokens_of_the_identity_provider_are_accepted_by_their_kid(pool: PgPool) {
    let (es_key, es_jwk) = provider_key("k1", Algorithm::ES256);
    let (rs_key, rs_jwk) = provider_key("k3", Algorithm::RS256);
    let provider = KeySetServer::start(vec![es_jwk, rs_jwk]).await;
    let served = Served::start_with(
        &pool,
        0,
        &[
            ("RUST_LOG", "warn"),
            ("FLASHGATE_JWKS_URL", provider.url.as_str()),
            ("FLASHGATE_JWT_ISSUER", ISSUER),
            ("FLASHGATE_JWT_AUDIENCE", AUDIENCE),
            ("FLASHGATE_JWKS_MIN_REFRESH_SECONDS", "3"),
        ],
        Stdio::inherit(),
    )
    .await;
    let client = reqwest::Client::new();
    let base = served.base.clone();
    served.open_sale("sneaker", &sale_body(50, 1)).await;
    assert_eq!(
        provider.reads.load(Ordering::SeqCst),
        1,
        "read once at start"
    );

    let alice = token(&es_key, Algorithm::ES256, "k1", claims("alice"));
    assert_eq!(reserve(&client, &base, &alice, "a1").await, 201);
    let frank = token(&rs_key, Algorithm::RS256, "k3", claims("frank"));
    assert_eq!(reserve(&client, &base, &frank, "f1").await, 201);
    // Another application's token (its audience) and a token of another issuer are refused.
    for (claim, value) in [("aud", "another-app"), ("iss", "https://evil.example")] {
        let mut elsewhere = claims("bob");
        elsewhere[claim] = json!(value);
        let refused = token(&es_key, Algorithm::ES256, "k1", elsewhere);
        assert_eq!(
            reserve(&client, &base, &refused, claim).await,
            401,
            "{claim}"
        );
    }
    // The gate's own HS256 tokens still work (with the issuer and audience it requires).
    let own = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("carol"),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign");
    assert_eq!(reserve(&client, &base, &own, "c1").await, 201);

    // Rotation: the provider publishes an EdDSA key k2. The first token naming it makes the
    // gate read the set again; a retry soon after is accepted.
    let (ed_key, ed_jwk) = provider_key("k2", Algorithm::EdDSA);
    provider.keys.lock().expect("keys").push(ed_jwk);
    let dave = token(&ed_key, Algorithm::EdDSA, "k2", claims("dave"));
    let started = Instant::now();
    while reserve(&client, &base, &dave, "d1").await != 201 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the rotated key was never learnt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A key of one algorithm never verifies another: k2 named with ES256 is refused.
    assert_eq!(
        reserve(
            &client,
            &base,
            &token(&es_key, Algorithm::ES256, "k2", claims("erin")),
            "e1"
        )
        .await,
        401
    );

    // Forged kids: 50 of them within the interval cost the provider at most one read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = provider.reads.load(Ordering::SeqCst);
    for n in 0..50 {
        let forged = token(
            &es_key,
            Algorithm::ES256,
            &format!("forged-{n}"),
            claims("mallory"),
        );
        assert_eq!(
            reserve(&client, &base, &forged, &format!("m{n}")).await,
            401
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reads = provider.reads.load(Ordering::SeqCst) - before;
    assert!(
        reads <= 1,
        "50 forged kids made {reads} reads of the key set"
    );
}

/// A key set is shared by every application of a provider: without an issuer and an audience
/// to check, the gate would accept tokens meant for the others. It refuses to start.
#[sqlx::test]
async fn a_key_set_without_issuer_and_audience_is_refused_at_start(pool: PgPool) {
    let output = flashgate()
        .arg("serve")
        .env("DATABASE_URL", database_url(&pool).await)
        .env("REDIS_URL", redis_url())
        .env(
            "FLASHGATE_REDIS_NAMESPACE",
            format!("fgjwks-{}", uuid::Uuid::new_v4().simple()),
        )
        .env("FLASHGATE_LISTEN", "127.0.0.1:0")
        .env("FLASHGATE_JWT_SECRET", JWT_SECRET)
        .env("FLASHGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FLASHGATE_JWKS_URL", "http://127.0.0.1:9/jwks.json")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FLASHGATE_JWT_ISSUER"), "{stderr}");
}
