//! Record framing: how one [`Record`] is laid out in a segment file, and how a frame is checked
//! and decoded without trusting any byte of it.
//!
//! ```text
//! frame = len u32 | crc u32 | body            (little endian; len = body length)
//! body  = version u8 (1) | offset u64 | timestamp_ms u64
//!       | key_len u32 (u32::MAX = no key) | key
//!       | header_count u16 | { name_len u16 | name (UTF-8) | value_len u32 | value }*
//!       | value_len u32 | value
//! crc   = CRC32C (Castagnoli) of body
//! ```
//! The offset sits inside the checksummed body, so a frame copied to the wrong place, or a
//! stale frame left past a truncation, is caught by the offset sequence check of the reader.

use bytes::{Buf, Bytes};

use super::Record;

/// `len` + `crc`.
pub(crate) const FRAME_HEADER: usize = 8;
/// Body bytes of a record with no key, no headers and an empty value.
pub(crate) const FIXED_BODY: usize = 1 + 8 + 8 + 4 + 2 + 4;
/// Framing overhead of one record with no key and no headers.
pub(crate) const RECORD_OVERHEAD: usize = FRAME_HEADER + FIXED_BODY;
/// Framing overhead per header (name length + value length).
pub(crate) const HEADER_OVERHEAD: usize = 2 + 4;
/// The largest frame any configuration allows (`max_record_bytes` ≤ 64 MiB). A `len` above it
/// is corruption, whatever the current configuration says, so lowering `max_record_bytes`
/// never makes stored records unreadable.
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

const VERSION: u8 = 1;
const NO_KEY: u32 = u32::MAX;

/// Encoded size of `record`, or why it cannot be encoded at all (field over its width).
pub(crate) fn encoded_len(record: &Record) -> Result<u64, &'static str> {
    if record.headers.len() > usize::from(u16::MAX) {
        return Err("more than 65535 headers");
    }
    let mut len = RECORD_OVERHEAD as u64;
    if let Some(key) = &record.key {
        if key.len() >= NO_KEY as usize {
            return Err("key longer than 4 GiB");
        }
        len += key.len() as u64;
    }
    for (name, value) in &record.headers {
        if name.len() > usize::from(u16::MAX) {
            return Err("header name longer than 65535 bytes");
        }
        if value.len() > u32::MAX as usize {
            return Err("header value longer than 4 GiB");
        }
        len += (HEADER_OVERHEAD + name.len() + value.len()) as u64;
    }
    if record.value.len() > u32::MAX as usize {
        return Err("value longer than 4 GiB");
    }
    Ok(len + record.value.len() as u64)
}

/// Appends the frame of `record` at `offset` to `buf`. The record must have passed
/// [`encoded_len`] (the writer checks every record before queueing it).
pub(crate) fn encode(record: &Record, offset: u64, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    buf.push(VERSION);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&record.timestamp_ms.to_le_bytes());
    match &record.key {
        Some(key) => {
            put_u32(buf, key.len());
            buf.extend_from_slice(key);
        }
        None => buf.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    let count = u16::try_from(record.headers.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&count.to_le_bytes());
    for (name, value) in record.headers.iter().take(usize::from(count)) {
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        buf.extend_from_slice(&name_len.to_le_bytes());
        buf.extend_from_slice(&name.as_bytes()[..usize::from(name_len)]);
        put_u32(buf, value.len());
        buf.extend_from_slice(value);
    }
    put_u32(buf, record.value.len());
    buf.extend_from_slice(&record.value);

    let body_start = start + FRAME_HEADER;
    let body_len = u32::try_from(buf.len() - body_start).unwrap_or(u32::MAX);
    let crc = crc32c::crc32c(&buf[body_start..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..body_start].copy_from_slice(&crc.to_le_bytes());
}

fn put_u32(buf: &mut Vec<u8>, len: usize) {
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

/// What the start of a byte range holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole frame with a valid checksum: its total length, offset and timestamp.
    Valid { len: usize, offset: u64, timestamp_ms: u64 },
    /// The range ends inside the frame; `need` is the frame's total length if the header was
    /// readable (so the caller can read that much), else `FRAME_HEADER`.
    Incomplete { need: usize },
    /// Not a frame: bad length, checksum or version.
    Corrupt(&'static str),
}

/// Checks the frame at the start of `buf` (checksum included) without decoding its fields.
pub(crate) fn check(buf: &[u8]) -> Frame {
    if buf.len() < FRAME_HEADER {
        return Frame::Incomplete { need: FRAME_HEADER };
    }
    let body_len = le_u32(&buf[0..4]) as usize;
    if body_len < FIXED_BODY {
        return Frame::Corrupt("frame length below the minimum");
    }
    if body_len > MAX_FRAME {
        return Frame::Corrupt("frame length above the maximum");
    }
    let len = FRAME_HEADER + body_len;
    if buf.len() < len {
        return Frame::Incomplete { need: len };
    }
    let body = &buf[FRAME_HEADER..len];
    if crc32c::crc32c(body) != le_u32(&buf[4..8]) {
        return Frame::Corrupt("checksum mismatch");
    }
    if body[0] != VERSION {
        return Frame::Corrupt("unknown record version");
    }
    Frame::Valid { len, offset: le_u64(&body[1..9]), timestamp_ms: le_u64(&body[9..17]) }
}

/// Decodes the body of a frame already [`check`]ed (`frame` is the whole frame). The fields
/// share `frame`'s memory. Lengths inside the body are still verified: a frame with a valid
/// checksum written by a buggy or future writer must not make us read out of bounds.
pub(crate) fn decode(frame: Bytes) -> Result<(u64, Record), &'static str> {
    let mut body = frame.slice(FRAME_HEADER.min(frame.len())..);
    if body.remaining() < FIXED_BODY {
        return Err("truncated body");
    }
    let _version = body.get_u8();
    let offset = body.get_u64_le();
    let timestamp_ms = body.get_u64_le();
    let key = match body.get_u32_le() {
        NO_KEY => None,
        len => Some(take(&mut body, len as usize)?),
    };
    let count = usize::from(get_u16(&mut body)?);
    let mut headers = Vec::with_capacity(count.min(body.remaining() / HEADER_OVERHEAD));
    for _ in 0..count {
        let name_len = usize::from(get_u16(&mut body)?);
        let name = take(&mut body, name_len)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| "header name is not UTF-8")?;
        let value_len = get_u32(&mut body)? as usize;
        headers.push((name, take(&mut body, value_len)?));
    }
    let value_len = get_u32(&mut body)? as usize;
    let value = take(&mut body, value_len)?;
    if body.has_remaining() {
        return Err("trailing bytes in record");
    }
    Ok((offset, Record { key, timestamp_ms, headers, value }))
}

