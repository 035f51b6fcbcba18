//! How a relayed connection ends: one table (rule R10 in docs/DESIGN.md)
//! from the reason it ends to what each side is told, whether the relay
//! waits for the broker's CloseOk, and until when. The driver executes
//! the plan in one place (`relay::closing`).

use crate::relay::frame::{
    CONNECTION_FORCED, FRAME_METHOD, FrameError, INTERNAL_ERROR, PROTOCOL_HEADER, REPLY_SUCCESS,
    Scan, scan,
};
use crate::relay::methods::{self, ConnectionMethod};
use crate::relay::session::UNLIMITED_FRAME_MAX;
use crate::relay::session::events::{EndKind, Event, Side};
use crate::relay::session::phase::{Peer, Said};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a normal close may take (flushing, waiting for CloseOk).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the connection ends.
#[derive(Debug)]
pub enum Ending {
    /// The client's socket ended (None) or failed.
    ClientGone(Option<std::io::Error>),
    /// The broker's socket ended (None) or failed.
    BrokerGone(Option<std::io::Error>),
    /// The broker missed heartbeats: silent for this long.
    BrokerSilent(Duration),
    ClientSentBadFrame {
        code: u16,
        text: String,
    },
    BrokerSentBadFrame {
        code: u16,
        text: String,
    },
    /// The AMQP handshake did not complete within `limit` (rule R12).
    HandshakeTimedOut {
        limit: Duration,
        waiting_for: Side,
    },
    /// The httpd child is exiting; the grace period to close upstream.
    Shutdown(Duration),
    /// The heartbeat timer's timerfd failed (it cannot, short of a kernel
    /// bug); without it the relay could not keep its promise.
    TimerFailed(std::io::Error),
}

impl Ending {
    /// `side`'s socket ended (None) or failed.
    pub fn gone(side: Side, error: Option<std::io::Error>) -> Ending {
        match side {
            Side::Client => Ending::ClientGone(error),
            Side::Broker => Ending::BrokerGone(error),
        }
    }

    /// `side` sent bytes that are not a frame (rule R9).
    pub fn bad_frame(side: Side, error: &FrameError) -> Ending {
        let code = error.reply_code();
        let text = format!("relay: {side} sent a malformed frame: {error}");
        match side {
            Side::Client => Ending::ClientSentBadFrame { code, text },
            Side::Broker => Ending::BrokerSentBadFrame { code, text },
        }
    }
}

/// What one side gets before its socket is closed.
#[derive(Debug)]
pub enum SideClose {
    /// Nothing: its socket is gone or the peer is dead; just drop it.
    Drop,
    /// Write `queue` then `close` (if any), then close the socket.
    Finish {
        queue: VecDeque<Bytes>,
        close: Option<Bytes>,
        /// Broker only: wait for its CloseOk (answering a Close of its own
        /// with CloseOk) before closing, so it logs a clean close.
        await_close_ok: bool,
        /// Broker only: what was read from it and not yet scanned; its
        /// CloseOk may be in there.
        unread: BytesMut,
    },
}

impl SideClose {
    fn finish(queue: VecDeque<Bytes>, close: Option<Bytes>) -> SideClose {
        SideClose::Finish {
            queue,
            close,
            await_close_ok: false,
            unread: BytesMut::new(),
        }
    }

    /// The Connection.Close this side is sent, if any.
    pub fn close_frame(&self) -> Option<&Bytes> {
        match self {
            SideClose::Finish { close, .. } => close.as_ref(),
            SideClose::Drop => None,
        }
    }
}

/// One ending, played out.
#[derive(Debug)]
pub struct ClosePlan {
    pub kind: EndKind,
    pub client: SideClose,
    pub broker: SideClose,
    /// Every step of both sides is bounded by this.
    pub deadline: Instant,
    /// Logged before the plan runs (the relay's own reason to close).
    pub announce: Option<(Side, u16, String)>,
    /// The reason in the final "closed:" event.
    pub summary: String,
}

/// What the table needs to know about the connection.
pub struct Facts {
    pub tuned: bool,
    pub client: Peer,
    pub broker: Peer,
    pub relay_heartbeat: Duration,
    /// What is queued for each side, and unread from the broker.
    pub to_client: VecDeque<Bytes>,
    pub to_broker: VecDeque<Bytes>,
    pub broker_unread: BytesMut,
}

