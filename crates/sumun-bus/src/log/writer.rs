//! The writer: one task per partition owns the active segment and applies appends.
//!
//! Group commit: the task waits for one append, then takes every other append already queued
//! (up to [`MAX_BATCH_BYTES`]), encodes them into one buffer and writes it with one `pwrite`
//! on a blocking thread. Under `Fsync` the batch then gets one `fdatasync` of its own, also on
//! a blocking thread, and the task goes on to the next batch without waiting for it: up to
//! [`MAX_SYNCS_IN_FLIGHT`] fsyncs overlap (the block layer merges concurrent cache flushes;
//! measured here, 4 concurrent `fdatasync`s complete many times more often than 1). Batches
//! are published (readers see them, appenders get their offsets) strictly in order, each once
//! its own fsync returned — an fsync covers everything written before it started, so a batch
//! is durable by then whatever the order the fsyncs finish in.
//!
//! Preallocation: the active segment is kept zero-filled [`PREALLOC_STEP`] bytes ahead of
//! its end. Overwriting blocks that already exist lets `fdatasync` flush data only; extending
//! the file needs a journal commit for the new size and blocks too, several times slower on
//! ext4. Readers never see the zeros (they stop at the committed length); a sealed segment
//! is cut to its records; recovery drops a zero tail quietly.
//!
//! Failures: a write that fails (ENOSPC…) is undone by truncating the segment back to where
//! the batch started; its appends get the error, the batches before it are unaffected. A
//! failed fsync fails its batch and every batch after it (the kernel may have dropped the
//! dirty pages: a later fsync proves nothing about them) and truncates the segment back to
//! the last published batch. If a rollback or a seal fails, the writer stops: appends get
//! `Closed`, reads go on, and a reopen recovers the files.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::record;
use super::segment::{INDEX_INTERVAL, IndexEntry, Segment, sync_dir};
use super::{Durability, LogError, Record, Shared};

/// Upper bound of one batch's encoded bytes (one append may exceed it alone).
const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Batches written and waiting for their fsync at once.
const MAX_SYNCS_IN_FLIGHT: usize = 4;
/// How far ahead of the data the active segment is zero-filled. Also the most a partition
/// holds on disk beyond its records.
pub(crate) const PREALLOC_STEP: u64 = 512 * 1024;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

pub(crate) enum Command {
    Append(Pending),
    Close(oneshot::Sender<Result<(), LogError>>),
}

/// An append waiting for the writer. Its permit returns its bytes to the queue budget once
/// the batch holding it is written.
pub(crate) struct Pending {
    pub records: Vec<Record>,
    pub bytes: u64,
    pub reply: oneshot::Sender<Result<Vec<u64>, LogError>>,
    pub _permit: OwnedSemaphorePermit,
}

type Reply = oneshot::Sender<Result<Vec<u64>, LogError>>;
type Synced = (Batch, Result<(), LogError>);
/// Written batches waiting for their fsync, completed in the order they were written.
type InFlight = FuturesOrdered<Pin<Box<dyn Future<Output = Synced> + Send>>>;

/// A run of records written to one segment, waiting to be published.
struct Written {
    segment: Arc<Segment>,
    end_pos: u64,
    next_offset: u64,
    index: Vec<IndexEntry>,
    max_ts: u64,
    records: u64,
    /// Already durable: fsynced when its segment was sealed.
    durable: bool,
    /// The last run of a sealed segment: publishing it writes the segment's index file.
    seals: bool,
    /// The batch's appends whose records are all in this run.
    appends: Range<usize>,
}

/// A written batch: its runs, and per append its offsets or why it failed.
struct Batch {
    chunks: Vec<Written>,
    results: Vec<Result<Vec<u64>, LogError>>,
    replies: Vec<Reply>,
}

