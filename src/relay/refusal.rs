//! Refusing a client in AMQP, not with a bare end of stream.
//!
//! A client refused before any broker spoke (every broker unreachable, or
//! `AMQPHeartbeatMaxConnections` reached) used to see its socket closed, so
//! the app logged only "Transport indicated EOF" or "Connection reset by
//! peer". AMQP 0-9-1 lets the server refuse a connection once it has sent
//! `Connection.Start`: the relay sends its own Start, reads the client's
//! StartOk (dropped unread) and answers `Connection.Close` with a code and a
//! text naming the reason, which the client raises as an error the app logs.
//! This is the path RabbitMQ takes for a refused login.
//!
//! Only clients of this very process get here (the peer check runs first),
//! and each refusal is bounded in time (`deadline`) and bytes
//! (`MAX_HANDSHAKE_BYTES`).

use crate::relay::closing::finish_client;
use crate::relay::driver::read_protocol_header;
use crate::relay::frame::{FRAME_METHOD, PROTOCOL_HEADER, Scan, scan};
use crate::relay::methods::{self, ConnectionMethod};
use crate::relay::session::HeaderCheck;
use amq_protocol::frame::{AMQPFrame, gen_frame};
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A StartOk is a few hundred bytes; a client that sends more before it is
/// not one worth reading further.
const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

/// The relay's `Connection.Start`: AMQP 0-9, the mechanisms every client
/// supports, and the capability that tells clients a refusal comes as a
/// Close (RabbitMQ advertises the same).
pub fn start_frame() -> Bytes {
    let mut capabilities = FieldTable::default();
    capabilities.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut properties = FieldTable::default();
    properties.insert(
        "product".into(),
        AMQPValue::LongString("mod_amqp_heartbeat relay".into()),
    );
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    let frame = AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: properties,
            mechanisms: LongString::from("PLAIN AMQPLAIN"),
            locales: LongString::from("en_US"),
        })),
    );
    // Generation into a Vec cannot run out of room.
    cookie_factory::gen_simple(gen_frame(&frame), Vec::with_capacity(128))
        .map(Bytes::from)
        .unwrap_or_default()
}

/// What the client has sent after the protocol header, as far as the
/// refusal cares.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientReply {
    /// Not yet a whole StartOk.
    Incomplete,
    /// The StartOk is in: time for the Close.
    StartOk,
    /// Not AMQP a client would send here (or too much of it): the Close
    /// goes out at once, the rest is not read.
    Unexpected,
}

/// Look at the client's bytes after its protocol header.
pub fn client_reply(buf: &[u8]) -> ClientReply {
    let mut at = 0;
    loop {
        match scan(&buf[at..], MAX_HANDSHAKE_BYTES) {
            Scan::Incomplete if buf.len() >= MAX_HANDSHAKE_BYTES => return ClientReply::Unexpected,
            Scan::Incomplete => return ClientReply::Incomplete,
            Scan::Invalid(_) => return ClientReply::Unexpected,
            Scan::Frame(info) => {
                let payload = info.payload(&buf[at..]);
                if info.kind == FRAME_METHOD
                    && info.channel == 0
                    && methods::connection_method(payload) == Some(ConnectionMethod::StartOk)
                {
                    return ClientReply::StartOk;
                }
                if info.kind == FRAME_METHOD {
                    return ClientReply::Unexpected;
                }
                // A heartbeat (or anything else harmless) before StartOk.
                at += info.len;
            }
        }
    }
}

/// Refuse `client` with `Connection.Close code text`, by `deadline`.
/// `buf` holds what was read from it so far; `header_read` says whether
/// its protocol header was already checked (and is still at the front of
/// `buf`).
pub async fn refuse(
    client: &mut TcpStream,
    mut buf: BytesMut,
    header_read: bool,
    code: u16,
    text: &str,
    deadline: Instant,
) {
    let limit = tokio::time::Instant::from_std(deadline);
    let handshake = async {
        if !header_read {
            match read_protocol_header(client, &mut buf).await {
                Some(HeaderCheck::Ok) => {}
                Some(_) => {
                    let _ = client.write_all(&PROTOCOL_HEADER).await;
                    return false;
                }
                None => return false,
            }
        }
        buf.advance(PROTOCOL_HEADER.len());
        if client.write_all(&start_frame()).await.is_err() {
            return false;
        }
        while client_reply(&buf) == ClientReply::Incomplete {
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    };
    match tokio::time::timeout_at(limit, handshake).await {
        Ok(true) => {
            let close = methods::close_frame(code, text);
            finish_client(client, VecDeque::new(), Some(close), limit).await;
        }
        // A client that vanished, sent no header or a wrong one, or took
        // too long: closed as before, nothing more to tell it.
        Ok(false) | Err(_) => finish_client(client, VecDeque::new(), None, limit).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::parse_class;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(0xCE);
        f
    }

    #[test]
    fn start_frame_is_a_start_a_client_can_answer() {
        let f = start_frame();
        let info = match scan(&f, 4096) {
            Scan::Frame(info) => info,
            other => panic!("{other:?}"),
        };
        assert_eq!(info.len, f.len());
        match parse_class(info.payload(&f)) {
            Ok((_, AMQPClass::Connection(connection::AMQPMethod::Start(start)))) => {
                assert_eq!((start.version_major, start.version_minor), (0, 9));
                assert_eq!(start.mechanisms.as_bytes(), b"PLAIN AMQPLAIN");
            }
            other => panic!("not a Start: {other:?}"),
        }
    }

    #[test]
    fn start_ok_is_awaited_through_heartbeats_and_partial_reads() {
        let start_ok = frame(FRAME_METHOD, &[0, 10, 0, 11, 0, 0, 0, 0]);
        let heartbeat = frame(8, &[]);
        let mut stream = heartbeat.clone();
        stream.extend_from_slice(&start_ok);
        for cut in 0..stream.len() {
            assert_eq!(
                client_reply(&stream[..cut]),
                ClientReply::Incomplete,
                "cut {cut}"
            );
        }
        assert_eq!(client_reply(&stream), ClientReply::StartOk);
    }

    #[test]
    fn anything_else_is_unexpected_and_bounded() {
        // Another method before StartOk.
        let open = frame(FRAME_METHOD, &[0, 10, 0, 40, 0, 0, 0]);
        assert_eq!(client_reply(&open), ClientReply::Unexpected);
        // A frame with a bad end byte.
        let mut bad = frame(FRAME_METHOD, &[0, 10, 0, 11]);
        *bad.last_mut().unwrap() = 0;
        assert_eq!(client_reply(&bad), ClientReply::Unexpected);
        // A huge frame announced: not waited for.
        let mut huge = vec![FRAME_METHOD, 0, 0];
        huge.extend_from_slice(&(u32::MAX - 8).to_be_bytes());
        assert_eq!(client_reply(&huge), ClientReply::Unexpected);
        // Endless heartbeats are cut at the bound.
        let beats = frame(8, &[]).repeat(MAX_HANDSHAKE_BYTES / 8 + 1);
        assert_eq!(client_reply(&beats), ClientReply::Unexpected);
    }
}