/// The close-plan table. Rows: the ending; columns: what the client gets,
/// what the broker gets, whether CloseOk is awaited, the deadline.
pub fn plan(ending: Ending, facts: Facts, now: Instant) -> ClosePlan {
    let normal = now + CLOSE_TIMEOUT;
    let Facts {
        tuned,
        client,
        broker,
        relay_heartbeat,
        to_client,
        to_broker,
        broker_unread,
    } = facts;
    // Once tuned, the broker is owed a Connection.Close (and its CloseOk
    // is awaited) whenever the relay itself ends the connection.
    let relay_closes_broker = |queue, unread, text: &str| SideClose::Finish {
        queue,
        close: tuned.then(|| methods::close_frame(REPLY_SUCCESS, text)),
        await_close_ok: tuned,
        unread,
    };
    match ending {
        Ending::ClientGone(error) => {
            let clean = client.closed_cleanly();
            let close = (!clean && tuned).then(|| {
                methods::close_frame(
                    REPLY_SUCCESS,
                    "client closed its connection without Connection.Close",
                )
            });
            // After the client's own Close, the broker's CloseOk is still
            // worth waiting for (the broker then logs a clean close).
            let await_close_ok =
                close.is_some() || (client.said == Said::Close && broker.said != Said::CloseOk);
            let (kind, summary) = match (clean, error) {
                (true, _) => (
                    EndKind::ClosedByClient,
                    "closed by the client (Connection.Close)".to_string(),
                ),
                (false, None) => (
                    EndKind::ClientGone,
                    "client went away without Connection.Close; closed upstream with Connection.Close".to_string(),
                ),
                (false, Some(e)) => (
                    EndKind::ClientGone,
                    format!("client socket failed ({e}); closed upstream with Connection.Close"),
                ),
            };
            ClosePlan {
                kind,
                client: SideClose::Drop,
                broker: SideClose::Finish {
                    queue: to_broker,
                    close,
                    await_close_ok,
                    unread: broker_unread,
                },
                deadline: normal,
                announce: None,
                summary,
            }
        }
        Ending::BrokerGone(_) if broker.closed_cleanly() => {
            // The Close (or CloseOk) is already queued for the client.
            let (kind, summary) = if broker.said == Said::CloseOk {
                (
                    EndKind::ClosedByClient,
                    "closed by the client (Connection.Close)",
                )
            } else {
                (
                    EndKind::ClosedByBroker,
                    "closed by the broker (Connection.Close)",
                )
            };
            ClosePlan {
                kind,
                client: SideClose::finish(to_client, None),
                broker: SideClose::Drop,
                deadline: normal,
                announce: None,
                summary: summary.to_string(),
            }
        }
        Ending::BrokerGone(error) => {
            let why = match &error {
                Some(e) => format!("connection to the broker lost: {e}"),
                None => "connection to the broker lost: the broker closed the TCP connection"
                    .to_string(),
            };
            relay_tells_client(EndKind::BrokerLost, why, to_client, normal)
        }
        Ending::BrokerSilent(silence) => {
            let why = format!(
                "broker missed heartbeats: nothing received for {:.1}s (limit 2 x {}s)",
                silence.as_secs_f64(),
                relay_heartbeat.as_secs()
            );
            // A silent broker will not answer a Close; just drop it.
            relay_tells_client(EndKind::BrokerSilent, why, to_client, normal)
        }
        Ending::HandshakeTimedOut { limit, waiting_for } => {
            let why = format!(
                "AMQP handshake not complete after {} s (waiting for the {waiting_for})",
                limit.as_secs()
            );
            // Before TuneOk the broker is owed no Close; it sees the TCP
            // connection end, as when a client gives up.
            relay_tells_client(EndKind::HandshakeTimedOut, why, to_client, normal)
        }
        Ending::ClientSentBadFrame { code, text } => ClosePlan {
            kind: EndKind::ClientBadFrame,
            // What the broker sent is dropped: after a protocol error the
            // client gets the Close at once, as from a broker.
            client: SideClose::finish(VecDeque::new(), Some(methods::close_frame(code, &text))),
            broker: relay_closes_broker(
                to_broker,
                broker_unread,
                "relay: client sent a malformed frame",
            ),
            deadline: normal,
            announce: Some((Side::Client, code, text.clone())),
            summary: text,
        },
        Ending::BrokerSentBadFrame { code, text } => ClosePlan {
            kind: EndKind::BrokerBadFrame,
            client: SideClose::finish(
                to_client,
                Some(methods::close_frame(CONNECTION_FORCED, &text)),
            ),
            // The broker's stream is garbage from here: nothing more is
            // forwarded, and its CloseOk is looked for in fresh bytes only.
            broker: SideClose::Finish {
                queue: VecDeque::new(),
                close: Some(methods::close_frame(code, &text)),
                await_close_ok: true,
                unread: BytesMut::new(),
            },
            deadline: normal,
            announce: Some((Side::Broker, code, text.clone())),
            summary: text,
        },
        Ending::Shutdown(grace) => ClosePlan {
            kind: EndKind::Shutdown,
            client: SideClose::finish(
                to_client,
                Some(methods::close_frame(
                    CONNECTION_FORCED,
                    "relay: httpd child is exiting",
                )),
            ),
            broker: relay_closes_broker(to_broker, broker_unread, "httpd child exiting"),
            deadline: now + grace,
            announce: None,
            summary: "httpd child exiting: closed upstream with Connection.Close".to_string(),
        },
        Ending::TimerFailed(e) => {
            let why = format!("heartbeat timer failed: {e}");
            ClosePlan {
                kind: EndKind::TimerFailed,
                client: SideClose::finish(
                    to_client,
                    Some(methods::close_frame(
                        INTERNAL_ERROR,
                        &format!("relay: {why}"),
                    )),
                ),
                broker: relay_closes_broker(to_broker, broker_unread, "relay: internal error"),
                deadline: normal,
                announce: Some((Side::Client, INTERNAL_ERROR, why.clone())),
                summary: why,
            }
        }
    }
}