/// What the writer owns; moved onto a blocking thread for each write and back.
pub(crate) struct WriterState {
    pub shared: Arc<Shared>,
    pub active: Arc<Segment>,
    /// End of what was written to `active` (beyond its committed length while batches wait
    /// for their fsync).
    write_pos: u64,
    /// Length of the `active` file: zeros from `write_pos` to here.
    prealloc_end: u64,
    /// Offset for the next record.
    write_next: u64,
    /// Position of the last index entry written (0: none).
    last_indexed: u64,
    /// Published but not fsynced (`Interval` / `None`).
    dirty: bool,
    /// The files can no longer be trusted past the committed position.
    failed: bool,
    /// The run being built: encoded frames, their index entries and newest timestamp.
    buf: Vec<u8>,
    chunk_index: Vec<IndexEntry>,
    chunk_next: u64,
    chunk_last_indexed: u64,
    chunk_max_ts: u64,
}

impl WriterState {
    pub fn new(shared: Arc<Shared>, active: Arc<Segment>) -> Self {
        let mut s = Self {
            shared,
            active,
            write_pos: 0,
            prealloc_end: 0,
            write_next: 0,
            last_indexed: 0,
            dirty: false,
            failed: false,
            buf: Vec::new(),
            chunk_index: Vec::new(),
            chunk_next: 0,
            chunk_last_indexed: 0,
            chunk_max_ts: 0,
        };
        s.restart_from_committed();
        // Recovery cut the file to its records.
        s.prealloc_end = s.write_pos;
        s
    }

    /// Forgets everything written past the last published record.
    fn restart_from_committed(&mut self) {
        self.write_pos = self.active.committed_len();
        self.write_next = self.active.next_offset.load(Ordering::Acquire);
        self.last_indexed = self
            .active
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .map_or(0, |e| u64::from(e.pos));
        self.reset_chunk();
    }

    fn durability(&self) -> Durability {
        self.shared.cfg.durability
    }

    /// Whether a batch of `bytes` may start a new segment (the task then lets every fsync in
    /// flight finish first, so a seal never races them).
    fn may_roll(&self, bytes: u64) -> bool {
        self.write_pos + bytes > self.shared.cfg.segment_bytes
    }

    /// Writes a batch (no fsync, except when sealing a segment).
    fn write_batch(
        &mut self,
        work: &[(Vec<Record>, u64)],
    ) -> (Vec<Written>, Vec<Result<Vec<u64>, LogError>>) {
        let segment_bytes = self.shared.cfg.segment_bytes;
        let mut chunks = Vec::new();
        let mut results: Vec<Result<Vec<u64>, LogError>> = Vec::with_capacity(work.len());
        let mut chunk_first = 0;
        for (i, (records, bytes)) in work.iter().enumerate() {
            let len_now = self.write_pos + self.buf.len() as u64;
            if len_now > 0 && len_now + bytes > segment_bytes {
                // This append starts a new segment: write what precedes it, seal, roll.
                match self.write_chunk(chunk_first..i) {
                    Ok(written) => chunks.extend(written),
                    Err(e) => {
                        fail(&mut results, chunk_first, &e);
                        fail_rest(&mut results, work.len(), &e);
                        return (chunks, results);
                    }
                }
                if let Err(e) = self.seal() {
                    // What this batch wrote to the segment is not known durable: fail it, and
                    // stop (the files need a recovery).
                    self.failed = true;
                    chunks.retain(|c| !Arc::ptr_eq(&c.segment, &self.active));
                    fail(&mut results, chunks.last().map_or(0, |c| c.appends.end), &e);
                    fail_rest(&mut results, work.len(), &e);
                    return (chunks, results);
                }
                let mut sealing =
                    chunks.iter_mut().filter(|c| Arc::ptr_eq(&c.segment, &self.active)).peekable();
                if sealing.peek().is_none() {
                    // Everything in the segment is published already: its index is final.
                    if let Err(e) = self.active.write_index() {
                        tracing::warn!(segment = %self.active.path.display(), error = %e, "could not write segment index");
                    }
                }
                let mut last = None;
                for c in sealing {
                    c.durable = true;
                    last = Some(c);
                }
                if let Some(c) = last {
                    c.seals = true;
                }
                if let Err(e) = self.roll() {
                    fail_rest(&mut results, work.len(), &e);
                    return (chunks, results);
                }
                chunk_first = i;
            }
            results.push(Ok(self.encode(records)));
        }
        match self.write_chunk(chunk_first..work.len()) {
            Ok(written) => chunks.extend(written),
            Err(e) => fail(&mut results, chunk_first, &e),
        }
        (chunks, results)
    }

