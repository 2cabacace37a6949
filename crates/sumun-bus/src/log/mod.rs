//! The embedded durable log: one [`PartitionLog`] per topic partition.
//!
//! On disk, `{dir}/{topic}/{partition}/` holds segment files named by the offset of their
//! first record (`00000000000000000000.log`) and, for sealed segments, a sparse offset index
//! (`….index`: offset → file position). Each record is framed as
//! `[len u32][crc32c u32][version u8][offset u64][timestamp u64][key][headers][value]`, so a
//! torn or corrupt record is detected on read and at recovery. One writer task per partition
//! owns the files: it takes every append that is waiting, writes them in one `write`, and
//! makes them durable with one `fdatasync` (group commit; a few batches' fsyncs overlap, and
//! batches are published in order). Readers read the files directly, concurrently with the
//! writer, up to the last committed record. The contract, in prose, is
//! `crates/sumun-bus/LOG_API.md`.
//!
//! Modules: `record` (framing), `segment` (one file and its index), `recovery` (open),
//! `writer` (appends, group commit, preallocation, rollback), `read`, `retention`.

mod read;
mod record;
mod recovery;
mod retention;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use segment::Segment;
use writer::{Command, Pending};

/// How a partition log is opened. Every partition of every topic of one bus shares one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Root directory; a partition lives in `{dir}/{topic}/{partition}/`.
    pub dir: PathBuf,
    /// When an append is acknowledged relative to the disk.
    pub durability: Durability,
    /// A segment is sealed and a new one started when the next append would make it larger
    /// than this (an append larger than this gets a segment of its own: an append never
    /// spans two segments). 4 KiB ..= 1 GiB.
    pub segment_bytes: u64,
    /// Sealed segments whose newest record is older than this are deleted.
    pub retention_age: Option<Duration>,
    /// Sealed segments are deleted, oldest first, while the partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// Largest encoded record (key + value + headers + 35 bytes of framing, 6 more per
    /// header); larger records are refused with [`LogError::RecordTooLarge`]. At most 64 MiB.
    pub max_record_bytes: u32,
    /// Bytes of appends accepted but not yet written (the writer's queue), ≥
    /// `max_record_bytes`, ≤ 1 GiB. An append that would exceed it waits up to
    /// `max_pending_wait`, then fails with [`LogError::Busy`]; one append larger than it is
    /// refused with [`LogError::RecordTooLarge`].
    pub max_pending_bytes: u64,
    /// How long an append waits for room in the queue before [`LogError::Busy`] (zero: not
    /// at all).
    pub max_pending_wait: Duration,
    /// How long a queued append waits to be committed (written, and fsynced under `Fsync`)
    /// before [`LogError::TimedOut`]: a bound on a sick disk, not a tuning knob.
    pub commit_timeout: Duration,
}

impl LogConfig {
    /// Defaults: fsync durability, 64 MiB segments, no retention, 1 MiB records, 64 MiB of
    /// pending appends, 1 s wait for queue room, 30 s commit timeout.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            durability: Durability::Fsync,
            segment_bytes: 64 * 1024 * 1024,
            retention_age: None,
            retention_bytes: None,
            max_record_bytes: 1024 * 1024,
            max_pending_bytes: 64 * 1024 * 1024,
            max_pending_wait: Duration::from_secs(1),
            commit_timeout: Duration::from_secs(30),
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        const GIB: u64 = 1024 * 1024 * 1024;
        let bad = |what: &str| Err(LogError::InvalidConfig(what.to_owned()));
        if !(4096..=GIB).contains(&self.segment_bytes) {
            return bad("segment_bytes must be between 4 KiB and 1 GiB");
        }
        let max_record = u64::from(self.max_record_bytes);
        if !(record::RECORD_OVERHEAD as u64..=record::MAX_FRAME as u64).contains(&max_record) {
            return bad("max_record_bytes must be between 35 bytes and 64 MiB");
        }
        if self.max_pending_bytes < max_record || self.max_pending_bytes > GIB {
            return bad("max_pending_bytes must be at least max_record_bytes and at most 1 GiB");
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return bad("durability interval must be above zero");
        }
        if self.commit_timeout.is_zero() {
            return bad("commit_timeout must be above zero");
        }
        Ok(())
    }
}

