//! Retention: delete whole sealed segments, oldest first, by age and by total size.
//!
//! The segments leave the shared list (and `start_offset` moves) before their files are
//! removed, so no new read starts in them; a read already in one keeps its open handle. The
//! `.log` goes before its `.index`: an index left alone by a crash is removed at the next
//! open, while a log left alone would only be a segment kept a little longer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::segment::{Segment, sync_dir};
use super::{LogError, RetentionReport, Shared};

pub(crate) fn enforce(shared: &Shared, now_ms: u64) -> Result<RetentionReport, LogError> {
    let cfg = &shared.cfg;
    let expired_before = cfg
        .retention_age
        .map(|age| now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
    let doomed: Vec<Arc<Segment>> = {
        let mut list = shared.segments_mut();
        let mut total: u64 = list.iter().map(|s| s.committed_len()).sum();
        let mut count = 0;
        let end = shared.end_offset.load(Ordering::Acquire);
        // Never the active (last) segment, nor one whose last records are not published yet
        // (sealed by a roll whose batch still waits for its fsync).
        for (i, seg) in list.iter().enumerate().take(list.len().saturating_sub(1)) {
            if list.get(i + 1).is_none_or(|next| next.base > end) {
                break;
            }
            let too_old = expired_before.is_some_and(|t| seg.max_timestamp.load(Ordering::Acquire) < t);
            let too_big = cfg.retention_bytes.is_some_and(|max| total > max);
            if !too_old && !too_big {
                break;
            }
            total -= seg.committed_len();
            count += 1;
        }
        let doomed: Vec<_> = list.drain(..count).collect();
        if let Some(first) = list.first() {
            shared.start_offset.store(first.base, Ordering::Release);
        }
        doomed
    };
    let mut report = RetentionReport {
        segments_deleted: 0,
        bytes_deleted: 0,
        start_offset: shared.start_offset.load(Ordering::Acquire),
    };
    if doomed.is_empty() {
        return Ok(report);
    }
    let mut first_error = None;
    for seg in &doomed {
        match std::fs::remove_file(&seg.path) {
            Ok(()) => {
                report.segments_deleted += 1;
                report.bytes_deleted += seg.committed_len();
                tracing::info!(segment = %seg.path.display(), "log segment deleted by retention");
            }
            Err(e) => {
                tracing::warn!(segment = %seg.path.display(), error = %e, "could not delete a log segment");
                first_error.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_file(seg.index_path());
    }
    if let Err(e) = sync_dir(&shared.dir) {
        first_error.get_or_insert(e);
    }
    match first_error {
        Some(e) => Err(LogError::from(e)),
        None => Ok(report),
    }
}