    /// Encodes `records` at the next offsets into the run buffer; returns their offsets.
    fn encode(&mut self, records: &[Record]) -> Vec<u64> {
        let mut offsets = Vec::with_capacity(records.len());
        for r in records {
            let at = self.write_pos + self.buf.len() as u64;
            if at > 0
                && at - self.chunk_last_indexed >= INDEX_INTERVAL
                && let (Ok(rel), Ok(pos)) =
                    (u32::try_from(self.chunk_next - self.active.base), u32::try_from(at))
            {
                self.chunk_index.push(IndexEntry { rel, pos });
                self.chunk_last_indexed = at;
            }
            record::encode(r, self.chunk_next, &mut self.buf);
            offsets.push(self.chunk_next);
            self.chunk_next += 1;
            self.chunk_max_ts = self.chunk_max_ts.max(r.timestamp_ms);
        }
        offsets
    }

    /// Writes the run buffer at the write position. On failure truncates the segment back
    /// to where the run started (earlier runs stay) and forgets the run.
    fn write_chunk(&mut self, appends: Range<usize>) -> Result<Option<Written>, LogError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let start = self.write_pos;
        let end = start + self.buf.len() as u64;
        let written = self.ensure_room(end).and_then(|()| self.active.file.write_all_at(&self.buf, start));
        if let Err(e) = written {
            self.undo_write(start, &e);
            return Err(LogError::from(e));
        }
        let run = Written {
            segment: Arc::clone(&self.active),
            end_pos: end,
            next_offset: self.chunk_next,
            index: std::mem::take(&mut self.chunk_index),
            max_ts: self.chunk_max_ts,
            records: self.chunk_next - self.write_next,
            durable: false,
            seals: false,
            appends,
        };
        self.write_pos = end;
        self.write_next = self.chunk_next;
        self.last_indexed = self.chunk_last_indexed;
        self.reset_chunk();
        Ok(Some(run))
    }

    fn reset_chunk(&mut self) {
        self.buf.clear();
        // Don't keep a huge buffer from one large append.
        if self.buf.capacity() > 2 * MAX_BATCH_BYTES as usize {
            self.buf = Vec::new();
        }
        self.chunk_index.clear();
        self.chunk_next = self.write_next;
        self.chunk_last_indexed = self.last_indexed;
        self.chunk_max_ts = 0;
    }

    /// Zero-fills the active segment up to at least `end` (a step ahead when there is room
    /// for it; just `end` when the disk is too full for the step).
    fn ensure_room(&mut self, end: u64) -> io::Result<()> {
        if end <= self.prealloc_end {
            return Ok(());
        }
        let step = (self.prealloc_end + PREALLOC_STEP).min(self.shared.cfg.segment_bytes);
        let target = end.max(step);
        match self.zero_fill(target) {
            Err(e) if target > end && LogError::is_disk_full(&e) => {
                self.active.file.set_len(self.prealloc_end)?;
                self.zero_fill(end)
            }
            other => other,
        }
    }

    fn zero_fill(&mut self, target: u64) -> io::Result<()> {
        let mut at = self.prealloc_end;
        while at < target {
            let n = usize::try_from(target - at).unwrap_or(usize::MAX).min(ZEROS.len());
            self.active.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        self.prealloc_end = target;
        Ok(())
    }

    /// Truncates the active segment to `start` and makes that durable, so neither readers nor
    /// a later recovery see any of a failed write.
    fn undo_write(&mut self, start: u64, cause: &dyn std::fmt::Display) {
        self.reset_chunk();
        self.prealloc_end = start;
        self.count_fsync();
        let undone = self.active.file.set_len(start).and_then(|()| self.active.file.sync_data());
        match undone {
            Ok(()) => tracing::warn!(
                segment = %self.active.path.display(), position = start, error = %cause,
                "log write failed; rolled back"
            ),
            Err(e) => {
                self.failed = true;
                tracing::error!(
                    segment = %self.active.path.display(), position = start, error = %cause, rollback_error = %e,
                    "log write failed and could not be rolled back; partition closed for appends until reopened"
                );
            }
        }
    }

    /// After a failed fsync: drop everything past the last published record.
    fn undo_unpublished(&mut self, cause: &LogError) {
        self.restart_from_committed();
        let start = self.write_pos;
        self.undo_write(start, cause);
    }

    /// Fsyncs the active segment if it has published records not yet durable (interval
    /// tick, close).
    fn sync(&mut self) -> Result<(), LogError> {
        if !self.dirty {
            return Ok(());
        }
        self.count_fsync();
        match self.active.file.sync_data() {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                // Acknowledged writes may be lost and the page cache no longer says which
                // (a failed fsync clears the dirty state): stop rather than pretend.
                self.failed = true;
                tracing::error!(
                    segment = %self.active.path.display(), error = %e,
                    "log fsync failed; acknowledged records may be lost; partition closed for appends until reopened"
                );
                Err(LogError::from(e))
            }
        }
    }

    /// At close: drop the preallocated zeros and make the published records durable.
    fn finish(&mut self) -> Result<(), LogError> {
        if let Err(e) = self.trim() {
            tracing::warn!(segment = %self.active.path.display(), error = %e, "could not trim a log segment");
        }
        self.sync()
    }

    /// Cuts the active segment to what was written (drops the preallocated zeros).
    fn trim(&mut self) -> io::Result<()> {
        if self.prealloc_end > self.write_pos {
            self.active.file.set_len(self.write_pos)?;
            self.prealloc_end = self.write_pos;
        }
        Ok(())
    }

    /// Makes the active segment final: cut to its records, fsynced (every record written to
    /// it becomes durable), its index written.
    fn seal(&mut self) -> Result<(), LogError> {
        self.trim()?;
        self.count_fsync();
        self.active.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    fn count_fsync(&self) {
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts a new segment at the next offset, after [`seal`](Self::seal). Its directory
    /// entry is fsynced before any record goes in it. The sealed segment's index is written
    /// when its last run is published (see [`publish`]).
    fn roll(&mut self) -> Result<(), LogError> {
        let dir = &self.shared.dir;
        let base = self.write_next;
        let segment = Arc::new(Segment::open(dir, base, true)?);
        if let Err(e) = sync_dir(dir) {
            let _ = std::fs::remove_file(&segment.path);
            return Err(LogError::from(e));
        }
        tracing::debug!(segment = %segment.path.display(), "log segment rolled");
        self.shared.segments_mut().push(Arc::clone(&segment));
        self.active = segment;
        self.write_pos = 0;
        self.prealloc_end = 0;
        self.last_indexed = 0;
        self.reset_chunk();
        Ok(())
    }
}

fn fail(results: &mut [Result<Vec<u64>, LogError>], from: usize, e: &LogError) {
    for r in results.iter_mut().skip(from) {
        *r = Err(e.duplicate());
    }
}

fn fail_rest(results: &mut Vec<Result<Vec<u64>, LogError>>, total: usize, e: &LogError) {
    while results.len() < total {
        results.push(Err(e.duplicate()));
    }
}

/// Makes a written run visible: index, lengths, then the high watermark. A run that fills a
/// segment that is no longer active also gets that segment's index file.
fn publish(shared: &Shared, run: Written) {
    let seg = &run.segment;
    seg.index.write().unwrap_or_else(PoisonError::into_inner).extend(run.index);
    seg.max_timestamp.fetch_max(run.max_ts, Ordering::AcqRel);
    seg.next_offset.store(run.next_offset, Ordering::Release);
    seg.committed_len.store(run.end_pos, Ordering::Release);
    // Before the watermark moves: retention only deletes segments below it.
    if run.seals
        && let Err(e) = seg.write_index()
    {
        // Not fatal: an index is rebuilt by scanning when it is missing or stale.
        tracing::warn!(segment = %seg.path.display(), error = %e, "could not write segment index");
    }
    shared.publish_end(run.next_offset);
    let c = &shared.counters;
    c.batches.fetch_add(1, Ordering::Relaxed);
    c.records.fetch_add(run.records, Ordering::Relaxed);
}

/// Runs `f` on the state on a blocking thread and gives the state back. `None` if the
/// closure panicked (the state is lost; the writer stops).
async fn blocking<T: Send + 'static>(
    mut state: WriterState,
    f: impl FnOnce(&mut WriterState) -> T + Send + 'static,
) -> Option<(WriterState, T)> {
    tokio::task::spawn_blocking(move || {
        let out = f(&mut state);
        (state, out)
    })
    .await
    .ok()
}

