//! The tokio side of one relayed connection: a thin driver of its
//! [`Session`]. It reads the sockets into the session's buffers, writes
//! its queues, performs the actions it asks for (its deadline on the
//! thread's timer, the quiet mark, the hidden read and the drain) and, when the connection ends, runs
//! the close plan (`relay::closing`). Every decision is the session's.
//!
//! Life of a connection:
//! 1. the client's protocol header is checked (a wrong one gets the
//!    supported header back and a close, as a broker would answer);
//! 2. the broker is dialed ([`crate::relay::upstream`]);
//! 3. the pump moves bytes both ways until the session returns an
//!    [`Ending`];
//! 4. the session's close plan is played out, every step bounded in time.

use crate::config::RelaySettings;
use crate::relay::EventLog;
use crate::relay::closing;
use crate::relay::coalesce::Window;
use crate::relay::frame::{CONNECTION_FORCED, PROTOCOL_HEADER};
use crate::relay::io_buffers::{Direction, READ_MIN};
use crate::relay::login::Credentials;
use crate::relay::panic_guard;
use crate::relay::quiet::QuietSocket;
use crate::relay::refusal;
use crate::relay::session::close_plan::{self, CLOSE_TIMEOUT, Ending};
use crate::relay::session::events::{Event, Side};
use crate::relay::session::liveness::HiddenRead;
use crate::relay::session::{
    self, Action, HeaderCheck, Session, SessionConfig, check_protocol_header,
};
use crate::relay::thread_timer::{Alarm, Alarms};
use crate::relay::upstream::{self, BrokerIo};
use bytes::{Buf, BufMut, BytesMut};
use std::future::poll_fn;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

/// Queued chunks handed to one vectored write.
const MAX_WRITE_SLICES: usize = 64;
/// Iterations of the pump before it yields to other connections.
const PUMP_BUDGET: usize = 64;

/// What the connection needs from its listener.
pub struct ConnectionContext {
    pub id: u64,
    pub listener: usize,
    pub settings: Arc<RelaySettings>,
    pub tls: Option<TlsConnector>,
    pub log: Arc<dyn EventLog>,
    /// The relay thread's timer (rule R17).
    pub alarms: Alarms,
}

impl ConnectionContext {
    fn log(&self, event: &Event) {
        self.log.record(self.listener, event);
    }
}

