//! The contract consumers code against: a JSON Schema (draft-07) per event kind and the
//! AsyncAPI 3 document of the exchange, both generated from the types of `events/mod.rs`
//! (schemars follows their serde attributes, so the schema is the shape serde writes).
//!
//! `GET /asyncapi.json` serves the document for the configured exchange; `docs/asyncapi.json`
//! and `docs/events/*.schema.json` are the same, written by `flashgate asyncapi --write docs`
//! and checked by a test, so the repository's copies cannot drift from the code.

use serde_json::{Map, Value, json};

use super::{Event, EventKind};

/// The JSON Schema of [`Event`] with every kind as one `oneOf` branch.
fn event_schema() -> Value {
    let mut settings = schemars::generate::SchemaSettings::draft07();
    settings.inline_subschemas = true;
    let schema = settings.into_generator().into_root_schema_for::<Event>();
    serde_json::to_value(schema).unwrap_or_default()
}

/// The JSON Schema of one kind's message body: the fields every event has, and the kind's own.
pub fn schema(kind: EventKind) -> Value {
    let all = event_schema();
    let mut properties = all["properties"].as_object().cloned().unwrap_or_default();
    let mut required: Vec<Value> = all["required"].as_array().cloned().unwrap_or_default();
    let branch = all["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["properties"]["kind"]["const"] == kind.as_str());
    if let Some(branch) = branch {
        if let Some(own) = branch["properties"].as_object() {
            properties.extend(own.clone());
        }
        required.extend(branch["required"].as_array().cloned().unwrap_or_default());
    }
    let mut required_names: Vec<String> = Vec::new();
    for name in required.iter().filter_map(Value::as_str) {
        if !required_names.iter().any(|n| n == name) {
            required_names.push(name.to_owned());
        }
    }
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": format!("urn:flashgate:events:{kind}"),
        "title": kind.as_str(),
        "description": kind.summary(),
        "type": "object",
        "properties": properties,
        "required": required_names,
    })
}

/// The AsyncAPI 3 document of the events published to `exchange`.
pub fn asyncapi(exchange: &str) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for kind in EventKind::ALL {
        let name = kind.as_str();
        channels.insert(
            name.into(),
            json!({
                "address": format!("{name}.{{sku}}"),
                "title": name,
                "description": format!(
                    "Routing key `{name}.<sku>` on the topic exchange `{exchange}`: bind \
                     `{name}.#` for every SKU, `{name}.<sku>` for one."
                ),
                "parameters": {
                    "sku": {"description": "The SKU: 1 to 64 of A-Z a-z 0-9 . _ -"}
                },
                "messages": {name: {"$ref": format!("#/components/messages/{name}")}},
                "bindings": {"amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": "topic",
                        "durable": true,
                        "autoDelete": false,
                        "vhost": "/"
                    },
                    "bindingVersion": "0.3.0"
                }}
            }),
        );
        operations.insert(
            format!("send.{name}"),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{name}")},
                "summary": kind.summary(),
                "messages": [{"$ref": format!("#/channels/{name}/messages/{name}")}],
                "bindings": {"amqp": {
                    "deliveryMode": 2,
                    "mandatory": true,
                    "bindingVersion": "0.3.0"
                }}
            }),
        );
        messages.insert(
            name.into(),
            json!({
                "name": name,
                "title": name,
                "summary": kind.summary(),
                "contentType": "application/json",
                "headers": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string"},
                        "kind": {"type": "string", "const": name},
                        "sequence": {"type": "integer", "minimum": 1}
                    }
                },
                "correlationId": {
                    "description": "The event id, also the AMQP message_id: deduplicate on it.",
                    "location": "$message.payload#/id"
                },
                "payload": {"$ref": format!("#/components/schemas/{name}")},
                "bindings": {"amqp": {"messageType": name, "bindingVersion": "0.3.0"}}
            }),
        );
        let mut body = schema(kind);
        if let Some(object) = body.as_object_mut() {
            object.remove("$schema");
            object.remove("$id");
        }
        schemas.insert(name.into(), body);
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "flashgate events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every decision flashgate's Postgres records, published from its \
                transactional outbox: at-least-once, in per-SKU sequence order, deduplicable by \
                `id` (the AMQP message_id). Each message is persistent, `mandatory`, \
                `content_type: application/json`, with headers `sku`, `kind` and `sequence`. A \
                message no queue is bound for goes to the fanout exchange `<exchange>.dlx`. The \
                same bodies are served by GET /v1/admin/events and POSTed to a webhook \
                (Standard Webhooks)."
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker of FLASHGATE_AMQP_URL."
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas}
    })
}

/// The exchange name the repository's copy of the document is written for.
pub const DEFAULT_EXCHANGE: &str = "flashgate.events";

/// Writes `asyncapi.json` and `events/<kind>.schema.json` under `folder` (the repository's
/// `docs/`), as pretty JSON with a final newline.
pub fn write(folder: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(folder.join("events"))?;
    std::fs::write(
        folder.join("asyncapi.json"),
        pretty(&asyncapi(DEFAULT_EXCHANGE)),
    )?;
    for kind in EventKind::ALL {
        std::fs::write(
            folder.join("events").join(format!("{kind}.schema.json")),
            pretty(&schema(kind)),
        )?;
    }
    Ok(())
}

