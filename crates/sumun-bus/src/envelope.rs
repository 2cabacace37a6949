//! The CloudEvents 1.0 envelope in HTTP binary mode: a publish request's `ce-*` headers are
//! the event's attributes, its body is the data and its `Content-Type` the
//! `datacontenttype`. Missing required attributes are filled in (`id`, `source`, `type`,
//! `time`), a few operator-chosen request headers are kept, and the result is a log
//! [`Record`] whose headers are exactly what a push delivery sends back out.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use sumun_config::PartitionKey;

use crate::log::Record;

/// Header names the envelope owns; attributes are stored under these.
pub const CE_ID: &str = "ce-id";
pub const CE_SPECVERSION: &str = "ce-specversion";
pub const CE_SOURCE: &str = "ce-source";
pub const CE_TYPE: &str = "ce-type";
pub const CE_TIME: &str = "ce-time";
/// The CloudEvents partitioning extension: the message's key, when it has one.
pub const CE_PARTITIONKEY: &str = "ce-partitionkey";
pub const CONTENT_TYPE: &str = "content-type";
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The default `type` of a message published without `ce-type`.
pub const DEFAULT_TYPE: &str = "sumun.message";

/// Longest attribute value accepted from a client (ids, sources, keys…).
const MAX_ATTRIBUTE_BYTES: usize = 4096;
/// Longest dedup / idempotency key.
pub const MAX_DEDUP_KEY_BYTES: usize = 256;

/// Why a request cannot become a message (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvelopeError(pub String);

/// A message about to be appended, with what the publisher needs to know about it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub record: Record,
    /// `Idempotency-Key`, or a client-given `ce-id`: repeats within the dedup window are
    /// answered with the original message.
    pub dedup_key: Option<String>,
}

/// Builds the envelope of a publish: `headers` and `body` as the client sent them,
/// `default_source` for a request without `ce-source`.
pub fn build(
    headers: &HeaderMap,
    body: Bytes,
    key_spec: &PartitionKey,
    keep: &[String],
    default_source: &str,
    now: SystemTime,
) -> Result<Envelope, EnvelopeError> {
    let mut out: Vec<(String, Bytes)> = Vec::with_capacity(8);
    let text = |name: &str| -> Result<Option<&str>, EnvelopeError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => {
                let s = v.to_str().map_err(|_| EnvelopeError(format!("`{name}` must be visible ASCII")))?;
                let s = s.trim();
                if s.is_empty() {
                    return Err(EnvelopeError(format!("`{name}` must not be empty")));
                }
                if s.len() > MAX_ATTRIBUTE_BYTES {
                    return Err(EnvelopeError(format!(
                        "`{name}` is longer than {MAX_ATTRIBUTE_BYTES} bytes"
                    )));
                }
                Ok(Some(s))
            }
        }
    };
    if let Some(v) = text(CE_SPECVERSION)?
        && v != "1.0"
    {
        return Err(EnvelopeError(format!("`ce-specversion` {v} is not supported; use 1.0")));
    }
    let client_id = text(CE_ID)?.map(str::to_owned);
    let id = client_id.clone().unwrap_or_else(|| new_id(now));
    let source = text(CE_SOURCE)?.unwrap_or(default_source).to_owned();
    let kind = text(CE_TYPE)?.unwrap_or(DEFAULT_TYPE).to_owned();
    let time = match text(CE_TIME)? {
        Some(t) => {
            humantime::parse_rfc3339_weak(t)
                .map_err(|_| EnvelopeError("`ce-time` must be an RFC 3339 timestamp".into()))?;
            t.to_owned()
        }
        None => humantime::format_rfc3339_millis(now).to_string(),
    };
    let idempotency = text(IDEMPOTENCY_KEY)?.map(str::to_owned);
    if let Some(k) = &idempotency
        && k.len() > MAX_DEDUP_KEY_BYTES
    {
        return Err(EnvelopeError(format!("`idempotency-key` is longer than {MAX_DEDUP_KEY_BYTES} bytes")));
    }
    let key = partition_key(key_spec, headers, &body);
    if let Some(k) = &key
        && k.len() > MAX_ATTRIBUTE_BYTES
    {
        return Err(EnvelopeError(format!("the partition key is longer than {MAX_ATTRIBUTE_BYTES} bytes")));
    }

    out.push((CE_SPECVERSION.into(), Bytes::from_static(b"1.0")));
    out.push((CE_ID.into(), Bytes::from(id.clone())));
    out.push((CE_SOURCE.into(), Bytes::from(source)));
    out.push((CE_TYPE.into(), Bytes::from(kind)));
    out.push((CE_TIME.into(), Bytes::from(time)));
    // Every other attribute and extension, as sent.
    for (name, value) in headers {
        let n = name.as_str();
        let Some(attr) = n.strip_prefix("ce-") else { continue };
        if matches!(n, CE_SPECVERSION | CE_ID | CE_SOURCE | CE_TYPE | CE_TIME) {
            continue;
        }
        if attr.is_empty()
            || attr.len() > 20
            || !attr.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(EnvelopeError(format!(
                "`{n}`: CloudEvents attribute names are 1 to 20 lower-case letters or digits"
            )));
        }
        if attr == "datacontenttype" {
            return Err(EnvelopeError(
                "`ce-datacontenttype` is not used in binary mode; send `Content-Type`".into(),
            ));
        }
        if value.len() > MAX_ATTRIBUTE_BYTES {
            return Err(EnvelopeError(format!("`{n}` is longer than {MAX_ATTRIBUTE_BYTES} bytes")));
        }
        if n == CE_PARTITIONKEY && key.is_some() {
            continue;
        }
        out.push((n.to_owned(), Bytes::copy_from_slice(value.as_bytes())));
    }
    if let Some(k) = &key {
        out.push((CE_PARTITIONKEY.into(), k.clone()));
    }
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        out.push((CONTENT_TYPE.into(), Bytes::copy_from_slice(ct.as_bytes())));
    }
    if let Some(k) = &idempotency {
        out.push((IDEMPOTENCY_KEY.into(), Bytes::from(k.clone())));
    }
    for name in keep {
        if name.starts_with("ce-") || name == CONTENT_TYPE || name == IDEMPOTENCY_KEY {
            continue;
        }
        for v in headers.get_all(name.as_str()) {
            out.push((name.clone(), Bytes::copy_from_slice(v.as_bytes())));
        }
    }
    let dedup_key = idempotency.or(client_id);
    let record = Record { key, timestamp_ms: unix_ms(now), headers: out, value: body };
    Ok(Envelope { id, record, dedup_key })
}