/// Serve one accepted client until the connection ends.
pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    ctx: ConnectionContext,
    mut shutdown: watch::Receiver<Option<Duration>>,
) {
    let id = ctx.id;
    let mut first_bytes = BytesMut::with_capacity(READ_MIN);
    let header = tokio::select! {
        r = tokio::time::timeout(ctx.settings.connect_timeout, read_protocol_header(&mut client, &mut first_bytes)) => r,
        _ = wait_shutdown(&mut shutdown) => return,
    };
    match header {
        Ok(Some(HeaderCheck::Ok)) => {}
        Ok(Some(_)) => {
            ctx.log(&Event::WrongProtocolHeader { id, peer });
            let plan = close_plan::wrong_header(Instant::now());
            closing::execute(plan, &mut client, None).await;
            return;
        }
        Ok(None) => {
            ctx.log(&Event::ClosedBeforeHeader { id, peer });
            return;
        }
        Err(_) => {
            ctx.log(&Event::NoProtocolHeader {
                id,
                peer,
                waited: ctx.settings.connect_timeout,
            });
            return;
        }
    }

    let dialed = tokio::select! {
        r = upstream::dial(&ctx.settings, ctx.tls.as_ref()) => r,
        _ = wait_shutdown(&mut shutdown) => return,
    };
    let dialed = match dialed {
        Ok(d) => d,
        Err(e) => {
            // The relay speaks for the broker: its own Start, then Close
            // 320 with the reason, so the app logs why (320: a transient
            // failure that the client's reconnect loop retries, as it
            // retried the bare end of stream before; rule R15).
            ctx.log(&Event::DialFailed {
                id,
                peer,
                error: e.to_string(),
            });
            let text = format!("relay: {e}");
            let deadline = Instant::now() + CLOSE_TIMEOUT;
            refusal::refuse(
                &mut client,
                first_bytes,
                true,
                CONNECTION_FORCED,
                &text,
                deadline,
            )
            .await;
            return;
        }
    };
    ctx.log(&Event::Relayed {
        id,
        peer,
        broker: ctx.settings.brokers[dialed.broker].to_string(),
        broker_index: dialed.broker,
        brokers: ctx.settings.brokers.len(),
        upstream: dialed.local,
    });

    // Anything the client pipelined after its header is frames.
    first_bytes.advance(PROTOCOL_HEADER.len());
    let broker = &ctx.settings.brokers[dialed.broker];
    let login = match Credentials::of(broker) {
        Ok(login) => login,
        // The parser accepted these escapes at configuration time, so this
        // cannot happen; said and closed rather than trusted.
        Err(error) => {
            ctx.log(&Event::DialFailed { id, peer, error });
            return;
        }
    };
    let config = SessionConfig {
        id,
        relay_heartbeat: ctx.settings.heartbeat,
        quiet_capable: dialed.plain_fd.is_some(),
        login,
        handshake_timeout: handshake_timeout(&client),
    };
    // The dial sent the protocol header and read the broker's first frame.
    let session = Session::new(config, Instant::now(), first_bytes, dialed.first_bytes);
    let mut pump = Pump {
        client,
        broker: dialed.stream,
        session,
        alarm: ctx.alarms.alarm(id),
        quiet: dialed.plain_fd.map(QuietSocket::new),
    };

    // A panic in the pump (the session's rules or the driver's I/O step)
    // ends this connection only, and both sides are told (541): the
    // sockets are still here to say it. The status page's entry
    // (src/status/) gets relaxed stores per wakeup.
    let entry = ctx.log.status().and_then(|slot| slot.connection(id));
    let ending = tokio::select! {
        e = poll_fn(|cx| match panic_guard::catch(|| pump.poll(cx)) {
            Ok(polled) => {
                if let Some(entry) = entry {
                    entry.update(&pump.session.traffic());
                }
                polled.map(Ok)
            }
            Err(panic) => Poll::Ready(Err(panic)),
        }) => e,
        grace = wait_shutdown(&mut shutdown) => Ok(Ending::Shutdown(grace)),
    };
    let plan = match ending {
        Ok(ending) => pump.session.close(ending, Instant::now()),
        Err(panic) => close_plan::internal_error(&panic, Instant::now()),
    };
    if let Some(event) = plan.announcement(id) {
        ctx.log(&event);
    }
    let (kind, summary) = (plan.kind, plan.summary.clone());
    closing::execute(plan, &mut pump.client, Some(&mut pump.broker)).await;
    ctx.log(&pump.session.closed_event(kind, summary, Instant::now()));
}

