//! The object table (`objects.tbl`) and data segments (`*.seg`) on real
//! files: round trips, growth and reopen, damage detected with the file and
//! offset named, torn tails told apart from corruption, read-only opens
//! that never write, and random bytes through `decode_image`.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use tc_heap_store::datafile::{
    DataFiles, IMAGE_HEADER_BYTES, ImageError, SEGMENT_HEADER_BYTES, ScanEnd, SegmentWriter,
    decode_image, encode_image, segment_file_name,
};
use tc_heap_store::table::{
    ObjectTable, TABLE_ENTRY_BYTES, TABLE_FILE_NAME, TABLE_GROW_SLOTS_MIN, TABLE_HEADER_BYTES,
    TableEntry,
};
use tc_heap_store::{ClassId, Lsn, ObjectId, StoreError};

fn entry(n: u64) -> TableEntry {
    TableEntry {
        version: Lsn(n * 100),
        segment: 1 + (n % 5) as u32,
        offset: 32 + (n as u32) * 8,
        length: 24 + (n % 300) as u32,
        class: ClassId(1 + (n % 9) as u32),
        flags: (n % 4) as u16,
    }
}

fn slot_offset(id: u64) -> u64 {
    TABLE_HEADER_BYTES as u64 + id * TABLE_ENTRY_BYTES as u64
}

/// Asserts `err` is `Corrupt` naming `path` and `offset`, in its fields and
/// in its message, and that the message mentions `mentions`.
fn assert_corrupt(err: &StoreError, path: &Path, offset: u64, mentions: &str) {
    let text = err.to_string();
    match err {
        StoreError::Corrupt {
            path: p, offset: o, ..
        } => {
            assert_eq!(p, path, "wrong file in {text}");
            assert_eq!(*o, Some(offset), "wrong offset in {text}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(&format!("offset {offset}")), "{text}");
    assert!(
        text.contains(mentions),
        "{text:?} should mention {mentions:?}"
    );
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for damage");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset).expect("write byte");
}

// ---------------------------------------------------------------- table

#[test]
fn table_entries_survive_growth_flush_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(TABLE_FILE_NAME);
    let ids: Vec<u64> = vec![
        1,
        2,
        3,
        1000,
        TABLE_GROW_SLOTS_MIN,
        3 * TABLE_GROW_SLOTS_MIN + 7,
    ];
    {
        let mut table = ObjectTable::open(&path).expect("create");
        for &id in &ids {
            table.set(ObjectId(id), &entry(id)).expect("set");
        }
        table.set(ObjectId(2), &entry(22)).expect("overwrite");
        table.clear(ObjectId(3)).expect("clear");
        assert!(table.slots() > 3 * TABLE_GROW_SLOTS_MIN + 7);
        table.flush().expect("flush");
    }
    let table = ObjectTable::open(&path).expect("reopen");
    assert_eq!(
        fs::metadata(&path).expect("stat").len(),
        slot_offset(table.slots())
    );
    assert_eq!(table.get(ObjectId(1)).expect("get"), Some(entry(1)));
    assert_eq!(table.get(ObjectId(2)).expect("get"), Some(entry(22)));
    assert_eq!(table.get(ObjectId(3)).expect("get"), None);
    assert_eq!(table.get(ObjectId(4)).expect("get"), None);
    assert_eq!(table.get(ObjectId(u64::MAX)).expect("beyond"), None);
    let listed: Vec<(u64, TableEntry)> = table
        .iter()
        .map(|(id, e)| (id.0, e.expect("valid")))
        .collect();
    let expected: Vec<(u64, TableEntry)> = ids
        .iter()
        .filter(|&&id| id != 3)
        .map(|&id| (id, if id == 2 { entry(22) } else { entry(id) }))
        .collect();
    assert_eq!(listed, expected);
}

#[test]
fn flipped_byte_in_a_table_entry_names_the_slot_and_the_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(TABLE_FILE_NAME);
    {
        let mut table = ObjectTable::open(&path).expect("create");
        for id in 1..=10 {
            table.set(ObjectId(id), &entry(id)).expect("set");
        }
        table.flush().expect("flush");
    }
    flip_byte(&path, slot_offset(7) + 13);
    let table = ObjectTable::open(&path).expect("entries are checked on read, not open");
    let err = table.get(ObjectId(7)).expect_err("damaged entry");
    assert_corrupt(&err, &path, slot_offset(7), "object @7");
    assert_eq!(table.get(ObjectId(6)).expect("neighbour"), Some(entry(6)));
    let bad: Vec<u64> = table
        .iter()
        .filter(|(_, e)| e.is_err())
        .map(|(id, _)| id.0)
        .collect();
    assert_eq!(bad, vec![7]);
}

#[test]
fn an_entry_in_the_wrong_slot_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(TABLE_FILE_NAME);
    {
        let mut table = ObjectTable::open(&path).expect("create");
        table.set(ObjectId(5), &entry(5)).expect("set");
        table.flush().expect("flush");
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut slot = [0u8; TABLE_ENTRY_BYTES];
    file.read_exact_at(&mut slot, slot_offset(5)).expect("read");
    file.write_all_at(&slot, slot_offset(6)).expect("misplace");
    let table = ObjectTable::open(&path).expect("open");
    let err = table.get(ObjectId(6)).expect_err("misplaced");
    assert_corrupt(&err, &path, slot_offset(6), "another object");
    // Slot 0 (null) must stay zero.
    file.write_all_at(&slot, slot_offset(0))
        .expect("into slot 0");
    let table = ObjectTable::open(&path).expect("open");
    let err = table.get(ObjectId::NULL).expect_err("slot 0 not zero");
    assert_corrupt(&err, &path, slot_offset(0), "null");
}

#[test]
fn damaged_table_header_or_length_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(TABLE_FILE_NAME);
    let mut table = ObjectTable::open(&path).expect("create");
    table.set(ObjectId(1), &entry(1)).expect("set");
    table.flush().expect("flush");
    drop(table);
    let pristine = fs::read(&path).expect("read");

    // (byte flipped, offset named, words in the message)
    for (at, named, mentions) in [
        (0, 0, "magic"),
        (2, 0, "magic"),
        (5, 60, "checksum"),
        (9, 60, "checksum"),
        (30, 60, "checksum"),
        (61, 60, "checksum"),
    ] {
        fs::write(&path, &pristine).expect("restore");
        flip_byte(&path, at);
        let err = ObjectTable::open(&path).expect_err("damaged header");
        assert_corrupt(&err, &path, named, mentions);
        let err = ObjectTable::open_read_only(&path).expect_err("damaged header");
        assert_corrupt(&err, &path, named, mentions);
    }

    fs::write(&path, &pristine).expect("restore");
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    let len = pristine.len() as u64;
    file.set_len(len + 5).expect("odd length");
    let err = ObjectTable::open(&path).expect_err("partial slot");
    assert_corrupt(&err, &path, len, "partial slot");
    file.set_len(40).expect("short header");
    let err = ObjectTable::open(&path).expect_err("truncated header");
    assert_corrupt(&err, &path, 0, "truncated");
}

