//! Damage to real files is found and placed: the built `tc-fsck` exits 1
//! and names the file and offset (and the object or LSN); several damages
//! at once are all reported; a torn tail at the end of the WAL is a note.

mod common;

use std::fs;
use std::path::Path;

use common::{End, flip_byte, fsck, lines_with, make_data_dir, table_entry, wal_segment};
use tc_heap_store::datafile::IMAGE_HEADER_BYTES;
use tc_tools::walscan::{self, WalFile};

fn slot_offset(id: u64) -> u64 {
    64 + id * 32
}

/// The records of the fixture's (single) WAL segment.
fn wal_records(dir: &Path) -> Vec<walscan::RawRecord> {
    let path = wal_segment(dir);
    let read = walscan::read_segment(&WalFile {
        named_lsn: walscan::parse_segment_name("0000000000000000.wal").expect("name"),
        path,
    });
    assert!(read.damage.is_empty(), "{:?}", read.damage);
    read.records
}

/// Runs fsck (text and JSON); asserts exit 1 and returns (text, problems).
fn fsck_problems(dir: &Path) -> (String, Vec<serde_json::Value>) {
    let (code, out, err) = fsck(dir, false);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.trim_end().ends_with("problems") || out.trim_end().ends_with("problem"),
        "{out}"
    );
    let (code, json, err) = fsck(dir, true);
    assert_eq!(code, 1, "stderr:\n{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    assert_eq!(json["clean"], false);
    let problems = json["problems"].as_array().expect("problems").clone();
    assert!(!problems.is_empty());
    (out, problems)
}

#[test]
fn a_flipped_byte_in_a_data_segment_image_names_the_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = make_data_dir(dir.path(), End::Drop);
    let entry = table_entry(dir.path(), ids.bob);
    let segment = dir.path().join("segments").join("00000001.seg");
    flip_byte(
        &segment,
        u64::from(entry.offset) + IMAGE_HEADER_BYTES as u64 + 2,
    );
    let (out, problems) = fsck_problems(dir.path());
    let offset = format!("offset {}", entry.offset);
    assert!(
        !lines_with(&out, &["segments/00000001.seg", &offset, "checksum"]).is_empty(),
        "{out}"
    );
    assert!(
        problems.iter().any(|p| p["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("segments/00000001.seg"))
            && p["offset"] == u64::from(entry.offset)
            && p["object"] == ids.bob.0),
        "{problems:#?}"
    );
}

