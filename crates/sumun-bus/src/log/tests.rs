//! Tests of the whole log through its public API, plus file surgery to fake crashes and rot.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn cfg(dir: &Path) -> LogConfig {
    LogConfig::new(dir)
}

/// A record whose frame is `len + 60` bytes (offsets below 10^6).
fn rec(i: u64, len: usize) -> Record {
    Record {
        key: Some(Bytes::from(format!("key-{}", i % 7))),
        timestamp_ms: 1_000 + i,
        headers: vec![("ce-id".to_owned(), Bytes::from(format!("id-{i:06}")))],
        value: Bytes::from(vec![(i % 251) as u8; len]),
    }
}

fn part_dir(cfg: &LogConfig) -> PathBuf {
    cfg.dir.join("orders").join("0")
}

fn seg_path(cfg: &LogConfig, base: u64, ext: &str) -> PathBuf {
    part_dir(cfg).join(format!("{base:020}.{ext}"))
}

fn log_files(cfg: &LogConfig) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(part_dir(cfg))
        .unwrap()
        .filter_map(|e| segment::parse_name(e.unwrap().file_name().to_str()?, "log"))
        .collect();
    v.sort_unstable();
    v
}

async fn open(cfg: &LogConfig) -> Arc<PartitionLog> {
    PartitionLog::open(cfg, "orders", 0).await.unwrap()
}

async fn append_n(log: &PartitionLog, from: u64, n: u64, len: usize) {
    for i in from..from + n {
        assert_eq!(log.append(vec![rec(i, len)]).await.unwrap(), vec![i]);
    }
}

/// Reads everything from `from` to the end, in pieces of `max` records.
async fn read_all(log: &PartitionLog, from: u64, max: usize) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.end_offset() {
        let got = log.read(next, max, 1 << 20).await.unwrap();
        assert!(!got.is_empty(), "no progress at {next}");
        next = got.last().unwrap().offset + 1;
        out.extend(got);
    }
    out
}

fn assert_records(got: &[Stored], from: u64, len: usize) {
    for (i, s) in got.iter().enumerate() {
        assert_eq!(s.offset, from + i as u64);
        assert_eq!(s.record, rec(s.offset, len), "record at {}", s.offset);
    }
}

#[tokio::test]
async fn append_returns_consecutive_offsets_and_reads_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let log = open(&cfg).await;
    assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
    assert!(log.read(0, 10, 1 << 20).await.unwrap().is_empty());
    assert_eq!(log.append(vec![]).await.unwrap(), Vec::<u64>::new());
    assert_eq!(log.append(vec![rec(0, 10)]).await.unwrap(), vec![0]);
    assert_eq!(log.append((1..5).map(|i| rec(i, 10)).collect()).await.unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(log.end_offset(), 5);
    let got = log.read(0, 100, 1 << 20).await.unwrap();
    assert_eq!(got.len(), 5);
    assert_records(&got, 0, 10);
    assert_records(&log.read(3, 100, 1 << 20).await.unwrap(), 3, 10);
    assert!(log.read(5, 100, 1 << 20).await.unwrap().is_empty());
    assert!(log.read(500, 100, 1 << 20).await.unwrap().is_empty());
    assert_eq!(log.read(0, 2, 1 << 20).await.unwrap().len(), 2);
    assert!(log.read(0, 0, 1 << 20).await.unwrap().is_empty());
    // A record of no timestamp is stamped now.
    let off = log.append(vec![Record::default()]).await.unwrap()[0];
    let stamped = log.read(off, 1, 1 << 20).await.unwrap()[0].record.timestamp_ms;
    assert!(stamped > 1_600_000_000_000, "{stamped}");
}

#[tokio::test]
async fn max_bytes_bounds_a_read_but_always_returns_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&cfg(dir.path())).await;
    append_n(&log, 0, 10, 1000).await;
    // Frames are 1060 bytes.
    let got = log.read(0, 100, 3000).await.unwrap();
    assert_eq!(got.len(), 2);
    let got = log.read(4, 100, 1).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].offset, 4);
}