/// When [`PartitionLog::append`] returns relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After `fdatasync` of the records (group commit: concurrent appends share one). A crash
    /// of the process or the machine loses no acknowledged record.
    Fsync,
    /// After `write` to the page cache; the writer fsyncs at most this long after a write.
    /// A process crash loses nothing; a machine crash or power loss loses at most the
    /// records acknowledged in the last interval (plus the fsync's own duration).
    Interval(Duration),
    /// After `write` to the page cache; the OS decides when it reaches the disk (Linux:
    /// typically within 30 s). A process crash loses nothing; a machine crash may lose any
    /// record written since the last segment roll.
    None,
}

/// One message as the bus stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Partitioning / ordering key, if any.
    pub key: Option<Bytes>,
    /// Milliseconds since the Unix epoch; retention by age uses the newest in a segment.
    pub timestamp_ms: u64,
    /// Attributes (the CloudEvents envelope fields, kept request headers). Names are at most
    /// 65,535 bytes; at most 65,535 headers.
    pub headers: Vec<(String, Bytes)>,
    /// The payload.
    pub value: Bytes,
}

/// A record read back, with the offset the log gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub offset: u64,
    pub record: Record,
}

/// What [`PartitionLog::enforce_retention`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    /// The first retained offset after the deletion.
    pub start_offset: u64,
}

/// Counters of one partition log, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    pub start_offset: u64,
    pub end_offset: u64,
    pub segments: usize,
    /// Bytes of retained records (the files may hold up to 512 KiB of preallocated zeros more).
    pub bytes: u64,
    /// Calls to `append` that succeeded.
    pub appends: u64,
    /// Records appended.
    pub records: u64,
    /// Batches written by the writer (one `write`, at most one fsync each).
    pub batches: u64,
    /// `fdatasync` calls on segment data.
    pub fsyncs: u64,
    /// Bytes waiting in the writer's queue now.
    pub pending_bytes: u64,
}

/// Why a log operation failed. `DiskFull` maps to 507, `Busy` to 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filesystem is full (ENOSPC) or the quota is exhausted (EDQUOT). Nothing of the
    /// failed batch is visible; the log keeps serving reads and takes appends again once
    /// space returns.
    #[error("disk full")]
    DiskFull,
    /// The append queue stayed full for `max_pending_wait`. Nothing was queued.
    #[error("log busy: append queue full")]
    Busy,
    /// The append was queued but not committed within `commit_timeout`. It may still be
    /// committed later (the outcome is unknown: a publisher retries with its idempotency key).
    #[error("log append not committed in time")]
    TimedOut,
    /// A record (or batch) exceeds `max_record_bytes` or a field limit.
    #[error("record too large: {size} bytes, limit {max}")]
    RecordTooLarge { size: u64, max: u64 },
    /// A stored record failed its checksum or framing. Records before it were returned by
    /// earlier reads; `skip_to` is the next offset that can be read past the damage.
    #[error("corrupt record at offset {offset} ({path}, position {position}): {reason}")]
    Corrupt { offset: u64, path: PathBuf, position: u64, skip_to: u64, reason: String },
    /// Another `PartitionLog` (in this process or another) has the partition open.
    #[error("partition directory {0} is in use by another log")]
    Locked(PathBuf),
    /// The topic name cannot be a directory name (empty, `.`/`..`, `/`, NUL, over 255 bytes).
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    /// The configuration is out of range.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// The log was closed, or its writer stopped after an unrecoverable I/O error.
    #[error("log closed")]
    Closed,
    /// Any other I/O error.
    #[error("log I/O error: {0}")]
    Io(std::io::Error),
}

impl From<io::Error> for LogError {
    /// ENOSPC and EDQUOT become [`LogError::DiskFull`]; anything else [`LogError::Io`].
    fn from(e: io::Error) -> Self {
        if LogError::is_disk_full(&e) { LogError::DiskFull } else { LogError::Io(e) }
    }
}