/// The partition key: a header's value, or a JSON pointer into the body (a string as is,
/// any other JSON value as its JSON text). None when the message has no key.
pub fn partition_key(spec: &PartitionKey, headers: &HeaderMap, body: &[u8]) -> Option<Bytes> {
    match spec {
        PartitionKey::None => None,
        PartitionKey::Header(name) => {
            headers.get(name.as_str()).filter(|v| !v.is_empty()).map(|v| Bytes::copy_from_slice(v.as_bytes()))
        }
        PartitionKey::Json(pointer) => {
            let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
            match doc.pointer(pointer)? {
                serde_json::Value::String(s) => Some(Bytes::from(s.clone())),
                serde_json::Value::Null => None,
                other => Some(Bytes::from(other.to_string())),
            }
        }
    }
}

/// The first value of a record header.
pub fn header<'a>(record: &'a Record, name: &str) -> Option<&'a Bytes> {
    record.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// The message id (`ce-id`) of a stored record.
pub fn id_of(record: &Record) -> String {
    header(record, CE_ID).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// `msg_` + 26 characters of Crockford base32: 48 bits of milliseconds then 80 random bits,
/// so ids sort by publish time (like a ULID) and never collide in practice.
pub fn new_id(now: SystemTime) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = u128::from(unix_ms(now) & ((1 << 48) - 1));
    let random = u128::from(fastrand::u64(..)) << 16 | u128::from(fastrand::u16(..));
    let mut value = ms << 80 | random;
    let mut chars = [0u8; 26];
    for c in chars.iter_mut().rev() {
        *c = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    let mut id = String::with_capacity(30);
    id.push_str("msg_");
    id.extend(chars.iter().map(|&b| char::from(b)));
    id
}

/// The structured-mode JSON of a stored message (pull deliveries and the admin API):
/// attributes as members, `data` as JSON when the content type is JSON and the body parses,
/// else as text when it is UTF-8, else `data_base64`.
pub fn to_json(record: &Record) -> serde_json::Value {
    use base64::Engine as _;
    let mut event = serde_json::Map::new();
    let mut extra_headers = serde_json::Map::new();
    let mut content_type: Option<String> = None;
    for (name, value) in &record.headers {
        let text = String::from_utf8_lossy(value).into_owned();
        if let Some(attr) = name.strip_prefix("ce-") {
            event.insert(attr.to_owned(), serde_json::Value::String(text));
        } else if name == CONTENT_TYPE {
            content_type = Some(text.clone());
            event.insert("datacontenttype".into(), serde_json::Value::String(text));
        } else {
            extra_headers.insert(name.clone(), serde_json::Value::String(text));
        }
    }
    let json_type = content_type.as_deref().is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    });
    let parsed =
        if json_type { serde_json::from_slice::<serde_json::Value>(&record.value).ok() } else { None };
    match (parsed, std::str::from_utf8(&record.value)) {
        (Some(v), _) => {
            event.insert("data".into(), v);
        }
        (None, Ok(text)) if !record.value.is_empty() => {
            event.insert("data".into(), serde_json::Value::String(text.to_owned()));
        }
        (None, Ok(_)) => {}
        (None, Err(_)) => {
            event.insert(
                "data_base64".into(),
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&record.value)),
            );
        }
    }
    if !extra_headers.is_empty() {
        event.insert("sumunheaders".into(), serde_json::Value::Object(extra_headers));
    }
    serde_json::Value::Object(event)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn get<'a>(r: &'a Record, n: &str) -> Option<&'a str> {
        header(r, n).map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn fills_required_attributes_and_keeps_the_rest() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let h = hm(&[
            ("content-type", "application/json"),
            ("ce-subject", "order-7"),
            ("ce-traceparent", "00-abc"),
            ("x-tenant", "acme"),
            ("x-secret", "no"),
            ("x-order-id", "7"),
        ]);
        let keep = vec!["x-tenant".to_string()];
        let e = build(
            &h,
            Bytes::from_static(b"{}"),
            &PartitionKey::Header("x-order-id".into()),
            &keep,
            "/orders",
            now,
        )
        .unwrap();
        let r = &e.record;
        assert!(e.id.starts_with("msg_") && e.id.len() == 30, "{}", e.id);
        assert_eq!(get(r, "ce-id"), Some(e.id.as_str()));
        assert_eq!(get(r, "ce-specversion"), Some("1.0"));
        assert_eq!(get(r, "ce-source"), Some("/orders"));
        assert_eq!(get(r, "ce-type"), Some(DEFAULT_TYPE));
        assert_eq!(get(r, "ce-time"), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(get(r, "ce-subject"), Some("order-7"));
        assert_eq!(get(r, "ce-traceparent"), Some("00-abc"));
        assert_eq!(get(r, "ce-partitionkey"), Some("7"));
        assert_eq!(get(r, "content-type"), Some("application/json"));
        assert_eq!(get(r, "x-tenant"), Some("acme"));
        assert_eq!(get(r, "x-secret"), None);
        assert_eq!(r.key.as_deref(), Some(&b"7"[..]));
        assert_eq!(r.timestamp_ms, 1_700_000_000_123);
        assert_eq!(e.dedup_key, None);
    }

    #[test]
    fn client_attributes_win_and_dedup_keys() {
        let now = SystemTime::now();
        let h =
            hm(&[("ce-id", "A-1"), ("ce-type", "com.example.order"), ("ce-time", "2024-01-02T03:04:05Z")]);
        let e = build(&h, Bytes::new(), &PartitionKey::None, &[], "/x", now).unwrap();
        assert_eq!(e.id, "A-1");
        assert_eq!(e.dedup_key.as_deref(), Some("A-1"));
        assert_eq!(get(&e.record, "ce-type"), Some("com.example.order"));
        assert_eq!(get(&e.record, "ce-time"), Some("2024-01-02T03:04:05Z"));
        let h = hm(&[("ce-id", "A-1"), ("idempotency-key", "k-9")]);
        let e = build(&h, Bytes::new(), &PartitionKey::None, &[], "/x", now).unwrap();
        assert_eq!(e.dedup_key.as_deref(), Some("k-9"));
        assert_eq!(get(&e.record, "idempotency-key"), Some("k-9"));
    }

    #[test]
    fn refuses_bad_attributes() {
        let now = SystemTime::now();
        for bad in [
            vec![("ce-specversion", "0.3")],
            vec![("ce-time", "yesterday")],
            vec![("ce-Bad_Name", "x")],
            vec![("ce-waytoolongextensionname1", "x")],
            vec![("ce-datacontenttype", "text/plain")],
        ] {
            assert!(build(&hm(&bad), Bytes::new(), &PartitionKey::None, &[], "/x", now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_pointer_keys() {
        let spec = PartitionKey::Json("/order/id".into());
        let h = HeaderMap::new();
        assert_eq!(partition_key(&spec, &h, br#"{"order":{"id":"a7"}}"#).as_deref(), Some(&b"a7"[..]));
        assert_eq!(partition_key(&spec, &h, br#"{"order":{"id":42}}"#).as_deref(), Some(&b"42"[..]));
        assert_eq!(partition_key(&spec, &h, br#"{"order":{}}"#), None);
        assert_eq!(partition_key(&spec, &h, b"not json"), None);
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(UNIX_EPOCH + Duration::from_millis(1000));
        let b = new_id(UNIX_EPOCH + Duration::from_millis(1001));
        assert!(a < b, "{a} {b}");
        assert_ne!(new_id(SystemTime::now()), new_id(SystemTime::now()));
    }

    #[test]
    fn structured_json() {
        let rec = Record {
            key: None,
            timestamp_ms: 0,
            headers: vec![
                ("ce-id".into(), Bytes::from_static(b"m1")),
                ("content-type".into(), Bytes::from_static(b"application/json")),
                ("x-tenant".into(), Bytes::from_static(b"acme")),
            ],
            value: Bytes::from_static(br#"{"a":1}"#),
        };
        let j = to_json(&rec);
        assert_eq!(j["id"], "m1");
        assert_eq!(j["data"]["a"], 1);
        assert_eq!(j["datacontenttype"], "application/json");
        assert_eq!(j["sumunheaders"]["x-tenant"], "acme");
        let bin = Record { value: Bytes::from_static(&[0xff, 0x00]), headers: vec![], ..rec };
        assert_eq!(to_json(&bin)["data_base64"], "/wA=");
    }
}