fn take(body: &mut Bytes, len: usize) -> Result<Bytes, &'static str> {
    if body.remaining() < len {
        return Err("field runs past the end of the record");
    }
    Ok(body.split_to(len))
}

fn get_u16(body: &mut Bytes) -> Result<u16, &'static str> {
    if body.remaining() < 2 {
        return Err("field runs past the end of the record");
    }
    Ok(body.get_u16_le())
}

fn get_u32(body: &mut Bytes) -> Result<u32, &'static str> {
    if body.remaining() < 4 {
        return Err("field runs past the end of the record");
    }
    Ok(body.get_u32_le())
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            key: Some(Bytes::from_static(b"customer-42")),
            timestamp_ms: 1_700_000_000_123,
            headers: vec![
                ("ce-type".to_owned(), Bytes::from_static(b"order.created")),
                ("content-type".to_owned(), Bytes::from_static(b"application/json")),
                (String::new(), Bytes::new()),
            ],
            value: Bytes::from_static(b"{\"id\":1}"),
        }
    }

    fn framed(record: &Record, offset: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(record, offset, &mut buf);
        buf
    }

    #[test]
    fn round_trip_with_every_field() {
        let record = sample();
        let buf = framed(&record, 7);
        assert_eq!(buf.len() as u64, encoded_len(&record).unwrap());
        let Frame::Valid { len, offset, timestamp_ms } = check(&buf) else { panic!("{:?}", check(&buf)) };
        assert_eq!((len, offset, timestamp_ms), (buf.len(), 7, record.timestamp_ms));
        assert_eq!(decode(Bytes::from(buf)).unwrap(), (7, record));
    }

    #[test]
    fn round_trip_minimal_record_and_empty_key() {
        let none = Record::default();
        let buf = framed(&none, 0);
        assert_eq!(buf.len(), RECORD_OVERHEAD);
        assert_eq!(decode(Bytes::from(buf)).unwrap(), (0, none));
        // An empty key is not the same as no key.
        let empty = Record { key: Some(Bytes::new()), ..Record::default() };
        assert_eq!(decode(Bytes::from(framed(&empty, u64::MAX))).unwrap(), (u64::MAX, empty));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let buf = framed(&sample(), 3);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                // A flip in the length field may also read as "incomplete" (longer frame) —
                // never as a valid record.
                assert!(
                    !matches!(check(&bad), Frame::Valid { .. }),
                    "flip of bit {bit} in byte {byte} went undetected"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_incomplete_not_valid() {
        let buf = framed(&sample(), 3);
        for cut in 0..buf.len() {
            match check(&buf[..cut]) {
                Frame::Incomplete { need } => {
                    assert!(need == FRAME_HEADER || need == buf.len(), "cut {cut}: need {need}")
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn hostile_lengths_are_corrupt_without_allocating() {
        let mut buf = framed(&sample(), 3);
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check(&buf), Frame::Corrupt("frame length above the maximum"));
        buf[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(check(&buf), Frame::Corrupt("frame length below the minimum"));
        assert_eq!(check(&[0; 64]), Frame::Corrupt("frame length below the minimum"));
    }

    #[test]
    fn decode_checks_inner_lengths_even_with_a_valid_checksum() {
        // A frame whose checksum is right but whose key length points past the end: as a
        // buggy writer could produce. Decoding must fail cleanly.
        let mut buf = framed(&Record::default(), 0);
        let key_len_at = FRAME_HEADER + 1 + 8 + 8;
        buf[key_len_at..key_len_at + 4].copy_from_slice(&1000u32.to_le_bytes());
        let crc = crc32c::crc32c(&buf[FRAME_HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(check(&buf), Frame::Valid { .. }));
        assert_eq!(decode(Bytes::from(buf)), Err("field runs past the end of the record"));
    }

    #[test]
    fn oversized_fields_are_refused_before_encoding() {
        let long_name = Record { headers: vec![("n".repeat(70_000), Bytes::new())], ..Record::default() };
        assert_eq!(encoded_len(&long_name), Err("header name longer than 65535 bytes"));
        let many = Record { headers: vec![(String::new(), Bytes::new()); 70_000], ..Record::default() };
        assert_eq!(encoded_len(&many), Err("more than 65535 headers"));
    }
}
