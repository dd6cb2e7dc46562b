//! The two ways the writer makes a write durable, and how the writer sleeps.
//!
//! - io_uring, direct (the default: one write in flight, a file system that
//!   accepts `O_DIRECT`, segments a whole number of blocks): each write is one
//!   `O_DIRECT` write with `RWF_DSYNC`, covering whole 4 KiB blocks. The
//!   kernel issues it from the submitting thread and flushes the device
//!   cache on completion: no page-cache copy, no writeback, and no io-wq
//!   worker thread (measured here: a third of the CPU per durable write of
//!   a linked write + fsync, and lower latency; `docs/benchmarks.md`).
//! - io_uring, buffered (several writes in flight, or `O_DIRECT` refused):
//!   a `WriteFixed` linked to an `Fsync(DATASYNC)`, submitted without
//!   waiting. The kernel runs the fsync on an io-wq worker thread.
//! - portable: `pwrite` + `fdatasync` done inside `submit`; one write at a
//!   time; the writer sleeps in `ppoll`/`read` on the wake-up eventfd.
//!
//! With a write in flight the io_uring writer sleeps in `io_uring_enter`
//! (woken by the completion or a timeout); with nothing in flight, both
//! backends sleep on the wake-up eventfd that a producer's send signals.
//!
//! Owns: the ring, one buffer per slot (allocated once, registered with the
//! ring, never grown past its capacity), the direct-write staging buffer and
//! the copy of the active file's last partial block, the wake-up eventfd.
//! Invariants: a slot's buffer is not touched between `submit` and the
//! completion that frees it; `Completion::result` is Ok only once the bytes
//! are durable; a failed sync is reported, never retried. A direct write
//! rewrites the bytes already in its first block with exactly the bytes the
//! last write left there (so a torn block cannot change an acknowledged
//! record), and pads its last block with zeros, which is what the
//! zero-filled segment holds there.

use std::alloc::Layout;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::{Wake, Waker};

use io_uring::{IoUring, opcode, squeue, types};

/// The unit of a direct write: offsets and lengths are multiples of it, and
/// so is the staging buffer's address. 4 KiB covers every logical block
/// size Linux supports for `O_DIRECT` up to the page size.
pub(crate) const DIRECT_BLOCK: usize = 4096;

/// Which backend the WAL writes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring: linked write + fdatasync, several in flight.
    Uring,
    /// `pwrite` + `fdatasync`, one at a time: works everywhere.
    Portable,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Portable => "portable",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uring" | "io_uring" => Ok(Backend::Uring),
            "portable" => Ok(Backend::Portable),
            other => Err(format!(
                "unknown WAL backend {other:?} (expected uring or portable)"
            )),
        }
    }
}

/// The backend the configuration asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring if the kernel allows it, else portable (and the log says why).
    #[default]
    Auto,
    /// This backend or fail to open.
    Only(Backend),
}

/// How long `Device::reap` may sleep.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    No,
    /// With nothing in flight: until a producer sends (wake-up eventfd) or
    /// the duration passes. Both backends sleep in ppoll/read on the
    /// eventfd: a plain wake-up, cheaper than a read armed on the ring.
    Wakeup(Option<std::time::Duration>),
    /// Until a write finishes or the duration passes; sends do not wake.
    CompletionOrTimeout(std::time::Duration),
    /// Until a write finishes.
    Completion,
}

/// A write that finished: its slot is free again once the writer took it.
pub(crate) struct Completion {
    pub slot: usize,
    pub result: io::Result<()>,
}

/// An eventfd that wakes the writer. Also the `Waker` the writer gives the
/// request queue, so a producer's send wakes a sleeping writer.
pub(crate) struct WakeFd(OwnedFd);

