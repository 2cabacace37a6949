//! One segment: a `.log` file of frames starting at `base`, its sparse in-memory index, and
//! the `.index` file written when the segment is sealed.
//!
//! The index maps a record offset to the file position of its frame, one entry per
//! [`INDEX_INTERVAL`] bytes of log, so a read seeks to at most that many bytes before its
//! first record. In memory an entry is 8 bytes (offset relative to `base`, position): about
//! 2 MiB per GiB of log. The active segment's index lives only in memory (recovery rebuilds it
//! by scanning the segment anyway); sealing writes it to `.index` with a trailer that ties it
//! to the exact length of its `.log`, so a stale or damaged index is detected and rebuilt.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use super::record::{self, FRAME_HEADER, Frame};

/// Bytes of log between two index entries.
pub(crate) const INDEX_INTERVAL: u64 = 4096;
/// How much of a segment recovery reads at a time.
const SCAN_CHUNK: usize = 1024 * 1024;
const INDEX_MAGIC: &[u8; 8] = b"SUMIDX01";
/// `next_offset u64 | log_len u64 | max_timestamp u64 | entries u64 | crc32c u32`.
const INDEX_TRAILER: usize = 8 * 4 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Offset minus the segment's base.
    pub rel: u32,
    /// File position of that record's frame.
    pub pos: u32,
}

/// A segment as readers and the writer share it. Only the writer mutates it, and only the
/// active segment; readers read up to `committed_len`.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    pub file: File,
    pub index: RwLock<Vec<IndexEntry>>,
    /// Bytes of whole, committed frames. Positions below it never change.
    pub committed_len: AtomicU64,
    /// Offset after the last committed record of this segment.
    pub next_offset: AtomicU64,
    /// Newest record timestamp, for retention by age.
    pub max_timestamp: AtomicU64,
}

pub(crate) fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub(crate) fn index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("index")
}

/// The base offset a segment file name stands for (`00000000000000000042.log` → 42).
pub(crate) fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What scanning a segment found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    pub index: Vec<IndexEntry>,
    /// Length of the valid prefix: whole frames with good checksums and consecutive offsets.
    pub valid_len: u64,
    pub next_offset: u64,
    pub max_timestamp: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub damage: Option<&'static str>,
}

impl Segment {
    /// Opens (or creates, empty) the segment starting at `base` in `dir`.
    pub fn open(dir: &Path, base: u64, create: bool) -> io::Result<Self> {
        let path = dir.join(log_name(base));
        let file = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(&path)?;
        Ok(Self {
            base,
            path,
            file,
            index: RwLock::new(Vec::new()),
            committed_len: AtomicU64::new(0),
            next_offset: AtomicU64::new(base),
            max_timestamp: AtomicU64::new(0),
        })
    }

    pub fn index_path(&self) -> PathBuf {
        index_path(&self.path)
    }

    pub fn committed_len(&self) -> u64 {
        self.committed_len.load(Ordering::Acquire)
    }

    /// Installs what a scan or an index file said about this segment.
    pub fn install(&self, index: Vec<IndexEntry>, len: u64, next_offset: u64, max_timestamp: u64) {
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = index;
        self.next_offset.store(next_offset, Ordering::Release);
        self.max_timestamp.store(max_timestamp, Ordering::Release);
        self.committed_len.store(len, Ordering::Release);
    }

    /// Position of the last indexed record at or before `offset` (0 if none).
    pub fn lookup(&self, offset: u64) -> (u64, u64) {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let rel = offset.saturating_sub(self.base);
        let at = index.partition_point(|e| u64::from(e.rel) <= rel);
        match at.checked_sub(1).and_then(|i| index.get(i)) {
            Some(e) => (self.base + u64::from(e.rel), u64::from(e.pos)),
            None => (self.base, 0),
        }
    }