impl LogError {
    fn is_disk_full(e: &io::Error) -> bool {
        let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT];
        e.raw_os_error().is_some_and(|code| full.iter().any(|f| f.raw_os_error() == code))
    }

    /// The same error for another waiter of a failed batch (`io::Error` is not `Clone`).
    fn duplicate(&self) -> LogError {
        match self {
            LogError::DiskFull => LogError::DiskFull,
            LogError::Busy => LogError::Busy,
            LogError::TimedOut => LogError::TimedOut,
            LogError::RecordTooLarge { size, max } => LogError::RecordTooLarge { size: *size, max: *max },
            LogError::Corrupt { offset, path, position, skip_to, reason } => LogError::Corrupt {
                offset: *offset,
                path: path.clone(),
                position: *position,
                skip_to: *skip_to,
                reason: reason.clone(),
            },
            LogError::Locked(p) => LogError::Locked(p.clone()),
            LogError::InvalidTopic(t) => LogError::InvalidTopic(t.clone()),
            LogError::InvalidConfig(c) => LogError::InvalidConfig(c.clone()),
            LogError::Closed => LogError::Closed,
            LogError::Io(e) => LogError::Io(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// The state readers, the writer and retention share.
#[derive(Debug)]
struct Shared {
    cfg: LogConfig,
    /// `{cfg.dir}/{topic}/{partition}`.
    dir: PathBuf,
    /// Oldest first; the last one is the active segment. Never empty.
    segments: RwLock<Vec<Arc<Segment>>>,
    start_offset: AtomicU64,
    /// The high watermark: every offset below it is committed.
    end_offset: AtomicU64,
    end_tx: watch::Sender<u64>,
    counters: Counters,
    /// Holds the partition's `flock` for as long as anything uses the files.
    _lock: File,
    /// Tests: how many of the next batch fsyncs fail (a seam for the failure path).
    #[cfg(test)]
    fail_syncs: std::sync::atomic::AtomicU32,
}

#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    records: AtomicU64,
    batches: AtomicU64,
    fsyncs: AtomicU64,
}

impl Shared {
    fn segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn segments_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes offsets below `end` visible to readers and watchers.
    fn publish_end(&self, end: u64) {
        self.end_offset.store(end, Ordering::Release);
        self.end_tx.send_replace(end);
    }
}

/// One partition's append-only log: segment files with
/// `[len][crc32c][offset][timestamp]…` records, an offset index, recovery truncating a torn
/// tail. Shared as `Arc`; appends and reads may run concurrently from any task. Dropping the
/// last `Arc` lets the writer finish what is queued (with a final fsync) and release the
/// directory; [`PartitionLog::close`] does the same and waits for it.
pub struct PartitionLog {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Command>,
    /// One permit per byte of queued appends (`max_pending_bytes`).
    permits: Arc<Semaphore>,
    closed: AtomicBool,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.shared.dir)
            .field("start_offset", &self.start_offset())
            .field("end_offset", &self.end_offset())
            .finish()
    }
}

impl PartitionLog {
    /// Opens (creating if needed) `{cfg.dir}/{topic}/{partition}/`, recovers it (verifies the
    /// last segment's checksums, truncates a torn tail, rebuilds missing indexes) and starts
    /// its writer task. Must be called inside a Tokio runtime.
    pub async fn open(cfg: &LogConfig, topic: &str, partition: u32) -> Result<Arc<Self>, LogError> {
        cfg.validate()?;
        validate_topic(topic)?;
        let dir = cfg.dir.join(topic).join(partition.to_string());
        let cfg = cfg.clone();
        let recovered = tokio::task::spawn_blocking(move || recovery::recover(&cfg, dir))
            .await
            .map_err(|e| LogError::Io(io::Error::other(e)))??;
        let permits = Arc::new(Semaphore::new(recovered.shared.cfg.max_pending_bytes as usize));
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = recovered.shared;
        tokio::spawn(writer::run(recovered.writer, rx, Arc::clone(&permits)));
        Ok(Arc::new(Self { shared, tx, permits, closed: AtomicBool::new(false) }))
    }

