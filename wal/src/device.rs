//! The two ways the writer makes a write durable (one write + one
//! `fdatasync`), and how the writer sleeps.
//!
//! - io_uring: each write is a `WriteFixed` linked to an `Fsync(DATASYNC)`,
//!   submitted without waiting; up to `writes_in_flight` of them run at
//!   once. The writer sleeps in `io_uring_enter`, woken by a completion, a
//!   timeout, or a read armed on the wake-up eventfd. The kernel runs the
//!   fsync on an io-wq worker thread, a hand-off the portable backend avoids.
//! - portable: `pwrite` + `fdatasync` done inside `submit`; one write at a
//!   time; the writer sleeps in `ppoll`/`read` on the wake-up eventfd.
//!
//! Owns: the ring, one buffer per slot (allocated once, registered with the
//! ring, never grown past its capacity), the wake-up eventfd.
//! Invariants: a slot's buffer is not touched between `submit` and the
//! completion that frees it; `Completion::result` is Ok only once the bytes
//! are durable; a failed sync is reported, never retried.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::task::{Wake, Waker};

use io_uring::{IoUring, opcode, squeue, types};

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
    /// Until a write finishes or a producer sends (wake-up eventfd), or the
    /// duration passes.
    CompletionOrWakeup(Option<std::time::Duration>),
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
        // Blocking on purpose: the portable writer sleeps in read(2), and
        // io_uring polls a blocking eventfd instead of failing with EAGAIN.
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

const TAG_WAKE: u64 = u64::MAX;
const TAG_SYNC_BIT: u64 = 1;

/// State of one in-flight io_uring write.
struct SlotIo {
    fd: RawFd,
    offset: u64,
    written: usize,
    write_done: bool,
    sync_done: bool,
    error: Option<io::Error>,
}

struct Uring {
    ring: IoUring,
    registered: bool,
    slots: Vec<Option<SlotIo>>,
    wake_armed: bool,
    /// Target of the armed eventfd read; boxed so its address is stable.
    wake_buffer: Box<u64>,
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
    /// for portable). Returns the device and, if Auto fell back to portable,
    /// the reason.
    pub(crate) fn open(
        choice: BackendChoice,
        buffer_capacity: usize,
        depth: usize,
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
            let iovecs: Vec<libc::iovec> = device
                .buffers
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: buffer_capacity,
                })
                .collect();
            // SAFETY: each buffer is allocated once with `buffer_capacity`
            // bytes and never reallocated (asserted in `submit`), and the
            // buffers outlive the ring because `uring` is dropped first.
            let registered = unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok();
            device.uring = Some(Uring {
                ring,
                registered,
                slots: (0..depth).map(|_| None).collect(),
                wake_armed: false,
                wake_buffer: Box::new(0),
            });
        }
        Ok((device, fallback))
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
                uring.slots[slot] = Some(SlotIo {
                    fd: file.as_raw_fd(),
                    offset,
                    written: 0,
                    write_done: false,
                    sync_done: false,
                    error: None,
                });
                if let Err(error) = uring.push_write_sync(slot, buffer) {
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
                (None, Wait::CompletionOrWakeup(timeout)) => self.wake.wait(timeout)?,
                // One write at a time, finished inside `submit`: nothing to wait for.
                (None, Wait::CompletionOrTimeout(_) | Wait::Completion) => {}
                (Some(uring), Wait::CompletionOrWakeup(timeout)) => {
                    uring.wait(Some(&self.wake), timeout)?
                }
                (Some(uring), Wait::CompletionOrTimeout(timeout)) => {
                    uring.wait(None, Some(timeout))?
                }
                (Some(uring), Wait::Completion) => uring.wait(None, None)?,
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

    /// Sleeps until any completion: with `wake`, a read armed on the wake-up
    /// eventfd counts; with `timeout`, gives up after it.
    fn wait(
        &mut self,
        wake: Option<&WakeFd>,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<()> {
        if let Some(wake) = wake
            && !self.wake_armed
        {
            let read = opcode::Read::new(
                types::Fd(wake.raw()),
                (&raw mut *self.wake_buffer).cast(),
                8,
            )
            .build()
            .user_data(TAG_WAKE);
            // SAFETY: `wake_buffer` is boxed and lives as long as the ring;
            // the eventfd lives as long as the device.
            unsafe {
                self.ring
                    .submission()
                    .push(&read)
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
            self.wake_armed = true;
        }
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
            if tag == TAG_WAKE {
                self.wake_armed = false;
                continue;
            }
            let slot = (tag >> 1) as usize;
            let Some(io) = self.slots[slot].as_mut() else {
                continue;
            };
            let buffer_len = buffers[slot].len();
            if tag & TAG_SYNC_BIT == 0 {
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