impl WakeFd {
    fn new() -> io::Result<WakeFd> {
        // Blocking on purpose: the writer sleeps in read(2) on it.
        // SAFETY: eventfd has no memory arguments; we own the returned fd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Blocks until woken or `timeout` passes; consumes every wake-up so far.
    fn wait(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        if let Some(timeout) = timeout {
            let timespec = libc::timespec {
                tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: timeout.subsec_nanos().into(),
            };
            let mut poll = libc::pollfd {
                fd: self.raw(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd and a valid timespec; no signal mask.
            let ready =
                unsafe { libc::ppoll(&raw mut poll, 1, &raw const timespec, std::ptr::null()) };
            if ready <= 0 {
                // Timed out, or interrupted: the caller re-checks and decides.
                return Ok(());
            }
        }
        let mut count = 0u64;
        loop {
            // SAFETY: reads 8 bytes into `count`, which is 8 bytes long.
            let n = unsafe { libc::read(self.raw(), (&raw mut count).cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Wake for WakeFd {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let one = 1u64;
        // SAFETY: writes the 8 bytes of `one`. Cannot block: the counter
        // would have to reach 2^64 - 1 first.
        unsafe { libc::write(self.raw(), (&raw const one).cast(), 8) };
    }
}

const TAG_SYNC_BIT: u64 = 1;

/// State of one in-flight io_uring write.
struct SlotIo {
    fd: RawFd,
    offset: u64,
    /// A direct write: one completion, which is the write and the sync.
    direct: bool,
    written: usize,
    write_done: bool,
    sync_done: bool,
    error: Option<io::Error>,
}

/// A zeroed heap buffer whose address is a multiple of `DIRECT_BLOCK`.
struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn zeroed(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (len is at least one block).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        assert!(len >= DIRECT_BLOCK && len.is_multiple_of(DIRECT_BLOCK));
        Layout::from_size_align(len, DIRECT_BLOCK).expect("valid aligned layout")
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points at len initialized (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
    }
}

/// State of direct writes.
struct Direct {
    /// False for good once a file refuses `O_DIRECT` (the staging buffer
    /// stays: it is registered with the ring).
    on: bool,
    /// What a direct write sends: the head of its first block, the frames,
    /// zeros to the end of its last block.
    staging: AlignedBuf,
    /// The active file's bytes from the start of its last partial block to
    /// the end of the last write, keyed by (fd, end offset). A write that
    /// starts anywhere else reads them from the file first.
    tail: Option<Tail>,
}

struct Tail {
    fd: RawFd,
    end: u64,
    bytes: Vec<u8>,
}

impl Direct {
    fn new(buffer_capacity: usize) -> Direct {
        // Room for a head of up to one block, the frames, and padding.
        let len = (buffer_capacity + DIRECT_BLOCK).next_multiple_of(DIRECT_BLOCK);
        Direct {
            on: true,
            staging: AlignedBuf::zeroed(len),
            tail: None,
        }
    }
}

struct Uring {
    // Field order matters: the ring (holding the buffer registration) must be
    // dropped before `direct`'s staging buffer.
    ring: IoUring,
    registered: bool,
    /// Present if writes may go direct (see `Direct::on`).
    direct: Option<Direct>,
    slots: Vec<Option<SlotIo>>,
}

pub(crate) struct Device {
    // Field order matters: the ring (holding the buffer registration) must be
    // dropped before the buffers it points into.
    uring: Option<Uring>,
    buffers: Vec<Vec<u8>>,
    buffer_capacity: usize,
    free_slots: Vec<usize>,
    /// Completions not yet handed to the writer.
    done: VecDeque<Completion>,
    wake: Arc<WakeFd>,
}

impl Device {
    /// Opens `choice` with `depth` slots of `buffer_capacity` bytes (one slot
    /// for portable). Writes go direct if io_uring is used, `depth` is 1 and
    /// `segment_bytes` is a whole number of blocks (see the module doc).
    /// Returns the device and, if Auto fell back to portable, the reason.
    pub(crate) fn open(
        choice: BackendChoice,
        buffer_capacity: usize,
        depth: usize,
        segment_bytes: u64,
    ) -> io::Result<(Device, Option<io::Error>)> {
        assert!(depth >= 1);
        let (ring, fallback) = match choice {
            BackendChoice::Only(Backend::Portable) => (None, None),
            BackendChoice::Only(Backend::Uring) => (Some(IoUring::new(ring_entries(depth))?), None),
            BackendChoice::Auto => match IoUring::new(ring_entries(depth)) {
                Ok(ring) => (Some(ring), None),
                Err(err) => (None, Some(err)),
            },
        };
        let depth = if ring.is_some() { depth } else { 1 };
        let mut device = Device {
            uring: None,
            buffers: (0..depth)
                .map(|_| Vec::with_capacity(buffer_capacity))
                .collect(),
            buffer_capacity,
            free_slots: (0..depth).rev().collect(),
            done: VecDeque::new(),
            wake: Arc::new(WakeFd::new()?),
        };
        if let Some(ring) = ring {
            let mut direct = (depth == 1 && segment_bytes.is_multiple_of(DIRECT_BLOCK as u64))
                .then(|| Direct::new(buffer_capacity));
            let mut iovecs: Vec<libc::iovec> = device
                .buffers
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: buffer_capacity,
                })
                .collect();
            if let Some(direct) = direct.as_mut() {
                iovecs.push(libc::iovec {
                    iov_base: direct.staging.ptr.as_ptr().cast(),
                    iov_len: direct.staging.len,
                });
            }
            // SAFETY: each buffer is allocated once with the length given and
            // never reallocated (asserted in `submit`), and the buffers
            // outlive the ring because `uring` is dropped first and the ring
            // is dropped before the staging buffer (field order of `Uring`).
            let registered = unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok();
            device.uring = Some(Uring {
                ring,
                registered,
                direct,
                slots: (0..depth).map(|_| None).collect(),
            });
        }
        Ok((device, fallback))
    }

    /// How writes are made durable, for the log.
    pub(crate) fn write_method(&self) -> &'static str {
        match &self.uring {
            None => "pwrite + fdatasync",
            Some(uring) if uring.direct_on() => "O_DIRECT + RWF_DSYNC writes",
            Some(_) => "write linked to fdatasync",
        }
    }

    /// The active file changed (rollover): the next direct write reads its
    /// first block's bytes from the new file.
    pub(crate) fn forget_tail(&mut self) {
        if let Some(direct) = self.uring.as_mut().and_then(|u| u.direct.as_mut()) {
            direct.tail = None;
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        if self.uring.is_some() {
            Backend::Uring
        } else {
            Backend::Portable
        }
    }

    /// The waker to register with the request queue.
    pub(crate) fn waker(&self) -> Waker {
        Waker::from(Arc::clone(&self.wake))
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buffer_capacity
    }

    pub(crate) fn take_slot(&mut self) -> Option<usize> {
        self.free_slots.pop()
    }

    pub(crate) fn has_free_slot(&self) -> bool {
        !self.free_slots.is_empty()
    }

    /// The buffer of a taken slot; callers must not grow it past `capacity()`.
    pub(crate) fn buffer_mut(&mut self, slot: usize) -> &mut Vec<u8> {
        &mut self.buffers[slot]
    }

    /// Starts writing the slot's buffer at `offset` of `file` and making it
    /// durable. The portable backend finishes before returning.
    pub(crate) fn submit(&mut self, slot: usize, file: &File, offset: u64) {
        let buffer = &self.buffers[slot];
        assert!(
            buffer.capacity() == self.buffer_capacity,
            "slot buffer reallocated"
        );
        assert!(!buffer.is_empty());
        match self.uring.as_mut() {
            None => {
                let result = file
                    .write_all_at(buffer, offset)
                    .and_then(|()| file.sync_data());
                self.done.push_back(Completion { slot, result });
            }
            Some(uring) => {
                let direct = match uring.direct_on() {
                    true => uring.prepare_direct(file, offset),
                    false => Ok(false),
                };
                let direct = match direct {
                    Ok(direct) => direct,
                    Err(error) => {
                        self.done.push_back(Completion {
                            slot,
                            result: Err(error),
                        });
                        return;
                    }
                };
                uring.slots[slot] = Some(SlotIo {
                    fd: file.as_raw_fd(),
                    offset,
                    direct,
                    written: 0,
                    write_done: false,
                    sync_done: false,
                    error: None,
                });
                let pushed = if direct {
                    uring.push_direct(slot, buffer)
                } else {
                    uring.push_write_sync(slot, buffer)
                };
                if let Err(error) = pushed {
                    uring.slots[slot] = None;
                    self.done.push_back(Completion {
                        slot,
                        result: Err(error),
                    });
                }
            }
        }
    }

    /// Takes finished writes, first sleeping as `wait` says if none is.
    pub(crate) fn reap(&mut self, wait: Wait, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.done.is_empty() {
            match (self.uring.as_mut(), wait) {
                (_, Wait::No) => {}
                (None, Wait::Wakeup(timeout)) => self.wake.wait(timeout)?,
                // One write at a time, finished inside `submit`: nothing to wait for.
                (None, Wait::CompletionOrTimeout(_) | Wait::Completion) => {}
                (Some(uring), Wait::Wakeup(timeout)) => {
                    assert!(
                        uring.slots.iter().all(Option::is_none),
                        "Wait::Wakeup with a write in flight"
                    );
                    self.wake.wait(timeout)?
                }
                (Some(uring), Wait::CompletionOrTimeout(timeout)) => uring.wait(Some(timeout))?,
                (Some(uring), Wait::Completion) => uring.wait(None)?,
            }
        }
        if let Some(uring) = self.uring.as_mut() {
            uring.collect(&self.buffers, &mut self.done);
        }
        for completion in self.done.drain(..) {
            self.buffers[completion.slot].clear();
            self.free_slots.push(completion.slot);
            out.push(completion);
        }
        Ok(())
    }
}

fn ring_entries(depth: usize) -> u32 {
    // Two entries per write plus the wake-up read, rounded up.
    u32::try_from(2 * depth + 1)
        .unwrap_or(u32::MAX)
        .next_power_of_two()
        .max(8)
}

impl Uring {
    fn direct_on(&self) -> bool {
        self.direct.as_ref().is_some_and(|direct| direct.on)
    }

    /// Makes sure the next direct write to `file` at `offset` knows the bytes
    /// before `offset` in its first block, switching the file to `O_DIRECT`
    /// when it is new. Ok(false): the file system refuses `O_DIRECT`; direct
    /// writes are off from now on.
    fn prepare_direct(&mut self, file: &File, offset: u64) -> io::Result<bool> {
        let fd = file.as_raw_fd();
        let direct = self.direct.as_mut().expect("direct writes on");
        if direct
            .tail
            .as_ref()
            .is_some_and(|tail| tail.fd == fd && tail.end == offset)
        {
            return Ok(true);
        }
        direct.tail = None;
        if let Some(align) = direct_io_alignment(fd)
            && !align.fits(DIRECT_BLOCK as u32)
        {
            tracing::warn!(
                "WAL: the file system takes O_DIRECT writes aligned to {} B in the file and {} B in memory (0: not at all), not 4 KiB blocks; writing through the page cache + fdatasync",
                align.offset,
                align.memory
            );
            direct.on = false;
            return Ok(false);
        }
        // A buffered read (O_DIRECT cleared first, should the file have it).
        set_o_direct(fd, false)?;
        let block_start = offset - offset % DIRECT_BLOCK as u64;
        let mut bytes = vec![0; (offset - block_start) as usize];
        file.read_exact_at(&mut bytes, block_start)?;
        match set_o_direct(fd, true) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "WAL: the file system refuses O_DIRECT ({err}); writing through the page cache + fdatasync"
                );
                direct.on = false;
                return Ok(false);
            }
            Err(err) => return Err(err),
        }
        direct.tail = Some(Tail {
            fd,
            end: offset,
            bytes,
        });
        Ok(true)
    }

    /// Stages and submits (without waiting) slot's frames as one direct
    /// write of whole blocks with `RWF_DSYNC`.
    fn push_direct(&mut self, slot: usize, frames: &[u8]) -> io::Result<()> {
        let io = self.slots[slot].as_ref().expect("slot in flight");
        let (fd, offset) = (io.fd, io.offset);
        let direct = self.direct.as_mut().expect("direct writes on");
        let tail = direct.tail.as_mut().expect("prepare_direct set the tail");
        debug_assert!(tail.fd == fd && tail.end == offset);
        let block_start = offset - tail.bytes.len() as u64;
        let head = tail.bytes.len();
        let end = head + frames.len();
        let padded = direct_write_len(offset, frames.len());
        let staging = direct.staging.as_mut_slice();
        assert!(
            padded <= staging.len(),
            "write larger than the staging buffer"
        );
        staging[..head].copy_from_slice(&tail.bytes);
        staging[head..end].copy_from_slice(frames);
        staging[end..padded].fill(0);
        // What this write leaves in its last partial block, for the next.
        let last_block = end - end % DIRECT_BLOCK;
        tail.bytes.clear();
        tail.bytes.extend_from_slice(&staging[last_block..end]);
        tail.end = offset + frames.len() as u64;
        let len = u32::try_from(padded).map_err(|_| io::Error::other("write over 4 GiB"))?;
        let target = types::Fd(fd);
        let write = if self.registered {
            let index =
                u16::try_from(self.slots.len()).map_err(|_| io::Error::other("too many slots"))?;
            opcode::WriteFixed::new(target, staging.as_ptr(), len, index)
                .offset(block_start)
                .rw_flags(libc::RWF_DSYNC)
                .build()
        } else {
            opcode::Write::new(target, staging.as_ptr(), len)
                .offset(block_start)
                .rw_flags(libc::RWF_DSYNC)
                .build()
        };
        let write = write.user_data(((slot as u64) << 1) | TAG_SYNC_BIT);
        // SAFETY: the entry points into the staging buffer, which is not
        // touched until this write completes (one direct write in flight:
        // direct writes need one slot), and at a file the writer keeps open.
        unsafe {
            self.ring
                .submission()
                .push(&write)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.ring.submit()?;
        Ok(())
    }

    /// Queues and submits (without waiting) the rest of slot's write,
    /// linked to an fdatasync.
    fn push_write_sync(&mut self, slot: usize, buffer: &[u8]) -> io::Result<()> {
        let io = self.slots[slot].as_ref().expect("slot in flight");
        let rest = &buffer[io.written..];
        let len = u32::try_from(rest.len()).map_err(|_| io::Error::other("write over 4 GiB"))?;
        let fd = types::Fd(io.fd);
        let at = io.offset + io.written as u64;
        let write = if self.registered {
            let index = u16::try_from(slot).map_err(|_| io::Error::other("too many slots"))?;
            opcode::WriteFixed::new(fd, rest.as_ptr(), len, index)
                .offset(at)
                .build()
        } else {
            opcode::Write::new(fd, rest.as_ptr(), len)
                .offset(at)
                .build()
        };
        let tag = (slot as u64) << 1;
        let write = write.flags(squeue::Flags::IO_LINK).user_data(tag);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(tag | TAG_SYNC_BIT);
        // SAFETY: the entries point into the slot's buffer and at a file the
        // writer keeps open; neither is touched or dropped until both
        // completions have been reaped (the slot stays taken until then).
        unsafe {
            let mut sq = self.ring.submission();
            if sq.capacity() - sq.len() < 2 {
                return Err(io::Error::other("io_uring submission queue full"));
            }
            sq.push(&write)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            sq.push(&sync)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.ring.submit()?;
        Ok(())
    }

    /// Sleeps until any completion, or gives up after `timeout`.
    fn wait(&mut self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        loop {
            let entered = match timeout {
                None => self.ring.submit_and_wait(1),
                Some(timeout) => {
                    let timespec = types::Timespec::from(timeout);
                    let args = types::SubmitArgs::new().timespec(&timespec);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            match entered {
                Ok(_) => return Ok(()),
                Err(err) if err.raw_os_error() == Some(libc::ETIME) => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Moves finished slots to `done`; resubmits the rest of a short write.
    fn collect(&mut self, buffers: &[Vec<u8>], done: &mut VecDeque<Completion>) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (tag, res) in cqes {
            let slot = (tag >> 1) as usize;
            let Some(io) = self.slots[slot].as_mut() else {
                continue;
            };
            let buffer_len = buffers[slot].len();
            if io.direct {
                io.write_done = true;
                io.sync_done = true;
                if res < 0 {
                    io.error.get_or_insert(io::Error::from_raw_os_error(-res));
                } else if (res as usize) < direct_write_len(io.offset, buffer_len) {
                    // Whole blocks or nothing: a short direct write is a failure.
                    io.error.get_or_insert(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("direct write of {buffer_len} B of frames wrote {res} B"),
                    ));
                } else {
                    io.written = buffer_len;
                }
            } else if tag & TAG_SYNC_BIT == 0 {
                io.write_done = true;
                if res < 0 {
                    io.error.get_or_insert(io::Error::from_raw_os_error(-res));
                } else if res == 0 && io.written < buffer_len {
                    io.error
                        .get_or_insert(io::Error::from(io::ErrorKind::WriteZero));
                } else {
                    io.written += res as usize;
                }
            } else {
                io.sync_done = true;
                let cancelled_by_short_write = res == -libc::ECANCELED && io.written < buffer_len;
                if res < 0 && !cancelled_by_short_write {
                    io.error.get_or_insert(io::Error::from_raw_os_error(-res));
                }
            }
            if !(io.write_done && io.sync_done) {
                continue;
            }
            let short = io.written < buffer_len;
            if io.error.is_none() && short {
                // The link broke on a short write: write the rest, sync again.
                io.write_done = false;
                io.sync_done = false;
                if let Err(error) = self.push_write_sync(slot, &buffers[slot]) {
                    done.push_back(Completion {
                        slot,
                        result: Err(error),
                    });
                    self.slots[slot] = None;
                }
                continue;
            }
            let io = self.slots[slot].take().expect("slot in flight");
            done.push_back(Completion {
                slot,
                result: io.error.map_or(Ok(()), Err),
            });
        }
    }
}

/// Bytes a direct write of `frames` bytes at `offset` sends: whole blocks
/// from the one holding `offset` to the one holding its last byte.
fn direct_write_len(offset: u64, frames: usize) -> usize {
    let head = (offset % DIRECT_BLOCK as u64) as usize;
    (head + frames).next_multiple_of(DIRECT_BLOCK)
}

/// What `O_DIRECT` needs of a file's writes, as the kernel reports it.
#[derive(Clone, Copy, Debug)]
struct DirectAlignment {
    /// File offsets and lengths must be multiples of this (0: no O_DIRECT).
    offset: u32,
    /// Buffer addresses must be multiples of this.
    memory: u32,
}

impl DirectAlignment {
    /// Whether writes of whole `block`s from a `block`-aligned buffer are
    /// allowed (alignments are powers of two).
    fn fits(self, block: u32) -> bool {
        (1..=block).contains(&self.offset) && (1..=block).contains(&self.memory)
    }
}

/// The file's O_DIRECT alignment (`statx` `STATX_DIOALIGN`, Linux 6.1+);
/// None if the kernel does not say, and then `fcntl` is the test.
fn direct_io_alignment(fd: RawFd) -> Option<DirectAlignment> {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut stat: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty path with AT_EMPTY_PATH names `fd` itself; `stat`
    // is a valid, writable statx.
    let result = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &raw mut stat,
        )
    };
    (result == 0 && stat.stx_mask & libc::STATX_DIOALIGN != 0).then_some(DirectAlignment {
        offset: stat.stx_dio_offset_align,
        memory: stat.stx_dio_mem_align,
    })
}

/// Sets or clears `O_DIRECT` on an open file.
fn set_o_direct(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take and return plain integers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    if wanted != flags {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, wanted) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_fits_only_whole_blocks_it_divides() {
        let fits = |offset, memory| DirectAlignment { offset, memory }.fits(4096);
        assert!(fits(512, 512));
        assert!(fits(4096, 4096));
        assert!(!fits(0, 0), "0 means no O_DIRECT");
        assert!(!fits(8192, 512), "8 KiB blocks do not fit 4 KiB writes");
        assert!(!fits(512, 8192));
    }

    /// Where the kernel reports an alignment that fits, a direct write of
    /// one block from an aligned buffer must work (and the bytes be there).
    #[test]
    fn a_reported_alignment_that_fits_allows_a_direct_block_write() {
        for dir in [std::env::temp_dir(), std::path::PathBuf::from("/dev/shm")] {
            let Ok(file) = tempfile::tempfile_in(&dir) else {
                continue;
            };
            file.set_len(2 * DIRECT_BLOCK as u64).expect("set_len");
            let fd = file.as_raw_fd();
            let Some(align) = direct_io_alignment(fd) else {
                continue; // kernel before 6.1: fcntl decides at run time
            };
            if !align.fits(DIRECT_BLOCK as u32) {
                continue;
            }
            set_o_direct(fd, true).expect("O_DIRECT where statx says it works");
            let mut block = AlignedBuf::zeroed(DIRECT_BLOCK);
            block.as_mut_slice().fill(0xA5);
            let written = file
                .write_at(block.as_mut_slice(), DIRECT_BLOCK as u64)
                .expect("direct write");
            assert_eq!(written, DIRECT_BLOCK, "{}", dir.display());
            set_o_direct(fd, false).expect("clear O_DIRECT");
            let mut back = vec![0u8; DIRECT_BLOCK];
            file.read_exact_at(&mut back, DIRECT_BLOCK as u64)
                .expect("read back");
            assert!(back.iter().all(|&b| b == 0xA5), "{}", dir.display());
        }
    }
}
