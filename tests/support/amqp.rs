//! A small blocking AMQP 0-9-1 client over a raw socket, for the relay
//! tests: it says exactly what the test asks for (heartbeat in TuneOk,
//! frame_max, silence, malformed bytes) and reports exactly what arrives.
//!
//! Frames are built and decoded with amq-protocol; only the frame boundary
//! (7-byte header, payload, 0xCE) is found here, so a stream the codec
//! would reject is still reported frame by frame.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_END: u8 = 0xCE;
/// How long a test waits for a reply it expects by default.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client puts in its TuneOk.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub heartbeat: u16,
    pub frame_max: u32,
    pub channel_max: u16,
    /// User and password of the StartOk (PLAIN).
    pub login: (&'static str, &'static str),
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            heartbeat: 0,
            frame_max: 131_072,
            channel_max: 64,
            login: ("guest", "guest"),
        }
    }
}

impl Tuning {
    pub fn heartbeat(heartbeat: u16) -> Tuning {
        Tuning {
            heartbeat,
            ..Tuning::default()
        }
    }
}

/// One frame as it came off the wire, and its decoding.
#[derive(Debug)]
pub struct Received {
    pub raw: Vec<u8>,
    pub frame: AMQPFrame,
    pub at: Instant,
}

/// What a read ended with when it did not produce a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Orderly close (FIN) from the peer.
    Eof,
    /// Connection reset (RST) by the peer.
    Reset,
    /// Nothing arrived before the deadline.
    Timeout,
}

/// A delivered message (Basic.Deliver or Basic.GetOk with its content).
#[derive(Debug)]
pub struct Message {
    pub delivery_tag: u64,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// Sizes of the body frames it came in, to check frame_max.
    pub body_frames: Vec<usize>,
}

pub struct Client {
    stream: TcpStream,
    inbuf: Vec<u8>,
    /// The Tune the client received (after the relay's rewrite).
    pub tune: Option<connection::Tune>,
    pub tuning: Tuning,
    /// Heartbeat frames skipped while waiting for other frames.
    pub heartbeats_seen: usize,
    /// Delivery tag of the next publish, for confirms (one channel in
    /// confirm mode per client, which is all the tests need).
    next_publish_tag: u64,
}

fn io_err(context: &str, e: std::io::Error) -> String {
    format!("{context}: {e}")
}

/// Encode one frame with amq-protocol.
pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    cookie_factory::gen_simple(gen_frame(frame), Vec::new())
        .expect("amq-protocol encodes into a Vec")
}

pub fn method(channel: u16, class: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(channel, class))
}

