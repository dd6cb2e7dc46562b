//! The pool of spare segment files, kept ready off the commit path.
//!
//! Owns: the list of ready spares and the allocator thread that zero-fills
//! new ones, in small steps so that commits meanwhile do not wait for a
//! whole segment of zeroes to reach the disk (`Fill::Background`). A rollover takes a
//! ready spare (fast path) or, if none is ready, creates one itself at
//! once (counted in `WalStats::spare_misses`). Truncation
//! recycles old segments into the pool (their blocks are already written,
//! which keeps `fdatasync` cheap); stale frames in them are harmless because
//! every frame carries its own LSN.
//! Invariant: every path in `ready` is a file of exactly `segment_bytes`.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Result, WalError};
use crate::segment::{self, Fill, PARTIAL_SUFFIX, SPARE_SUFFIX};

const ALLOCATION_RETRY: Duration = Duration::from_secs(1);

pub(crate) struct Spares {
    dir: PathBuf,
    segment_bytes: u64,
    ready_target: usize,
    state: Mutex<SpareState>,
    changed: Condvar,
    pub(crate) misses: AtomicU64,
}

struct SpareState {
    ready: VecDeque<PathBuf>,
    next_number: u64,
    /// The allocator is zero-filling a spare right now.
    allocating: bool,
    shutdown: bool,
}

impl Spares {
    /// Adopts the spares found in `dir` (of the right size) and removes
    /// half-written ones.
    pub(crate) fn open(dir: &Path, segment_bytes: u64, ready_target: usize) -> Result<Spares> {
        let mut ready = Vec::new();
        let mut next_number = 0;
        let entries = fs::read_dir(dir).map_err(|e| WalError::io("listing", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| WalError::io("listing", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(n) = segment::parse_spare_name(&name, PARTIAL_SUFFIX) {
                next_number = next_number.max(n + 1);
                fs::remove_file(&path).map_err(|e| WalError::io("removing", &path, e))?;
            } else if let Some(n) = segment::parse_spare_name(&name, SPARE_SUFFIX) {
                next_number = next_number.max(n + 1);
                let len = entry
                    .metadata()
                    .map_err(|e| WalError::io("stat", &path, e))?
                    .len();
                if len == segment_bytes {
                    ready.push((n, path));
                } else {
                    fs::remove_file(&path).map_err(|e| WalError::io("removing", &path, e))?;
                }
            }
        }
        ready.sort();
        Ok(Spares {
            dir: dir.to_owned(),
            segment_bytes,
            ready_target,
            state: Mutex::new(SpareState {
                ready: ready.into_iter().map(|(_, p)| p).collect(),
                next_number,
                allocating: false,
                shutdown: false,
            }),
            changed: Condvar::new(),
            misses: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SpareState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A spare to turn into the next segment.
    pub(crate) fn take(&self) -> Result<PathBuf> {
        let number = {
            let mut state = self.lock();
            // A spare half-written by the allocator is nearer than a new one.
            while state.ready.is_empty() && state.allocating {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if let Some(path) = state.ready.pop_front() {
                self.changed.notify_all();
                return Ok(path);
            }
            state.next_number += 1;
            state.next_number - 1
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        segment::create_spare(&self.dir, number, self.segment_bytes, Fill::Urgent)
    }

    /// Keeps a retired segment as a spare if the pool has room and it has
    /// the right size; deletes it otherwise. The caller fsyncs the directory.
    pub(crate) fn recycle(&self, path: &Path) -> Result<()> {
        let len = fs::metadata(path)
            .map_err(|e| WalError::io("stat", path, e))?
            .len();
        let mut state = self.lock();
        if len == self.segment_bytes && state.ready.len() <= self.ready_target {
            let spare = segment::spare_path(&self.dir, state.next_number, SPARE_SUFFIX);
            fs::rename(path, &spare).map_err(|e| WalError::io("recycling segment", path, e))?;
            state.next_number += 1;
            state.ready.push_back(spare);
            return Ok(());
        }
        drop(state);
        fs::remove_file(path).map_err(|e| WalError::io("removing segment", path, e))
    }

    pub(crate) fn shutdown(&self) {
        self.lock().shutdown = true;
        self.changed.notify_all();
    }

    /// The allocator thread: keeps `ready_target` spares ready.
    pub(crate) fn run_allocator(self: Arc<Self>) {
        let mut warned = false;
        loop {
            let number = {
                let mut state = self.lock();
                while !state.shutdown && state.ready.len() >= self.ready_target {
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.shutdown {
                    return;
                }
                state.allocating = true;
                state.next_number += 1;
                state.next_number - 1
            };
            let created =
                segment::create_spare(&self.dir, number, self.segment_bytes, Fill::Background);
            let mut state = self.lock();
            state.allocating = false;
            self.changed.notify_all();
            match created {
                Ok(path) => {
                    state.ready.push_back(path);
                    warned = false;
                }
                Err(err) => {
                    if !warned {
                        tracing::warn!("cannot prepare a spare WAL segment, retrying: {err}");
                        warned = true;
                    }
                    if state.shutdown {
                        return;
                    }
                    let _unused = self.changed.wait_timeout(state, ALLOCATION_RETRY);
                }
            }
        }
    }
}
