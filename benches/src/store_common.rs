//! What the object-store workloads (`store-commit`, `store-read`,
//! `recovery`, `write-amp`) share: the bench classes, building and encoding
//! transactions, bulk-creating objects, a small deterministic PRNG, argument
//! parsers (byte sizes, field ranges), the error type, and the block
//! device's write counter.
//!
//! Owns: the shape of the bench objects and transactions, so every store
//! workload measures the same thing. Not: running a workload, printing.
//! Invariants: every transaction built here is valid against the store it
//! is committed to (objects exist, slots are in range, values are longs), so
//! a rejection is a bug in the store or here, reported as an error.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::{
    ClassDef, ClassId, FieldKind, ID_BLOCK_MAX, ObjectId, ScalarKind, Store, StoreError, Value,
};
use tc_wal::Backend;

use crate::wal_bench::{self, BackendArg, BenchError};

/// Fields of the bench class `bench.Plain8`: eight `long`s.
pub const PLAIN8_FIELDS: u32 = 8;

/// Client id used for the objects created up front.
const LOADER_CLIENT: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum StoreBenchError {
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error("{what}: {source}")]
    Store { what: String, source: StoreError },
    #[error("bench directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Wraps a store error with what the bench was doing.
pub fn store_err(what: impl Into<String>) -> impl FnOnce(StoreError) -> StoreBenchError {
    let what = what.into();
    move |source| StoreBenchError::Store { what, source }
}

/// `store_err` for a loop that runs once per operation: `what` is only
/// formatted if there is an error. Formatted up front, it cost an
/// allocation per commit (1.3 % of the committers' samples) and sat inside
/// `store-read`'s timed region.
pub fn store_err_with(what: impl FnOnce() -> String) -> impl FnOnce(StoreError) -> StoreBenchError {
    move |source| StoreBenchError::Store {
        what: what(),
        source,
    }
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreBenchError {
    let path = path.to_owned();
    move |source| StoreBenchError::Io { path, source }
}

/// The class every store workload uses: eight `long` fields `f0`..`f7`.
pub fn plain8_class() -> ClassDef {
    let names: Vec<String> = (0..PLAIN8_FIELDS).map(|i| format!("f{i}")).collect();
    let fields: Vec<(&str, FieldKind)> = names
        .iter()
        .map(|n| (n.as_str(), FieldKind::Scalar(ScalarKind::Long)))
        .collect();
    ClassDef::plain("bench.Plain8", &fields)
}

/// The backend a workload uses: the one asked for, else io_uring when the
/// machine has it, else portable. Fails if the one asked for is missing.
pub fn choose_backend(asked: Option<BackendArg>) -> Result<Backend, StoreBenchError> {
    match asked {
        Some(arg) => {
            let backend = arg.backend();
            wal_bench::backend_available(backend).map_err(StoreBenchError::Other)?;
            Ok(backend)
        }
        None => Ok(match wal_bench::backend_available(Backend::Uring) {
            Ok(()) => Backend::Uring,
            Err(reason) => {
                eprintln!("using the portable backend: {reason}");
                Backend::Portable
            }
        }),
    }
}

/// SplitMix64: small, fast, deterministic; one per thread, seeded by index.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_5EED)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is negligible here).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// How many fields a transaction writes: uniform in `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldRange {
    pub min: u32,
    pub max: u32,
}

impl FieldRange {
    /// Picks the count, then that many distinct slots of `bench.Plain8`.
    pub fn pick_slots(&self, rng: &mut Rng, out: &mut Vec<u32>) {
        let count = self.min + rng.below(u64::from(self.max - self.min + 1)) as u32;
        let mut slots: [u32; PLAIN8_FIELDS as usize] = std::array::from_fn(|i| i as u32);
        // Partial Fisher-Yates: the first `count` slots are a random subset.
        for i in 0..count as usize {
            let j = i + rng.below((slots.len() - i) as u64) as usize;
            slots.swap(i, j);
        }
        out.clear();
        out.extend_from_slice(&slots[..count as usize]);
        out.sort_unstable();
    }
}

