//! One relayed connection: client socket <-> broker stream.
//!
//! Life of a connection:
//! 1. the client's protocol header is checked (a wrong one gets the
//!    supported header back and a close, as a broker would answer);
//! 2. the broker is dialed ([`crate::relay::upstream`]);
//! 3. the pump moves frames both ways until something ends it
//!    ([`Ending`]); frames are found by boundary and passed on in order,
//!    byte for byte, except heartbeats (absorbed) and the Tune/TuneOk
//!    heartbeat fields (patched in place);
//! 4. the ending is played out: Connection.Close where one is owed, pending
//!    frames flushed, both sockets closed, every step bounded in time.
//!
//! Buffers: per direction at most `max(256 KiB, 2 x frame_max)` bytes are
//! held (read but not yet written). When the client does not read, the
//! relay stops reading the broker, and the broker-silence watch is paused
//! for as long, since the relay itself is then the reason nothing arrives.

use crate::config::RelaySettings;
use crate::relay::deadline::Deadline;
use crate::relay::frame::{
    CONNECTION_FORCED, FRAME_HEARTBEAT, FRAME_METHOD, FrameError, FrameInfo, HEARTBEAT_FRAME,
    INTERNAL_ERROR, PROTOCOL_HEADER, REPLY_SUCCESS, SYNTAX_ERROR, Scan, scan,
};
use crate::relay::heartbeat::HeartbeatTimers;
use crate::relay::methods::{self, ConnectionMethod};
use crate::relay::quiet::QuietUpstream;
use crate::relay::upstream::{self, BrokerIo};
use crate::relay::{EventLog, Level};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

/// Frame size allowed before Tune/TuneOk settle it (RabbitMQ's default
/// frame_max; handshake frames are far smaller).
pub const HANDSHAKE_FRAME_MAX: usize = 131_072;
/// Largest frame_max the relay accepts when a peer asks for "no limit" (0).
pub const UNLIMITED_FRAME_MAX: usize = 1 << 20;
/// Smallest per-direction buffer bound.
pub const MIN_BUFFER: usize = 256 * 1024;
/// Reads start small (idle connections stay cheap) and grow while the
/// socket keeps filling them.
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 128 * 1024;
/// How long a normal close may take (flushing, waiting for CloseOk).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to keep reading a client after sending it our last frame, so
/// that its reply does not turn into a reset that destroys what it has not
/// read yet.
const LINGER: Duration = Duration::from_millis(500);
/// Queued chunks handed to one vectored write.
const MAX_WRITE_SLICES: usize = 64;
/// Iterations of the pump before it yields to other connections.
const PUMP_BUDGET: usize = 64;

/// The most bytes any one connection has held in one direction (read but
/// not yet written) since the process started: what tests and benchmarks
/// check the buffer bound against.
static PEAK_HELD: AtomicUsize = AtomicUsize::new(0);

pub fn peak_buffered_bytes() -> usize {
    PEAK_HELD.load(Ordering::Relaxed)
}

fn note_held(held: usize) {
    PEAK_HELD.fetch_max(held, Ordering::Relaxed);
}

/// What the connection needs from its listener.
pub struct ConnectionContext {
    pub id: u64,
    pub listener: usize,
    pub settings: Arc<RelaySettings>,
    pub tls: Option<TlsConnector>,
    pub log: Arc<dyn EventLog>,
}

impl ConnectionContext {
    fn log(&self, level: Level, message: &str) {
        self.log.event(
            self.listener,
            level,
            &format!("connection #{}: {message}", self.id),
        );
    }
}

/// Why the pump stopped.
#[derive(Debug)]
enum Ending {
    ClientGone(Option<std::io::Error>),
    BrokerGone(Option<std::io::Error>),
    BrokerSilent(Duration),
    ClientSentBadFrame {
        code: u16,
        text: String,
    },
    BrokerSentBadFrame {
        code: u16,
        text: String,
    },
    Shutdown(Duration),
    /// The heartbeat timer's timerfd failed (it cannot, short of a kernel
    /// bug); without it the relay could not keep its promise.
    TimerFailed(std::io::Error),
}