#[test]
fn read_only_table_reads_but_never_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(TABLE_FILE_NAME);
    let missing = ObjectTable::open_read_only(&path).expect_err("no table yet");
    assert!(matches!(missing, StoreError::Io { .. }));
    assert!(!path.exists(), "a read-only open must not create the table");
    {
        let mut table = ObjectTable::open(&path).expect("create");
        table.set(ObjectId(3), &entry(3)).expect("set");
        table.flush().expect("flush");
    }
    let before = fs::read(&path).expect("read");
    let mut table = ObjectTable::open_read_only(&path).expect("open read-only");
    assert!(table.is_read_only());
    assert_eq!(table.get(ObjectId(3)).expect("get"), Some(entry(3)));
    for err in [
        table.set(ObjectId(3), &entry(4)).expect_err("set refused"),
        table
            .set(ObjectId(1 << 30), &entry(4))
            .expect_err("growth refused"),
        table.clear(ObjectId(3)).expect_err("clear refused"),
    ] {
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied),
            "{err:?}"
        );
    }
    table.flush().expect("flush is a no-op");
    assert_eq!(table.get(ObjectId(3)).expect("get"), Some(entry(3)));
    drop(table);
    assert_eq!(fs::read(&path).expect("read"), before, "file changed");
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![TABLE_FILE_NAME]);
}

// ------------------------------------------------------------- segments