/// Resolves when the batch's fsync (if it needs one) has returned.
async fn synced(batch: Batch, job: Option<JoinHandle<io::Result<()>>>) -> Synced {
    let result = match job {
        None => Ok(()),
        Some(job) => match job.await {
            Ok(r) => r.map_err(LogError::from),
            Err(e) => Err(LogError::Io(io::Error::other(e))),
        },
    };
    (batch, result)
}

/// Publishes a batch whose fsync is done (or failed): runs in order, replies to appenders.
/// Returns the fsync error, if any, after failing the appends it concerned.
fn complete(shared: &Shared, batch: Batch, synced: Result<(), LogError>) -> Result<(), LogError> {
    let Batch { chunks, mut results, replies } = batch;
    for run in chunks {
        if run.durable || synced.is_ok() {
            publish(shared, run);
        } else if let Err(e) = &synced {
            fail(&mut results[..run.appends.end], run.appends.start, e);
        }
    }
    for (reply, result) in replies.into_iter().zip(results) {
        if result.is_ok() {
            shared.counters.appends.fetch_add(1, Ordering::Relaxed);
        }
        let _ = reply.send(result);
    }
    synced
}

/// Fails every batch still in flight (after a failed fsync, nothing after it can be trusted).
async fn fail_in_flight(shared: &Shared, in_flight: &mut InFlight, e: &LogError) {
    while let Some((mut batch, _)) = in_flight.next().await {
        for run in batch.chunks.drain(..) {
            if run.durable {
                publish(shared, run);
            } else {
                fail(&mut batch.results[..run.appends.end], run.appends.start, e);
            }
        }
        for (reply, result) in batch.replies.into_iter().zip(batch.results) {
            let _ = reply.send(result);
        }
    }
}