#[tokio::test]
async fn segments_roll_and_reads_cross_them_from_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    cfg.segment_bytes = 8192;
    let log = open(&cfg).await;
    append_n(&log, 0, 40, 1000).await;
    // 7 frames of 1060 bytes fit in 8 KiB: segments at 0, 7, 14, ...
    let bases = log_files(&cfg);
    assert_eq!(bases, vec![0, 7, 14, 21, 28, 35]);
    assert_eq!(log.stats().segments, 6);
    for &b in &bases[..bases.len() - 1] {
        assert!(seg_path(&cfg, b, "index").exists(), "sealed segment {b} has an index");
        assert!(std::fs::metadata(seg_path(&cfg, b, "log")).unwrap().len() <= 8192);
    }
    assert!(!seg_path(&cfg, 35, "index").exists());
    for from in [0, 5, 6, 7, 13, 20, 34, 35, 39] {
        let got = read_all(&log, from, 3).await;
        assert_eq!(got.len() as u64, 40 - from);
        assert_records(&got, from, 1000);
    }
    // One read spanning every segment.
    assert_records(&log.read(0, 1000, 1 << 20).await.unwrap(), 0, 1000);
    assert_eq!(log.read(0, 1000, 1 << 20).await.unwrap().len(), 40);

    // An append bigger than a segment gets one of its own.
    let big: Vec<Record> = (40..50).map(|i| rec(i, 1000)).collect();
    assert_eq!(log.append(big).await.unwrap(), (40..50).collect::<Vec<_>>());
    assert_eq!(*log_files(&cfg).last().unwrap(), 40);
    assert_records(&read_all(&log, 0, 7).await, 0, 1000);
}

#[tokio::test]
async fn reopen_keeps_every_record_and_continues_the_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    cfg.segment_bytes = 8192;
    let log = open(&cfg).await;
    append_n(&log, 0, 30, 1000).await;
    log.close().await.unwrap();
    assert!(matches!(log.append(vec![rec(30, 1)]).await, Err(LogError::Closed)));
    // Reads still work after close.
    assert_eq!(log.read(0, 100, 1 << 20).await.unwrap().len(), 30);
    drop(log);

    let log = open(&cfg).await;
    assert_eq!((log.start_offset(), log.end_offset()), (0, 30));
    append_n(&log, 30, 10, 1000).await;
    assert_records(&read_all(&log, 0, 100).await, 0, 1000);
}

#[tokio::test]
async fn a_second_open_of_the_same_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let log = open(&cfg).await;
    assert!(matches!(PartitionLog::open(&cfg, "orders", 0).await, Err(LogError::Locked(_))));
    // Other partitions and topics are independent.
    PartitionLog::open(&cfg, "orders", 1).await.unwrap();
    PartitionLog::open(&cfg, "invoices", 0).await.unwrap();
    log.close().await.unwrap();
    drop(log);
    // The lock goes with the writer: poll until it is released.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match PartitionLog::open(&cfg, "orders", 0).await {
            Ok(_) => break,
            Err(LogError::Locked(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn bad_topics_and_configurations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    for topic in ["", ".", "..", "a/b", "a\\b", "a\0b", &"x".repeat(256)] {
        assert!(
            matches!(PartitionLog::open(&cfg, topic, 0).await, Err(LogError::InvalidTopic(_))),
            "{topic:?}"
        );
    }
    let mut bad = cfg.clone();
    bad.segment_bytes = 100;
    assert!(matches!(PartitionLog::open(&bad, "t", 0).await, Err(LogError::InvalidConfig(_))));
    let mut bad = cfg.clone();
    bad.max_pending_bytes = u64::from(bad.max_record_bytes) - 1;
    assert!(matches!(PartitionLog::open(&bad, "t", 0).await, Err(LogError::InvalidConfig(_))));
    let mut bad = cfg.clone();
    bad.durability = Durability::Interval(Duration::ZERO);
    assert!(matches!(PartitionLog::open(&bad, "t", 0).await, Err(LogError::InvalidConfig(_))));
}

#[tokio::test]
async fn oversized_records_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    cfg.max_record_bytes = 1000;
    cfg.max_pending_bytes = 4000;
    let log = open(&cfg).await;
    let err = log.append(vec![rec(0, 10), rec(1, 2000)]).await.unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { max: 1000, .. }), "{err}");
    let err = log.append((0..5).map(|i| rec(i, 900)).collect()).await.unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { max: 4000, .. }), "{err}");
    assert_eq!(log.end_offset(), 0);
    assert_eq!(log.append(vec![rec(0, 10)]).await.unwrap(), vec![0]);
}