    /// Appends `records` in order, atomically as a batch (all or none become visible) and
    /// returns their offsets, consecutive. Durable per `cfg.durability` when it returns
    /// (group commit: concurrent appends share one fsync). A record with `timestamp_ms == 0`
    /// is stamped with the current time. Cancelling the future does not cancel the append
    /// once it is queued.
    pub async fn append(&self, mut records: Vec<Record>) -> Result<Vec<u64>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let cfg = &self.shared.cfg;
        let mut bytes = 0u64;
        let now = now_ms();
        for record in &mut records {
            let size = record::encoded_len(record).map_err(|_| LogError::RecordTooLarge {
                size: u64::MAX,
                max: u64::from(cfg.max_record_bytes),
            })?;
            if size > u64::from(cfg.max_record_bytes) {
                return Err(LogError::RecordTooLarge { size, max: u64::from(cfg.max_record_bytes) });
            }
            if record.timestamp_ms == 0 {
                record.timestamp_ms = now;
            }
            bytes += size;
        }
        if bytes > cfg.max_pending_bytes {
            return Err(LogError::RecordTooLarge { size: bytes, max: cfg.max_pending_bytes });
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        // `bytes` ≤ max_pending_bytes ≤ 1 GiB, so it fits the permit count.
        let wanted = u32::try_from(bytes)
            .map_err(|_| LogError::RecordTooLarge { size: bytes, max: cfg.max_pending_bytes })?;
        let permits = Arc::clone(&self.permits);
        let permit = if cfg.max_pending_wait.is_zero() {
            match permits.try_acquire_many_owned(wanted) {
                Ok(permit) => permit,
                Err(tokio::sync::TryAcquireError::Closed) => return Err(LogError::Closed),
                Err(tokio::sync::TryAcquireError::NoPermits) => return Err(LogError::Busy),
            }
        } else {
            match tokio::time::timeout(cfg.max_pending_wait, permits.acquire_many_owned(wanted)).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => return Err(LogError::Closed),
                Err(_elapsed) => return Err(LogError::Busy),
            }
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending { records, bytes, reply, _permit: permit };
        self.tx.send(Command::Append(pending)).map_err(|_| LogError::Closed)?;
        match tokio::time::timeout(cfg.commit_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_writer_gone)) => Err(LogError::Closed),
            Err(_elapsed) => Err(LogError::TimedOut),
        }
    }

    /// Reads records with offsets `>= from` (from the first retained one if `from` is older),
    /// up to `max_records` and about `max_bytes` of encoded records (at least one record when
    /// any is available, however large). Empty when `from >= end_offset()`.
    pub async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let Some(plan) = read::plan(&self.shared, from, max_records, max_bytes) else {
            return Ok(Vec::new());
        };
        tokio::task::spawn_blocking(move || plan.run())
            .await
            .map_err(|e| LogError::Io(io::Error::other(e)))?
    }

    /// The first retained offset.
    pub fn start_offset(&self) -> u64 {
        self.shared.start_offset.load(Ordering::Acquire)
    }

    /// The offset the next record will get; every offset from `start_offset()` below it is
    /// readable. Only committed records count (fsynced under `Fsync`).
    pub fn end_offset(&self) -> u64 {
        self.shared.end_offset.load(Ordering::Acquire)
    }

    /// Follows `end_offset()`: changes each time records are committed (for tailing readers).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.end_tx.subscribe()
    }

    /// Deletes whole sealed segments past `retention_age` / `retention_bytes` (never the
    /// active one), oldest first, and moves `start_offset()`. The bus calls it periodically.
    pub async fn enforce_retention(&self) -> Result<RetentionReport, LogError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || retention::enforce(&shared, now_ms()))
            .await
            .map_err(|e| LogError::Io(io::Error::other(e)))?
    }

    /// Counters for metrics.
    pub fn stats(&self) -> LogStats {
        let c = &self.shared.counters;
        let segments = self.shared.segments();
        LogStats {
            start_offset: self.start_offset(),
            end_offset: self.end_offset(),
            segments: segments.len(),
            bytes: segments.iter().map(|s| s.committed_len()).sum(),
            appends: c.appends.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            pending_bytes: self
                .shared
                .cfg
                .max_pending_bytes
                .saturating_sub(self.permits.available_permits() as u64),
        }
    }

    /// Stops taking appends, writes and fsyncs what is queued, and waits (up to
    /// `commit_timeout`) for the writer to finish. Later appends fail with
    /// [`LogError::Closed`]; reads keep working. Calling it again is harmless.
    pub async fn close(&self) -> Result<(), LogError> {
        self.closed.store(true, Ordering::Release);
        let (reply, done) = oneshot::channel();
        if self.tx.send(Command::Close(reply)).is_err() {
            return Ok(()); // the writer is already gone
        }
        match tokio::time::timeout(self.shared.cfg.commit_timeout, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_writer_gone)) => Ok(()),
            Err(_elapsed) => Err(LogError::TimedOut),
        }
    }
}

/// A topic becomes a directory name: refuse anything that is not one plain path component.
fn validate_topic(topic: &str) -> Result<(), LogError> {
    let ok = !topic.is_empty()
        && topic.len() <= 255
        && topic != "."
        && topic != ".."
        && !topic.bytes().any(|b| b == b'/' || b == b'\\' || b == 0);
    if ok { Ok(()) } else { Err(LogError::InvalidTopic(topic.to_owned())) }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
