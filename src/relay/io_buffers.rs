//! The bytes travelling one way through a relayed connection: read but not
//! yet scanned (`inbuf`), and whole frames queued for the other side
//! (`out`). No I/O here: the session owns two of these, the driver reads
//! into `inbuf` and writes from `out` (rules R8, R9 in docs/DESIGN.md).
//!
//! Scanned frames leave `inbuf` as `Bytes` split off it, so forwarding a
//! frame never copies it.

use crate::relay::frame::{FRAME_HEARTBEAT, FrameError, FrameInfo, Scan, scan};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reads start small (idle connections stay cheap) and grow while the
/// socket keeps filling them.
pub const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 128 * 1024;

/// The most bytes any one connection has held in one direction (read but
/// not yet written) since the process started: what tests and benchmarks
/// check the buffer bound against.
static PEAK_HELD: AtomicUsize = AtomicUsize::new(0);

pub fn peak_buffered_bytes() -> usize {
    PEAK_HELD.load(Ordering::Relaxed)
}

/// Bytes travelling one way.
pub struct Direction {
    pub inbuf: BytesMut,
    /// How much of `inbuf` is scanned whole frames that pass unchanged.
    pub(crate) scanned: usize,
    pub(crate) out: VecDeque<Bytes>,
    out_len: usize,
    read_size: usize,
    /// The writer side needs a flush (TLS buffers records).
    pub(crate) needs_flush: bool,
    /// Frames passed on, heartbeats absorbed (for the status page).
    pub(crate) frames: u64,
    pub(crate) heartbeats: u64,
}

impl Default for Direction {
    fn default() -> Self {
        Self::new()
    }
}

impl Direction {
    pub fn new() -> Direction {
        Direction {
            inbuf: BytesMut::new(),
            scanned: 0,
            out: VecDeque::new(),
            out_len: 0,
            read_size: READ_MIN,
            needs_flush: false,
            frames: 0,
            heartbeats: 0,
        }
    }

    /// Read but not yet written: what the buffer bound limits.
    pub fn held(&self) -> usize {
        self.inbuf.len() + self.out_len
    }

    /// Nothing queued for writing.
    pub fn out_is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The write queue, in order (the driver hands it to a vectored write).
    pub fn out(&self) -> &VecDeque<Bytes> {
        &self.out
    }

    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out_len += bytes.len();
            self.out.push_back(bytes);
        }
    }

    /// Move the scanned frames to the write queue without copying.
    pub fn release_scanned(&mut self) {
        if self.scanned > 0 {
            let chunk = self.inbuf.split_to(self.scanned).freeze();
            self.scanned = 0;
            self.push(chunk);
        }
    }

    /// The next frame past the scanned ones, with its payload's range in
    /// `inbuf`; heartbeat frames are absorbed on the way (the relay owns
    /// liveness on both sides, rule R3). The frame stays unscanned so the
    /// caller can look at it, patch it in place, then pass it with
    /// `pass(len)`.
    pub fn next_frame(
        &mut self,
        frame_max: usize,
    ) -> Result<Option<(FrameInfo, Range<usize>)>, FrameError> {
        loop {
            let at = self.scanned;
            match scan(&self.inbuf[at..], frame_max) {
                Scan::Incomplete => return Ok(None),
                Scan::Invalid(e) => return Err(e),
                Scan::Frame(info) if info.kind == FRAME_HEARTBEAT => {
                    self.release_scanned();
                    self.inbuf.advance(info.len);
                    self.heartbeats += 1;
                }
                Scan::Frame(info) => {
                    let payload = info.payload_range();
                    return Ok(Some((info, at + payload.start..at + payload.end)));
                }
            }
        }
    }

    /// The frame returned by `next_frame` passes on.
    pub fn pass(&mut self, len: usize) {
        self.scanned += len;
        self.frames += 1;
    }

    /// The whole write queue, for the closing handshakes.
    pub fn take_out(&mut self) -> VecDeque<Bytes> {
        self.out_len = 0;
        std::mem::take(&mut self.out)
    }

    /// `n` bytes of the write queue went out.
    pub fn consume(&mut self, mut n: usize) {
        self.out_len -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Room for the next read (the driver limits it to the buffer bound).
    pub fn prepare_read(&mut self) {
        if self.inbuf.capacity() - self.inbuf.len() < self.read_size {
            self.inbuf.reserve(self.read_size);
        }
    }

    /// Grow reads while they come back full, shrink when they don't.
    pub fn after_read(&mut self, n: usize, offered: usize) {
        if n >= offered && self.read_size < READ_MAX {
            self.read_size *= 2;
        } else if n < offered / 4 && self.read_size > READ_MIN {
            self.read_size /= 2;
        }
        // An idle connection should not keep a large buffer.
        if self.inbuf.is_empty() && self.inbuf.capacity() > READ_MAX {
            self.inbuf = BytesMut::new();
        }
        PEAK_HELD.fetch_max(self.held(), Ordering::Relaxed);
    }
}