#[tokio::test]
async fn a_full_queue_answers_busy_without_queueing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    cfg.max_record_bytes = 2000;
    cfg.max_pending_bytes = 2000;
    cfg.max_pending_wait = Duration::ZERO;
    let log = open(&cfg).await;
    // The first append takes the whole budget until it is written; the second, polled right
    // after, finds no room and must not wait.
    let (a, b) = tokio::join!(log.append(vec![rec(0, 1900)]), log.append(vec![rec(1, 1900)]));
    assert_eq!(a.unwrap(), vec![0]);
    assert!(matches!(b, Err(LogError::Busy)), "{b:?}");
    assert_eq!(log.end_offset(), 1);
    // Room comes back once the batch is written.
    assert_eq!(log.append(vec![rec(1, 1900)]).await.unwrap(), vec![1]);
    assert_eq!(log.stats().pending_bytes, 0);
}

/// Appends `n` frames, then damages the file as `damage` says, reopens and returns the log.
async fn reopen_after(
    cfg: &LogConfig,
    n: u64,
    damage: impl FnOnce(&std::fs::File, u64),
) -> Arc<PartitionLog> {
    let log = open(cfg).await;
    append_n(&log, 0, n, 100).await;
    log.close().await.unwrap();
    let len = log.stats().bytes;
    drop(log);
    let path = seg_path(cfg, 0, "log");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    assert_eq!(file.metadata().unwrap().len(), len, "close cuts the preallocated zeros");
    damage(&file, len);
    drop(file);
    wait_open(cfg).await
}

async fn wait_open(cfg: &LogConfig) -> Arc<PartitionLog> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match PartitionLog::open(cfg, "orders", 0).await {
            Ok(log) => return log,
            Err(LogError::Locked(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn a_torn_tail_is_truncated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    // Half of a frame, as a crash in the middle of a write leaves it.
    let mut frame = Vec::new();
    record::encode(&rec(10, 100), 10, &mut frame);
    let mut good_len = 0;
    let log = reopen_after(&cfg, 10, |f, len| {
        good_len = len;
        f.write_all_at(&frame[..frame.len() / 2], len).unwrap();
    })
    .await;
    assert_eq!(log.end_offset(), 10);
    assert_eq!(std::fs::metadata(seg_path(&cfg, 0, "log")).unwrap().len(), good_len);
    assert_records(&read_all(&log, 0, 100).await, 0, 100);
    // Writing goes on where the good records end.
    assert_eq!(log.append(vec![rec(10, 100)]).await.unwrap(), vec![10]);
    assert_records(&read_all(&log, 0, 100).await, 0, 100);
}

#[tokio::test]
async fn garbage_and_zeroes_after_the_tail_are_truncated() {
    for tail in [vec![0u8; 4096], b"\xff\xff\xff\x7fjunkjunkjunk".to_vec(), vec![7u8; 3]] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let log = reopen_after(&cfg, 5, |f, len| f.write_all_at(&tail, len).unwrap()).await;
        assert_eq!(log.end_offset(), 5);
        assert_records(&read_all(&log, 0, 100).await, 0, 100);
        assert_eq!(log.append(vec![rec(5, 100)]).await.unwrap(), vec![5]);
    }
}

#[tokio::test]
async fn a_corrupt_record_in_the_last_segment_cuts_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    // Frames of 160 bytes: damage the value of the 7th (offset 6).
    let log = reopen_after(&cfg, 10, |f, _| f.write_all_at(b"rot", 6 * 160 + 100).unwrap()).await;
    assert_eq!(log.end_offset(), 6);
    assert_records(&read_all(&log, 0, 100).await, 0, 100);
}

#[tokio::test]
async fn an_empty_or_entirely_garbage_last_segment_recovers_to_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let log = reopen_after(&cfg, 3, |f, _| f.write_all_at(&[0xAB; 64], 0).unwrap()).await;
    assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
    assert_eq!(log.append(vec![rec(0, 100)]).await.unwrap(), vec![0]);
}