/// A raw frame with any type, channel and payload, and a chosen frame-end
/// octet: the malformed-input tests need what a codec would refuse.
pub fn raw_frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    mod_amqp_heartbeat::relay::frame::encode(kind, channel, payload, &mut f);
    if let Some(last) = f.last_mut() {
        *last = end;
    }
    f
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| io_err(&format!("connect to {addr}"), e))?;
        Client::from_stream(stream)
    }

    /// Frames over a socket that is already connected: the other end of
    /// a scripted broker, too.
    pub fn from_stream(stream: TcpStream) -> Result<Client, String> {
        stream
            .set_nodelay(true)
            .map_err(|e| io_err("set_nodelay", e))?;
        Ok(Client {
            stream,
            inbuf: Vec::new(),
            tune: None,
            tuning: Tuning::default(),
            heartbeats_seen: 0,
            next_publish_tag: 1,
        })
    }

    /// Connect and do the whole handshake up to OpenOk, then open channel 1.
    pub fn open(addr: SocketAddr, tuning: Tuning) -> Result<Client, String> {
        let mut c = Client::connect(addr)?;
        c.handshake(tuning)?;
        c.channel_open(1)?;
        Ok(c)
    }

    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(|e| io_err("write", e))
    }

    pub fn send(&mut self, channel: u16, class: AMQPClass) -> Result<(), String> {
        let bytes = method(channel, class);
        self.send_raw(&bytes)
    }

    /// Protocol header, Start/StartOk (PLAIN, `tuning.login`), Tune/TuneOk
    /// with `tuning`, Open/OpenOk on vhost "/".
    pub fn handshake(&mut self, tuning: Tuning) -> Result<(), String> {
        self.tuning = tuning;
        self.send_raw(PROTOCOL_HEADER)?;
        match self.expect_method(0, REPLY_TIMEOUT)? {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => {
                let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).to_string();
                if !mechanisms.split(' ').any(|m| m == "PLAIN") {
                    return Err(format!("broker offers no PLAIN mechanism: {mechanisms}"));
                }
            }
            other => return Err(format!("expected Connection.Start, got {other:?}")),
        }
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("mod_amqp_heartbeat relay test")),
        );
        let mut caps = FieldTable::default();
        caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(format!("\0{}\0{}", tuning.login.0, tuning.login.1)),
                locale: "en_US".into(),
            })),
        )?;
        let tune = match self.expect_method(0, REPLY_TIMEOUT)? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => return Err(format!("expected Connection.Tune, got {other:?}")),
        };
        self.tune = Some(tune);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tuning.channel_max,
                frame_max: tuning.frame_max,
                heartbeat: tuning.heartbeat,
            })),
        )?;
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )?;
        match self.expect_method(0, REPLY_TIMEOUT)? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(()),
            other => Err(format!("expected Connection.OpenOk, got {other:?}")),
        }
    }

    /// As a scripted broker: read the relay's protocol header, then send
    /// a Connection.Start offering PLAIN.
    pub fn greet_as_broker(&mut self) -> Result<(), String> {
        let (header, _) = self.read_raw_until(Instant::now() + Duration::from_secs(10), 8)?;
        if header != PROTOCOL_HEADER {
            return Err(format!("the relay sent {header:?} as its header"));
        }
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: FieldTable::default(),
                mechanisms: LongString::from("PLAIN"),
                locales: LongString::from("en_US"),
            })),
        )
    }

    pub fn channel_open(&mut self, ch: u16) -> Result<(), String> {
        self.send(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => Ok(()),
            other => Err(format!("expected Channel.OpenOk, got {other:?}")),
        }
    }

    /// Declare a server-named, exclusive, auto-delete queue; returns its name.
    pub fn declare_private_queue(&mut self, ch: u16) -> Result<String, String> {
        self.send(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "".into(),
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            })),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.queue.to_string()),
            other => Err(format!("expected Queue.DeclareOk, got {other:?}")),
        }
    }

    /// Declare a named, non-exclusive queue (shared between connections).
    pub fn declare_queue(&mut self, ch: u16, name: &str) -> Result<u32, String> {
        self.declare_named(ch, name, false)
    }

    /// Declare a durable queue (it and its persistent messages outlive a
    /// broker restart); returns how many messages it holds.
    pub fn declare_durable_queue(&mut self, ch: u16, name: &str) -> Result<u32, String> {
        self.declare_named(ch, name, true)
    }

    fn declare_named(&mut self, ch: u16, name: &str, durable: bool) -> Result<u32, String> {
        self.send(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                durable,
                auto_delete: false,
                ..Default::default()
            })),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => Err(format!("expected Queue.DeclareOk, got {other:?}")),
        }
    }

    pub fn delete_queue(&mut self, ch: u16, name: &str) -> Result<(), String> {
        self.send(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: name.into(),
                ..Default::default()
            })),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_)) => Ok(()),
            other => Err(format!("expected Queue.DeleteOk, got {other:?}")),
        }
    }

    pub fn confirm_select(&mut self, ch: u16) -> Result<(), String> {
        self.send(
            ch,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => Ok(()),
            other => Err(format!("expected Confirm.SelectOk, got {other:?}")),
        }
    }

    /// The frames of one Basic.Publish to the default exchange: method,
    /// content header, body split to the negotiated frame_max.
    pub fn publish_frames(&self, ch: u16, routing_key: &str, body: &[u8]) -> Vec<u8> {
        self.publish_frames_with(ch, routing_key, body, basic::AMQPProperties::default())
    }

    /// As [`Client::publish_frames`], with the content properties given.
    pub fn publish_frames_with(
        &self,
        ch: u16,
        routing_key: &str,
        body: &[u8],
        properties: basic::AMQPProperties,
    ) -> Vec<u8> {
        let mut out = method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: routing_key.into(),
                ..Default::default()
            })),
        );
        out.extend(encode(&AMQPFrame::Header(
            ch,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties,
            },
        )));
        let max_payload = (self.tuning.frame_max as usize).saturating_sub(8).max(1);
        for chunk in body.chunks(max_payload) {
            out.extend(raw_frame(3, ch, chunk, FRAME_END));
        }
        out
    }

    pub fn publish(&mut self, ch: u16, routing_key: &str, body: &[u8]) -> Result<(), String> {
        let frames = self.publish_frames(ch, routing_key, body);
        self.send_raw(&frames)?;
        self.next_publish_tag += 1;
        Ok(())
    }

    /// Publish a persistent message (delivery mode 2: a durable queue
    /// keeps it on disk, and the broker confirms it only once it is there).
    pub fn publish_persistent(
        &mut self,
        ch: u16,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let persistent = basic::AMQPProperties::default().with_delivery_mode(2);
        let frames = self.publish_frames_with(ch, routing_key, body, persistent);
        self.send_raw(&frames)?;
        self.next_publish_tag += 1;
        Ok(())
    }

    /// Publish on a channel in confirm mode and wait for the broker's ack.
    pub fn publish_confirmed(
        &mut self,
        ch: u16,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let tag = self.next_publish_tag;
        self.publish(ch, routing_key, body)?;
        self.wait_acked(ch, tag)
    }

    /// Wait until the broker confirmed every publish up to `tag`.
    pub fn wait_acked(&mut self, ch: u16, tag: u64) -> Result<(), String> {
        loop {
            match self.expect_method(ch, REPLY_TIMEOUT)? {
                AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) if ack.delivery_tag >= tag => {
                    return Ok(());
                }
                AMQPClass::Basic(basic::AMQPMethod::Ack(_)) => {}
                other => {
                    return Err(format!(
                        "expected Basic.Ack for publish {tag}, got {other:?}"
                    ));
                }
            }
        }
    }

    /// Basic.Get with no_ack; `None` on GetEmpty.
    pub fn get(&mut self, ch: u16, queue: &str) -> Result<Option<Message>, String> {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.into(),
                no_ack: true,
            })),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)) => {
                let (body, body_frames) = self.read_content(ch, REPLY_TIMEOUT)?;
                Ok(Some(Message {
                    delivery_tag: ok.delivery_tag,
                    routing_key: ok.routing_key.to_string(),
                    body,
                    body_frames,
                }))
            }
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => Ok(None),
            other => Err(format!("expected Basic.GetOk or GetEmpty, got {other:?}")),
        }
    }

    /// Basic.Consume without a prefetch limit; returns the consumer tag.
    pub fn consume(&mut self, ch: u16, queue: &str, no_ack: bool) -> Result<String, String> {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                no_ack,
                ..Default::default()
            })),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => Ok(ok.consumer_tag.to_string()),
            other => Err(format!("expected Basic.ConsumeOk, got {other:?}")),
        }
    }

    pub fn qos(&mut self, ch: u16, prefetch_count: u16) -> Result<(), String> {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count,
                global: false,
            })),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => Ok(()),
            other => Err(format!("expected Basic.QosOk, got {other:?}")),
        }
    }

    pub fn cancel(&mut self, ch: u16, consumer_tag: &str) -> Result<(), String> {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: consumer_tag.into(),
                nowait: false,
            })),
        )?;
        match self.expect_method(ch, REPLY_TIMEOUT)? {
            AMQPClass::Basic(basic::AMQPMethod::CancelOk(_)) => Ok(()),
            other => Err(format!("expected Basic.CancelOk, got {other:?}")),
        }
    }

    /// The next Basic.Deliver and its content.
    pub fn next_delivery(&mut self, ch: u16, timeout: Duration) -> Result<Message, String> {
        match self.expect_method(ch, timeout)? {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                let (body, body_frames) = self.read_content(ch, timeout)?;
                Ok(Message {
                    delivery_tag: d.delivery_tag,
                    routing_key: d.routing_key.to_string(),
                    body,
                    body_frames,
                })
            }
            other => Err(format!("expected Basic.Deliver, got {other:?}")),
        }
    }

    fn read_content(
        &mut self,
        ch: u16,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<usize>), String> {
        let deadline = Instant::now() + timeout;
        let size = match self.next_non_heartbeat(deadline)? {
            AMQPFrame::Header(c, h) if c == ch => h.body_size as usize,
            other => {
                return Err(format!(
                    "expected a content header on channel {ch}, got {other}"
                ));
            }
        };
        let mut body = Vec::with_capacity(size);
        let mut frames = Vec::new();
        while body.len() < size {
            match self.next_non_heartbeat(deadline)? {
                AMQPFrame::Body(c, data) if c == ch => {
                    frames.push(data.len() + 8);
                    body.extend_from_slice(&data);
                }
                other => {
                    return Err(format!(
                        "expected a body frame on channel {ch}, got {other}"
                    ));
                }
            }
        }
        if body.len() != size {
            return Err(format!(
                "content header announced {size} bytes, body frames carried {}",
                body.len()
            ));
        }
        Ok((body, frames))
    }

    pub fn ack(&mut self, ch: u16, delivery_tag: u64, multiple: bool) -> Result<(), String> {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple,
            })),
        )
    }

    /// Connection.Close 200, wait for CloseOk, close our side, then wait
    /// for the peer to close its side. RabbitMQ itself closes with a reset
    /// (its listeners use SO_LINGER 0), so both endings are accepted here;
    /// [`Client::close_ending`] tells which.
    pub fn close(self) -> Result<(), String> {
        match self.close_ending()? {
            Ending::Eof | Ending::Reset => Ok(()),
            Ending::Timeout => {
                Err("after CloseOk and our FIN the peer did not close its side".to_string())
            }
        }
    }

    /// As [`Client::close`], returning how the peer closed its side.
    pub fn close_ending(mut self) -> Result<Ending, String> {
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )?;
        // Deliveries in flight on other channels may still arrive first.
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.read_frame_until(deadline)? {
                Ok(r) => match r.frame {
                    AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                    ) => break,
                    AMQPFrame::Method(0, other) => {
                        return Err(format!("expected Connection.CloseOk, got {other:?}"));
                    }
                    _ => continue,
                },
                Err(ending) => {
                    return Err(format!(
                        "expected Connection.CloseOk, the connection ended with {ending:?}"
                    ));
                }
            }
        }
        // The side that sent Close closes the socket first (AMQP 0-9-1,
        // 2.2.4); the peer then closes its own.
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.read_ending(REPLY_TIMEOUT)
    }

    /// Read frames until a Connection.Close arrives (skipping everything
    /// else); returns its code and text and answers CloseOk.
    pub fn expect_close(&mut self, timeout: Duration) -> Result<(u16, String), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = match self.read_frame_until(deadline)? {
                Ok(r) => r.frame,
                Err(ending) => {
                    return Err(format!(
                        "expected Connection.Close, the connection ended with {ending:?}"
                    ));
                }
            };
            if let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) =
                frame
            {
                let ok = method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                // The relay may already have shut its side; a failed write is fine.
                let _ = self.stream.write_all(&ok);
                return Ok((c.reply_code, c.reply_text.to_string()));
            }
        }
    }

    /// Read until the next method frame on `ch` (heartbeats counted and
    /// skipped); any other frame, or the end of the connection, is an error
    /// that says what came instead.
    pub fn expect_method(&mut self, ch: u16, timeout: Duration) -> Result<AMQPClass, String> {
        let deadline = Instant::now() + timeout;
        match self.next_non_heartbeat(deadline)? {
            AMQPFrame::Method(c, m) if c == ch => Ok(m),
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                Err(format!(
                    "expected a method on channel {ch}, got Connection.Close {} '{}'",
                    c.reply_code, c.reply_text
                ))
            }
            AMQPFrame::Method(c, AMQPClass::Channel(channel::AMQPMethod::Close(cl))) => {
                Err(format!(
                    "expected a method on channel {ch}, got Channel.Close on channel {c}: {} '{}'",
                    cl.reply_code, cl.reply_text
                ))
            }
            other => Err(format!("expected a method on channel {ch}, got {other:?}")),
        }
    }

    fn next_non_heartbeat(&mut self, deadline: Instant) -> Result<AMQPFrame, String> {
        loop {
            match self.read_frame_until(deadline)? {
                Ok(r) if r.frame == AMQPFrame::Heartbeat => self.heartbeats_seen += 1,
                Ok(r) => return Ok(r.frame),
                Err(ending) => {
                    return Err(format!(
                        "connection ended while waiting for a frame: {ending:?}"
                    ));
                }
            }
        }
    }

    /// The next frame, or how the wait ended. Err only for a stream the
    /// codec cannot read.
    pub fn read_frame_until(
        &mut self,
        deadline: Instant,
    ) -> Result<Result<Received, Ending>, String> {
        loop {
            if self.inbuf.len() >= 7 {
                let size = u32::from_be_bytes([
                    self.inbuf[3],
                    self.inbuf[4],
                    self.inbuf[5],
                    self.inbuf[6],
                ]) as usize;
                let len = size + 8;
                if self.inbuf.len() >= len {
                    let raw: Vec<u8> = self.inbuf.drain(..len).collect();
                    let frame = match parse_frame(&raw[..]) {
                        Ok((_, f)) => f,
                        // RabbitMQ's FRAME_ERROR text quotes the offending
                        // bytes and need not be UTF-8, which the codec's
                        // short strings insist on: read such a
                        // Connection.Close by hand.
                        Err(_)
                            if raw.len() >= 19
                                && raw[0] == 1
                                && raw[1..3] == [0, 0]
                                && raw[7..11] == [0, 10, 0, 50] =>
                        {
                            let text_len = usize::from(raw[13]).min(raw.len() - 19);
                            AMQPFrame::Method(
                                0,
                                AMQPClass::Connection(connection::AMQPMethod::Close(
                                    connection::Close {
                                        reply_code: u16::from_be_bytes([raw[11], raw[12]]),
                                        reply_text: String::from_utf8_lossy(
                                            &raw[14..14 + text_len],
                                        )
                                        .as_ref()
                                        .into(),
                                        class_id: 0,
                                        method_id: 0,
                                    },
                                )),
                            )
                        }
                        Err(e) => {
                            return Err(format!(
                                "cannot decode frame {:02X?}…: {e:?}",
                                &raw[..raw.len().min(32)]
                            ));
                        }
                    };
                    return Ok(Ok(Received {
                        raw,
                        frame,
                        at: Instant::now(),
                    }));
                }
            }
            match self.fill(deadline)? {
                Some(ending) => return Ok(Err(ending)),
                None => continue,
            }
        }
    }

    /// Read whatever bytes arrive before the deadline (for replies that are
    /// not frames, like a protocol header). Returns the bytes and how the
    /// wait ended (Timeout when the deadline passed with the socket open).
    pub fn read_raw_until(
        &mut self,
        deadline: Instant,
        want: usize,
    ) -> Result<(Vec<u8>, Ending), String> {
        while self.inbuf.len() < want {
            if let Some(ending) = self.fill(deadline)? {
                return Ok((std::mem::take(&mut self.inbuf), ending));
            }
        }
        Ok((std::mem::take(&mut self.inbuf), Ending::Timeout))
    }

    /// Wait for the socket to end, discarding frames meanwhile.
    pub fn read_ending(&mut self, timeout: Duration) -> Result<Ending, String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.inbuf.clear();
            if let Some(ending) = self.fill(deadline)? {
                return Ok(ending);
            }
        }
    }

    /// One read into the buffer; Some(ending) when no bytes came.
    fn fill(&mut self, deadline: Instant) -> Result<Option<Ending>, String> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(Some(Ending::Timeout));
        }
        self.stream
            .set_read_timeout(Some(deadline - now))
            .map_err(|e| io_err("set_read_timeout", e))?;
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(Some(Ending::Eof)),
            Ok(n) => {
                self.inbuf.extend_from_slice(&chunk[..n]);
                Ok(None)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(Some(Ending::Timeout))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(Some(Ending::Reset)),
            Err(e) => Err(io_err("read", e)),
        }
    }
}

/// A deterministic body: its index in the first 8 bytes, then bytes that
/// depend on index and position, so a reordering, a lost frame or a
/// corrupted byte all show.
pub fn body(index: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&index.to_be_bytes()[..len.min(8)]);
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes()[..(len - out.len()).min(8)]);
    }
    out
}

/// Where two bodies first differ, for a readable failure.
pub fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i} of {}/{}", a.len(), b.len()),
        None => format!("lengths differ: {} vs {}", a.len(), b.len()),
    }
}