/// Writes `count` images of objects 1..=count into `segment`; returns
/// (object, offset, length, body) of each.
fn write_segment(files: &DataFiles, segment: u32, count: u64) -> Vec<(u64, u32, u32, Vec<u8>)> {
    let mut writer = files.create_segment(segment).expect("create");
    let mut placed = Vec::new();
    for id in 1..=count {
        let body: Vec<u8> = (0..id * 37 % 500).map(|i| (i as u8) ^ (id as u8)).collect();
        let (offset, length) = writer
            .append(ObjectId(id), Lsn(id * 1000), &body)
            .expect("append");
        placed.push((id, offset, length, body));
    }
    writer.sync().expect("sync");
    placed
}

#[test]
fn images_round_trip_through_a_reopened_directory_and_a_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg_dir = dir.path().join("segments");
    let placed = {
        let files = DataFiles::open_dir(&seg_dir).expect("creates the directory");
        write_segment(&files, 1, 50)
    };
    let files = Arc::new(DataFiles::open_dir(&seg_dir).expect("reopen"));
    assert_eq!(files.segment_ids(), vec![1]);
    for (id, offset, length, body) in &placed {
        let image = files
            .read_image(1, *offset, *length, ObjectId(*id))
            .expect("read");
        assert_eq!(image.object, ObjectId(*id));
        assert_eq!(image.version, Lsn(id * 1000));
        assert_eq!(&image.body, body);
    }
    let (images, end) = files.scan_all(1).expect("scan");
    let end_of_last = placed.last().map(|(_, o, l, _)| u64::from(o + l));
    assert_eq!(
        end,
        ScanEnd::Clean {
            file_len: end_of_last.expect("images")
        }
    );
    assert_eq!(images.len(), placed.len());
    for (image, (id, offset, length, body)) in images.iter().zip(&placed) {
        assert_eq!(
            (
                image.object.0,
                image.offset,
                image.record_bytes,
                &image.body
            ),
            (*id, *offset, *length, body)
        );
    }
    // Shared across threads.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let files = Arc::clone(&files);
            let placed = placed.clone();
            std::thread::spawn(move || {
                for (id, offset, length, body) in placed.iter().skip(t).step_by(4) {
                    let image = files
                        .read_image(1, *offset, *length, ObjectId(*id))
                        .expect("read");
                    assert_eq!(&image.body, body);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("reader thread");
    }
}

#[test]
fn flipped_byte_in_an_image_body_or_header_names_the_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = DataFiles::open_dir(dir.path()).expect("open");
    let placed = write_segment(&files, 2, 10);
    let path = dir.path().join(segment_file_name(2));
    let pristine = fs::read(&path).expect("read");
    let (id, offset, length, _) = placed[4].clone();
    let record = u64::from(offset);
    // (where in the record, words in the message)
    for (at, mentions) in [
        (IMAGE_HEADER_BYTES as u64 + 3, "checksum"), // body
        (4, "checksum"),                             // crc field
        (9, "checksum"),                             // object id
        (17, "checksum"),                            // version
        (0, "image"),                                // body_len
    ] {
        fs::write(&path, &pristine).expect("restore");
        flip_byte(&path, record + at);
        // A fresh handle each time: the cache would keep the old file.
        let files = DataFiles::open_dir(dir.path()).expect("open");
        let err = files
            .read_image(2, offset, length, ObjectId(id))
            .expect_err("damaged image");
        assert_corrupt(&err, &path, record, mentions);
        let mut scanner = files.scan(2).expect("header is fine");
        let good: Vec<_> = scanner
            .by_ref()
            .take(4)
            .map(|r| r.expect("before"))
            .collect();
        assert_eq!(good.len(), 4);
        let err = scanner
            .next()
            .expect("an item")
            .expect_err("corrupt, not torn: valid records follow");
        assert_corrupt(&err, &path, record, "not a torn tail");
        assert!(scanner.next().is_none());
        assert!(scanner.end().is_none());
        // The neighbours still read.
        let (nid, noff, nlen, nbody) = &placed[5];
        let image = files
            .read_image(2, *noff, *nlen, ObjectId(*nid))
            .expect("neighbour");
        assert_eq!(&image.body, nbody);
    }
}

