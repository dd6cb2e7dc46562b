//! Damage to real segment files: what open does about it, and that the
//! error names the file, the offset and the LSN.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tc_wal::format::SEGMENT_HEADER_BYTES;
use tc_wal::{Backend, Lsn, Record, Wal, WalError};

/// Writes `count` records one at a time (one write each) and returns them.
fn write_records(dir: &Path, count: u64) -> Vec<Record> {
    let wal = Wal::open(dir, common::small_config(Backend::Portable)).expect("open");
    for i in 0..count {
        wal.append(1, common::payload(i, 200)).expect("append");
    }
    common::read_all(&wal)
}

/// The first LSN of a segment, from its file name.
fn first_lsn_of(path: &Path) -> Lsn {
    let stem = path.file_stem().expect("stem").to_str().expect("utf8");
    Lsn(u64::from_str_radix(stem, 16).expect("hex"))
}

fn segment_of(dir: &Path, lsn: Lsn) -> (PathBuf, u64) {
    for path in common::segment_files(dir).into_iter().rev() {
        let first = first_lsn_of(&path).0;
        if first <= lsn.0 {
            return (path, SEGMENT_HEADER_BYTES as u64 + lsn.0 - first);
        }
    }
    panic!("no segment holds {lsn}");
}

/// `text` names the file, the offset and the LSN of the damage.
fn assert_names_place(text: &str, path: &Path, offset: u64, lsn: Lsn) {
    let name = path.file_name().expect("name").to_string_lossy();
    assert!(text.contains(&*name), "names the file: {text}");
    assert!(
        text.contains(&format!("offset {offset}")),
        "names the offset: {text}"
    );
    assert!(text.contains(&lsn.to_string()), "names the lsn: {text}");
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).expect("read");
    file.write_all_at(&[byte[0] ^ 0x20], offset).expect("write");
}

#[test]
fn a_flipped_byte_mid_segment_refuses_open_naming_file_offset_and_lsn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = write_records(dir.path(), 40);
    let victim = &records[10];
    let (path, offset) = segment_of(dir.path(), victim.lsn);
    flip_byte(&path, offset + 30);
    let err = Wal::open(dir.path(), common::small_config(Backend::Portable))
        .err()
        .expect("open must refuse a corrupt log");
    let text = err.to_string();
    assert!(matches!(err, WalError::Corrupt { .. }), "{text}");
    assert_names_place(&text, &path, offset, victim.lsn);
    // Refusing changed nothing: undoing the flip makes the log whole again.
    flip_byte(&path, offset + 30);
    let wal = Wal::open(dir.path(), common::small_config(Backend::Portable)).expect("open");
    assert_eq!(common::read_all(&wal), records);
}

#[test]
fn a_flipped_byte_in_an_older_segment_refuses_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = write_records(dir.path(), 800);
    assert!(common::segment_files(dir.path()).len() >= 3);
    let (path, offset) = segment_of(dir.path(), records[5].lsn);
    assert_eq!(path, common::segment_files(dir.path())[0]);
    flip_byte(&path, offset + 3);
    let err = Wal::open(dir.path(), common::small_config(Backend::Portable))
        .err()
        .expect("refused");
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(err.to_string().contains(&name), "{err}");
}

#[test]
fn a_flipped_byte_in_a_segment_header_refuses_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_records(dir.path(), 10);
    let path = common::segment_files(dir.path())[0].clone();
    flip_byte(&path, 12);
    let err = Wal::open(dir.path(), common::small_config(Backend::Portable))
        .err()
        .expect("refused");
    assert!(matches!(err, WalError::BadHeader { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_missing_middle_segment_is_a_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_records(dir.path(), 800);
    let segments = common::segment_files(dir.path());
    assert!(segments.len() >= 3);
    std::fs::remove_file(&segments[1]).expect("remove");
    let err = Wal::open(dir.path(), common::small_config(Backend::Portable))
        .err()
        .expect("refused");
    assert!(matches!(err, WalError::Gap { .. }), "{err}");
}

#[test]
fn the_last_record_cut_in_half_is_truncated_and_the_log_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = write_records(dir.path(), 25);
    let last = records.last().expect("records");
    let (path, offset) = segment_of(dir.path(), last.lsn);
    let half = (last.end_lsn().0 - last.lsn.0) / 2;
    // A torn write: the second half of the record never reached the disk.
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(&vec![0u8; half as usize], offset + half)
        .expect("zero");
    drop(file);
    let wal = Wal::open(dir.path(), common::small_config(Backend::Portable)).expect("open");
    let torn = wal
        .recovery_report()
        .torn_tail
        .clone()
        .expect("torn tail reported");
    assert_eq!(torn.lsn, last.lsn);
    assert_eq!(torn.path, path);
    assert_eq!(torn.offset, offset);
    assert_eq!(common::read_all(&wal), records[..24]);
    // The log carries on from the cut, and the new record survives reopen.
    let lsn = wal.append(2, &b"after the cut"[..]).expect("append");
    assert_eq!(lsn, last.lsn);
    drop(wal);
    let wal = Wal::open(dir.path(), common::small_config(Backend::Portable)).expect("reopen");
    let after = common::read_all(&wal);
    assert_eq!(after.len(), 25);
    assert_eq!(&after[24].payload[..], b"after the cut");
    assert!(wal.recovery_report().torn_tail.is_none());
}

#[test]
fn a_segment_file_cut_short_is_a_torn_tail_and_is_extended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = write_records(dir.path(), 5);
    let (path, offset) = segment_of(dir.path(), records[4].lsn);
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(offset + 10).expect("truncate");
    drop(file);
    let config = common::small_config(Backend::Portable);
    let wal = Wal::open(dir.path(), config.clone()).expect("open");
    assert_eq!(common::read_all(&wal), records[..4]);
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        config.segment_bytes
    );
    wal.append(1, &b"again"[..]).expect("append");
}