/// Fills segments 0.. with 40 records of 1000 bytes in 8 KiB segments and closes.
async fn sealed_segments(cfg: &mut LogConfig) {
    cfg.segment_bytes = 8192;
    let log = open(cfg).await;
    append_n(&log, 0, 40, 1000).await;
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_missing_or_damaged_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    sealed_segments(&mut cfg).await;
    let idx7 = seg_path(&cfg, 7, "index");
    let original = std::fs::read(&idx7).unwrap();
    std::fs::remove_file(&idx7).unwrap();
    let idx14 = seg_path(&cfg, 14, "index");
    std::fs::write(&idx14, b"SUMIDX01 not an index").unwrap();
    // Leftovers that open must clean: an interrupted index write, an orphan index.
    std::fs::write(part_dir(&cfg).join("00000000000000000021.index.tmp"), b"partial").unwrap();
    std::fs::write(seg_path(&cfg, 99, "index"), b"orphan").unwrap();
    std::fs::write(part_dir(&cfg).join("notes.txt"), b"stray").unwrap();

    let log = wait_open(&cfg).await;
    assert_eq!(std::fs::read(&idx7).unwrap(), original, "rebuilt index equals the one written at seal");
    assert!(std::fs::read(&idx14).unwrap().len() > 44);
    assert!(!part_dir(&cfg).join("00000000000000000021.index.tmp").exists());
    assert!(!seg_path(&cfg, 99, "index").exists());
    assert_eq!(log.end_offset(), 40);
    for from in [0, 8, 15, 16, 39] {
        assert_records(&read_all(&log, from, 2).await, from, 1000);
    }
}

#[tokio::test]
async fn a_corrupt_record_in_a_sealed_segment_is_reported_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    sealed_segments(&mut cfg).await;
    // Segment 7 holds offsets 7..14 in frames of 1060 bytes; rot inside offset 9's value.
    let path = seg_path(&cfg, 7, "log");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"bit rot", 2 * 1060 + 500).unwrap();
    drop(f);

    let log = wait_open(&cfg).await;
    assert_eq!(log.end_offset(), 40, "a sealed segment is never truncated");
    // A read up to the damage returns what precedes it, then the damage is the error.
    let got = log.read(0, 100, 1 << 20).await.unwrap();
    assert_records(&got, 0, 1000);
    assert_eq!(got.len(), 9);
    let err = log.read(9, 100, 1 << 20).await.unwrap_err();
    let LogError::Corrupt { offset, skip_to, position, path: p, .. } = err else { panic!("{err}") };
    assert_eq!((offset, position, p), (9, 2 * 1060, path));
    // The index (an entry every ~4 KiB: offset 11 at position 4240) lets us resume past it.
    assert_eq!(skip_to, 11);
    assert_records(&read_all(&log, skip_to, 100).await, 11, 1000);
    // Offset 10 sits between the damage and the next index point: unreachable, reported.
    assert!(matches!(log.read(10, 1, 1 << 20).await, Err(LogError::Corrupt { offset: 10, skip_to: 11, .. })));
}

#[tokio::test]
async fn retention_by_bytes_deletes_whole_old_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    sealed_segments(&mut cfg).await;
    cfg.retention_bytes = Some(3 * 7420 + 100);
    let log = wait_open(&cfg).await;
    let report = log.enforce_retention().await.unwrap();
    // 6 segments: five of 7 × 1060 bytes and the active one of 5 × 1060; keep ≤ 22,360.
    assert_eq!(report.segments_deleted, 3);
    assert_eq!(report.bytes_deleted, 3 * 7420);
    assert_eq!(report.start_offset, 21);
    assert_eq!(log.start_offset(), 21);
    assert_eq!(log_files(&cfg), vec![21, 28, 35]);
    assert!(!seg_path(&cfg, 0, "index").exists());
    // A read below the start begins at the start.
    assert_eq!(log.read(0, 1, 1 << 20).await.unwrap()[0].offset, 21);
    assert_records(&read_all(&log, 0, 100).await, 21, 1000);
    // Nothing more to delete: the rest is within the limit.
    assert_eq!(log.enforce_retention().await.unwrap().segments_deleted, 0);
    // Even a limit of 1 byte never deletes the active segment.
    drop(log);
    cfg.retention_bytes = Some(1);
    let log = wait_open(&cfg).await;
    assert_eq!(log.enforce_retention().await.unwrap().start_offset, 35);
    assert_eq!(log_files(&cfg), vec![35]);
    assert_eq!(log.stats().segments, 1);
    append_n(&log, 40, 3, 1000).await;
    // Reopen keeps the new start.
    drop(log);
    let log = wait_open(&cfg).await;
    assert_eq!((log.start_offset(), log.end_offset()), (35, 43));
}

