//! A full disk, for real: the WAL lives on a 1 MiB tmpfs. When no new
//! segment can be allocated, appends fail promptly with an ENOSPC error that
//! names the file (they do not hang), every acknowledged record stays
//! readable, and once space is freed (truncation) appends work again.
//!
//! Needs root to mount the tmpfs (CI runs as root). Without it the test
//! says so on stderr and checks nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tc_wal::{Backend, BackendChoice, Lsn, Wal, WalConfig, WalError};

struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs {
            path: dir.path().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn config(backend: Backend) -> WalConfig {
    WalConfig {
        segment_bytes: 256 << 10,
        max_record_bytes: 16 << 10,
        backend: BackendChoice::Only(backend),
        ..WalConfig::default()
    }
}

fn fill_until_no_space(wal: &Wal) -> (Vec<(Lsn, Vec<u8>)>, WalError) {
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        assert!(Instant::now() < deadline, "no ENOSPC within 60 s");
        let data = common::payload(i, 4000);
        match wal.append(1, data.clone()) {
            Ok(lsn) => acked.push((lsn, data)),
            Err(err) => return (acked, err),
        }
    }
    unreachable!()
}

fn check_disk_full(root: &Path, backend: Backend) {
    let dir = root.join(backend.name());
    let wal = Wal::open(&dir, config(backend)).expect("open");
    let (acked, err) = fill_until_no_space(&wal);
    assert!(err.is_no_space(), "{backend}: expected ENOSPC, got: {err}");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "names the file: {err}"
    );
    assert!(
        acked.len() > 100,
        "wrote {} records before the disk filled",
        acked.len()
    );
    // It keeps failing fast (no hang) while the disk is full...
    let started = Instant::now();
    let again = wal
        .append(1, common::payload(0, 4000))
        .expect_err("still full");
    assert!(again.is_no_space(), "{again}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // ...every acknowledged record is readable...
    let records = common::read_all(&wal);
    assert_eq!(records.len(), acked.len());
    for (record, (lsn, data)) in records.iter().zip(&acked) {
        assert_eq!((record.lsn, &record.payload[..]), (*lsn, &data[..]));
    }
    // ...and after a checkpoint frees space, appends work again.
    let keep_from = acked[acked.len() - 10].0;
    assert!(wal.truncate_before(keep_from).expect("truncate") > 0);
    let lsn = wal
        .append(1, &b"space again"[..])
        .expect("append after freeing space");
    drop(wal);
    let wal = Wal::open(&dir, config(backend)).expect("reopen");
    let records = common::read_all(&wal);
    assert_eq!(
        records.last().map(|r| (r.lsn, &r.payload[..])),
        Some((lsn, &b"space again"[..]))
    );
    assert!(records.iter().any(|r| r.lsn == keep_from));
}

#[test]
fn a_full_disk_fails_appends_clearly_and_loses_nothing() {
    let Some(tmpfs) = Tmpfs::mount(1 << 20) else {
        eprintln!(
            "wal_disk_full: cannot mount a tmpfs (needs root): ENOSPC behaviour NOT tested here"
        );
        return;
    };
    for backend in common::backends() {
        check_disk_full(&tmpfs.path, backend);
        std::fs::remove_dir_all(tmpfs.path.join(backend.name())).expect("clean up");
    }
}