/// Completes the oldest batch in flight (`done`). After a failed fsync, fails every other
/// batch in flight and undoes what was not published. Gives the state back (`None`: lost).
async fn settle(
    shared: &Shared,
    in_flight: &mut InFlight,
    state: WriterState,
    done: Synced,
) -> Option<WriterState> {
    let (batch, synced) = done;
    match complete(shared, batch, synced) {
        Ok(()) => Some(state),
        Err(e) => {
            fail_in_flight(shared, in_flight, &e).await;
            blocking(state, move |s| s.undo_unpublished(&e)).await.map(|(s, ())| s)
        }
    }
}

/// The writer task. Ends when every sender is gone (the log was dropped), on `Close`, or when
/// the files can no longer be trusted; then it closes the queue so nobody waits on it.
pub(crate) async fn run(
    state: WriterState,
    mut rx: mpsc::UnboundedReceiver<Command>,
    permits: Arc<Semaphore>,
) {
    let shared = Arc::clone(&state.shared);
    let fsync = state.durability() == Durability::Fsync;
    let interval = match state.durability() {
        Durability::Interval(d) => Some(d),
        _ => None,
    };
    let mut state = Some(state);
    let mut in_flight: InFlight = FuturesOrdered::new();
    let mut sync_at: Option<Instant> = None;
    let mut close_reply: Option<oneshot::Sender<Result<(), LogError>>> = None;
    let mut accepting = true;
    while let Some(s) = state.take() {
        if s.failed || !accepting && in_flight.is_empty() {
            state = Some(s);
            break;
        }
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                state = settle(&shared, &mut in_flight, s, done).await;
            }
            () = sleep_until(sync_at), if sync_at.is_some() => {
                sync_at = None;
                state = blocking(s, |s| {
                    let _ = s.sync(); // a failure sets `failed`
                })
                .await
                .map(|(s, ())| s);
            }
            cmd = rx.recv(), if accepting && in_flight.len() < MAX_SYNCS_IN_FLIGHT => {
                let Some(first) = cmd else {
                    accepting = false;
                    state = Some(s);
                    continue;
                };
                // Everything queued now joins this batch.
                let mut appends = Vec::new();
                let mut bytes = 0u64;
                let mut next = Some(first);
                while let Some(cmd) = next.take() {
                    match cmd {
                        Command::Append(p) => {
                            bytes += p.bytes;
                            appends.push(p);
                        }
                        Command::Close(reply) => {
                            close_reply = Some(reply);
                            accepting = false;
                            break;
                        }
                    }
                    if bytes < MAX_BATCH_BYTES {
                        next = rx.try_recv().ok();
                    }
                }
                state = write(&shared, &mut in_flight, s, appends, bytes, fsync).await;
                if let Some(s) = &state
                    && s.dirty
                    && sync_at.is_none()
                    && let Some(d) = interval
                {
                    sync_at = Some(Instant::now() + d);
                }
            }
            else => {
                // Unreachable by the conditions above (nothing in flight and not accepting
                // ends the loop first); stop rather than spin.
                state = Some(s);
                break;
            }
        }
    }
    if state.as_ref().is_none_or(|s| s.failed) {
        fail_in_flight(&shared, &mut in_flight, &LogError::Closed).await;
    }
    stop(&mut rx, &permits, state, close_reply).await;
}

