//! Reads: from an offset, across segments, concurrently with the writer and retention.
//!
//! A read takes a snapshot (the high watermark, then the segments that may hold offsets
//! below it) and works on it on a blocking thread with positional reads (`pread`) of the
//! shared file handles. It never reads past a segment's committed length, so it never sees
//! a batch being written. The watermark is loaded before the segment list and committed
//! lengths, and the writer publishes lengths before the watermark, so every offset below the
//! watermark is inside the committed bytes the read sees. A segment that retention deletes
//! during a read stays readable through its open handle.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::record::{self, Frame};
use super::segment::Segment;
use super::{LogError, Shared, Stored};

/// Smallest and largest read-ahead of one `pread`.
const MIN_READ: usize = 64 * 1024;
const MAX_READ: usize = 16 * 1024 * 1024;

pub(crate) struct Plan {
    segments: Vec<Arc<Segment>>,
    from: u64,
    end: u64,
    max_records: usize,
    max_bytes: usize,
}

/// The snapshot for a read, or `None` when there is nothing to read.
pub(crate) fn plan(shared: &Shared, from: u64, max_records: usize, max_bytes: usize) -> Option<Plan> {
    let end = shared.end_offset.load(Ordering::Acquire);
    if max_records == 0 {
        return None;
    }
    let list = shared.segments();
    let first = list.first()?.base;
    // Older than what is retained: start at the first retained record.
    let from = from.max(first).max(shared.start_offset.load(Ordering::Acquire));
    if from >= end {
        return None;
    }
    let at = list.partition_point(|s| s.base <= from).saturating_sub(1);
    let segments = list[at..].iter().take_while(|s| s.base < end).cloned().collect();
    Some(Plan { segments, from, end, max_records, max_bytes })
}

impl Plan {
    pub fn run(self) -> Result<Vec<Stored>, LogError> {
        let mut out: Vec<Stored> = Vec::new();
        let mut bytes = 0usize;
        let mut next = self.from;
        for (i, seg) in self.segments.iter().enumerate() {
            let seg_end = self.segments.get(i + 1).map_or(self.end, |s| s.base).min(self.end);
            if next >= seg_end {
                continue;
            }
            let damage = |offset: u64, position: u64, reason: &str| LogError::Corrupt {
                offset,
                path: seg.path.clone(),
                position,
                skip_to: seg.indexed_after(offset).filter(|&o| o < seg_end).unwrap_or(seg_end),
                reason: reason.to_owned(),
            };
            if next < seg.base {
                let e = LogError::Corrupt {
                    offset: next,
                    path: seg.path.clone(),
                    position: 0,
                    skip_to: seg.base,
                    reason: "offsets missing between segments".to_owned(),
                };
                return if out.is_empty() { Err(e) } else { Ok(out) };
            }
            let limit = seg.committed_len();
            let (mut expect, mut pos) = seg.lookup(next);
            let mut chunk = Bytes::new();
            let mut chunk_pos = pos;
            while next < seg_end {
                if out.len() >= self.max_records {
                    return Ok(out);
                }
                let at = usize::try_from(pos - chunk_pos).unwrap_or(usize::MAX);
                let (len, offset) = match record::check(chunk.get(at..).unwrap_or_default()) {
                    Frame::Valid { len, offset, .. } => (len, offset),
                    Frame::Incomplete { need } => {
                        let left = limit.saturating_sub(pos);
                        if left == 0 || need as u64 > left {
                            let why =
                                if left == 0 { "segment ends before its last offset" } else { "torn frame" };
                            let e = damage(expect.max(next), pos, why);
                            return if out.is_empty() { Err(e) } else { Ok(out) };
                        }
                        let ahead = self.max_bytes.saturating_sub(bytes).clamp(MIN_READ, MAX_READ);
                        let want = need.max(ahead).min(usize::try_from(left).unwrap_or(usize::MAX));
                        let mut buf = BytesMut::zeroed(want);
                        seg.file.read_exact_at(&mut buf, pos)?;
                        chunk = buf.freeze();
                        chunk_pos = pos;
                        continue;
                    }
                    Frame::Corrupt(why) => {
                        let e = damage(expect.max(next), pos, why);
                        return if out.is_empty() { Err(e) } else { Ok(out) };
                    }
                };
                if offset != expect {
                    let e = damage(expect.max(next), pos, "offset out of sequence");
                    return if out.is_empty() { Err(e) } else { Ok(out) };
                }
                if offset >= next {
                    if !out.is_empty() && bytes + len > self.max_bytes {
                        return Ok(out);
                    }
                    match record::decode(chunk.slice(at..at + len)) {
                        Ok((offset, record)) => out.push(Stored { offset, record }),
                        Err(why) => {
                            let e = damage(offset, pos, why);
                            return if out.is_empty() { Err(e) } else { Ok(out) };
                        }
                    }
                    bytes += len;
                    next = offset + 1;
                    if bytes >= self.max_bytes {
                        return Ok(out);
                    }
                }
                expect += 1;
                pos += len as u64;
            }
        }
        Ok(out)
    }
}