#[tokio::test]
async fn retention_by_age_uses_the_newest_record_of_each_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    cfg.segment_bytes = 8192;
    let log = open(&cfg).await;
    let now = now_ms();
    // Segment 0: records an hour old; segment 7: ten minutes old; active: now.
    let at = |i: u64, ts: u64| Record { timestamp_ms: ts, ..rec(i, 1000) };
    for i in 0..7 {
        log.append(vec![at(i, now - 3_600_000)]).await.unwrap();
    }
    for i in 7..14 {
        log.append(vec![at(i, now - 600_000)]).await.unwrap();
    }
    log.append(vec![at(14, now)]).await.unwrap();
    drop(log);
    cfg.retention_age = Some(Duration::from_secs(1800));
    let log = wait_open(&cfg).await;
    let report = log.enforce_retention().await.unwrap();
    assert_eq!((report.segments_deleted, report.start_offset), (1, 7));
    drop(log);
    cfg.retention_age = Some(Duration::from_secs(60));
    let log = wait_open(&cfg).await;
    assert_eq!(log.enforce_retention().await.unwrap().start_offset, 14);
    assert_eq!(log.read(0, 10, 1 << 20).await.unwrap()[0].offset, 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_totally_ordered_and_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    cfg.segment_bytes = 64 * 1024;
    let log = open(&cfg).await;
    let tasks = 32u64;
    let per_task = 40u64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let log = Arc::clone(&log);
        handles.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for s in 0..per_task {
                // Some appends carry several records: they must stay adjacent.
                let n = 1 + (s % 3) as usize;
                let batch = (0..n)
                    .map(|k| Record { value: Bytes::from(format!("{t}:{s}:{k}")), ..Record::default() })
                    .collect();
                let got = log.append(batch).await.unwrap();
                assert_eq!(got.len(), n);
                assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "a batch's offsets are consecutive");
                offsets.push((s, got));
            }
            (t, offsets)
        }));
    }
    let mut by_offset = std::collections::BTreeMap::new();
    for h in handles {
        let (t, offsets) = h.await.unwrap();
        let mut last = None;
        for (s, got) in offsets {
            // Each task's appends got increasing offsets: it awaited each before the next.
            assert!(last.is_none_or(|l| got[0] > l));
            last = got.last().copied();
            for (k, off) in got.into_iter().enumerate() {
                assert!(by_offset.insert(off, format!("{t}:{s}:{k}")).is_none(), "offset {off} given twice");
            }
        }
    }
    let total = by_offset.len() as u64;
    assert_eq!(log.end_offset(), total);
    assert_eq!(by_offset.keys().copied().collect::<Vec<_>>(), (0..total).collect::<Vec<_>>(), "gap-free");
    let all = read_all(&log, 0, 500).await;
    assert_eq!(all.len() as u64, total);
    for s in all {
        assert_eq!(s.record.value, by_offset[&s.offset].as_bytes(), "offset {}", s.offset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs_among_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&cfg(dir.path())).await;
    let publishers = 64;
    let per = 20;
    let mut handles = Vec::new();
    for p in 0..publishers {
        let log = Arc::clone(&log);
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                log.append(vec![rec(p * 1000 + i, 1024)]).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.appends, publishers * per);
    assert_eq!(stats.records, publishers * per);
    let per_append = stats.fsyncs as f64 / stats.appends as f64;
    eprintln!(
        "group commit: {} appends, {} batches, {} fsyncs ({per_append:.3} fsyncs per append)",
        stats.appends, stats.batches, stats.fsyncs
    );
    // Every batch is one fsync; with 64 publishers most batches carry many appends.
    assert_eq!(stats.fsyncs, stats.batches);
    assert!(per_append < 0.5, "{per_append} fsyncs per append");
}

