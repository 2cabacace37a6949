//! The embedded durable log: one [`PartitionLog`] per topic partition.
//!
//! On disk, `{dir}/{topic}/{partition}/` holds segment files named by the offset of their
//! first record (`00000000000000000000.log`) and, for sealed segments, a sparse offset index
//! (`….index`: offset → file position). Each record is framed as
//! `[len u32][crc32c u32][version u8][offset u64][timestamp u64][key][headers][value]`, so a
//! torn or corrupt record is detected on read and at recovery. One writer task per partition
//! owns the files: it takes every append that is waiting, writes them in one `write`, and
//! makes them durable with one `fdatasync` (group commit). Readers read the files directly,
//! concurrently with the writer, up to the last committed record. The contract, in prose, is
//! `crates/sumun-bus/LOG_API.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// How a partition log is opened. Every partition of every topic of one bus shares one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Root directory; a partition lives in `{dir}/{topic}/{partition}/`.
    pub dir: PathBuf,
    /// When an append is acknowledged relative to the disk.
    pub durability: Durability,
    /// A segment is sealed and a new one started when the next record would make it larger
    /// than this (a single record larger than this gets a segment of its own). 4 KiB ..= 1 GiB.
    pub segment_bytes: u64,
    /// Sealed segments whose newest record is older than this are deleted.
    pub retention_age: Option<Duration>,
    /// Sealed segments are deleted, oldest first, while the partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// Largest encoded record (key + headers + value + 37 bytes of framing); larger records
    /// are refused with [`LogError::RecordTooLarge`]. At most 64 MiB.
    pub max_record_bytes: u32,
    /// Bytes of appends accepted but not yet written (the writer's queue). An append that
    /// would exceed it waits up to `max_pending_wait`, then fails with [`LogError::Busy`].
    pub max_pending_bytes: u64,
    /// How long an append waits for room in the queue before [`LogError::Busy`].
    pub max_pending_wait: Duration,
}

impl LogConfig {
    /// Defaults: fsync durability, 64 MiB segments, no retention, 1 MiB records, 64 MiB of
    /// pending appends, 1 s wait for queue room.
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
        }
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
    /// Bytes of all retained segment files.
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
    /// The append queue stayed full for `max_pending_wait`.
    #[error("log busy: append queue full")]
    Busy,
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
    Io(#[from] std::io::Error),
}

/// One partition's append-only log: segment files with
/// `[len][crc32c][offset][timestamp]…` records, an offset index, recovery truncating a torn
/// tail. Cheap to share (`Arc`); appends and reads may run concurrently from any task.
pub struct PartitionLog {
    _private: (),
}

impl PartitionLog {
    /// Opens (creating if needed) `{cfg.dir}/{topic}/{partition}/`, recovers it (verifies the
    /// tail's checksums, truncates a torn tail, rebuilds missing indexes) and starts its
    /// writer task. Must be called inside a Tokio runtime.
    pub async fn open(cfg: &LogConfig, topic: &str, partition: u32) -> Result<Arc<Self>, LogError> {
        let _ = (cfg, topic, partition);
        Err(LogError::Closed)
    }

    /// Appends `records` in order, atomically as a batch (all or none become visible) and
    /// returns their offsets, consecutive. Durable per `cfg.durability` when it returns
    /// (group commit: concurrent appends share one fsync). Cancelling the future does not
    /// cancel the append once it is queued.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, LogError> {
        let _ = records;
        Err(LogError::Closed)
    }

    /// Reads records with offsets `>= from` (from the first retained one if `from` is older),
    /// up to `max_records` and about `max_bytes` of encoded records (at least one record when
    /// any is available, however large). Empty when `from >= end_offset()`.
    pub async fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Stored>, LogError> {
        let _ = (from, max_records, max_bytes);
        Err(LogError::Closed)
    }

    /// The first retained offset.
    pub fn start_offset(&self) -> u64 {
        0
    }

    /// The offset the next record will get; every offset below it (and from
    /// `start_offset()`) is readable. Only committed records count (fsynced under `Fsync`).
    pub fn end_offset(&self) -> u64 {
        0
    }

    /// Follows `end_offset()`: changes each time records are committed (for tailing readers).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }

    /// Deletes whole sealed segments past `retention_age` / `retention_bytes` (never the
    /// active one) and moves `start_offset()`. The bus calls it periodically.
    pub async fn enforce_retention(&self) -> Result<RetentionReport, LogError> {
        Err(LogError::Closed)
    }

    /// Counters for metrics.
    pub fn stats(&self) -> LogStats {
        LogStats::default()
    }

    /// Stops taking appends, writes and fsyncs what is queued, and waits for the writer to
    /// finish. Later appends fail with [`LogError::Closed`]; reads keep working.
    pub async fn close(&self) -> Result<(), LogError> {
        Ok(())
    }
}