/// Read until the 8-byte protocol header is in (or it is clearly wrong);
/// None when the client closed first.
pub(crate) async fn read_protocol_header(
    client: &mut TcpStream,
    buf: &mut BytesMut,
) -> Option<HeaderCheck> {
    loop {
        match check_protocol_header(buf) {
            HeaderCheck::Incomplete => {}
            done => return Some(done),
        }
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
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

struct Pump {
    client: TcpStream,
    broker: Box<dyn BrokerIo>,
    session: Session,
    /// This connection's place on the thread's timer (rule R17).
    alarm: Alarm,
    /// Plain-TCP upstreams only (see quiet.rs).
    quiet: Option<QuietSocket>,
}

impl Pump {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        if let Some(e) = self.alarm.failure() {
            return Poll::Ready(Ending::TimerFailed(e));
        }
        // Woken on purpose by the thread's timer or another connection's
        // wakeup; and whatever woke this one, the thread is awake now, so
        // connections whose window is open come along (rule R17).
        let mut rung = self.alarm.take_rung();
        self.alarm.thread_awake(Instant::now());
        for _ in 0..PUMP_BUDGET {
            let on_purpose = std::mem::take(&mut rung);
            match self.step(cx, on_purpose) {
                Poll::Ready(Err(ending)) => return Poll::Ready(ending),
                Poll::Ready(Ok(())) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
        // Busy connection: let the others run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One round over every source of work. Ready(Ok) = progress made,
    /// Pending = nothing to do until a waker fires. `on_purpose`: the
    /// thread woke this connection within its window (rule R17).
    fn step(&mut self, cx: &mut Context<'_>, on_purpose: bool) -> Poll<Result<(), Ending>> {
        let s = &mut self.session;
        let mut progress = false;

        // A raised mark may hide a broker heartbeat: read it now, so that
        // it does not wake the thread later with the next one.
        if on_purpose && s.drain_wanted() {
            if let Some(quiet) = &self.quiet {
                let read = quiet
                    .read_hidden(&mut s.inbound(Side::Broker).inbuf)
                    .map_err(|e| Ending::BrokerGone(Some(e)))?;
                s.after_drain(read, Instant::now())?;
            }
        }

        // Client -> relay, then broker -> relay.
        progress |= read_side(Pin::new(&mut self.client), cx, s, Side::Client)?;
        s.process(Side::Client, Instant::now())?;
        progress |= read_side(Pin::new(&mut self.broker), cx, s, Side::Broker)?;
        s.process(Side::Broker, Instant::now())?;

        // The verdict, then heartbeats, queued before writing so they go
        // out in this round. When something was read the relay is awake
        // anyway: a heartbeat that is merely worth sending rides along.
        let awake_anyway = progress || on_purpose;
        let now = Instant::now();
        if s.judge_broker(now)? {
            let read = match &self.quiet {
                Some(quiet) => quiet.read_hidden(&mut s.inbound(Side::Broker).inbuf),
                None => Ok(HiddenRead::Nothing),
            };
            let read = read.map_err(|e| Ending::BrokerGone(Some(e)))?;
            s.after_hidden_read(read, now)?;
            progress = true;
        }
        s.queue_heartbeats(now, awake_anyway);

        // Relay -> broker, relay -> client.
        progress |= write_side(Pin::new(&mut self.broker), cx, s, Side::Broker, now)?;
        progress |= write_side(Pin::new(&mut self.client), cx, s, Side::Client, now)?;

        if let Some(ending) = s.broker_ended() {
            return Poll::Ready(Err(ending));
        }
        if progress {
            return Poll::Ready(Ok(()));
        }
        // Nothing more to do: the session's actions before sleeping.
        loop {
            match s.before_sleep(now) {
                Action::SetQuietMark { raised } => {
                    let result = match &self.quiet {
                        Some(quiet) => quiet.set_mark(raised),
                        None => Ok(()),
                    };
                    s.on_quiet_mark(raised, result)?;
                }
                Action::ArmTimer(at) => {
                    let window = at.map(|by| Window::new(s.worth_waking_from(), by, now));
                    self.alarm.set(window, cx);
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The handshake's bound for a client of this listener: the session's
/// own, or (feature `test-hooks`) a shorter one a relay test asked for.
fn handshake_timeout(client: &TcpStream) -> Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(shorter) = client
        .local_addr()
        .ok()
        .and_then(|a| crate::relay::test_hooks::handshake_timeout(a.port()))
    {
        return shorter;
    }
    let _ = client;
    session::HANDSHAKE_TIMEOUT
}

/// Read `side` into the session when it wants that side read; Ok(true)
/// when something (or end of stream) was read.
fn read_side<R: AsyncRead + Unpin + ?Sized>(
    reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    s: &mut Session,
    side: Side,
) -> Result<bool, Ending> {
    let Some(limit) = s.read_limit(side) else {
        return Ok(false);
    };
    match read_into(reader, cx, s.inbound(side), limit) {
        Poll::Ready(Ok(n)) => {
            s.on_read(side, n, Instant::now());
            Ok(true)
        }
        Poll::Ready(Err(e)) => Err(Ending::gone(side, Some(e))),
        Poll::Pending => Ok(false),
    }
}

/// Write what the session queued for `side`; Ok(true) when bytes went out.
fn write_side<W: AsyncWrite + Unpin + ?Sized>(
    writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    s: &mut Session,
    side: Side,
    now: Instant,
) -> Result<bool, Ending> {
    match poll_write_queue(writer, cx, s.outbound(side)) {
        Poll::Ready(Ok(n)) if n > 0 => {
            s.on_written(side, n, now);
            Ok(true)
        }
        Poll::Ready(Ok(_)) | Poll::Pending => Ok(false),
        Poll::Ready(Err(e)) => Err(Ending::gone(side, Some(e))),
    }
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
        }
    }
    polled
}

/// Write as much of the queue as the socket takes, consuming it;
/// Ready(Ok(n)) with the bytes written (0 when the queue was empty).
fn poll_write_queue<W: AsyncWrite + Unpin + ?Sized>(
    mut writer: Pin<&mut W>,
    cx: &mut Context<'_>,
    dir: &mut Direction,
) -> Poll<std::io::Result<usize>> {
    let mut written = 0;
    while !dir.out_is_empty() {
        // On the stack: this runs for every write.
        let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(dir.out()) {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        match writer.as_mut().poll_write_vectored(cx, &slices[..count]) {
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
    if written > 0 || dir.out_is_empty() {
        Poll::Ready(Ok(written))
    } else {
        Poll::Pending
    }
}