    /// The first indexed offset strictly after `offset`, if any (a place to resume past
    /// damage).
    pub fn indexed_after(&self, offset: u64) -> Option<u64> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let rel = offset.saturating_sub(self.base);
        let at = index.partition_point(|e| u64::from(e.rel) <= rel);
        index.get(at).map(|e| self.base + u64::from(e.rel))
    }

    /// Reads every frame from the start, verifying checksums and that offsets run from
    /// `base` without a gap, and builds the index. Stops at the first damage.
    pub fn scan(&self) -> io::Result<Scan> {
        let file_len = self.file.metadata()?.len();
        let mut scan =
            Scan { index: Vec::new(), valid_len: 0, next_offset: self.base, max_timestamp: 0, damage: None };
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_pos = 0u64; // file position of buf[0]
        let mut last_indexed = 0u64;
        loop {
            let at = usize::try_from(scan.valid_len - buf_pos).unwrap_or(usize::MAX);
            match record::check(buf.get(at..).unwrap_or_default()) {
                Frame::Valid { len, offset, timestamp_ms } => {
                    if offset != scan.next_offset {
                        scan.damage = Some("offset out of sequence");
                        break;
                    }
                    if scan.valid_len > 0 && scan.valid_len - last_indexed >= INDEX_INTERVAL {
                        match index_entry(self.base, offset, scan.valid_len) {
                            Some(entry) => scan.index.push(entry),
                            None => {
                                scan.damage = Some("segment larger than 4 GiB");
                                break;
                            }
                        }
                        last_indexed = scan.valid_len;
                    }
                    scan.valid_len += len as u64;
                    scan.next_offset += 1;
                    scan.max_timestamp = scan.max_timestamp.max(timestamp_ms);
                }
                Frame::Corrupt(why) => {
                    scan.damage = Some(why);
                    break;
                }
                Frame::Incomplete { need } => {
                    let left = file_len - scan.valid_len;
                    if left == 0 {
                        break;
                    }
                    if (need as u64) > left {
                        scan.damage =
                            Some(if left < FRAME_HEADER as u64 { "torn frame header" } else { "torn frame" });
                        break;
                    }
                    // Refill from the start of this frame with at least `need` bytes.
                    let want = need.max(SCAN_CHUNK).min(usize::try_from(left).unwrap_or(usize::MAX));
                    buf.resize(want, 0);
                    self.file.read_exact_at(&mut buf, scan.valid_len)?;
                    buf_pos = scan.valid_len;
                }
            }
        }
        Ok(scan)
    }

    /// Writes the in-memory index to `.index` (via a temporary file and a rename, fsynced),
    /// tied to the current committed length. The caller fsyncs the directory.
    pub fn write_index(&self) -> io::Result<()> {
        let entries = self.index.read().unwrap_or_else(PoisonError::into_inner).clone();
        let mut buf = Vec::with_capacity(INDEX_MAGIC.len() + entries.len() * 8 + INDEX_TRAILER);
        buf.extend_from_slice(INDEX_MAGIC);
        for e in &entries {
            buf.extend_from_slice(&e.rel.to_le_bytes());
            buf.extend_from_slice(&e.pos.to_le_bytes());
        }
        buf.extend_from_slice(&self.next_offset.load(Ordering::Acquire).to_le_bytes());
        buf.extend_from_slice(&self.committed_len().to_le_bytes());
        buf.extend_from_slice(&self.max_timestamp.load(Ordering::Acquire).to_le_bytes());
        buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());

        let path = self.index_path();
        let tmp = path.with_extension("index.tmp");
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Loads `.index` if it is intact and describes exactly this `.log` (same length).
    /// `None` means: rebuild by scanning.
    pub fn load_index(&self) -> io::Result<Option<()>> {
        let bytes = match std::fs::read(self.index_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let log_len = self.file.metadata()?.len();
        Ok(parse_index(&bytes, self.base, log_len).map(|(entries, next, max_ts)| {
            self.install(entries, log_len, next, max_ts);
        }))
    }
}

fn index_entry(base: u64, offset: u64, pos: u64) -> Option<IndexEntry> {
    Some(IndexEntry { rel: u32::try_from(offset - base).ok()?, pos: u32::try_from(pos).ok()? })
}

/// Validates an index file: magic, checksum, shape, log length, and entries increasing and
/// inside the log. Returns the entries, the next offset and the newest timestamp.
fn parse_index(bytes: &[u8], base: u64, log_len: u64) -> Option<(Vec<IndexEntry>, u64, u64)> {
    let body_len = bytes.len().checked_sub(4)?;
    if bytes.len() < INDEX_MAGIC.len() + INDEX_TRAILER || &bytes[..INDEX_MAGIC.len()] != INDEX_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[body_len..].try_into().ok()?);
    if crc32c::crc32c(&bytes[..body_len]) != crc {
        return None;
    }
    let t = &bytes[bytes.len() - INDEX_TRAILER..];
    let u64_at = |i: usize| t.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
    let (next, len, max_ts, count) = (u64_at(0)?, u64_at(1)?, u64_at(2)?, u64_at(3)?);
    let entries_bytes = &bytes[INDEX_MAGIC.len()..bytes.len() - INDEX_TRAILER];
    if len != log_len || next < base || entries_bytes.len() as u64 != count.checked_mul(8)? {
        return None;
    }
    if (log_len > 0) != (next > base) {
        return None;
    }
    let mut entries = Vec::with_capacity(entries_bytes.len() / 8);
    let mut prev: Option<IndexEntry> = None;
    for chunk in entries_bytes.chunks_exact(8) {
        let e = IndexEntry {
            rel: u32::from_le_bytes(chunk[0..4].try_into().ok()?),
            pos: u32::from_le_bytes(chunk[4..8].try_into().ok()?),
        };
        let in_range = u64::from(e.pos) < log_len && base + u64::from(e.rel) < next;
        let increasing = prev.is_none_or(|p| e.rel > p.rel && e.pos > p.pos);
        if !in_range || !increasing || e.pos == 0 {
            return None;
        }
        entries.push(e);
        prev = Some(e);
    }
    Some((entries, next, max_ts))
}