/// `"1-8"` or `"3"`: field counts between 1 and 8.
pub fn parse_field_range(text: &str) -> Result<FieldRange, String> {
    let (min, max) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let parse = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("{text:?} is not a field count or range like 1-8"))
    };
    let (min, max) = (parse(min)?, parse(max)?);
    if !(1 <= min && min <= max && max <= PLAIN8_FIELDS) {
        return Err(format!(
            "{text}: field counts lie in 1..={PLAIN8_FIELDS}, low end first"
        ));
    }
    Ok(FieldRange { min, max })
}

/// A byte size: a number with an optional suffix B, KiB, MiB, GiB (also
/// K/M/G, KB/MB/GB: all powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 256MiB"))?;
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("{text}: unknown unit {other:?} (B, KiB, MiB, GiB)")),
    };
    let bytes = number * unit as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes <= (1u64 << 50) as f64) {
        return Err(format!("{text}: must be at least 1 byte and at most 1 PiB"));
    }
    Ok(bytes.round() as u64)
}

/// A positive fraction of at most 1.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(value.is_finite() && value > 0.0 && value <= 1.0) {
        return Err(format!("{text} must be above 0 and at most 1"));
    }
    Ok(value)
}

/// A DNA writing a random long (below 2^32, so a 1–5 byte varint) into
/// each of `slots` of `object`.
fn random_longs(object: ObjectId, slots: &[u32], rng: &mut Rng) -> Dna {
    let mut dna = Dna::update(object);
    dna.fields = slots
        .iter()
        .map(|&slot| (slot, Value::Long(rng.below(1 << 32) as i64)))
        .collect();
    dna
}

/// One update transaction: `object` gets a random long in each of
/// `slots`, under the object's lock.
pub fn update_tx(client: u64, seq: u64, object: ObjectId, slots: &[u32], rng: &mut Rng) -> Vec<u8> {
    Transaction {
        client,
        seq,
        lock: LockRef::Object(object),
        roots: Vec::new(),
        dnas: vec![random_longs(object, slots, rng)],
    }
    .encode()
}

/// Update transaction touching several objects (each its own DNA, random
/// slots each), under no lock.
pub fn multi_update_tx(
    client: u64,
    seq: u64,
    objects: &[ObjectId],
    fields: FieldRange,
    rng: &mut Rng,
    slots: &mut Vec<u32>,
) -> Vec<u8> {
    let dnas = objects
        .iter()
        .map(|&object| {
            fields.pick_slots(rng, slots);
            random_longs(object, slots, rng)
        })
        .collect();
    Transaction {
        client,
        seq,
        lock: LockRef::None,
        roots: Vec::new(),
        dnas,
    }
    .encode()
}

/// The ids of the objects a workload created, in blocks of `ID_BLOCK_MAX`
/// (the last may be shorter); `nth(i)` is the i-th object.
#[derive(Clone, Debug, Default)]
pub struct IdSpace {
    blocks: Vec<Range<u64>>,
    len: u64,
}

impl IdSpace {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn nth(&self, i: u64) -> ObjectId {
        assert!(i < self.len, "object {i} of {}", self.len);
        let block = &self.blocks[(i / ID_BLOCK_MAX) as usize];
        ObjectId(block.start + i % ID_BLOCK_MAX)
    }

    pub fn random(&self, rng: &mut Rng) -> ObjectId {
        self.nth(rng.below(self.len))
    }
}

/// Options of `create_objects`.
pub struct Creation<'a> {
    pub class: ClassId,
    pub count: u64,
    pub per_tx: u64,
    /// Call `Store::checkpoint` after every this many objects (0: never).
    pub checkpoint_every: u64,
    /// Name printed in the progress lines on stderr.
    pub label: &'a str,
}