/// Serve one accepted client until the connection ends.
pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    ctx: ConnectionContext,
    mut shutdown: watch::Receiver<Option<Duration>>,
) {
    let mut first_bytes = BytesMut::with_capacity(READ_MIN);
    let header = tokio::select! {
        r = tokio::time::timeout(ctx.settings.connect_timeout, read_protocol_header(&mut client, &mut first_bytes)) => r,
        _ = wait_shutdown(&mut shutdown) => return,
    };
    match header {
        Ok(HeaderCheck::Ok) => {}
        Ok(HeaderCheck::Wrong) => {
            ctx.log(Level::Warn, &format!("client {peer} sent a wrong protocol header; answered with AMQP 0-9-1's and closed"));
            let _ = client.write_all(&PROTOCOL_HEADER).await;
            finish_client(
                &mut client,
                VecDeque::new(),
                None,
                Instant::now() + CLOSE_TIMEOUT,
            )
            .await;
            return;
        }
        Ok(HeaderCheck::Closed) => {
            ctx.log(
                Level::Debug,
                &format!("client {peer} closed before sending a protocol header"),
            );
            return;
        }
        Err(_) => {
            ctx.log(
                Level::Warn,
                &format!(
                    "client {peer} sent no protocol header within {}s; closed",
                    ctx.settings.connect_timeout.as_secs()
                ),
            );
            return;
        }
    }

    // Before the dial, so that a failure leaves nothing upstream to close.
    let timer = match Deadline::new() {
        Ok(t) => t,
        Err(e) => {
            ctx.log(
                Level::Error,
                &format!("client {peer}: cannot create a heartbeat timer (timerfd): {e}; closed the client"),
            );
            return;
        }
    };

    let dialed = tokio::select! {
        r = upstream::dial(&ctx.settings, ctx.tls.as_ref()) => r,
        _ = wait_shutdown(&mut shutdown) => return,
    };
    let dialed = match dialed {
        Ok(d) => d,
        Err(e) => {
            // Nothing can be said in AMQP before the broker's Start, so the
            // client sees its socket closed and retries, as with a broker down.
            ctx.log(
                Level::Error,
                &format!("client {peer}: {e}; closed the client"),
            );
            return;
        }
    };
    let broker = &ctx.settings.brokers[dialed.broker];
    ctx.log(
        Level::Info,
        &format!(
            "client {peer} relayed to {broker} (broker {} of {}), upstream from {}",
            dialed.broker + 1,
            ctx.settings.brokers.len(),
            dialed
                .local
                .map(|a| a.to_string())
                .unwrap_or_else(|| "?".into())
        ),
    );

    let started = Instant::now();
    let mut pump = Pump::new(client, dialed.stream, ctx.settings.heartbeat, timer);
    pump.quiet = dialed
        .plain_fd
        .map(|fd| QuietUpstream::new(fd, ctx.settings.heartbeat, started));
    // The dial sent the protocol header and read the broker's first frame.
    pump.u2c.inbuf = dialed.first_bytes;
    // Anything the client pipelined after its header is frames.
    first_bytes.advance(PROTOCOL_HEADER.len());
    pump.c2u.inbuf = first_bytes;

    let ending = tokio::select! {
        e = poll_fn(|cx| pump.poll(cx)) => e,
        grace = wait_shutdown(&mut shutdown) => Ending::Shutdown(grace),
    };
    let summary = pump.finish(ending, &ctx).await;
    ctx.log(
        Level::Info,
        &format!(
            "closed: {summary} (after {:.1}s, {} bytes to the broker, {} bytes to the client)",
            started.elapsed().as_secs_f64(),
            pump.bytes_up,
            pump.bytes_down
        ),
    );
}

enum HeaderCheck {
    Ok,
    Wrong,
    Closed,
}

/// Read until the 8-byte protocol header is in (or it is clearly wrong).
async fn read_protocol_header(client: &mut TcpStream, buf: &mut BytesMut) -> HeaderCheck {
    loop {
        let have = buf.len().min(PROTOCOL_HEADER.len());
        if buf[..have] != PROTOCOL_HEADER[..have] {
            return HeaderCheck::Wrong;
        }
        if have == PROTOCOL_HEADER.len() {
            return HeaderCheck::Ok;
        }
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return HeaderCheck::Closed,
            Ok(_) => {}
        }
    }
}

