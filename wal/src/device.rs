//! The two ways the writer makes a batch durable: one write + one
//! `fdatasync` per batch, through io_uring (the write and the sync linked in
//! one submission, from a registered buffer) or through `pwrite` +
//! `fdatasync` (portable fallback).
//!
//! Owns: the io_uring instance and the writer's batch buffer (registered
//! with the ring, so it is allocated once and never grows past its capacity).
//! Invariant: `write_sync` returns Ok only after the bytes are durable. A
//! failed sync is never retried: the caller poisons the WAL.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// Which backend the WAL writes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring: linked write + fdatasync in one submission.
    Uring,
    /// `pwrite` + `fdatasync`: works everywhere.
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

const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;

pub(crate) struct Device {
    // Field order matters: the ring (holding the buffer registration) must be
    // dropped before the buffer it points into.
    ring: Option<IoUring>,
    registered: bool,
    buffer: Vec<u8>,
    buffer_capacity: usize,
}

impl Device {
    /// Opens `choice` with a batch buffer of `buffer_capacity` bytes. Returns
    /// the device and, if Auto fell back to portable, the reason.
    pub(crate) fn open(
        choice: BackendChoice,
        buffer_capacity: usize,
    ) -> io::Result<(Device, Option<io::Error>)> {
        let buffer = Vec::with_capacity(buffer_capacity);
        let mut device = Device {
            ring: None,
            registered: false,
            buffer,
            buffer_capacity,
        };
        let fallback = match choice {
            BackendChoice::Only(Backend::Portable) => None,
            BackendChoice::Only(Backend::Uring) => {
                device.ring = Some(IoUring::new(8)?);
                None
            }
            BackendChoice::Auto => match IoUring::new(8) {
                Ok(ring) => {
                    device.ring = Some(ring);
                    None
                }
                Err(err) => Some(err),
            },
        };
        if let Some(ring) = &device.ring {
            let iovec = libc::iovec {
                iov_base: device.buffer.as_mut_ptr().cast(),
                iov_len: device.buffer_capacity,
            };
            // SAFETY: the buffer is allocated once with `buffer_capacity`
            // bytes, never reallocated (`buffer_mut` users stay within the
            // capacity, asserted in `write_sync`), and outlives the ring
            // because `ring` is declared (and so dropped) first.
            device.registered = unsafe { ring.submitter().register_buffers(&[iovec]) }.is_ok();
        }
        Ok((device, fallback))
    }

    pub(crate) fn backend(&self) -> Backend {
        if self.ring.is_some() {
            Backend::Uring
        } else {
            Backend::Portable
        }
    }

    /// The batch buffer; callers must not grow it past `capacity()`.
    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buffer_capacity
    }

    /// Writes the whole buffer at `offset` of `file` and makes it durable.
    pub(crate) fn write_sync(&mut self, file: &File, offset: u64) -> io::Result<()> {
        assert!(
            self.buffer.capacity() == self.buffer_capacity,
            "batch buffer reallocated"
        );
        assert!(self.buffer.len() <= self.buffer_capacity);
        match self.ring.as_mut() {
            None => {
                file.write_all_at(&self.buffer, offset)?;
                file.sync_data()
            }
            Some(ring) => uring_write_sync(ring, self.registered, file, &self.buffer, offset),
        }
    }
}

fn uring_write_sync(
    ring: &mut IoUring,
    registered: bool,
    file: &File,
    buffer: &[u8],
    offset: u64,
) -> io::Result<()> {
    let fd = types::Fd(file.as_raw_fd());
    let mut done = 0usize;
    loop {
        let rest = &buffer[done..];
        let len = u32::try_from(rest.len()).map_err(|_| io::Error::other("write over 4 GiB"))?;
        let at = offset + done as u64;
        let write = if registered {
            opcode::WriteFixed::new(fd, rest.as_ptr(), len, 0)
                .offset(at)
                .build()
        } else {
            opcode::Write::new(fd, rest.as_ptr(), len)
                .offset(at)
                .build()
        };
        let write = write
            .flags(squeue::Flags::IO_LINK)
            .user_data(USER_DATA_WRITE);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(USER_DATA_SYNC);
        // SAFETY: both entries refer to `buffer` and `file`, which outlive
        // this call, and we wait for both completions before returning.
        unsafe {
            let mut sq = ring.submission();
            sq.push(&write)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            sq.push(&sync)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        let mut seen = 0;
        while seen < 2 {
            match ring.submit_and_wait(2 - seen) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            let mut written = None;
            let mut synced = None;
            for cqe in ring.completion() {
                seen += 1;
                match cqe.user_data() {
                    USER_DATA_WRITE => written = Some(cqe.result()),
                    _ => synced = Some(cqe.result()),
                }
            }
            if let Some(res) = written {
                if res < 0 {
                    drain(ring, 2 - seen)?;
                    return Err(io::Error::from_raw_os_error(-res));
                }
                done += res as usize;
            }
            if let Some(res) = synced
                && res < 0
                && !(res == -libc::ECANCELED && done < buffer.len())
            {
                return Err(io::Error::from_raw_os_error(-res));
            }
        }
        if done >= buffer.len() {
            return Ok(());
        }
        // Short write: the linked sync was cancelled; write the rest.
    }
}

/// Reaps the outstanding completions of a failed submission.
fn drain(ring: &mut IoUring, mut left: usize) -> io::Result<()> {
    while left > 0 {
        ring.submit_and_wait(left)?;
        left -= ring.completion().count();
    }
    Ok(())
}