#[test]
fn reading_with_the_wrong_object_or_location_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = DataFiles::open_dir(dir.path()).expect("open");
    let placed = write_segment(&files, 1, 5);
    let path = dir.path().join(segment_file_name(1));
    let (id, offset, length, _) = placed[2].clone();
    let err = files
        .read_image(1, offset, length, ObjectId(id + 1))
        .expect_err("wrong object");
    assert_corrupt(
        &err,
        &path,
        u64::from(offset),
        &format!("expected @{}", id + 1),
    );
    let err = files
        .read_image(1, offset, length + 1, ObjectId(id))
        .expect_err("wrong length");
    assert_corrupt(&err, &path, u64::from(offset), "location says");
    let err = files
        .read_image(1, offset + 1, length, ObjectId(id))
        .expect_err("wrong offset");
    assert_corrupt(&err, &path, u64::from(offset + 1), "image");
    let err = files
        .read_image(1, 8, 30, ObjectId(id))
        .expect_err("inside the header");
    assert_corrupt(&err, &path, 8, "header");
    let err = files
        .read_image(1, offset, 10, ObjectId(id))
        .expect_err("shorter than a header");
    assert_corrupt(&err, &path, u64::from(offset), "out of range");
    let file_len = files.file_len(1).expect("len");
    let err = files
        .read_image(1, offset, u32::MAX - offset, ObjectId(id))
        .expect_err("past the end; must not allocate 4 GiB first");
    assert_corrupt(&err, &path, u64::from(offset), &format!("({file_len} B)"));
    let err = files
        .read_image(9, 32, 30, ObjectId(id))
        .expect_err("no such segment");
    assert!(matches!(err, StoreError::Io { .. }));
}

#[test]
fn damaged_segment_header_is_named_by_read_and_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = DataFiles::open_dir(dir.path()).expect("open");
    let placed = write_segment(&files, 3, 3);
    let path = dir.path().join(segment_file_name(3));
    flip_byte(&path, 10);
    let files = DataFiles::open_dir(dir.path()).expect("open");
    let (id, offset, length, _) = placed[0].clone();
    let err = files
        .read_image(3, offset, length, ObjectId(id))
        .expect_err("bad header");
    assert_corrupt(&err, &path, 28, "checksum");
    let err = files.scan(3).expect_err("bad header");
    assert_corrupt(&err, &path, 28, "checksum");

    // A valid header under another segment's name.
    let files = DataFiles::open_dir(dir.path()).expect("open");
    write_segment(&files, 4, 1);
    let moved = dir.path().join(segment_file_name(5));
    fs::rename(dir.path().join(segment_file_name(4)), &moved).expect("rename");
    let err = files.scan(5).expect_err("wrong id");
    assert_corrupt(&err, &moved, 8, "file name says");
}

#[test]
fn torn_tails_are_reported_apart_from_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = DataFiles::open_dir(dir.path()).expect("open");
    let placed = write_segment(&files, 1, 6);
    let path = dir.path().join(segment_file_name(1));
    let pristine = fs::read(&path).expect("read");
    let (_, last, last_len, _) = placed[5].clone();
    let last = u64::from(last);
    let set_len = |len: u64| {
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(len)
            .expect("set_len");
    };

    // Cut inside the last record's body, then inside its header.
    for cut in [last + IMAGE_HEADER_BYTES as u64 + 1, last + 10] {
        fs::write(&path, &pristine).expect("restore");
        set_len(cut);
        let (images, end) = files.scan_all(1).expect("torn, not corrupt");
        assert_eq!(images.len(), 5);
        assert!(
            matches!(end, ScanEnd::Torn { offset, file_len, cause: ImageError::TruncatedBody { .. } | ImageError::TruncatedHeader { .. } } if offset == last && file_len == cut),
            "{end:?}"
        );
    }

    // Extended with zeroes by a crash (the writer never leaves any).
    fs::write(&path, &pristine).expect("restore");
    let full = pristine.len() as u64;
    set_len(full + 4096);
    let (images, end) = files.scan_all(1).expect("torn, not corrupt");
    assert_eq!(images.len(), 6);
    assert!(
        matches!(end, ScanEnd::Torn { offset, cause: ImageError::NullObject { .. }, .. } if offset == full),
        "{end:?}"
    );

    // The last record damaged, its length intact, zeroes after it.
    fs::write(&path, &pristine).expect("restore");
    flip_byte(&path, last + IMAGE_HEADER_BYTES as u64 + 2);
    let (images, end) = files.scan_all(1).expect("torn, not corrupt");
    assert_eq!(images.len(), 5);
    assert!(
        matches!(end, ScanEnd::Torn { offset, cause: ImageError::Checksum { .. }, .. } if offset == last),
        "{end:?}"
    );
    set_len(full + 100);
    let (_, end) = files.scan_all(1).expect("still torn");
    assert!(matches!(end, ScanEnd::Torn { offset, .. } if offset == last));

    // Garbage after the zero tail is corruption, named at the first bad record.
    fs::write(&path, &pristine).expect("restore");
    set_len(full + 100);
    flip_byte(&path, full + 60);
    let err = files.scan_all(1).expect_err("data after the damage");
    assert_corrupt(&err, &path, full, &format!("offset {}", full + 60));
    assert!(last_len > 0);

    // An empty segment is clean.
    files.create_segment(2).expect("create");
    let (images, end) = files.scan_all(2).expect("scan");
    assert!(images.is_empty());
    assert_eq!(
        end,
        ScanEnd::Clean {
            file_len: SEGMENT_HEADER_BYTES as u64
        }
    );
}

