//! AMQP 0-9-1 frame boundaries.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload[size] 0xCE`. The relay
//! only needs to know where a frame ends, its type and channel; payloads are
//! inspected only for connection-class methods on channel 0 (see
//! [`crate::relay::methods`]). Scanning never copies.

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

/// Header plus frame-end octet.
pub const FRAME_OVERHEAD: usize = 8;
const HEADER_LEN: usize = 7;

/// The only protocol header the relay (and RabbitMQ) speaks.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// A complete heartbeat frame.
pub const HEARTBEAT_FRAME: [u8; 8] = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

/// AMQP reply codes the relay sends.
pub const REPLY_SUCCESS: u16 = 200;
pub const CONNECTION_FORCED: u16 = 320;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const NOT_ALLOWED: u16 = 530;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const INTERNAL_ERROR: u16 = 541;
/// AMQP 0-9-1's frame-min-size: no frame_max may be smaller (0 is "no
/// limit").
pub const FRAME_MIN_SIZE: u32 = 4096;

/// What is wrong with a frame, and the reply code a broker would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    UnknownType(u8),
    TooLarge { size: usize, frame_max: usize },
    BadFrameEnd(u8),
    BadHeartbeat,
}

impl FrameError {
    pub fn reply_code(&self) -> u16 {
        match self {
            FrameError::UnknownType(_) => UNEXPECTED_FRAME,
            FrameError::TooLarge { .. } | FrameError::BadFrameEnd(_) | FrameError::BadHeartbeat => {
                FRAME_ERROR
            }
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t}"),
            FrameError::TooLarge { size, frame_max } => {
                write!(f, "frame of {size} bytes exceeds frame_max {frame_max}")
            }
            FrameError::BadFrameEnd(b) => write!(f, "frame end octet is 0x{b:02X}, not 0xCE"),
            FrameError::BadHeartbeat => write!(
                f,
                "heartbeat frame with a payload or on a channel other than 0"
            ),
        }
    }
}

/// One complete frame found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub kind: u8,
    pub channel: u16,
    /// Whole frame length, header and frame-end included.
    pub len: usize,
}

impl FrameInfo {
    /// The payload of this frame within `frame` (which starts at the frame).
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[HEADER_LEN..self.len - 1]
    }

    pub fn payload_range(&self) -> std::ops::Range<usize> {
        HEADER_LEN..self.len - 1
    }
}

/// Result of looking at the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed.
    Incomplete,
    Frame(FrameInfo),
    Invalid(FrameError),
}

/// Append one frame to `out`: the layout `scan` reads, written in one
/// place for the relay's tests, the test suites and the benchmarks (the
/// relay itself only forwards frames, or builds them with amq-protocol).
pub fn encode(kind: u8, channel: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out.push(FRAME_END);
}

/// Find the frame at the start of `buf`. `frame_max` bounds the whole
/// frame (as AMQP's frame-max does) and is checked as soon as the header is
/// in, so an oversized frame is refused before it is buffered.
pub fn scan(buf: &[u8], frame_max: usize) -> Scan {
    if buf.len() < HEADER_LEN {
        // The type octet alone already tells a garbage stream.
        if let Some(&kind) = buf.first() {
            if !known_type(kind) {
                return Scan::Invalid(FrameError::UnknownType(kind));
            }
        }
        return Scan::Incomplete;
    }
    let kind = buf[0];
    if !known_type(kind) {
        return Scan::Invalid(FrameError::UnknownType(kind));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let len = size.saturating_add(FRAME_OVERHEAD);
    if len > frame_max {
        return Scan::Invalid(FrameError::TooLarge {
            size: len,
            frame_max,
        });
    }
    if kind == FRAME_HEARTBEAT && (size != 0 || channel != 0) {
        return Scan::Invalid(FrameError::BadHeartbeat);
    }
    if buf.len() < len {
        return Scan::Incomplete;
    }
    let end = buf[len - 1];
    if end != FRAME_END {
        return Scan::Invalid(FrameError::BadFrameEnd(end));
    }
    Scan::Frame(FrameInfo { kind, channel, len })
}

fn known_type(kind: u8) -> bool {
    matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        f
    }

    #[test]
    fn complete_and_incomplete() {
        let f = frame(FRAME_BODY, 7, b"hello");
        assert_eq!(
            scan(&f, 4096),
            Scan::Frame(FrameInfo {
                kind: FRAME_BODY,
                channel: 7,
                len: 13
            })
        );
        for cut in 0..f.len() {
            assert_eq!(scan(&f[..cut], 4096), Scan::Incomplete, "cut at {cut}");
        }
        let info = match scan(&f, 4096) {
            Scan::Frame(i) => i,
            other => panic!("{other:?}"),
        };
        assert_eq!(info.payload(&f), b"hello");
        assert_eq!(
            scan(&HEARTBEAT_FRAME, 4096),
            Scan::Frame(FrameInfo {
                kind: 8,
                channel: 0,
                len: 8
            })
        );
    }

    #[test]
    fn invalid_frames() {
        let mut f = frame(FRAME_METHOD, 0, b"abcd");
        *f.last_mut().unwrap() = 0;
        assert_eq!(scan(&f, 4096), Scan::Invalid(FrameError::BadFrameEnd(0)));
        assert_eq!(
            scan(b"H", 4096),
            Scan::Invalid(FrameError::UnknownType(b'H'))
        );
        assert_eq!(
            scan(&frame(9, 0, b""), 4096),
            Scan::Invalid(FrameError::UnknownType(9))
        );
        let big = frame(FRAME_BODY, 1, &[0; 100]);
        assert_eq!(
            scan(&big[..7], 50),
            Scan::Invalid(FrameError::TooLarge {
                size: 108,
                frame_max: 50
            })
        );
        assert_eq!(
            scan(&frame(FRAME_HEARTBEAT, 1, b""), 4096),
            Scan::Invalid(FrameError::BadHeartbeat)
        );
        assert_eq!(FrameError::UnknownType(9).reply_code(), 505);
        assert_eq!(FrameError::BadFrameEnd(0).reply_code(), 501);
    }

    proptest! {
        /// Whatever the bytes, scanning never panics, and a frame it reports
        /// lies within the buffer and the limit and ends in 0xCE.
        #[test]
        fn scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), frame_max in 8usize..400) {
            if let Scan::Frame(info) = scan(&bytes, frame_max) {
                prop_assert!(info.len <= bytes.len());
                prop_assert!(info.len <= frame_max);
                prop_assert_eq!(bytes[info.len - 1], FRAME_END);
            }
        }

        /// A stream of valid frames split anywhere scans back to the same frames.
        #[test]
        fn frames_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..10)) {
            let mut stream = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                stream.extend(frame(FRAME_BODY, i as u16, p));
            }
            let mut at = 0;
            for (i, p) in payloads.iter().enumerate() {
                match scan(&stream[at..], 4096) {
                    Scan::Frame(info) => {
                        prop_assert_eq!(info.channel, i as u16);
                        prop_assert_eq!(info.payload(&stream[at..]), &p[..]);
                        at += info.len;
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            prop_assert_eq!(at, stream.len());
        }
    }
}
