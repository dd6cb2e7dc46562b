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

fn segment_of(dir: &Path, lsn: Lsn) -> (PathBuf, u64) {
    for path in common::segment_files(dir).into_iter().rev() {
        let first =
            u64::from_str_radix(path.file_stem().expect("stem").to_str().expect("utf8"), 16)
                .expect("hex");
        if first <= lsn.0 {
            return (path, SEGMENT_HEADER_BYTES as u64 + lsn.0 - first);
        }
    }
    panic!("no segment holds {lsn}");
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
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(text.contains(&name), "names the file: {text}");
    assert!(
        text.contains(&format!("offset {offset}")),
        "names the offset: {text}"
    );
    assert!(
        text.contains(&victim.lsn.to_string()),
        "names the lsn: {text}"
    );
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