/// Reads every record from `from` until the reader has caught up or fails.
fn read_from(wal: &Wal, from: Lsn) -> Result<Vec<Record>, WalError> {
    let mut reader = wal.reader(from)?;
    let mut records = Vec::new();
    while let Some(record) = reader.try_next()? {
        records.push(record);
    }
    Ok(records)
}

/// `open_to_read_from` leaves the segments from that LSN on (but the last)
/// to the caller's reader: damage there does not stop the open, but the
/// reader refuses at the damaged record with the error recovery gives,
/// after returning every record before it. Damage before that LSN, or in
/// the last segment, is still refused at open.
#[test]
fn damage_left_to_the_reader_is_refused_by_the_reader_naming_file_offset_and_lsn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = write_records(dir.path(), 1200);
    let segments = common::segment_files(dir.path());
    assert!(segments.len() >= 4, "{segments:?}");
    // Read from the start of the second segment; damage the third.
    let read_from_lsn = first_lsn_of(&segments[1]);
    let third = first_lsn_of(&segments[2]);
    let victim_index = records
        .iter()
        .position(|r| r.lsn > third)
        .expect("records in the third segment")
        + 2;
    let victim = &records[victim_index];
    let (path, offset) = segment_of(dir.path(), victim.lsn);
    assert_eq!(path, segments[2]);
    flip_byte(&path, offset + 30);

    let config = || common::small_config(Backend::Portable);
    let refused = Wal::open(dir.path(), config())
        .err()
        .expect("open reads it all");
    assert!(matches!(refused, WalError::Corrupt { .. }), "{refused}");

    let wal = Wal::open_to_read_from(dir.path(), config(), read_from_lsn).expect("open");
    assert_eq!(
        wal.recovery_report().segments_left_to_reader,
        segments.len() - 2
    );
    let mut reader = wal.reader(read_from_lsn).expect("reader");
    let mut before = Vec::new();
    let err = loop {
        match reader.try_next() {
            Ok(Some(record)) => before.push(record),
            Ok(None) => panic!("the reader went past the damage"),
            Err(err) => break err,
        }
    };
    let expected: Vec<_> = records
        .iter()
        .filter(|r| r.lsn >= read_from_lsn && r.lsn < victim.lsn)
        .cloned()
        .collect();
    assert_eq!(before, expected, "every record before the damage, in order");
    let text = err.to_string();
    assert!(
        matches!(err, WalError::DamagedBeforeNextSegment { .. }),
        "{text}"
    );
    assert_names_place(&text, &path, offset, victim.lsn);
    drop(wal);

    // Reading from a later segment, the damaged one comes before the read
    // start: the open reads it, and refuses.
    let refused = Wal::open_to_read_from(dir.path(), config(), first_lsn_of(&segments[3]))
        .err()
        .expect("the damaged segment is before the read start");
    assert!(matches!(refused, WalError::Corrupt { .. }), "{refused}");
    assert_names_place(&refused.to_string(), &path, offset, victim.lsn);
    // Undone, everything reads back.
    flip_byte(&path, offset + 30);
    let wal = Wal::open_to_read_from(dir.path(), config(), read_from_lsn).expect("open");
    let expected: Vec<_> = records
        .iter()
        .filter(|r| r.lsn >= read_from_lsn)
        .cloned()
        .collect();
    assert_eq!(read_from(&wal, read_from_lsn).expect("read"), expected);
}

/// A segment whose data ends early (here: its last records zeroed) before
/// the next segment's start is a gap, whether recovery or the reader
/// finds it.
#[test]
fn a_segment_ending_early_is_a_gap_for_the_reader_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = write_records(dir.path(), 800);
    let segments = common::segment_files(dir.path());
    assert!(segments.len() >= 3);
    let second_first = first_lsn_of(&segments[1]);
    let third_first = first_lsn_of(&segments[2]);
    // Zero the second segment from its last two records on.
    let last_two = records
        .iter()
        .filter(|r| r.lsn >= second_first && r.lsn < third_first)
        .rev()
        .nth(1)
        .expect("records in the second segment");
    let (path, offset) = segment_of(dir.path(), last_two.lsn);
    let end = SEGMENT_HEADER_BYTES as u64 + (third_first.0 - second_first.0);
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(&vec![0u8; (end - offset) as usize], offset)
        .expect("zero");

    let config = || common::small_config(Backend::Portable);
    let refused = Wal::open(dir.path(), config()).err().expect("a gap");
    assert!(matches!(refused, WalError::Gap { .. }), "{refused}");
    let wal = Wal::open_to_read_from(dir.path(), config(), second_first).expect("open");
    let err = read_from(&wal, second_first).expect_err("a gap");
    assert!(matches!(err, WalError::Gap { .. }), "{err}");
    assert!(err.to_string().contains(&last_two.lsn.to_string()), "{err}");
}