#[tokio::test]
async fn fsync_level_syncs_every_batch_and_none_level_never() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&cfg(dir.path())).await;
    append_n(&log, 0, 5, 10).await;
    assert_eq!(log.stats().fsyncs, 5, "one append at a time: one fsync each");

    let mut none = cfg(dir.path());
    none.durability = Durability::None;
    let log = PartitionLog::open(&none, "orders", 1).await.unwrap();
    append_n(&log, 0, 5, 10).await;
    assert_eq!(log.stats().fsyncs, 0);
    // Close makes it durable.
    log.close().await.unwrap();
    assert_eq!(log.stats().fsyncs, 1);
}

#[tokio::test]
async fn interval_level_fsyncs_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    cfg.durability = Durability::Interval(Duration::from_millis(200));
    let log = open(&cfg).await;
    let started = std::time::Instant::now();
    log.append((0..5).map(|i| rec(i, 10)).collect()).await.unwrap();
    log.append(vec![rec(5, 10)]).await.unwrap();
    assert_eq!(log.stats().fsyncs, 0, "appends returned before any fsync");
    let deadline = started + Duration::from_secs(5);
    while log.stats().fsyncs == 0 {
        assert!(std::time::Instant::now() < deadline, "no interval fsync");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(log.stats().fsyncs, 1, "one fsync covers all writes of the interval");
    // Idle: no more fsyncs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.stats().fsyncs, 1);
}

#[tokio::test]
async fn watch_follows_the_end_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&cfg(dir.path())).await;
    let mut rx = log.watch();
    assert_eq!(*rx.borrow(), 0);
    let waiter = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|&end| end >= 3))
            .await
            .unwrap()
            .map(|v| *v)
            .unwrap()
    });
    log.append((0..3).map(|i| rec(i, 5)).collect()).await.unwrap();
    assert_eq!(waiter.await.unwrap(), 3);
}

#[tokio::test]
async fn reads_run_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cfg(dir.path());
    cfg.segment_bytes = 16 * 1024;
    cfg.durability = Durability::None;
    let log = open(&cfg).await;
    let writer = {
        let log = Arc::clone(&log);
        tokio::spawn(async move { append_n(&log, 0, 300, 500).await })
    };
    // A tailing reader sees every record exactly once, in order, as it is committed.
    let mut next = 0;
    let mut rx = log.watch();
    while next < 300 {
        let got = log.read(next, 7, 1 << 20).await.unwrap();
        if got.is_empty() {
            tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
            continue;
        }
        assert_records(&got, next, 500);
        next += got.len() as u64;
    }
    writer.await.unwrap();
}