#[test]
fn a_flipped_byte_in_an_object_table_entry_names_the_table_and_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = make_data_dir(dir.path(), End::Drop);
    let slot = slot_offset(ids.carol.0);
    flip_byte(&dir.path().join("objects.tbl"), slot + 3);
    let (out, problems) = fsck_problems(dir.path());
    let offset = format!("offset {slot}");
    assert!(
        !lines_with(&out, &["objects.tbl", &offset, "checksum"]).is_empty(),
        "{out}"
    );
    assert!(
        problems.iter().any(|p| p["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("objects.tbl"))
            && p["offset"] == slot
            && p["object"] == ids.carol.0),
        "{problems:#?}"
    );
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_wal_names_the_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_data_dir(dir.path(), End::Drop);
    let records = wal_records(dir.path());
    assert!(records.len() >= 6);
    // A record followed by others, each written (and synced) after it.
    let victim = &records[records.len() / 2];
    assert!(victim.payload.len() > 2);
    flip_byte(&wal_segment(dir.path()), victim.offset + 28 + 1);
    let (out, problems) = fsck_problems(dir.path());
    let offset = format!("offset {}", victim.offset);
    assert!(
        !lines_with(&out, &["0000000000000000.wal", &offset, "corrupt record"]).is_empty(),
        "{out}"
    );
    assert!(
        problems.iter().any(|p| p["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("wal/0000000000000000.wal"))
            && p["offset"] == victim.offset
            && p["lsn"] == victim.lsn.0),
        "{problems:#?}"
    );
}

#[test]
fn a_table_entry_pointing_at_a_deleted_segment_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = make_data_dir(dir.path(), End::Drop);
    fs::remove_file(dir.path().join("segments").join("00000001.seg")).expect("rm");
    let (out, problems) = fsck_problems(dir.path());
    let lines = lines_with(&out, &["objects.tbl", "00000001.seg", "does not exist"]);
    // Every live entry (alice, bob, carol, list, map) points there.
    assert_eq!(lines.len(), 5, "{out}");
    let slot = format!("offset {}", slot_offset(ids.alice.0));
    assert!(lines.iter().any(|l| l.contains(&slot)), "{out}");
    assert!(
        problems
            .iter()
            .filter(|p| p["what"]
                .as_str()
                .is_some_and(|w| w.contains("does not exist")))
            .count()
            >= 5,
        "{problems:#?}"
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = make_data_dir(dir.path(), End::Drop);
    let entry = table_entry(dir.path(), ids.bob);
    let records = wal_records(dir.path());
    flip_byte(
        &dir.path().join("segments").join("00000001.seg"),
        u64::from(entry.offset) + IMAGE_HEADER_BYTES as u64 + 2,
    );
    flip_byte(
        &dir.path().join("objects.tbl"),
        slot_offset(ids.carol.0) + 3,
    );
    flip_byte(&wal_segment(dir.path()), records[2].offset + 28 + 1);
    flip_byte(
        &wal_segment(dir.path()),
        records[records.len() - 3].offset + 28 + 1,
    );
    flip_byte(&dir.path().join("CHECKPOINT"), 20);
    let (out, _) = fsck_problems(dir.path());
    for needles in [
        &["CHECKPOINT", "crc"][..],
        &["segments/00000001.seg", "checksum"][..],
        &["objects.tbl", "checksum"][..],
        &[
            "0000000000000000.wal",
            &format!("offset {}", records[2].offset),
        ][..],
        &[
            "0000000000000000.wal",
            &format!("offset {}", records[records.len() - 3].offset),
        ][..],
    ] {
        assert!(
            !lines_with(&out, needles).is_empty(),
            "{needles:?} in\n{out}"
        );
    }
}

#[test]
fn a_zeroed_table_entry_leaves_references_and_roots_dangling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = make_data_dir(dir.path(), End::Drop);
    // Carol's slot emptied: as if she never existed; bob and the list's
    // elements still reference objects, carol is referenced by bob.
    let table = dir.path().join("objects.tbl");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&table)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 32], slot_offset(ids.carol.0))
        .expect("zero");
    drop(file);
    let (out, problems) = fsck_problems(dir.path());
    let carol = ids.carol.to_string();
    let bob = ids.bob.to_string();
    assert!(
        !lines_with(&out, &[&bob, "references", &carol, "does not exist"]).is_empty(),
        "{out}"
    );
    assert!(
        problems.iter().all(|p| p["what"]
            .as_str()
            .is_some_and(|w| w.contains("does not exist"))),
        "{problems:#?}"
    );
}

#[test]
fn a_torn_tail_at_the_end_of_the_wal_is_a_note_not_a_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_data_dir(dir.path(), End::Drop);
    let records = wal_records(dir.path());
    let last = records.last().expect("records");
    // The last record: nothing was written after it, so this is what a
    // crash during its write looks like; recovery would discard it.
    flip_byte(&wal_segment(dir.path()), last.offset + 28 + 1);
    let (code, out, err) = fsck(dir.path(), false);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.lines().last(), Some("clean"), "{out}");
    let notes = out.split("notes:").nth(1).expect("a notes section");
    assert!(notes.contains("torn tail"), "{out}");
    assert!(notes.contains(&format!("offset {}", last.offset)), "{out}");
}

#[test]
fn a_torn_data_segment_is_a_note_unless_the_table_points_into_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = make_data_dir(dir.path(), End::Drop);
    let segment = dir.path().join("segments").join("00000001.seg");
    let cut = |len: u64| {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("open");
        file.set_len(len).expect("truncate");
    };
    // The last image is eve's, whose entry is a tombstone: a torn tail no
    // entry relies on, as an interrupted append leaves it.
    let len = fs::metadata(&segment).expect("stat").len();
    cut(len - 3);
    let (code, out, err) = fsck(dir.path(), false);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        !lines_with(
            &out,
            &["00000001.seg", "torn tail", "no object table entry"]
        )
        .is_empty(),
        "{out}"
    );
    // Now into the live image with the highest offset.
    let last_live = [ids.alice, ids.bob, ids.carol, ids.list, ids.map]
        .into_iter()
        .map(|id| table_entry(dir.path(), id))
        .max_by_key(|e| e.offset)
        .expect("entries");
    cut(u64::from(last_live.offset) + u64::from(last_live.length) - 3);
    let (out, _) = fsck_problems(dir.path());
    assert!(
        !lines_with(
            &out,
            &[
                "00000001.seg",
                &format!("offset {}", last_live.offset),
                "torn tail"
            ]
        )
        .is_empty(),
        "{out}"
    );
}
