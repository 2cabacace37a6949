//! A stored response and the in-flight marker, and their binary encoding for shared stores.
//! Decoding never trusts its input: a value written by another version or damaged in the
//! store decodes to `None`, never to a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// SHA-256 of the request's method, path and query, content type and body.
pub type Fingerprint = [u8; 32];

/// A completed response, replayed for repeats of its key.
#[derive(Debug, Clone)]
pub struct Record {
    pub fingerprint: Fingerprint,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// What a key holds in a store.
#[derive(Debug, Clone)]
pub enum Slot {
    /// A request with this key is running; `token` names the claim so only its owner can
    /// complete or release it.
    InFlight {
        token: Bytes,
        fingerprint: Fingerprint,
    },
    Done(std::sync::Arc<Record>),
}

const VERSION: u8 = 1;
const TAG_IN_FLIGHT: u8 = b'I';
const TAG_DONE: u8 = b'R';
/// Bounds applied when decoding, far above what hyper lets through, so a damaged value
/// cannot make us allocate without limit.
const MAX_FIELDS: usize = 10_000;
const MAX_TOKEN: usize = 256;

impl Slot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(VERSION);
        match self {
            Slot::InFlight { token, fingerprint } => {
                out.put_u8(TAG_IN_FLIGHT);
                out.put_slice(fingerprint);
                out.put_u16(token.len() as u16);
                out.put_slice(token);
            }
            Slot::Done(r) => {
                out.reserve(64 + r.body.len());
                out.put_u8(TAG_DONE);
                out.put_slice(&r.fingerprint);
                out.put_u16(r.status.as_u16());
                put_fields(&mut out, &r.headers);
                out.put_u64(r.body.len() as u64);
                out.put_slice(&r.body);
                match &r.trailers {
                    Some(t) => {
                        out.put_u8(1);
                        put_fields(&mut out, t);
                    }
                    None => out.put_u8(0),
                }
            }
        }
        out.to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Option<Slot> {
        let mut b = bytes;
        if take_u8(&mut b)? != VERSION {
            return None;
        }
        let tag = take_u8(&mut b)?;
        let fingerprint: Fingerprint = take(&mut b, 32)?.try_into().ok()?;
        let slot = match tag {
            TAG_IN_FLIGHT => {
                let n = usize::from(take_u16(&mut b)?);
                if n > MAX_TOKEN {
                    return None;
                }
                Slot::InFlight { token: Bytes::copy_from_slice(take(&mut b, n)?), fingerprint }
            }
            TAG_DONE => {
                let status = StatusCode::from_u16(take_u16(&mut b)?).ok()?;
                let headers = take_fields(&mut b)?;
                let len = usize::try_from(take_u64(&mut b)?).ok()?;
                let body = Bytes::copy_from_slice(take(&mut b, len)?);
                let trailers = match take_u8(&mut b)? {
                    0 => None,
                    1 => Some(take_fields(&mut b)?),
                    _ => return None,
                };
                Slot::Done(std::sync::Arc::new(Record { fingerprint, status, headers, body, trailers }))
            }
            _ => return None,
        };
        b.is_empty().then_some(slot)
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            Slot::InFlight { fingerprint, .. } => fingerprint,
            Slot::Done(r) => &r.fingerprint,
        }
    }
}

fn put_fields(out: &mut BytesMut, fields: &HeaderMap) {
    out.put_u32(fields.len() as u32);
    for (name, value) in fields {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
}

fn take_fields(b: &mut &[u8]) -> Option<HeaderMap> {
    let n = take_u32(b)? as usize;
    if n > MAX_FIELDS {
        return None;
    }
    let mut map = HeaderMap::with_capacity(n);
    for _ in 0..n {
        let nlen = usize::from(take_u16(b)?);
        let name = HeaderName::from_bytes(take(b, nlen)?).ok()?;
        let vlen = take_u32(b)? as usize;
        let value = HeaderValue::from_bytes(take(b, vlen)?).ok()?;
        map.append(name, value);
    }
    Some(map)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_u8(b: &mut &[u8]) -> Option<u8> {
    (b.remaining() >= 1).then(|| b.get_u8())
}

fn take_u16(b: &mut &[u8]) -> Option<u16> {
    (b.remaining() >= 2).then(|| b.get_u16())
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}

fn take_u64(b: &mut &[u8]) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Record {
            fingerprint: [7; 32],
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"{\"id\":1}"),
            trailers: Some(trailers),
        }
    }

    #[test]
    fn record_round_trips() {
        let enc = Slot::Done(std::sync::Arc::new(record())).encode();
        let Some(Slot::Done(r)) = Slot::decode(&enc) else { panic!("not a record") };
        assert_eq!(r.fingerprint, [7; 32]);
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(r.body, Bytes::from_static(b"{\"id\":1}"));
        assert_eq!(
            r.trailers.as_ref().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
    }

    #[test]
    fn in_flight_round_trips() {
        let enc = Slot::InFlight { token: Bytes::from_static(b"tok"), fingerprint: [3; 32] }.encode();
        let Some(Slot::InFlight { token, fingerprint }) = Slot::decode(&enc) else { panic!("not a marker") };
        assert_eq!(&token[..], b"tok");
        assert_eq!(fingerprint, [3; 32]);
    }

    #[test]
    fn damaged_values_decode_to_none() {
        let enc = Slot::Done(std::sync::Arc::new(record())).encode();
        // Every truncation, a trailing byte and a wrong version are refused, never a panic.
        for n in 0..enc.len() {
            assert!(Slot::decode(&enc[..n]).is_none(), "truncated at {n}");
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert!(Slot::decode(&longer).is_none());
        let mut other = enc.clone();
        other[0] = 9;
        assert!(Slot::decode(&other).is_none());
        // A huge declared body length does not allocate.
        let mut lying = vec![VERSION, TAG_DONE];
        lying.extend_from_slice(&[0; 32]);
        lying.extend_from_slice(&200u16.to_be_bytes());
        lying.extend_from_slice(&0u32.to_be_bytes());
        lying.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(Slot::decode(&lying).is_none());
    }
}
