//! The writer thread: the one owner of the active segment file.
//!
//! Owns: the request queue's receiving end, framing, group commit,
//! pipelining and segment rollover. While a slot is free it takes every
//! pending request (up to `max_write_bytes`), frames them into the slot's
//! buffer and submits one write + one fdatasync; with nothing in flight it
//! first gathers the producers of the last write for a bounded moment, so
//! each fdatasync carries them all (`Writer::gather`). The thread runs
//! under `SCHED_BATCH`, so waking it never preempts a producer
//! (`schedule_without_wakeup_preemption`). Completed writes are
//! acknowledged strictly in LSN order: the durable end moves past a write
//! only when it and every earlier write are durable.
//!
//! Invariants:
//! - At most `writes_in_flight` writes are in flight (one for portable);
//!   a write never spans segments, and all writes of a segment are durable
//!   before the next segment is installed. So after a crash only the last
//!   writes of the last segment can be torn, and each frame's
//!   `inflight_lsn` says which earlier writes could have been torn with it.
//! - Waiters are completed only after their bytes, and all bytes before
//!   them, are durable.
//! - After a failed write or sync the writer is poisoned: it fails every
//!   unacknowledged and later append with the original cause and never
//!   retries the sync. A failed spare allocation (ENOSPC) is not poison: the
//!   appends that needed the new segment fail and the next append retries.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::device::{Completion, Device, Wait};
use crate::error::{Result, WalError};
use crate::format::{self, Frame, Lsn, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::log::{Shared, WalConfig};
use crate::recovery::{ActiveSegment, SegmentInfo};
use crate::segment;
use crate::spares::Spares;

pub(crate) struct Request {
    pub kind: u8,
    pub payload: Bytes,
    pub done: oneshot::Sender<Result<Lsn>>,
}

type Waiter = (oneshot::Sender<Result<Lsn>>, Lsn);

/// A submitted write, oldest first in `Writer::in_flight`.
struct InFlight {
    slot: usize,
    start_lsn: Lsn,
    end_lsn: Lsn,
    waiters: Vec<Waiter>,
    finished: bool,
    submitted_at: Instant,
}

/// Bounds of the gathering delays (see `Writer::gather_window`).
const GATHER_WINDOW_MIN: Duration = Duration::from_micros(5);
const GATHER_WINDOW_MAX: Duration = Duration::from_millis(1);

pub(crate) struct Writer {
    config: WalConfig,
    device: Device,
    waker: Waker,
    active: ActiveSegment,
    active_path: PathBuf,
    shared: Arc<Shared>,
    spares: Arc<Spares>,
    requests: mpsc::Receiver<Request>,
    queue_closed: bool,
    /// Requests taken from the queue, not yet framed.
    backlog: VecDeque<Request>,
    backlog_bytes: u64,
    in_flight: VecDeque<InFlight>,
    completions: Vec<Completion>,
    /// Moving average of how long a write takes from submit to durable.
    write_latency_avg: Duration,
    /// Requests to gather before the next write when nothing is in flight:
    /// those waiting when the last write was acknowledged plus the producers
    /// of that write, who send again right away (see `gather`).
    gather_target: usize,
    /// Upper bound of the gathering window, adapted to how fast producers
    /// send again: halved after a gather that timed out short of its
    /// target (producers far away, e.g. clients over a network: waiting
    /// only delays the write), doubled after one that reached it.
    gather_window_cap: Duration,
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
        Writer {
            config,
            waker: device.waker(),
            device,
            active,
            active_path,
            shared,
            spares,
            requests,
            queue_closed: false,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            in_flight: VecDeque::new(),
            completions: Vec::new(),
            write_latency_avg: Duration::from_micros(100),
            gather_target: 0,
            gather_window_cap: GATHER_WINDOW_MAX,
            poisoned: None,
        }
    }

    pub fn run(mut self) {
        set_fine_timer_slack();
        schedule_without_wakeup_preemption();
        loop {
            self.reap(Wait::No);
            if self.device.has_free_slot() {
                self.fill_backlog();
            }
            if self.queue_closed && self.backlog.is_empty() && self.in_flight.is_empty() {
                break;
            }
            if self.poisoned.is_some() {
                self.fail_backlog();
            } else if let Some(first) = self.backlog.front() {
                let frame_bytes = format::frame_bytes(first.payload.len());
                if !self.segment_has_room(frame_bytes) {
                    if self.in_flight.is_empty() {
                        self.rollover_or_fail();
                        continue;
                    }
                } else if self.device.has_free_slot() {
                    self.gather();
                    self.submit_write();
                    continue;
                }
            }
            self.reap(self.next_wait());
        }
        self.shared.mark_closed();
    }

    /// How to sleep when there is nothing to submit right now.
    /// - Nothing in flight: until a producer sends (then submit at once).
    /// - A write in flight and a slot free: until it finishes or for half a
    ///   typical write, then submit what has gathered as a second write. A
    ///   send does not wake the writer here, so requests arriving during a
    ///   write form one batch instead of each taking a write of its own.
    /// - No slot free: until a write finishes.
    fn next_wait(&self) -> Wait {
        if self.in_flight.is_empty() {
            Wait::Wakeup(None)
        } else if self.device.has_free_slot() && self.poisoned.is_none() {
            Wait::CompletionOrTimeout(self.gather_window())
        } else {
            Wait::Completion
        }
    }

    /// Half a typical write: what gathering may add to a commit's latency.
    fn gather_window(&self) -> Duration {
        (self.write_latency_avg / 2).clamp(GATHER_WINDOW_MIN, self.gather_window_cap)
    }

    /// Group commit's weak spot: the producers of the write just
    /// acknowledged send again a few microseconds later, so a write started
    /// at once carries only those that were already waiting, and batches
    /// alternate between two halves of the producers. So with nothing in
    /// flight, wait until `gather_target` requests are here, the write is
    /// full, or `gather_window` passes, checking a few times on a timer (a
    /// wake-up per send costs more than it saves). A lone producer (target
    /// of one) never waits.
    fn gather(&mut self) {
        if !self.in_flight.is_empty() || self.gather_target < 2 {
            return;
        }
        let window = self.gather_window();
        let deadline = Instant::now() + window;
        loop {
            self.fill_backlog_with(Waker::noop());
            let full = self.backlog_bytes >= self.config.max_write_bytes as u64;
            if full || self.queue_closed || self.backlog.len() >= self.gather_target {
                self.gather_window_cap = (self.gather_window_cap * 2).min(GATHER_WINDOW_MAX);
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.gather_window_cap = (self.gather_window_cap / 2).max(GATHER_WINDOW_MIN);
                return;
            }
            self.reap(Wait::Wakeup(Some(left.min(window / 4))));
        }
    }

    /// Moves requests from the queue to the backlog without blocking, up to
    /// about `max_write_bytes`. When the queue runs dry with nothing in
    /// flight, the next send wakes the writer; otherwise sends do not.
    fn fill_backlog(&mut self) {
        let waker = if self.in_flight.is_empty() {
            self.waker.clone()
        } else {
            Waker::noop().clone()
        };
        self.fill_backlog_with(&waker);
    }

    fn fill_backlog_with(&mut self, waker: &Waker) {
        let mut context = Context::from_waker(waker);
        while !self.queue_closed && self.backlog_bytes < self.config.max_write_bytes as u64 {
            match self.requests.poll_recv(&mut context) {
                Poll::Ready(Some(request)) => {
                    self.backlog_bytes += format::frame_bytes(request.payload.len());
                    self.backlog.push_back(request);
                }
                Poll::Ready(None) => self.queue_closed = true,
                Poll::Pending => break,
            }
        }
    }

    fn segment_has_room(&self, frame_bytes: u64) -> bool {
        self.active.write_offset + frame_bytes <= self.active.capacity_bytes
    }

    /// Frames as much of the backlog as fits the slot and the segment, and
    /// submits it.
    fn submit_write(&mut self) {
        let slot = self
            .device
            .take_slot()
            .expect("caller checked for a free slot");
        let start_lsn = self.active.next_lsn();
        let inflight_lsn = self.in_flight.front().map_or(start_lsn, |w| w.start_lsn);
        let capacity = self.device.capacity() as u64;
        let mut waiters = Vec::new();
        let mut lsn = start_lsn;
        while let Some(request) = self.backlog.front() {
            let frame_bytes = format::frame_bytes(request.payload.len());
            let buffered = lsn.0 - start_lsn.0;
            let fits_buffer = buffered + frame_bytes <= capacity;
            if !fits_buffer || !self.segment_has_room(buffered + frame_bytes) {
                break;
            }
            let request = self.backlog.pop_front().expect("front exists");
            self.backlog_bytes -= frame_bytes;
            let frame = Frame {
                lsn,
                write_lsn: start_lsn,
                inflight_lsn,
                kind: request.kind,
                payload: &request.payload,
            };
            format::encode_frame(self.device.buffer_mut(slot), &frame);
            waiters.push((request.done, lsn));
            lsn = Lsn(lsn.0 + frame_bytes);
        }
        assert!(!waiters.is_empty(), "submit_write with nothing that fits");
        let bytes = lsn.0 - start_lsn.0;
        self.device
            .submit(slot, &self.active.file, self.active.write_offset);
        self.active.write_offset += bytes;
        self.in_flight.push_back(InFlight {
            slot,
            start_lsn,
            end_lsn: lsn,
            waiters,
            finished: false,
            submitted_at: Instant::now(),
        });
    }

    /// Takes finished writes (sleeping first as `wait` says) and
    /// acknowledges every write at the front whose bytes, and all before,
    /// are durable.
    fn reap(&mut self, wait: Wait) {
        let mut completions = std::mem::take(&mut self.completions);
        if let Err(err) = self.device.reap(wait, &mut completions) {
            self.poison(WalError::io(
                "waiting for the WAL device in",
                &self.shared.dir,
                err,
            ));
        }
        for completion in completions.drain(..) {
            let write = self
                .in_flight
                .iter_mut()
                .find(|w| w.slot == completion.slot && !w.finished)
                .expect("a completion belongs to a write in flight");
            write.finished = true;
            let latency = write.submitted_at.elapsed();
            self.write_latency_avg = (self.write_latency_avg * 7 + latency) / 8;
            if let Err(io_err) = completion.result {
                let err = WalError::io("write + fdatasync of", &self.active_path, io_err);
                self.poison(err);
            }
        }
        self.completions = completions;
        while self.in_flight.front().is_some_and(|w| w.finished) {
            let write = self.in_flight.pop_front().expect("front exists");
            match &self.poisoned {
                Some(err) => fail_waiters(write.waiters, err),
                None => self.acknowledge(write),
            }
        }
    }

    fn acknowledge(&mut self, write: InFlight) {
        assert!(write.end_lsn > write.start_lsn);
        // Counted before the acks go out: none of this write's producers can
        // have sent again yet.
        self.gather_target = self.requests.len() + self.backlog.len() + write.waiters.len();
        self.shared.publish_durable(write.end_lsn);
        let shared = &self.shared;
        shared
            .records
            .fetch_add(write.waiters.len() as u64, Ordering::Relaxed);
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        shared
            .bytes
            .fetch_add(write.end_lsn.0 - write.start_lsn.0, Ordering::Relaxed);
        for (done, lsn) in write.waiters {
            let _ = done.send(Ok(lsn));
        }
    }

    fn poison(&mut self, err: WalError) {
        if self.poisoned.is_none() {
            tracing::error!("WAL poisoned, no further writes: {err}");
            self.poisoned = Some(err);
        }
    }

    fn fail_backlog(&mut self) {
        let err = self.poisoned.clone().expect("poisoned");
        for request in self.backlog.drain(..) {
            let _ = request
                .done
                .send(Err(WalError::Poisoned(Box::new(err.clone()))));
        }
        self.backlog_bytes = 0;
    }

    /// The segment is full and every write in it is durable: start the next
    /// one. If that fails (no space for a new segment), fail the backlog and
    /// carry on; the next append tries again.
    fn rollover_or_fail(&mut self) {
        if let Err(err) = self.rollover() {
            tracing::error!("WAL: cannot start a new segment: {err}");
            for request in self.backlog.drain(..) {
                let _ = request.done.send(Err(err.clone()));
            }
            self.backlog_bytes = 0;
        }
    }

    fn rollover(&mut self) -> Result<()> {
        assert!(self.in_flight.is_empty(), "rollover with writes in flight");
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
                self.poison(err.clone());
                return Err(err);
            }
        };
        self.device.forget_tail();
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
        Ok(())
    }
}

/// Short timed waits (gathering) should not be stretched by the default
/// 50 µs timer slack.
fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; affects this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

/// Puts this thread under `SCHED_BATCH`, whose wake-ups do not preempt
/// the thread running on the CPU it wakes on. Woken by a producer's send
/// (the eventfd), the writer used to take that producer's CPU at once,
/// and the producers still preparing their next records, the rest of the
/// group, waited behind it: on two CPUs, such preemptions were 19 % of the
/// tokio workers' context switches in `store-commit`. Measured
/// (`docs/benchmarks.md`, "The WAL writer no longer preempts on wake-up"):
/// `store-commit` at 64 tasks +15 %, the raw WAL at 64 and 256 producers
/// ahead too, one producer's latency unchanged. Only a hint: if it fails,
/// nothing else changes.
fn schedule_without_wakeup_preemption() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on this thread with a valid parameter;
    // SCHED_BATCH at priority 0 needs no privilege.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

fn fail_waiters(waiters: Vec<Waiter>, err: &WalError) {
    for (done, _) in waiters {
        let _ = done.send(Err(WalError::Poisoned(Box::new(err.clone()))));
    }
}