/// The broker is gone or dead (or the handshake stalled): the client gets
/// what was queued, then Connection.Close 320 with the reason, so it
/// reconnects at once.
fn relay_tells_client(
    kind: EndKind,
    why: String,
    to_client: VecDeque<Bytes>,
    deadline: Instant,
) -> ClosePlan {
    ClosePlan {
        kind,
        client: SideClose::finish(
            to_client,
            Some(methods::close_frame(
                CONNECTION_FORCED,
                &format!("relay: {why}"),
            )),
        ),
        broker: SideClose::Drop,
        deadline,
        announce: Some((Side::Client, CONNECTION_FORCED, why.clone())),
        summary: why,
    }
}

/// A client that sent a wrong protocol header gets the one the relay
/// speaks, as a broker would answer, and is closed (rule R9).
pub fn wrong_header(now: Instant) -> ClosePlan {
    let mut queue = VecDeque::new();
    queue.push_back(Bytes::from_static(&PROTOCOL_HEADER));
    ClosePlan {
        kind: EndKind::ClientBadFrame,
        client: SideClose::finish(queue, None),
        broker: SideClose::Drop,
        deadline: now + CLOSE_TIMEOUT,
        announce: None,
        summary: String::new(),
    }
}

/// The relay's own code panicked while serving the connection: whatever
/// was queued is suspect and dropped; both sides get Connection.Close 541
/// at once (the broker's CloseOk awaited), so the client reconnects and the
/// broker logs a clean close.
pub fn internal_error(panic: &str, now: Instant) -> ClosePlan {
    let why = format!("internal error in the relay ({panic})");
    ClosePlan {
        kind: EndKind::Internal,
        client: SideClose::finish(
            VecDeque::new(),
            Some(methods::close_frame(
                INTERNAL_ERROR,
                &format!("relay: {why}"),
            )),
        ),
        broker: SideClose::Finish {
            queue: VecDeque::new(),
            close: Some(methods::close_frame(
                INTERNAL_ERROR,
                "relay: internal error",
            )),
            await_close_ok: true,
            unread: BytesMut::new(),
        },
        deadline: now + CLOSE_TIMEOUT,
        announce: Some((Side::Client, INTERNAL_ERROR, why.clone())),
        summary: why,
    }
}

/// A client the relay does not serve (refused, or no broker reachable):
/// its socket is closed with a FIN, nothing said.
pub fn close_client_silently(now: Instant) -> ClosePlan {
    ClosePlan {
        kind: EndKind::ClientGone,
        client: SideClose::finish(VecDeque::new(), None),
        broker: SideClose::Drop,
        deadline: now + CLOSE_TIMEOUT,
        announce: None,
        summary: String::new(),
    }
}

impl ClosePlan {
    /// The event that announces the plan, if the relay closes on its own.
    pub fn announcement(&self, id: u64) -> Option<Event> {
        self.announce
            .as_ref()
            .map(|(to, code, reason)| Event::SentClose {
                id,
                kind: self.kind,
                to: *to,
                code: *code,
                reason: reason.clone(),
            })
    }
}

/// Waiting for the broker's CloseOk: what the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum CloseOkWait {
    /// Read more.
    More,
    /// The CloseOk is in.
    Done,
    /// The broker sent its own Close: answer it with CloseOk, then done.
    AnswerCloseOk,
    /// The broker's bytes are not frames (or announce one larger than any
    /// the relay accepts): no CloseOk can come; stop reading now, so that
    /// what such a broker sends never piles up (rule R10).
    GiveUp,
}

/// Look through `inbuf` (consuming whole frames) for the end of the
/// closing handshake.
/// What is held is one partial frame of at most UNLIMITED_FRAME_MAX: the
/// wait's memory is bounded by that, whatever the broker sends.
pub fn close_ok_scan(inbuf: &mut BytesMut) -> CloseOkWait {
    loop {
        match scan(inbuf, UNLIMITED_FRAME_MAX) {
            Scan::Frame(info) => {
                let frame = inbuf.split_to(info.len);
                if info.kind == FRAME_METHOD && info.channel == 0 {
                    match methods::connection_method(info.payload(&frame)) {
                        Some(ConnectionMethod::CloseOk) => return CloseOkWait::Done,
                        Some(ConnectionMethod::Close) => return CloseOkWait::AnswerCloseOk,
                        _ => {}
                    }
                }
            }
            Scan::Incomplete => return CloseOkWait::More,
            Scan::Invalid(_) => {
                inbuf.clear();
                return CloseOkWait::GiveUp;
            }
        }
    }
}