/// Mounts a 1 MiB tmpfs for a real ENOSPC; root only (the sandbox and CI run as root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a writer task still finishing must not leave the mount behind.
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn disk_full_fails_the_append_leaves_nothing_half_written_and_recovers() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    // Small segments: the failing write is the first in a fresh segment. Large: it lands in
    // the middle of a segment that already holds acknowledged records.
    for segment_bytes in [64 * 1024, 4 * 1024 * 1024] {
        let Some(fs) = Tmpfs::mount() else {
            assert!(!is_root, "running as root but could not mount a tmpfs");
            eprintln!("skipping: not root, cannot mount a small tmpfs");
            return;
        };
        let mut cfg = cfg(fs.0.path());
        cfg.segment_bytes = segment_bytes;
        // Space to give back later.
        let filler = fs.0.path().join("filler");
        std::fs::write(&filler, vec![0u8; 256 * 1024]).unwrap();
        let log = open(&cfg).await;
        let mut acked = Vec::new();
        let mut full = false;
        for i in 0..100u64 {
            match log.append(vec![rec(i, 40 * 1024)]).await {
                Ok(offsets) => acked.extend(offsets),
                Err(LogError::DiskFull) => {
                    full = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full, "the tmpfs never filled up");
        assert!(acked.len() > 5);
        let n = acked.len() as u64;
        assert_eq!(acked, (0..n).collect::<Vec<_>>());
        // Nothing of the failed append is visible or left in the files.
        assert_eq!(log.end_offset(), n);
        assert_records(&read_all(&log, 0, 10).await, 0, 40 * 1024);
        let on_disk: u64 =
            log_files(&cfg).iter().map(|&b| std::fs::metadata(seg_path(&cfg, b, "log")).unwrap().len()).sum();
        assert_eq!(
            on_disk,
            log.stats().bytes,
            "segment {segment_bytes}: files hold exactly the committed records"
        );
        assert!(matches!(log.append(vec![rec(n, 40 * 1024)]).await, Err(LogError::DiskFull)));
        // Space returns: the same log takes appends again, offsets go on without a gap.
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(log.append(vec![rec(n, 40 * 1024)]).await.unwrap(), vec![n]);
        assert_records(&read_all(&log, 0, 10).await, 0, 40 * 1024);
        log.close().await.unwrap();
        drop(log);
        let log = wait_open(&cfg).await;
        assert_eq!(log.end_offset(), n + 1);
        assert_records(&read_all(&log, 0, 10).await, 0, 40 * 1024);
        log.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_under_concurrent_appends_keeps_acknowledged_records_gap_free() {
    let Some(fs) = Tmpfs::mount() else {
        eprintln!("skipping: cannot mount a small tmpfs (not root)");
        return;
    };
    let cfg = cfg(fs.0.path());
    let filler = fs.0.path().join("filler");
    std::fs::write(&filler, vec![0u8; 128 * 1024]).unwrap();
    let log = open(&cfg).await;
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..1000u64 {
                match log.append(vec![rec(t * 10_000 + i, 8 * 1024)]).await {
                    Ok(o) => acked.push((o[0], t * 10_000 + i)),
                    Err(LogError::DiskFull) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            acked
        }));
    }
    let mut acked = std::collections::BTreeMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let n = acked.len() as u64;
    assert!(n > 20, "{n}");
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "acknowledged offsets gap-free"
    );
    assert_eq!(log.end_offset(), n, "nothing unacknowledged became visible");
    let all = read_all(&log, 0, 50).await;
    for s in &all {
        assert_eq!(s.record, rec(acked[&s.offset], 8 * 1024));
    }
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(log.append(vec![rec(1, 8 * 1024)]).await.unwrap(), vec![n]);
    log.close().await.unwrap();
    drop(log);
    let log = wait_open(&cfg).await;
    assert_eq!(log.end_offset(), n + 1);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_fails_its_batch_and_those_after_it_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let log = open(&cfg).await;
    append_n(&log, 0, 5, 100).await;
    log.shared.fail_syncs.store(1, std::sync::atomic::Ordering::Release);
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..10u64 {
                let id = 1000 + t * 100 + i;
                match log.append(vec![rec(id, 100)]).await {
                    Ok(o) => out.push(Ok((o[0], id))),
                    Err(LogError::Io(e)) => out.push(Err(e.to_string())),
                    Err(e) => panic!("{e}"),
                }
            }
            out
        }));
    }
    let mut acked = std::collections::BTreeMap::new();
    let mut failed = 0;
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok((offset, id)) => assert!(acked.insert(offset, id).is_none()),
                Err(e) => {
                    assert!(e.contains("injected"), "{e}");
                    failed += 1;
                }
            }
        }
    }
    eprintln!("injected fsync failure: {failed} appends failed, {} acknowledged", acked.len());
    assert!(failed > 0, "the injected failure reached no append");
    let n = 5 + acked.len() as u64;
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (5..n).collect::<Vec<_>>(),
        "gap-free after the failure"
    );
    assert_eq!(log.end_offset(), n);
    assert_records(&log.read(0, 5, 1 << 20).await.unwrap(), 0, 100);
    for s in read_all(&log, 5, 64).await {
        assert_eq!(s.record, rec(acked[&s.offset], 100));
    }
    log.close().await.unwrap();
    let committed = log.stats().bytes;
    assert_eq!(
        std::fs::metadata(seg_path(&cfg, 0, "log")).unwrap().len(),
        committed,
        "nothing of the failed batches left"
    );
    drop(log);
    assert_eq!(wait_open(&cfg).await.end_offset(), n);
}