/// Fsyncs a directory, so file creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Record;
    use bytes::Bytes;

    fn write_records(seg: &Segment, count: u64, value_len: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..count {
            let r = Record {
                timestamp_ms: 1000 + i,
                value: Bytes::from(vec![b'x'; value_len]),
                ..Record::default()
            };
            record::encode(&r, seg.base + i, &mut buf);
        }
        seg.file.write_all_at(&buf, 0).unwrap();
        buf
    }

    #[test]
    fn names_parse_only_twenty_digits() {
        assert_eq!(parse_name(&log_name(42), "log"), Some(42));
        assert_eq!(parse_name("00000000000000000042.index", "index"), Some(42));
        assert_eq!(parse_name("42.log", "log"), None);
        assert_eq!(parse_name("0000000000000000004x.log", "log"), None);
        assert_eq!(parse_name("00000000000000000042.log.tmp", "log"), None);
        assert_eq!(parse_name("99999999999999999999.log", "log"), None); // > u64::MAX
    }

    #[test]
    fn scan_builds_a_sparse_index_and_finds_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::open(dir.path(), 100, true).unwrap();
        let buf = write_records(&seg, 200, 1000);
        let scan = seg.scan().unwrap();
        assert_eq!(scan.valid_len, buf.len() as u64);
        assert_eq!(scan.next_offset, 300);
        assert_eq!(scan.max_timestamp, 1199);
        assert_eq!(scan.damage, None);
        // One entry per ~4 KiB: frames are 1035 bytes, so every 4th record.
        assert_eq!(scan.index.len(), (buf.len() - 1) / 4140);
        assert!(scan.index.windows(2).all(|w| w[1].pos - w[0].pos >= INDEX_INTERVAL as u32));
        seg.install(scan.index, scan.valid_len, scan.next_offset, scan.max_timestamp);
        let (off, pos) = seg.lookup(150);
        assert!(off <= 150 && 150 - off < 4);
        let Frame::Valid { offset, .. } = record::check(&buf[pos as usize..]) else { panic!() };
        assert_eq!(offset, off);
        assert_eq!(seg.lookup(100), (100, 0));
        assert_eq!(seg.lookup(5), (100, 0));
    }

    #[test]
    fn scan_stops_at_a_torn_tail_and_at_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::open(dir.path(), 0, true).unwrap();
        let buf = write_records(&seg, 10, 100);
        let frame = buf.len() / 10;
        // Torn: half of an 11th frame.
        seg.file.write_all_at(&buf[..frame / 2], buf.len() as u64).unwrap();
        let scan = seg.scan().unwrap();
        assert_eq!((scan.valid_len, scan.next_offset), (buf.len() as u64, 10));
        assert_eq!(scan.damage, Some("torn frame"));
        // Garbage in the 6th frame's body: the valid prefix is five frames.
        seg.file.write_all_at(b"garbage", (5 * frame + 20) as u64).unwrap();
        let scan = seg.scan().unwrap();
        assert_eq!((scan.valid_len, scan.next_offset), (5 * frame as u64, 5));
        assert_eq!(scan.damage, Some("checksum mismatch"));
    }

    #[test]
    fn scan_detects_an_offset_out_of_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::open(dir.path(), 0, true).unwrap();
        let buf = write_records(&seg, 3, 10);
        // A valid frame with the wrong offset (a stale frame from another place).
        let mut stray = Vec::new();
        record::encode(&Record::default(), 9, &mut stray);
        seg.file.write_all_at(&stray, buf.len() as u64).unwrap();
        let scan = seg.scan().unwrap();
        assert_eq!((scan.next_offset, scan.damage), (3, Some("offset out of sequence")));
    }

    #[test]
    fn index_file_round_trips_and_is_rejected_when_stale_or_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::open(dir.path(), 7, true).unwrap();
        write_records(&seg, 100, 500);
        let scan = seg.scan().unwrap();
        let expected = scan.index.clone();
        seg.install(scan.index, scan.valid_len, scan.next_offset, scan.max_timestamp);
        seg.write_index().unwrap();

        let fresh = Segment::open(dir.path(), 7, false).unwrap();
        assert_eq!(fresh.load_index().unwrap(), Some(()));
        assert_eq!(*fresh.index.read().unwrap(), expected);
        assert_eq!(fresh.next_offset.load(Ordering::Relaxed), 107);
        assert_eq!(fresh.max_timestamp.load(Ordering::Relaxed), 1099);

        // The log grew after the index was written: stale.
        fresh.file.write_all_at(b"x", scan.valid_len).unwrap();
        assert_eq!(Segment::open(dir.path(), 7, false).unwrap().load_index().unwrap(), None);
        fresh.file.set_len(scan.valid_len).unwrap();
        // A flipped byte in the index: rejected.
        let path = fresh.index_path();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Segment::open(dir.path(), 7, false).unwrap().load_index().unwrap(), None);
        // Truncated or empty: rejected, never a panic.
        for cut in [0, 3, 8, 20, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert_eq!(Segment::open(dir.path(), 7, false).unwrap().load_index().unwrap(), None);
        }
    }
}