/// Pretty JSON with a final newline, as the repository keeps it.
pub fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        Draft, Facts, RejectionFacts, ReservationFacts, SaleFacts, Stock, StockCause,
        StockChangeFacts,
    };

    /// One event of every kind. The match stops compiling when a kind is added, so every kind
    /// is checked against its schema.
    fn one_of_each() -> Vec<Event> {
        let reservation = ReservationFacts {
            reservation_id: uuid::Uuid::new_v4(),
            buyer_id: "alice".into(),
            quantity: 2,
            unit_price: rust_decimal::Decimal::new(19999, 2),
            currency: "USD".into(),
            amount: rust_decimal::Decimal::new(39998, 2),
            reference: Some("order-7".into()),
            metadata: serde_json::json!({"cart": 42, "lines": [1, 2]})
                .as_object()
                .cloned(),
        };
        let stock = Stock {
            total: 10,
            available: 4,
            reserved: 2,
            sold: 4,
        };
        let sale = SaleFacts {
            state: "open".into(),
            stock,
        };
        let sku = crate::domain::Sku::parse("sneaker").expect("sku");
        EventKind::ALL
            .into_iter()
            .enumerate()
            .map(|(n, kind)| {
                let facts = match kind {
                    EventKind::ReservationHeld => Facts::ReservationHeld(reservation.clone()),
                    EventKind::ReservationCommitted => {
                        Facts::ReservationCommitted(reservation.clone())
                    }
                    EventKind::ReservationReleased => {
                        Facts::ReservationReleased(reservation.clone())
                    }
                    EventKind::ReservationExpired => Facts::ReservationExpired(reservation.clone()),
                    EventKind::ReservationRejected => Facts::ReservationRejected(RejectionFacts {
                        reservation: reservation.clone(),
                        reason: "out_of_stock".into(),
                    }),
                    EventKind::StockChanged => Facts::StockChanged(StockChangeFacts {
                        cause: StockCause::Restock,
                        delta: 5,
                        stock,
                    }),
                    EventKind::SaleOpened => Facts::SaleOpened(sale.clone()),
                    EventKind::SalePaused => Facts::SalePaused(sale.clone()),
                    EventKind::SaleResumed => Facts::SaleResumed(sale.clone()),
                    EventKind::SaleSoldOut => Facts::SaleSoldOut(sale.clone()),
                    EventKind::SaleBackInStock => Facts::SaleBackInStock(sale.clone()),
                };
                Draft {
                    facts,
                    occurred_at: chrono::Utc::now(),
                    stream_event: None,
                }
                .into_event(&sku, n as i64 + 1, chrono::Utc::now())
            })
            .collect()
    }

    #[test]
    fn every_kind_has_a_channel_a_message_and_a_schema_and_nothing_else() {
        let document = asyncapi(DEFAULT_EXCHANGE);
        for section in ["channels", "components/messages", "components/schemas"] {
            let listed: Vec<&String> = section
                .split('/')
                .fold(&document, |v, key| &v[key])
                .as_object()
                .expect(section)
                .keys()
                .collect();
            let kinds: Vec<String> = EventKind::ALL.iter().map(|k| k.to_string()).collect();
            let mut listed_sorted: Vec<String> = listed.into_iter().cloned().collect();
            listed_sorted.sort();
            let mut kinds_sorted = kinds.clone();
            kinds_sorted.sort();
            assert_eq!(listed_sorted, kinds_sorted, "{section}");
        }
    }

    #[test]
    fn every_event_the_code_writes_matches_its_schema() {
        for event in one_of_each() {
            let body = serde_json::to_value(&event).expect("json");
            let schema = schema(event.kind());
            let validator = jsonschema::draft7::new(&schema).expect("a valid schema");
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", event.kind());
            // And no other kind's schema accepts it: `kind` tells them apart.
            for other in EventKind::ALL.into_iter().filter(|k| *k != event.kind()) {
                let validator = jsonschema::draft7::new(&super::schema(other)).expect("schema");
                assert!(
                    !validator.is_valid(&body),
                    "{other} accepts {}",
                    event.kind()
                );
            }
        }
    }

    #[test]
    fn the_repository_copies_are_what_the_code_generates() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        if std::env::var_os("FLASHGATE_BLESS").is_some() {
            write(&docs).expect("write docs");
        }
        let stale = "stale: run `FLASHGATE_BLESS=1 cargo test --lib events::contract` \
                     (or `flashgate asyncapi --write docs`) and commit the result";
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{} is missing; {stale}", path.display()))
        };
        assert_eq!(
            read(docs.join("asyncapi.json")),
            pretty(&asyncapi(DEFAULT_EXCHANGE)),
            "docs/asyncapi.json is {stale}"
        );
        for kind in EventKind::ALL {
            assert_eq!(
                read(docs.join("events").join(format!("{kind}.schema.json"))),
                pretty(&schema(kind)),
                "docs/events/{kind}.schema.json is {stale}"
            );
        }
        let files = std::fs::read_dir(docs.join("events"))
            .expect("docs/events")
            .count();
        assert_eq!(
            files,
            EventKind::ALL.len(),
            "docs/events holds a schema of no kind"
        );
    }
}
