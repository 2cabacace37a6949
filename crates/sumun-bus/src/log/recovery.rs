//! Opening a partition: take its lock, find its segments, check them, cut a torn tail.
//!
//! Sealed segments were fsynced, with their index, before the next segment was created, so
//! their `.index` (tied to the exact `.log` length) is trusted when intact; otherwise the
//! segment is rescanned and the index rewritten. The last segment is always scanned frame by
//! frame: whatever follows the last whole, checksummed, in-sequence frame is the remains of
//! a write the crash interrupted (or damage) and is truncated. Acknowledged records under
//! `Fsync` are never in that part: they were fsynced, and an fsync covers all that precedes.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustix::fs::{FlockOperation, flock};
use tokio::sync::watch;

use super::segment::{self, Segment, sync_dir};
use super::writer::{PREALLOC_STEP, WriterState};
use super::{Counters, LogConfig, LogError, Shared};

pub(crate) struct Recovered {
    pub shared: Arc<Shared>,
    pub writer: WriterState,
}

const LOCK_FILE: &str = ".lock";

pub(crate) fn recover(cfg: &LogConfig, dir: PathBuf) -> Result<Recovered, LogError> {
    create_dirs(&cfg.dir, &dir)?;
    let lock =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(LOCK_FILE))?;
    match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(LogError::Locked(dir)),
        Err(e) => return Err(LogError::from(io::Error::from(e))),
    }

    let mut bases = list_segments(&dir)?;
    let created = bases.is_empty();
    if created {
        bases.push(0);
    }
    let last_at = bases.len() - 1;
    let mut segments = Vec::with_capacity(bases.len());
    let mut rewrote_index = false;
    for (i, &base) in bases.iter().enumerate() {
        let seg = Segment::open(&dir, base, created)?;
        if i == last_at {
            recover_active(&seg)?;
        } else {
            rewrote_index |= recover_sealed(&seg)?;
        }
        segments.push(Arc::new(seg));
    }
    if created || rewrote_index {
        sync_dir(&dir)?;
    }
    check_contiguity(&segments);

    let first = segments.first().map_or(0, |s| s.base);
    let active = match segments.last() {
        Some(s) => Arc::clone(s),
        None => return Err(LogError::Io(io::Error::other("no segment after recovery"))),
    };
    let end = active.next_offset.load(Ordering::Acquire);
    tracing::info!(
        dir = %dir.display(), segments = segments.len(), start_offset = first, end_offset = end,
        "log partition opened"
    );
    let (end_tx, _) = watch::channel(end);
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        dir,
        segments: RwLock::new(segments),
        start_offset: AtomicU64::new(first),
        end_offset: AtomicU64::new(end),
        end_tx,
        counters: Counters::default(),
        _lock: lock,
        #[cfg(test)]
        fail_syncs: std::sync::atomic::AtomicU32::new(0),
    });
    let writer = WriterState::new(Arc::clone(&shared), active);
    Ok(Recovered { shared, writer })
}

/// Creates `{root}/{topic}/{partition}` and makes each new directory entry durable.
fn create_dirs(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let mut d = dir;
    while let Some(parent) = d.parent() {
        sync_dir(parent)?;
        if parent == root || d == root {
            break;
        }
        d = parent;
    }
    Ok(())
}

/// Base offsets of the segments in `dir`, sorted. Removes leftovers: an `.index` whose `.log`
/// is gone (retention removes the log first) and interrupted index writes.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut logs = BTreeSet::new();
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(dir = %dir.display(), file = ?entry.file_name(), "ignoring a stray file in a log partition");
            continue;
        };
        if let Some(base) = segment::parse_name(name, "log") {
            logs.insert(base);
        } else if let Some(base) = segment::parse_name(name, "index") {
            indexes.push(base);
        } else if name.ends_with(".index.tmp") {
            let _ = std::fs::remove_file(entry.path());
        } else if name != LOCK_FILE {
            tracing::warn!(dir = %dir.display(), file = name, "ignoring a stray file in a log partition");
        }
    }
    for base in indexes {
        if !logs.contains(&base) {
            let path = segment::index_path(&dir.join(segment::log_name(base)));
            tracing::info!(file = %path.display(), "removing an index without its segment");
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(logs.into_iter().collect())
}

/// A sealed segment: trust an intact index, else rescan and rewrite it. Damage inside a
/// sealed segment is kept (reads report it as `Corrupt`), never truncated: the records after
/// it in later segments are fine. Returns whether an index was rewritten.
fn recover_sealed(seg: &Segment) -> Result<bool, LogError> {
    if seg.load_index()?.is_some() {
        return Ok(false);
    }
    let scan = seg.scan()?;
    let file_len = seg.file.metadata()?.len();
    if let Some(why) = scan.damage {
        tracing::error!(
            segment = %seg.path.display(), offset = scan.next_offset, position = scan.valid_len,
            bytes_after = file_len - scan.valid_len, reason = why,
            "sealed log segment is damaged; records from this offset to the segment's end are unreadable"
        );
    } else {
        tracing::info!(segment = %seg.path.display(), "rebuilt a missing or stale segment index");
    }
    // The whole file stays readable up to the damage: readers meet it and say where.
    seg.install(scan.index, file_len, scan.next_offset, scan.max_timestamp);
    if let Err(e) = seg.write_index() {
        tracing::warn!(segment = %seg.path.display(), error = %e, "could not write segment index");
    }
    Ok(true)
}

/// The last segment: scan it all, truncate after the last good frame.
fn recover_active(seg: &Segment) -> Result<(), LogError> {
    let scan = seg.scan()?;
    let file_len = seg.file.metadata()?.len();
    if scan.valid_len < file_len && zero_tail(seg, scan.valid_len, file_len)? {
        tracing::debug!(segment = %seg.path.display(), bytes = file_len - scan.valid_len, "dropping preallocated zeros");
        seg.file.set_len(scan.valid_len)?;
    } else if scan.valid_len < file_len {
        tracing::warn!(
            segment = %seg.path.display(), offset = scan.next_offset, position = scan.valid_len,
            bytes_dropped = file_len - scan.valid_len, reason = scan.damage.unwrap_or("trailing bytes"),
            "truncating a torn or corrupt log tail"
        );
        seg.file.set_len(scan.valid_len)?;
        seg.file.sync_data()?;
    }
    // An index from an earlier seal is stale now that this segment is active again.
    let _ = std::fs::remove_file(seg.index_path());
    seg.install(scan.index, scan.valid_len, scan.next_offset, scan.max_timestamp);
    Ok(())
}

/// Whether `[from, to)` of the segment is all zeros and no longer than the writer's
/// preallocation (plus one batch that may have failed in it): then it is not damage.
fn zero_tail(seg: &Segment, from: u64, to: u64) -> io::Result<bool> {
    const LIMIT: u64 = 2 * PREALLOC_STEP + 8 * 1024 * 1024;
    if to - from > LIMIT {
        return Ok(false);
    }
    let mut buf = vec![0u8; usize::try_from(to - from).unwrap_or(0)];
    seg.file.read_exact_at(&mut buf, from)?;
    Ok(buf.iter().all(|&b| b == 0))
}

fn check_contiguity(segments: &[Arc<Segment>]) {
    for pair in segments.windows(2) {
        let end = pair[0].next_offset.load(Ordering::Acquire);
        if end != pair[1].base {
            tracing::error!(
                segment = %pair[0].path.display(), ends_at = end, next_base = pair[1].base,
                "log segments are not contiguous; the offsets between are unreadable"
            );
        }
    }
}