async fn wait_shutdown(shutdown: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match shutdown.wait_for(|v| v.is_some()).await {
        Ok(v) => v.unwrap_or(CLOSE_TIMEOUT),
        // The relay is being torn down without a grace period.
        Err(_) => Duration::ZERO,
    }
}

/// Bytes travelling one way: read but not yet scanned (`inbuf`), and
/// whole frames ready to write (`out`).
struct Direction {
    inbuf: BytesMut,
    /// How much of `inbuf` is scanned whole frames that pass unchanged.
    scanned: usize,
    out: VecDeque<Bytes>,
    out_len: usize,
    read_size: usize,
    /// The writer side needs a flush (TLS buffers records).
    needs_flush: bool,
}

impl Direction {
    fn new() -> Direction {
        Direction {
            inbuf: BytesMut::new(),
            scanned: 0,
            out: VecDeque::new(),
            out_len: 0,
            read_size: READ_MIN,
            needs_flush: false,
        }
    }

    fn held(&self) -> usize {
        self.inbuf.len() + self.out_len
    }

    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out_len += bytes.len();
            self.out.push_back(bytes);
        }
    }

    /// Move the scanned frames to the write queue without copying.
    fn release_scanned(&mut self) {
        if self.scanned > 0 {
            let chunk = self.inbuf.split_to(self.scanned).freeze();
            self.scanned = 0;
            self.push(chunk);
        }
    }

    /// The next frame past the scanned ones, with its payload's range in
    /// `inbuf`; heartbeat frames are absorbed on the way (the relay owns
    /// liveness on both sides). The frame stays unscanned so the caller can
    /// look at it, patch it in place, then pass it with `scanned += len`.
    fn next_frame(
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
                }
                Scan::Frame(info) => {
                    let payload = info.payload_range();
                    return Ok(Some((info, at + payload.start..at + payload.end)));
                }
            }
        }
    }

    /// The whole write queue, for the closing handshakes.
    fn take_out(&mut self) -> VecDeque<Bytes> {
        self.out_len = 0;
        std::mem::take(&mut self.out)
    }

    fn consume(&mut self, mut n: usize) {
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

    fn prepare_read(&mut self) {
        if self.inbuf.capacity() - self.inbuf.len() < self.read_size {
            self.inbuf.reserve(self.read_size);
        }
    }

    /// Grow reads while they come back full, shrink when they don't.
    fn after_read(&mut self, n: usize, offered: usize) {
        if n >= offered && self.read_size < READ_MAX {
            self.read_size *= 2;
        } else if n < offered / 4 && self.read_size > READ_MIN {
            self.read_size /= 2;
        }
        // An idle connection should not keep a large buffer.
        if self.inbuf.is_empty() && self.inbuf.capacity() > READ_MAX {
            self.inbuf = BytesMut::new();
        }
    }
}

struct Pump {
    client: TcpStream,
    broker: Box<dyn BrokerIo>,
    c2u: Direction,
    u2c: Direction,
    relay_heartbeat: Duration,
    /// Upstream timers; armed when TuneOk has gone up.
    upstream_hb: Option<HeartbeatTimers>,
    /// Heartbeats the client asked for in its TuneOk, sent by the relay.
    client_hb: Option<HeartbeatTimers>,
    timer: Deadline,
    /// Plain-TCP upstreams only (see quiet.rs).
    quiet: Option<QuietUpstream>,
    frame_max: usize,
    client_eof: bool,
    broker_eof: bool,
    client_sent_close: bool,
    client_sent_close_ok: bool,
    broker_sent_close: bool,
    broker_sent_close_ok: bool,
    bytes_up: u64,
    bytes_down: u64,
}

