//! The connection-class methods the relay owns.
//!
//! Only channel-0 method frames of class 10 are looked at. Tune and TuneOk
//! have a fixed layout, so their heartbeat and frame_max fields are patched
//! in place; Close is built with amq-protocol, so short strings and frame
//! layout come from a maintained codec rather than from here (the tests and
//! the fuzzer decode it back with [`close_reason`]). Start/StartOk/Secure/Open carry credentials and are not decoded
//! here; relay::login reads the two it needs when it logs in itself.

use amq_protocol::frame::{AMQPFrame, gen_frame};
use amq_protocol::protocol::{AMQPClass, connection, parse_class};
use bytes::Bytes;

pub const CLASS_CONNECTION: u16 = 10;

/// Connection-class method ids (AMQP 0-9-1, class 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionMethod {
    Start,
    StartOk,
    Secure,
    SecureOk,
    Tune,
    TuneOk,
    Open,
    OpenOk,
    Close,
    CloseOk,
    Blocked,
    Unblocked,
    Other(u16),
}

/// Identify a channel-0 method payload; `None` when it is not a
/// connection-class method (the relay passes those on without a look).
pub fn connection_method(payload: &[u8]) -> Option<ConnectionMethod> {
    if payload.len() < 4 {
        return None;
    }
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    if class != CLASS_CONNECTION {
        return None;
    }
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    Some(match method {
        10 => ConnectionMethod::Start,
        11 => ConnectionMethod::StartOk,
        20 => ConnectionMethod::Secure,
        21 => ConnectionMethod::SecureOk,
        30 => ConnectionMethod::Tune,
        31 => ConnectionMethod::TuneOk,
        40 => ConnectionMethod::Open,
        41 => ConnectionMethod::OpenOk,
        50 => ConnectionMethod::Close,
        51 => ConnectionMethod::CloseOk,
        60 => ConnectionMethod::Blocked,
        61 => ConnectionMethod::Unblocked,
        other => ConnectionMethod::Other(other),
    })
}

/// Tune and TuneOk share one layout: class, method, channel-max (u16),
/// frame-max (u32), heartbeat (u16).
const TUNE_LEN: usize = 12;
const FRAME_MAX_AT: usize = 6;
const HEARTBEAT_AT: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TuneFields {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// Read Tune/TuneOk fields; `None` when the payload has the wrong length.
pub fn tune_fields(payload: &[u8]) -> Option<TuneFields> {
    if payload.len() != TUNE_LEN {
        return None;
    }
    Some(TuneFields {
        channel_max: u16::from_be_bytes([payload[4], payload[5]]),
        frame_max: u32::from_be_bytes([
            payload[FRAME_MAX_AT],
            payload[FRAME_MAX_AT + 1],
            payload[FRAME_MAX_AT + 2],
            payload[FRAME_MAX_AT + 3],
        ]),
        heartbeat: u16::from_be_bytes([payload[HEARTBEAT_AT], payload[HEARTBEAT_AT + 1]]),
    })
}

/// Overwrite the heartbeat field of a Tune/TuneOk payload in place.
/// Returns false (and changes nothing) when the payload is not 12 bytes.
pub fn set_tune_heartbeat(payload: &mut [u8], heartbeat: u16) -> bool {
    if payload.len() != TUNE_LEN {
        return false;
    }
    payload[HEARTBEAT_AT..HEARTBEAT_AT + 2].copy_from_slice(&heartbeat.to_be_bytes());
    true
}

/// Overwrite the frame-max field of a Tune/TuneOk payload in place.
/// Returns false (and changes nothing) when the payload is not 12 bytes.
pub fn set_tune_frame_max(payload: &mut [u8], frame_max: u32) -> bool {
    if payload.len() != TUNE_LEN {
        return false;
    }
    payload[FRAME_MAX_AT..FRAME_MAX_AT + 4].copy_from_slice(&frame_max.to_be_bytes());
    true
}

/// Reply code and text of a Connection.Close payload (tests and fuzzing
/// check the Close frames the relay builds with it).
pub fn close_reason(payload: &[u8]) -> Option<(u16, String)> {
    match parse_class(payload) {
        Ok((_, AMQPClass::Connection(connection::AMQPMethod::Close(close)))) => {
            Some((close.reply_code, close.reply_text.as_str().to_string()))
        }
        _ => None,
    }
}

/// A complete Connection.Close frame on channel 0.
pub fn close_frame(reply_code: u16, reply_text: &str) -> Bytes {
    // Short strings hold at most 255 bytes; cut on a char boundary.
    let mut text = reply_text;
    while text.len() > 255 {
        let mut cut = 255.min(text.len() - 1);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text = &text[..cut];
    }
    let frame = AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code,
            reply_text: text.into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    encode(&frame)
}

/// A complete Connection.CloseOk frame on channel 0.
pub fn close_ok_frame() -> Bytes {
    encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    ))
}

fn encode(frame: &AMQPFrame) -> Bytes {
    // Generation into a Vec cannot run out of room; an error would be a
    // codec bug, and an empty frame then just fails the close politely.
    cookie_factory::gen_simple(gen_frame(frame), Vec::with_capacity(64))
        .map(Bytes::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::frame::{FRAME_METHOD, Scan, scan};

    #[test]
    fn close_frame_round_trips() {
        let f = close_frame(320, "broker went away");
        let info = match scan(&f, 4096) {
            Scan::Frame(i) => i,
            other => panic!("{other:?}"),
        };
        assert_eq!(info.kind, FRAME_METHOD);
        assert_eq!(info.channel, 0);
        let payload = info.payload(&f);
        assert_eq!(connection_method(payload), Some(ConnectionMethod::Close));
        assert_eq!(
            close_reason(payload),
            Some((320, "broker went away".to_string()))
        );
        let long = "é".repeat(300);
        let f = close_frame(501, &long);
        let info = match scan(&f, 4096) {
            Scan::Frame(i) => i,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            close_reason(info.payload(&f)).map(|(c, t)| (c, t.len() <= 255)),
            Some((501, true))
        );
        let ok = close_ok_frame();
        assert_eq!(&ok[..], &[1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 51, 0xCE]);
    }

    #[test]
    fn tune_patch_in_place() {
        let mut tune = vec![0, 10, 0, 30, 0x07, 0xFF, 0, 2, 0, 0, 0, 60];
        assert_eq!(connection_method(&tune), Some(ConnectionMethod::Tune));
        assert_eq!(
            tune_fields(&tune),
            Some(TuneFields {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 60
            })
        );
        assert!(set_tune_heartbeat(&mut tune, 0));
        assert_eq!(tune_fields(&tune).map(|t| t.heartbeat), Some(0));
        assert_eq!(tune_fields(&tune).map(|t| t.frame_max), Some(131072));
        assert!(!set_tune_heartbeat(&mut tune[..11], 5));
        assert_eq!(connection_method(&[0, 20, 0, 10]), None);
        assert_eq!(connection_method(&[0, 10]), None);
    }
}