#[test]
fn directory_rules_delete_and_bad_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = DataFiles::open_dir(dir.path()).expect("open");
    write_segment(&files, 1, 2);
    write_segment(&files, 0x1a, 2);
    assert_eq!(files.segment_ids(), vec![1, 0x1a]);
    assert!(dir.path().join("0000001a.seg").exists());
    files.delete(1).expect("delete");
    assert_eq!(files.segment_ids(), vec![0x1a]);
    assert!(!dir.path().join(segment_file_name(1)).exists());
    assert!(matches!(files.delete(1), Err(StoreError::Io { .. })));
    assert!(matches!(
        files.read_image(1, 32, 30, ObjectId(1)),
        Err(StoreError::Io { .. })
    ));
    fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");
    assert_eq!(
        DataFiles::open_dir(dir.path())
            .expect("other names ignored")
            .segment_ids(),
        vec![0x1a]
    );
    let bad = dir.path().join("0000001A.seg");
    fs::write(&bad, b"").expect("write");
    let err = DataFiles::open_dir(dir.path()).expect_err("bad name");
    assert!(
        matches!(&err, StoreError::Corrupt { path, offset: None, .. } if *path == bad),
        "{err:?}"
    );
    assert!(err.to_string().contains("0000001A.seg"));
}

#[test]
fn a_failed_segment_creation_leaves_no_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = DataFiles::open_dir(dir.path()).expect("open");
    fs::create_dir(dir.path().join("00000007.seg.partial")).expect("block the partial");
    assert!(files.create_segment(7).is_err());
    assert!(!dir.path().join(segment_file_name(7)).exists());
    assert!(files.segment_ids().is_empty());
    assert!(SegmentWriter::create(dir.path(), 8).is_ok());
}

// ------------------------------------------------------------- proptest

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_image_never_panics_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        max in prop_oneof![Just(u32::MAX), 0..256u32],
    ) {
        check_decode(&bytes, max);
    }

    #[test]
    fn images_round_trip_and_mutations_never_decode_to_other_bytes(
        object in 1..u64::MAX,
        version in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = Vec::new();
        encode_image(&mut bytes, ObjectId(object), Lsn(version), &body);
        let image = decode_image(&bytes, u32::MAX).expect("valid");
        prop_assert_eq!(image.object, ObjectId(object));
        prop_assert_eq!(image.version, Lsn(version));
        prop_assert_eq!(image.body, &body[..]);
        prop_assert_eq!(image.record_bytes, bytes.len());

        let mut mutated = bytes.clone();
        mutated[at.index(bytes.len())] ^= xor;
        prop_assert!(decode_image(&mutated, u32::MAX).is_err(), "mutation accepted");
        check_decode(&mutated, u32::MAX);
        let short = &bytes[..cut.index(bytes.len())];
        prop_assert!(decode_image(short, u32::MAX).is_err(), "short record accepted");
    }
}

/// No panic; on success the record re-encodes to exactly its input prefix.
fn check_decode(bytes: &[u8], max: u32) {
    match decode_image(bytes, max) {
        Ok(image) => {
            assert!(image.body.len() <= max as usize);
            assert_eq!(image.record_bytes, IMAGE_HEADER_BYTES + image.body.len());
            let mut again = Vec::new();
            encode_image(&mut again, image.object, image.version, image.body);
            assert_eq!(&again[..], &bytes[..image.record_bytes]);
        }
        Err(ImageError::TruncatedHeader { available, .. }) => {
            assert!(bytes.len() < IMAGE_HEADER_BYTES);
            assert_eq!(available, bytes.len());
        }
        Err(_) => assert!(bytes.len() >= IMAGE_HEADER_BYTES),
    }
}