impl Pump {
    fn new(
        client: TcpStream,
        broker: Box<dyn BrokerIo>,
        relay_heartbeat: Duration,
        timer: Deadline,
    ) -> Pump {
        Pump {
            client,
            broker,
            c2u: Direction::new(),
            u2c: Direction::new(),
            relay_heartbeat,
            upstream_hb: None,
            client_hb: None,
            timer,
            quiet: None,
            frame_max: HANDSHAKE_FRAME_MAX,
            client_eof: false,
            broker_eof: false,
            client_sent_close: false,
            client_sent_close_ok: false,
            broker_sent_close: false,
            broker_sent_close_ok: false,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    fn buffer_limit(&self) -> usize {
        MIN_BUFFER.max(2 * self.frame_max)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        for _ in 0..PUMP_BUDGET {
            match self.step(cx) {
                Poll::Ready(Some(ending)) => return Poll::Ready(ending),
                Poll::Ready(None) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
        // Busy connection: let the others run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One round over every source of work. Ready(None) = progress made,
    /// Pending = nothing to do until a waker fires.
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Ending>> {
        let mut progress = false;
        let limit = self.buffer_limit();

        // Client -> relay.
        if !self.client_eof && self.c2u.held() < limit {
            match read_into(Pin::new(&mut self.client), cx, &mut self.c2u, limit) {
                Poll::Ready(Ok(0)) => {
                    self.client_eof = true;
                    progress = true;
                }
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Ending::ClientGone(Some(e)))),
                Poll::Pending => {}
            }
        }
        if let Err(ending) = self.scan_client_frames() {
            return Poll::Ready(Some(ending));
        }
        if self.client_eof {
            // A partial frame left at EOF is dropped: it can never complete.
            return Poll::Ready(Some(Ending::ClientGone(None)));
        }

        // Broker -> relay.
        if !self.broker_eof && self.u2c.held() < limit {
            match read_into(Pin::new(&mut self.broker), cx, &mut self.u2c, limit) {
                Poll::Ready(Ok(0)) => {
                    self.broker_eof = true;
                    progress = true;
                }
                Poll::Ready(Ok(_)) => {
                    if let Some(hb) = &mut self.upstream_hb {
                        hb.on_received(Instant::now());
                    }
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Ending::BrokerGone(Some(e)))),
                Poll::Pending => {}
            }
        }
        if let Err(ending) = self.scan_broker_frames() {
            return Poll::Ready(Some(ending));
        }

        // Heartbeats are queued before writing so they go out in this round.
        // When something was read the relay is awake anyway: a heartbeat
        // that is merely worth sending rides along (see heartbeat.rs).
        let awake_anyway = progress;
        let now = Instant::now();
        if let Some(hb) = &mut self.upstream_hb {
            // Not reading the broker (the client is not reading) proves
            // nothing about the broker: pause the silence watch meanwhile.
            hb.set_receive_paused(self.u2c.held() >= limit, now);
            if hb.peer_dead(now) {
                // A raised low-water mark may have kept the broker's last
                // heartbeat from waking the relay: read it before the
                // verdict, judged with the same `now` (quiet.rs).
                let hidden = match &self.quiet {
                    Some(quiet) if quiet.raised() => quiet.read_hidden(&mut self.u2c.inbuf),
                    _ => Ok(None),
                };
                match hidden {
                    Ok(None) => return Poll::Ready(Some(Ending::BrokerSilent(hb.silence(now)))),
                    Ok(Some(0)) => self.broker_eof = true,
                    Ok(Some(_)) => hb.on_hidden_received(now),
                    Err(e) => return Poll::Ready(Some(Ending::BrokerGone(Some(e)))),
                }
                progress = true;
            }
            if (hb.send_due(now) || awake_anyway && hb.worth_sending(now))
                && self.c2u.out.is_empty()
            {
                self.c2u.push(Bytes::from_static(&HEARTBEAT_FRAME));
                hb.on_sent(now);
            }
        }
        if let Some(hb) = &mut self.client_hb {
            if (hb.send_due(now) || awake_anyway && hb.worth_sending(now))
                && self.u2c.out.is_empty()
            {
                self.u2c.push(Bytes::from_static(&HEARTBEAT_FRAME));
                hb.on_sent(now);
            }
        }

        // Relay -> broker.
        match poll_write_queue(Pin::new(&mut self.broker), cx, &mut self.c2u) {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.bytes_up += n as u64;
                if let Some(hb) = &mut self.upstream_hb {
                    hb.on_sent(now);
                }
                progress = true;
            }
            Poll::Ready(Ok(_)) | Poll::Pending => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Some(Ending::BrokerGone(Some(e)))),
        }
        // Relay -> client.
        match poll_write_queue(Pin::new(&mut self.client), cx, &mut self.u2c) {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.bytes_down += n as u64;
                if let Some(hb) = &mut self.client_hb {
                    hb.on_sent(now);
                }
                progress = true;
            }
            Poll::Ready(Ok(_)) | Poll::Pending => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Some(Ending::ClientGone(Some(e)))),
        }

        if self.broker_eof {
            return Poll::Ready(Some(Ending::BrokerGone(None)));
        }

        if progress {
            return Poll::Ready(None);
        }
        if let Err(ending) = self.settle_quiet(now) {
            return Poll::Ready(Some(ending));
        }
        // Sleep until the next heartbeat deadline.
        let upstream_deadline = self
            .upstream_hb
            .as_ref()
            .and_then(|hb| hb.next_deadline(self.c2u.out.is_empty()));
        let client_deadline = self
            .client_hb
            .as_ref()
            .and_then(|hb| hb.next_deadline(self.u2c.out.is_empty()));
        let deadline = upstream_deadline.into_iter().chain(client_deadline).min();
        if let Err(e) = self.timer.set(deadline) {
            return Poll::Ready(Some(Ending::TimerFailed(e)));
        }
        match self.timer.poll_expired(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Ending::TimerFailed(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Before sleeping: go quiet on an idle upstream, or stop being quiet
    /// (see quiet.rs). A mark that cannot be raised only costs the
    /// optimisation; one that cannot be lowered could strand the tail of a
    /// frame, so the connection ends (the client reconnects at once).
    fn settle_quiet(&mut self, now: Instant) -> Result<(), Ending> {
        let (Some(quiet), Some(hb)) = (&mut self.quiet, &mut self.upstream_hb) else {
            return Ok(());
        };
        let nothing_pending = self.u2c.held() == 0 && self.c2u.held() == 0;
        match quiet.settle(nothing_pending, now) {
            Ok(()) => hb.set_quiet(quiet.raised()),
            Err(e) if quiet.raised() => return Err(Ending::BrokerGone(Some(e))),
            Err(_) => {
                hb.set_quiet(false);
                self.quiet = None;
            }
        }
        Ok(())
    }

    /// Frames other than heartbeats moved: not idle (quiet.rs). A client's
    /// own heartbeats do not count, or a client that heartbeats often
    /// would keep the upstream from ever going quiet.
    fn note_busy(&mut self, passed_frames: bool) {
        if passed_frames {
            if let Some(quiet) = &mut self.quiet {
                quiet.on_busy(Instant::now());
            }
        }
    }

    /// Frames from the client: heartbeats absorbed, TuneOk's heartbeat
    /// replaced by the relay's, close methods noted; the rest untouched.
    fn scan_client_frames(&mut self) -> Result<(), Ending> {
        let malformed = |e: FrameError| Ending::ClientSentBadFrame {
            code: e.reply_code(),
            text: format!("relay: client sent a malformed frame: {e}"),
        };
        let mut passed_frames = false;
        while let Some((info, range)) = self.c2u.next_frame(self.frame_max).map_err(malformed)? {
            if info.kind == FRAME_METHOD && info.channel == 0 {
                match methods::connection_method(&self.c2u.inbuf[range.clone()]) {
                    Some(ConnectionMethod::TuneOk) => {
                        let payload = &mut self.c2u.inbuf[range];
                        let Some(fields) = methods::tune_fields(payload) else {
                            return Err(Ending::ClientSentBadFrame {
                                code: SYNTAX_ERROR,
                                text: "relay: malformed Connection.TuneOk".to_string(),
                            });
                        };
                        let relay_secs =
                            u16::try_from(self.relay_heartbeat.as_secs()).unwrap_or(u16::MAX);
                        methods::set_tune_heartbeat(payload, relay_secs);
                        self.frame_max = match fields.frame_max {
                            0 => UNLIMITED_FRAME_MAX,
                            n => (n as usize).min(UNLIMITED_FRAME_MAX),
                        };
                        let now = Instant::now();
                        self.upstream_hb = Some(HeartbeatTimers::new(self.relay_heartbeat, now));
                        if fields.heartbeat > 0 {
                            // The relay only sends to the client; its silence
                            // is never held against it.
                            let mut hb = HeartbeatTimers::new(
                                Duration::from_secs(fields.heartbeat.into()),
                                now,
                            );
                            hb.set_receive_paused(true, now);
                            self.client_hb = Some(hb);
                        }
                    }
                    Some(ConnectionMethod::Close) => self.client_sent_close = true,
                    Some(ConnectionMethod::CloseOk) => self.client_sent_close_ok = true,
                    _ => {}
                }
            }
            self.c2u.scanned += info.len;
            passed_frames = true;
        }
        self.note_busy(passed_frames);
        self.c2u.release_scanned();
        Ok(())
    }

    /// Frames from the broker: heartbeats absorbed (they only prove the
    /// broker alive), Tune's heartbeat offered to the client as 0.
    fn scan_broker_frames(&mut self) -> Result<(), Ending> {
        let malformed = |e: FrameError| Ending::BrokerSentBadFrame {
            code: e.reply_code(),
            text: format!("relay: broker sent a malformed frame: {e}"),
        };
        let mut passed_frames = false;
        while let Some((info, range)) = self.u2c.next_frame(self.frame_max).map_err(malformed)? {
            if info.kind == FRAME_METHOD && info.channel == 0 {
                match methods::connection_method(&self.u2c.inbuf[range.clone()]) {
                    Some(ConnectionMethod::Tune) => {
                        let payload = &mut self.u2c.inbuf[range];
                        if !methods::set_tune_heartbeat(payload, 0) {
                            return Err(Ending::BrokerSentBadFrame {
                                code: SYNTAX_ERROR,
                                text: "relay: malformed Connection.Tune".to_string(),
                            });
                        }
                    }
                    Some(ConnectionMethod::Close) => self.broker_sent_close = true,
                    Some(ConnectionMethod::CloseOk) => self.broker_sent_close_ok = true,
                    _ => {}
                }
            }
            self.u2c.scanned += info.len;
            passed_frames = true;
        }
        self.note_busy(passed_frames);
        self.u2c.release_scanned();
        Ok(())
    }

    /// Play out the ending; returns the reason for the log.
    async fn finish(&mut self, ending: Ending, ctx: &ConnectionContext) -> String {
        let normal = Instant::now() + CLOSE_TIMEOUT;
        let tuned = self.upstream_hb.is_some();
        let client_queue = self.u2c.take_out();
        let broker_queue = self.c2u.take_out();
        let broker_in = std::mem::take(&mut self.u2c.inbuf);
        match ending {
            Ending::ClientGone(error) => {
                let clean = self.client_sent_close || self.client_sent_close_ok;
                let close = (!clean && tuned).then(|| {
                    methods::close_frame(
                        REPLY_SUCCESS,
                        "client closed its connection without Connection.Close",
                    )
                });
                let wait =
                    close.is_some() || (self.client_sent_close && !self.broker_sent_close_ok);
                finish_broker(
                    &mut self.broker,
                    broker_queue,
                    close,
                    broker_in,
                    wait,
                    normal,
                )
                .await;
                match (clean, error) {
                    (true, _) => "closed by the client (Connection.Close)".to_string(),
                    (false, None) => "client went away without Connection.Close; closed upstream with Connection.Close".into(),
                    (false, Some(e)) => format!("client socket failed ({e}); closed upstream with Connection.Close"),
                }
            }
            Ending::BrokerGone(error) => {
                let clean = self.broker_sent_close || self.broker_sent_close_ok;
                if clean {
                    finish_client(&mut self.client, client_queue, None, normal).await;
                    if self.broker_sent_close_ok {
                        "closed by the client (Connection.Close)".to_string()
                    } else {
                        "closed by the broker (Connection.Close)".to_string()
                    }
                } else {
                    let why = match &error {
                        Some(e) => format!("connection to the broker lost: {e}"),
                        None => {
                            "connection to the broker lost: the broker closed the TCP connection"
                                .to_string()
                        }
                    };
                    ctx.log(
                        Level::Warn,
                        &format!("{why}; sent Connection.Close {CONNECTION_FORCED} to the client"),
                    );
                    let close = methods::close_frame(CONNECTION_FORCED, &format!("relay: {why}"));
                    finish_client(&mut self.client, client_queue, Some(close), normal).await;
                    why
                }
            }
            Ending::BrokerSilent(silence) => {
                let why = format!(
                    "broker missed heartbeats: nothing received for {:.1}s (limit 2 x {}s)",
                    silence.as_secs_f64(),
                    self.relay_heartbeat.as_secs()
                );
                ctx.log(
                    Level::Error,
                    &format!("{why}; sent Connection.Close {CONNECTION_FORCED} to the client"),
                );
                let close = methods::close_frame(CONNECTION_FORCED, &format!("relay: {why}"));
                // A silent broker will not answer a Close; just drop it.
                finish_client(&mut self.client, client_queue, Some(close), normal).await;
                why
            }
            Ending::ClientSentBadFrame { code, text } => {
                ctx.log(
                    Level::Warn,
                    &format!("{text}; sent Connection.Close {code} to the client"),
                );
                let to_client = methods::close_frame(code, &text);
                let to_broker = tuned.then(|| {
                    methods::close_frame(REPLY_SUCCESS, "relay: client sent a malformed frame")
                });
                let wait = to_broker.is_some();
                tokio::join!(
                    finish_client(&mut self.client, VecDeque::new(), Some(to_client), normal),
                    finish_broker(
                        &mut self.broker,
                        broker_queue,
                        to_broker,
                        broker_in,
                        wait,
                        normal
                    ),
                );
                text
            }
            Ending::BrokerSentBadFrame { code, text } => {
                ctx.log(
                    Level::Error,
                    &format!("{text}; sent Connection.Close {code} to the broker"),
                );
                let to_broker = methods::close_frame(code, &text);
                let to_client = methods::close_frame(CONNECTION_FORCED, &text);
                tokio::join!(
                    finish_client(&mut self.client, client_queue, Some(to_client), normal),
                    finish_broker(
                        &mut self.broker,
                        VecDeque::new(),
                        Some(to_broker),
                        BytesMut::new(),
                        true,
                        normal
                    ),
                );
                text
            }
            Ending::Shutdown(grace) => {
                let to_client =
                    methods::close_frame(CONNECTION_FORCED, "relay: httpd child is exiting");
                let ends = Ends {
                    client_queue,
                    broker_queue,
                    broker_in,
                };
                self.close_both(
                    ends,
                    to_client,
                    "httpd child exiting",
                    Instant::now() + grace,
                )
                .await;
                "httpd child exiting: closed upstream with Connection.Close".to_string()
            }
            Ending::TimerFailed(e) => {
                let why = format!("heartbeat timer failed: {e}");
                ctx.log(
                    Level::Error,
                    &format!("{why}; sent Connection.Close {INTERNAL_ERROR} to the client"),
                );
                let to_client = methods::close_frame(INTERNAL_ERROR, &format!("relay: {why}"));
                let ends = Ends {
                    client_queue,
                    broker_queue,
                    broker_in,
                };
                self.close_both(ends, to_client, "relay: internal error", normal)
                    .await;
                why
            }
        }
    }

    /// The relay ends the connection itself: `to_client` to the client and,
    /// once tuned, Connection.Close with `broker_text` upstream (waiting for
    /// its CloseOk), both after what was queued, all by `deadline`.
    async fn close_both(
        &mut self,
        ends: Ends,
        to_client: Bytes,
        broker_text: &str,
        deadline: Instant,
    ) {
        let to_broker = self
            .upstream_hb
            .is_some()
            .then(|| methods::close_frame(REPLY_SUCCESS, broker_text));
        let wait = to_broker.is_some();
        tokio::join!(
            finish_client(
                &mut self.client,
                ends.client_queue,
                Some(to_client),
                deadline
            ),
            finish_broker(
                &mut self.broker,
                ends.broker_queue,
                to_broker,
                ends.broker_in,
                wait,
                deadline
            ),
        );
    }
}

/// What is left in both directions when a connection ends.
struct Ends {
    client_queue: VecDeque<Bytes>,
    broker_queue: VecDeque<Bytes>,
    broker_in: BytesMut,
}

/// Read into `dir`, never past `limit` bytes held in that direction (the
/// per-direction buffer bound). Ready(Ok(0)) is end of stream.
fn read_into<R: AsyncRead + Unpin + ?Sized>(
    reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    dir: &mut Direction,
    limit: usize,
) -> Poll<std::io::Result<usize>> {
    let room = limit.saturating_sub(dir.held());
    dir.prepare_read();
    let offered = (dir.inbuf.capacity() - dir.inbuf.len()).min(room);
    let mut window = (&mut dir.inbuf).limit(offered);
    let polled = tokio_util::io::poll_read_buf(reader, cx, &mut window);
    if let Poll::Ready(Ok(n)) = polled {
        if n > 0 {
            dir.after_read(n, offered);
            note_held(dir.held());
        }
    }
    polled
}

/// Write as much of the queue as the socket takes; Ready(Ok(n)) with the
/// bytes written (0 when the queue was empty).
fn poll_write_queue<W: AsyncWrite + Unpin + ?Sized>(
    mut writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    dir: &mut Direction,
) -> Poll<std::io::Result<usize>> {
    let mut written = 0;
    while !dir.out.is_empty() {
        // On the stack: this runs for every write.
        let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(&dir.out) {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        let slices = &slices[..count];
        match writer.as_mut().poll_write_vectored(cx, slices) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "socket accepts no more data",
                )));
            }
            Poll::Ready(Ok(n)) => {
                dir.consume(n);
                dir.needs_flush = true;
                written += n;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => break,
        }
    }
    if dir.needs_flush {
        match writer.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => dir.needs_flush = false,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
    }
    if written > 0 {
        Poll::Ready(Ok(written))
    } else if dir.out.is_empty() {
        Poll::Ready(Ok(0))
    } else {
        Poll::Pending
    }
}