/// Writes one batch and puts it in flight (with its fsync job under `Fsync`).
async fn write(
    shared: &Shared,
    in_flight: &mut InFlight,
    mut s: WriterState,
    appends: Vec<Pending>,
    bytes: u64,
    fsync: bool,
) -> Option<WriterState> {
    if appends.is_empty() {
        return Some(s);
    }
    if s.may_roll(bytes) {
        // A seal must not race the fsyncs of the segment it seals.
        while let Some(done) = in_flight.next().await {
            s = settle(shared, in_flight, s, done).await?;
        }
        if s.failed {
            return Some(s);
        }
    }
    let mut replies = Vec::with_capacity(appends.len());
    let mut work = Vec::with_capacity(appends.len());
    let mut held = Vec::with_capacity(appends.len());
    for p in appends {
        replies.push(p.reply);
        work.push((p.records, p.bytes));
        held.push(p._permit);
    }
    let (mut s, (chunks, results)) = blocking(s, move |s| s.write_batch(&work)).await?;
    // Written: the queue budget is free again.
    drop(held);
    let job = (fsync && chunks.iter().any(|c| !c.durable)).then(|| {
        s.count_fsync();
        let segment = Arc::clone(&s.active);
        #[cfg(test)]
        let inject =
            shared.fail_syncs.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        tokio::task::spawn_blocking(move || {
            #[cfg(test)]
            if inject {
                return Err(io::Error::other("injected fsync failure"));
            }
            segment.file.sync_data()
        })
    });
    if !fsync && !chunks.is_empty() {
        s.dirty = true;
    }
    in_flight.push_back(Box::pin(synced(Batch { chunks, results, replies }, job)));
    Some(s)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stops taking appends, makes what was published durable, answers `close()`.
async fn stop(
    rx: &mut mpsc::UnboundedReceiver<Command>,
    permits: &Semaphore,
    state: Option<WriterState>,
    close_reply: Option<oneshot::Sender<Result<(), LogError>>>,
) {
    permits.close();
    rx.close();
    let result = match state {
        Some(s) if !s.failed => match blocking(s, WriterState::finish).await {
            Some((_, result)) => result,
            None => Err(LogError::Closed),
        },
        _ => Err(LogError::Closed),
    };
    if let Err(e) = &result {
        tracing::warn!(error = %e, "log writer stopped");
    }
    // Appends queued behind a Close are refused: dropping their reply senders says Closed.
    let mut close_reply = close_reply;
    while let Ok(cmd) = rx.try_recv() {
        if let Command::Close(reply) = cmd {
            match close_reply {
                None => close_reply = Some(reply),
                Some(_) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }
    if let Some(reply) = close_reply {
        let _ = reply.send(result);
    }
}