/// Creates `count` `bench.Plain8` objects, `per_tx` per transaction, with
/// field 0 set to the object's index; ids are allocated in blocks of
/// `ID_BLOCK_MAX`. Prints progress to stderr every second when it takes
/// longer than that.
pub fn create_objects(store: &Store, creation: &Creation<'_>) -> Result<IdSpace, StoreBenchError> {
    let started = Instant::now();
    let mut last_progress = started;
    let mut space = IdSpace::default();
    let mut seq = 0u64;
    let mut since_checkpoint = 0u64;
    while space.len < creation.count {
        let block_len = (creation.count - space.len).min(ID_BLOCK_MAX);
        let block = store
            .allocate_ids(block_len)
            .map_err(store_err("allocating ids"))?;
        assert_eq!(block.end - block.start, block_len);
        let first_index = space.len;
        space.blocks.push(block.clone());
        space.len += block_len;
        let mut next = block.start;
        while next < block.end {
            let end = (next + creation.per_tx).min(block.end);
            let dnas = (next..end)
                .map(|id| {
                    let index = first_index + (id - block.start);
                    Dna::new_object(ObjectId(id), creation.class)
                        .field(0, Value::Long(index as i64))
                })
                .collect();
            seq += 1;
            let tx = Transaction {
                client: LOADER_CLIENT,
                seq,
                lock: LockRef::None,
                roots: Vec::new(),
                dnas,
            };
            store
                .commit(tx.encode())
                .map_err(store_err("creating objects"))?;
            since_checkpoint += end - next;
            next = end;
            if creation.checkpoint_every > 0 && since_checkpoint >= creation.checkpoint_every {
                store
                    .checkpoint()
                    .map_err(store_err("checkpoint while loading"))?;
                since_checkpoint = 0;
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                let done = first_index + (next - block.start);
                eprintln!(
                    "  {}: created {done} of {} objects ({:.0}/s)",
                    creation.label,
                    creation.count,
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(space)
}

/// Sleeps until `deadline` (returns at once if it has passed).
pub fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Bytes written to the block device holding `path` so far (sectors
/// written × 512, from `/sys/dev/block/MAJ:MIN/stat`), if the kernel
/// reports it. Machine-wide: every process writing to that device counts,
/// and so do the filesystem's journal and metadata.
pub fn device_write_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    // Field 7 (from 1): sectors written, in 512-byte units.
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// Total size of the regular files directly inside `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Bytes in binary megabytes, for tables.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1u32 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("16 mib"), Ok(16 << 20));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("MiB").is_err());
    }

    #[test]
    fn field_ranges_parse_and_pick_distinct_slots() {
        assert_eq!(parse_field_range("1-8"), Ok(FieldRange { min: 1, max: 8 }));
        assert_eq!(parse_field_range("3"), Ok(FieldRange { min: 3, max: 3 }));
        for bad in ["0-8", "1-9", "5-2", "x", ""] {
            assert!(parse_field_range(bad).is_err(), "{bad}");
        }
        let range = FieldRange { min: 2, max: 5 };
        let mut rng = Rng::new(7);
        let mut slots = Vec::new();
        let mut seen_counts = [false; 9];
        for _ in 0..1000 {
            range.pick_slots(&mut rng, &mut slots);
            assert!((2..=5).contains(&slots.len()));
            assert!(slots.windows(2).all(|w| w[0] < w[1]), "{slots:?}");
            assert!(slots.iter().all(|&s| s < PLAIN8_FIELDS));
            seen_counts[slots.len()] = true;
        }
        assert_eq!(
            seen_counts,
            [false, false, true, true, true, true, false, false, false]
        );
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut rng = Rng::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn update_transactions_decode() {
        let mut rng = Rng::new(3);
        let bytes = update_tx(5, 9, ObjectId(12), &[0, 3, 7], &mut rng);
        let tx = Transaction::decode(&bytes).expect("valid");
        assert_eq!(tx.client, 5);
        assert_eq!(tx.dnas.len(), 1);
        assert_eq!(tx.dnas[0].fields.len(), 3);
        let mut slots = Vec::new();
        let objects = [ObjectId(1), ObjectId(2)];
        let bytes = multi_update_tx(
            1,
            1,
            &objects,
            FieldRange { min: 1, max: 8 },
            &mut rng,
            &mut slots,
        );
        assert_eq!(Transaction::decode(&bytes).expect("valid").dnas.len(), 2);
    }
}