async fn write_queue<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    queue: VecDeque<Bytes>,
) -> std::io::Result<()> {
    for chunk in queue {
        writer.write_all(&chunk).await?;
    }
    writer.flush().await
}

/// Send the client what it is still owed, then close: FIN first, and keep
/// reading (discarding) briefly so the client's own reply does not turn
/// into a reset that destroys the Close it has not read yet.
pub(crate) async fn finish_client(
    client: &mut TcpStream,
    mut queue: VecDeque<Bytes>,
    close: Option<Bytes>,
    deadline: Instant,
) {
    if let Some(close) = close {
        queue.push_back(close);
    }
    let deadline = tokio::time::Instant::from_std(deadline);
    if tokio::time::timeout_at(deadline, write_queue(client, queue))
        .await
        .is_err()
    {
        return;
    }
    let _ = client.shutdown().await;
    let linger_until = deadline.min(tokio::time::Instant::now() + LINGER);
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout_at(linger_until, async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Send the broker what it is still owed, then, when `wait_close_ok`,
/// wait for its CloseOk (answering a Close of its own with CloseOk) so
/// the broker logs a clean client-initiated close. Bounded by `deadline`.
async fn finish_broker(
    broker: &mut Box<dyn BrokerIo>,
    mut queue: VecDeque<Bytes>,
    close: Option<Bytes>,
    mut inbuf: BytesMut,
    wait_close_ok: bool,
    deadline: Instant,
) {
    if let Some(close) = close {
        queue.push_back(close);
    }
    let deadline = tokio::time::Instant::from_std(deadline);
    let _ = tokio::time::timeout_at(deadline, async {
        write_queue(broker, queue).await?;
        if wait_close_ok {
            await_close_ok(broker, &mut inbuf).await?;
        }
        broker.shutdown().await
    })
    .await;
}

async fn await_close_ok(
    broker: &mut Box<dyn BrokerIo>,
    inbuf: &mut BytesMut,
) -> std::io::Result<()> {
    loop {
        while let Scan::Frame(info) = scan(inbuf, UNLIMITED_FRAME_MAX) {
            let frame = inbuf.split_to(info.len);
            if info.kind == FRAME_METHOD && info.channel == 0 {
                match methods::connection_method(info.payload(&frame)) {
                    Some(ConnectionMethod::CloseOk) => return Ok(()),
                    Some(ConnectionMethod::Close) => {
                        broker.write_all(&methods::close_ok_frame()).await?;
                        broker.flush().await?;
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
        inbuf.reserve(READ_MIN);
        if broker.read_buf(inbuf).await? == 0 {
            return Ok(());
        }
    }
}

/// Reading a frame stream is also what the benchmarks and tests need.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Bytes>> {
    loop {
        match scan(buf, UNLIMITED_FRAME_MAX) {
            Scan::Frame(info) => return Ok(Some(buf.split_to(info.len).freeze())),
            Scan::Invalid(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ));
            }
            Scan::Incomplete => {
                buf.reserve(READ_MIN);
                if reader.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            }
        }
    }
}
