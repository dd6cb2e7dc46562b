//! Random damage never makes the tools panic: single and multiple byte
//! flips anywhere in the written part of every file of a real data dir go
//! through `fsck::check` and every `dump` subcommand (in this process, so
//! a panic fails the test). Replay a run with `TC_SEED=<seed>`.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::{End, make_data_dir};
use tc_heap_store::ObjectId;
use tc_tools::dump::{self, Format};

const ROUNDS: usize = 200;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The files of the dir worth damaging, each with the length of its
/// written part (up to its last non-zero byte, plus a little).
fn targets(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for path in [
        dir.join("CHECKPOINT"),
        dir.join("objects.tbl"),
        dir.join("wal").join("0000000000000000.wal"),
        dir.join("segments").join("00000001.seg"),
    ] {
        let bytes = fs::read(&path).expect("read");
        let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        out.push((path, (written as u64 + 16).min(bytes.len() as u64)));
    }
    out
}

fn exercise(dir: &Path) {
    let report = tc_tools::check(dir).expect("the tool itself does not fail");
    let _ = report.to_string();
    let _ = report.to_json();
    let mut warnings = Vec::new();
    let view = dump::load(dir, &mut warnings).expect("load");
    let mut sink = Vec::new();
    for format in [Format::Text, Format::Json] {
        dump::roots(&view, format, &mut sink).expect("roots");
        dump::classes(&view, format, &mut sink).expect("classes");
        for id in 0..12 {
            let _ = dump::object(&view, ObjectId(id), format, &mut sink, &mut warnings);
        }
        for root in ["people", "index", "dave"] {
            let _ = dump::graph(&view, root, None, format, &mut sink, &mut warnings);
        }
        dump::wal(
            &view,
            tc_heap_store::Lsn(0),
            None,
            format,
            &mut sink,
            &mut warnings,
        )
        .expect("wal");
    }
}

#[test]
fn random_flips_never_panic() {
    let seed = std::env::var("TC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("TC_SEED={seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    make_data_dir(dir.path(), End::Drop);
    let targets = targets(dir.path());
    let mut rng = Rng(seed);
    for round in 0..ROUNDS {
        let flips = 1 + rng.below(3) as usize;
        let mut undo = Vec::new();
        for _ in 0..flips {
            let (path, len) = &targets[rng.below(targets.len() as u64) as usize];
            let offset = rng.below(*len);
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .expect("open");
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, offset).expect("read");
            let flipped = byte[0] ^ (1 + rng.below(255) as u8);
            file.write_all_at(&[flipped], offset).expect("write");
            undo.push((path.clone(), offset, byte[0]));
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(dir.path())));
        assert!(
            outcome.is_ok(),
            "round {round} (TC_SEED={seed}) panicked with flips {undo:?}"
        );
        for (path, offset, byte) in undo.into_iter().rev() {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open");
            file.write_all_at(&[byte], offset).expect("restore");
        }
    }
    assert!(tc_tools::check(dir.path()).expect("check").is_clean());
}