#[tokio::test]
async fn offsets_are_never_reused_after_reopen_even_with_tail_damage() {
    // What the crash test checks at scale, in miniature: acknowledged offsets keep their
    // records across reopen, and new offsets continue after them.
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let mut seen = HashSet::new();
    for round in 0..5u64 {
        let log = wait_open(&cfg).await;
        let from = log.end_offset();
        assert_eq!(from, round * 4);
        append_n(&log, from, 4, 64).await;
        assert!(seen.insert(from));
        drop(log);
        // A torn header at the end each time.
        let f = std::fs::OpenOptions::new().write(true).open(seg_path(&cfg, 0, "log")).unwrap();
        let len = f.metadata().unwrap().len();
        f.write_all_at(&[9, 0, 0], len).unwrap();
    }
    let log = wait_open(&cfg).await;
    assert_records(&read_all(&log, 0, 3).await, 0, 64);
}

#[tokio::test]
async fn the_preallocated_zero_tail_is_never_read_and_recovery_drops_it_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let log = open(&cfg).await;
    append_n(&log, 0, 10, 100).await;
    let committed = log.stats().bytes;
    let path = seg_path(&cfg, 0, "log");
    // While open, the segment is zero-filled ahead of its records.
    let live = std::fs::read(&path).unwrap();
    assert_eq!(live.len() as u64, writer::PREALLOC_STEP);
    assert!(live[committed as usize..].iter().all(|&b| b == 0));
    assert_records(&read_all(&log, 0, 100).await, 0, 100);
    // A crash leaves that tail on disk: a copy of the files taken now is what recovery sees.
    let copy = tempfile::tempdir().unwrap();
    let copy_cfg = LogConfig::new(copy.path());
    std::fs::create_dir_all(part_dir(&copy_cfg)).unwrap();
    std::fs::write(seg_path(&copy_cfg, 0, "log"), &live).unwrap();
    let recovered = open(&copy_cfg).await;
    assert_eq!(recovered.end_offset(), 10);
    assert_eq!(std::fs::metadata(seg_path(&copy_cfg, 0, "log")).unwrap().len(), committed);
    assert_eq!(recovered.append(vec![rec(10, 100)]).await.unwrap(), vec![10]);
    assert_records(&read_all(&recovered, 0, 100).await, 0, 100);
}

#[tokio::test]
async fn random_damage_to_any_file_never_panics_and_reads_stay_consistent() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg(dir.path());
        cfg.segment_bytes = 4096;
        let log = open(&cfg).await;
        append_n(&log, 0, 30, rng.usize(0..600)).await;
        log.close().await.unwrap();
        drop(log);
        // Damage: flip bytes, cut, or append junk, in logs and indexes alike.
        let files: Vec<PathBuf> = std::fs::read_dir(part_dir(&cfg))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log" || e == "index"))
            .collect();
        for _ in 0..rng.usize(1..4) {
            let path = &files[rng.usize(..files.len())];
            let mut bytes = std::fs::read(path).unwrap();
            match rng.u8(0..3) {
                0 if !bytes.is_empty() => {
                    for _ in 0..rng.usize(1..8) {
                        let i = rng.usize(..bytes.len());
                        bytes[i] = rng.u8(..);
                    }
                }
                1 => bytes.truncate(rng.usize(..=bytes.len())),
                _ => bytes.extend((0..rng.usize(1..300)).map(|_| rng.u8(..))),
            }
            std::fs::write(path, bytes).unwrap();
        }
        let log = wait_open(&cfg).await;
        let (start, end) = (log.start_offset(), log.end_offset());
        assert!(start <= end && end <= 30, "round {round}: {start}..{end}");
        // Every offset reads as its record or as damage; nothing else.
        let mut next = start;
        while next < end {
            match log.read(next, 7, 1 << 20).await {
                Ok(got) => {
                    assert!(!got.is_empty(), "round {round}: no progress at {next}");
                    for s in &got {
                        assert_eq!(s.offset, next, "round {round}");
                        assert_eq!(s.record.headers, rec(next, 0).headers, "round {round}: record {next}");
                        next += 1;
                    }
                }
                Err(LogError::Corrupt { offset, skip_to, .. }) => {
                    assert!(offset >= next && skip_to > offset, "round {round}: {offset} -> {skip_to}");
                    next = skip_to;
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        // And the log takes appends again.
        assert_eq!(log.append(vec![rec(end, 10)]).await.unwrap(), vec![end]);
        log.close().await.unwrap();
    }
}
