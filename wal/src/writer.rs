//! The writer thread: the one owner of the active segment file.
//!
//! Owns: the request queue's receiving end, framing, group commit and
//! segment rollover. Each round takes everything pending (up to
//! `max_write_bytes`), frames it into one buffer, issues one write + one
//! fdatasync, publishes the new durable end, then completes every waiter.
//!
//! Invariants:
//! - One write is in flight at a time, and a write never spans segments; so
//!   after a crash only the last write of the last segment can be torn.
//! - Waiters are completed only after their bytes are durable.
//! - After a failed write or sync the writer is poisoned: it fails every
//!   later append with the original cause and never retries the sync.
//!   A failed spare allocation (ENOSPC) is not poison: the appends that
//!   needed the new segment fail and the next append tries again.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::device::Device;
use crate::error::{Result, WalError};
use crate::format::{self, Lsn, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::log::{Shared, WalConfig};
use crate::recovery::{ActiveSegment, SegmentInfo};
use crate::segment;
use crate::spares::Spares;

pub(crate) struct Request {
    pub kind: u8,
    pub payload: Bytes,
    pub done: oneshot::Sender<Result<Lsn>>,
}

pub(crate) struct Writer {
    config: WalConfig,
    device: Device,
    active: ActiveSegment,
    active_path: PathBuf,
    shared: Arc<Shared>,
    spares: Arc<Spares>,
    requests: mpsc::Receiver<Request>,
    /// Waiters of the frames now in the device buffer, with their LSNs.
    pending: Vec<(oneshot::Sender<Result<Lsn>>, Lsn)>,
    /// LSN of the first frame in the device buffer.
    write_lsn: Lsn,
    poisoned: Option<WalError>,
}

impl Writer {
    pub fn new(
        config: WalConfig,
        device: Device,
        active: ActiveSegment,
        shared: Arc<Shared>,
        spares: Arc<Spares>,
        requests: mpsc::Receiver<Request>,
    ) -> Writer {
        let active_path = shared
            .segments()
            .last()
            .map(|s| s.path.clone())
            .expect("an open WAL has an active segment");
        let write_lsn = active.next_lsn();
        Writer {
            config,
            device,
            active,
            active_path,
            shared,
            spares,
            requests,
            pending: Vec::new(),
            write_lsn,
            poisoned: None,
        }
    }

    pub fn run(mut self) {
        let mut batch = Vec::new();
        while let Some(first) = self.requests.blocking_recv() {
            let mut batch_bytes = format::frame_bytes(first.payload.len());
            batch.push(first);
            while batch_bytes < self.config.max_write_bytes as u64 {
                let Ok(next) = self.requests.try_recv() else {
                    break;
                };
                batch_bytes += format::frame_bytes(next.payload.len());
                batch.push(next);
            }
            self.commit(&mut batch);
        }
        self.shared.mark_closed();
    }

    fn commit(&mut self, batch: &mut Vec<Request>) {
        let mut requests = batch.drain(..);
        while let Some(request) = requests.next() {
            if let Some(err) = &self.poisoned {
                let _ = request
                    .done
                    .send(Err(WalError::Poisoned(Box::new(err.clone()))));
                continue;
            }
            let frame_bytes = format::frame_bytes(request.payload.len());
            if self.device.buffer_mut().len() as u64 + frame_bytes > self.device.capacity() as u64 {
                self.flush();
            }
            if self.active.write_offset + self.buffered_bytes() + frame_bytes
                > self.active.capacity_bytes
            {
                self.flush();
                if self.poisoned.is_none()
                    && let Err(err) = self.rollover()
                {
                    // The segment is full and no new one could be made: fail
                    // this append and the rest of the batch, keep running.
                    tracing::error!("WAL: cannot start a new segment: {err}");
                    let _ = request.done.send(Err(err.clone()));
                    for rest in requests.by_ref() {
                        let _ = rest.done.send(Err(err.clone()));
                    }
                    break;
                }
                if self.poisoned.is_some() {
                    let err = self.poisoned.clone().expect("checked");
                    let _ = request.done.send(Err(WalError::Poisoned(Box::new(err))));
                    continue;
                }
            }
            let lsn = Lsn(self.write_lsn.0 + self.buffered_bytes());
            format::encode_frame(
                self.device.buffer_mut(),
                lsn,
                self.write_lsn,
                request.kind,
                &request.payload,
            );
            self.pending.push((request.done, lsn));
        }
        drop(requests);
        self.flush();
    }

    fn buffered_bytes(&mut self) -> u64 {
        self.device.buffer_mut().len() as u64
    }

    /// Makes the buffered frames durable and completes their waiters.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = self.buffered_bytes();
        let result = self
            .device
            .write_sync(&self.active.file, self.active.write_offset);
        self.device.buffer_mut().clear();
        match result {
            Ok(()) => {
                self.active.write_offset += bytes;
                let end = self.active.next_lsn();
                assert!(end.0 == self.write_lsn.0 + bytes);
                self.write_lsn = end;
                self.shared.publish_durable(end);
                self.shared
                    .records
                    .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                for (done, lsn) in self.pending.drain(..) {
                    let _ = done.send(Ok(lsn));
                }
            }
            Err(io_err) => {
                let err = WalError::io("write + fdatasync of", &self.active_path, io_err);
                tracing::error!("WAL poisoned, no further writes: {err}");
                for (done, _) in self.pending.drain(..) {
                    let _ = done.send(Err(err.clone()));
                }
                self.poisoned = Some(err);
            }
        }
    }

    /// Starts the next segment at the current end of the log.
    fn rollover(&mut self) -> Result<()> {
        assert!(self.pending.is_empty(), "rollover with unflushed frames");
        let header = SegmentHeader {
            first_lsn: self.active.next_lsn(),
            epoch: self.config.epoch,
            segment_bytes: self.config.segment_bytes,
        };
        let spare = self.spares.take()?;
        let (file, path) = match segment::install_segment(&self.shared.dir, &spare, &header) {
            Ok(installed) => installed,
            Err(err) => {
                // A failed header sync or rename leaves the directory in a
                // state we will not guess about: stop writing.
                self.poisoned = Some(err.clone());
                return Err(err);
            }
        };
        self.shared.push_segment(SegmentInfo {
            first_lsn: header.first_lsn,
            path: path.clone(),
        });
        self.active = ActiveSegment {
            file,
            first_lsn: header.first_lsn,
            capacity_bytes: header.segment_bytes,
            write_offset: SEGMENT_HEADER_BYTES as u64,
        };
        self.active_path = path;
        self.write_lsn = header.first_lsn;
        Ok(())
    }
}
