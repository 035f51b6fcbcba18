//! One relayed connection as a sans-I/O state machine (the model:
//! rustls' and quinn-proto's connections). Bytes read from either side
//! and the current time go in; what to write where, when to wake, whether
//! to read a side, the quiet mark, the hidden read, how to close and what
//! to log come out. No sockets, no runtime, no clock of its own: the
//! driver (`relay::driver`) does the I/O, and every rule of docs/DESIGN.md
//! is a unit test here with scripted bytes and a fake clock.
//!
//! - [`phase`]: where the connection is (handshake, tuned, what each side
//!   said about closing, which side hit end of stream);
//! - `intercept`: the frames the relay looks into (Tune, TuneOk, Close,
//!   CloseOk), one interception point per direction;
//! - [`liveness`]: heartbeat timers, the quiet mark, the broker verdict;
//! - [`close_plan`]: the table from ending to what each side is told;
//! - [`events`]: what the relay reports, as data.
//!
//! The read buffers and write queues live here ([`Direction`], as rustls
//! keeps its TLS buffers): the driver reads into [`Session::inbound`] and
//! writes from [`Session::outbound`], so forwarded frames are handed over
//! as `Bytes` without a copy.
//!
//! What goes in and what comes out, per round of the driver:
//!
//! | in | out |
//! |---|---|
//! | [`Session::on_read`] (bytes from a side, or its end of stream), then [`Session::process`] | frames queued for the other side ([`Session::outbound`]: write these bytes to this side), or an [`Ending`] |
//! | | [`Session::read_limit`]: read this side (up to the bound), or pause it |
//! | the time, to [`Session::judge_broker`] | do the hidden read (then [`Session::after_hidden_read`]), or an [`Ending`] |
//! | the time, to [`Session::queue_heartbeats`] | heartbeats queued |
//! | [`Session::on_written`] | |
//! | the time, to [`Session::before_sleep`] | [`Action::SetQuietMark`] (then [`Session::on_quiet_mark`]) or [`Action::ArmTimer`] |
//! | an [`Ending`], to [`Session::close`] | a [`ClosePlan`] (what each side is told, until when) and its [`Event`]s |

pub mod close_plan;
pub mod events;
mod intercept;
pub mod liveness;
pub mod phase;
#[cfg(test)]
mod tests;

use crate::relay::frame::{HEARTBEAT_FRAME, PROTOCOL_HEADER};
use crate::relay::io_buffers::Direction;
use crate::relay::login::Credentials;
use bytes::{Bytes, BytesMut};
use close_plan::{ClosePlan, Ending, Facts};
use events::{EndKind, Event, Side};
use liveness::{HiddenRead, Judgement, Liveness, Verdict};
use phase::{Peer, Phase, Stream};
use std::time::{Duration, Instant};

/// Frame size allowed before Tune/TuneOk settle it (RabbitMQ's default
/// frame_max; handshake frames are far smaller).
pub const HANDSHAKE_FRAME_MAX: usize = 131_072;
/// Largest frame_max the relay accepts when a peer asks for "no limit" (0).
pub const UNLIMITED_FRAME_MAX: usize = 1 << 20;
/// How long the AMQP handshake may take, from the broker's
/// Connection.Start to the client's TuneOk (rule R12). A live broker ends
/// a slow handshake itself first (RabbitMQ's `handshake_timeout`, 10 s by
/// default, counts from the TCP accept); this bound is for a broker that
/// hung in the middle of it, and for a client that never finishes it,
/// either of which would otherwise hold the connection (and one of
/// `AMQPHeartbeatMaxConnections`) for good. Generous, so that a broker
/// whose `handshake_timeout` was raised still decides first.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Smallest per-direction buffer bound (rule R8).
pub const MIN_BUFFER: usize = 256 * 1024;

/// The per-direction buffer bound for a frame_max (rule R8).
pub fn buffer_limit(frame_max: usize) -> usize {
    MIN_BUFFER.max(2 * frame_max)
}

/// The client's first bytes against the protocol header (rule R9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    /// The whole header is in and right; frames follow it.
    Ok,
    /// Not AMQP 0-9-1 (already told by the first differing byte).
    Wrong,
    /// Right so far; read more.
    Incomplete,
}

pub fn check_protocol_header(first_bytes: &[u8]) -> HeaderCheck {
    let have = first_bytes.len().min(PROTOCOL_HEADER.len());
    if first_bytes[..have] != PROTOCOL_HEADER[..have] {
        HeaderCheck::Wrong
    } else if have == PROTOCOL_HEADER.len() {
        HeaderCheck::Ok
    } else {
        HeaderCheck::Incomplete
    }
}

/// What the session asks of the driver before the driver sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the upstream's receive low-water mark (raised: 9 bytes, else
    /// 1), then report with [`Session::on_quiet_mark`] (rule R6).
    SetQuietMark { raised: bool },
    /// Wake by this instant (None: only the sockets wake it); the driver
    /// runs its next round then (rules R4, R7). The thread may wake it
    /// earlier, from [`Session::worth_waking_from`] on (rule R17).
    ArmTimer(Option<Instant>),
}

/// What the session needs to know when it starts.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The connection's number within the relay (in every event).
    pub id: u64,
    /// The heartbeat interval the relay negotiates with the broker.
    pub relay_heartbeat: Duration,
    /// The upstream is plain TCP: the quiet mark can work (rule R6).
    pub quiet_capable: bool,
    /// The dialed broker URL's credentials: the relay logs in with them
    /// instead of the client (rule R14).
    pub login: Option<Credentials>,
    /// The bound on the rest of the handshake (rule R12):
    /// [`HANDSHAKE_TIMEOUT`], shorter only in the relay's tests.
    pub handshake_timeout: Duration,
}

/// What the status page shows of a connection's traffic (src/status/),
/// read by the driver after each wakeup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes_to_broker: u64,
    pub bytes_to_client: u64,
    pub frames_to_broker: u64,
    pub frames_to_client: u64,
    pub heartbeats_to_broker: u64,
    pub heartbeats_from_broker: u64,
    /// When bytes last came from the broker, since the session started.
    pub last_broker_read: Option<Duration>,
    /// Negotiated (0 until tuned).
    pub heartbeat_secs: u32,
    pub frame_max: u32,
    /// The broker is not read because the client is not taking its bytes.
    pub paused: bool,
}

pub struct Session {
    id: u64,
    started: Instant,
    phase: Phase,
    client: Peer,
    broker: Peer,
    /// Bytes read from the client, queued for the broker.
    from_client: Direction,
    /// Bytes read from the broker, queued for the client.
    from_broker: Direction,
    liveness: Liveness,
    bytes_to_broker: u64,
    bytes_to_client: u64,
    login: Option<Credentials>,
    /// The SASL mechanisms of the broker's Start (only kept with `login`).
    offered_mechanisms: Option<String>,
    heartbeats_to_broker: u64,
    last_broker_read: Option<Instant>,
    /// The side whose handshake frame is awaited (the one that did not
    /// send the last): who is blamed if the handshake times out.
    handshake_awaits: Side,
    handshake_timeout: Duration,
}

impl Session {
    /// A connection whose broker answered the dial: `client_frames` is
    /// what the client sent after its protocol header, `broker_first`
    /// what the broker sent so far (its Connection.Start).
    pub fn new(
        config: SessionConfig,
        now: Instant,
        client_frames: BytesMut,
        broker_first: BytesMut,
    ) -> Session {
        let mut from_client = Direction::new();
        from_client.inbuf = client_frames;
        let mut from_broker = Direction::new();
        from_broker.inbuf = broker_first;
        Session {
            id: config.id,
            started: now,
            phase: Phase::Handshake,
            client: Peer::new(),
            broker: Peer::new(),
            from_client,
            from_broker,
            liveness: Liveness::new(config.relay_heartbeat, config.quiet_capable, now),
            bytes_to_broker: 0,
            bytes_to_client: 0,
            login: config.login,
            offered_mechanisms: None,
            heartbeats_to_broker: 0,
            last_broker_read: None,
            // The broker's Start is in: the client's StartOk is next.
            handshake_awaits: Side::Client,
            handshake_timeout: config.handshake_timeout,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn peer(&self, side: Side) -> Peer {
        match side {
            Side::Client => self.client,
            Side::Broker => self.broker,
        }
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The per-direction buffer bound now (rule R8).
    pub fn buffer_limit(&self) -> usize {
        buffer_limit(self.phase.frame_max())
    }

    /// Bytes read from `side`, not yet written to the other.
    pub fn inbound(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Client => &mut self.from_client,
            Side::Broker => &mut self.from_broker,
        }
    }

    /// Bytes queued for `side`.
    pub fn outbound(&mut self, side: Side) -> &mut Direction {
        self.inbound(side.other())
    }

    fn held_from(&self, side: Side) -> usize {
        match side {
            Side::Client => self.from_client.held(),
            Side::Broker => self.from_broker.held(),
        }
    }

    /// Whether to read `side` now, and then up to which bound of bytes
    /// held from it: None pauses reading it (end of stream, or the other
    /// side is not taking what it sent, rule R7).
    pub fn read_limit(&self, side: Side) -> Option<usize> {
        let limit = self.buffer_limit();
        (!self.peer(side).at_eof() && self.held_from(side) < limit).then_some(limit)
    }

    /// The driver read `n` bytes from `side` into [`Self::inbound`];
    /// 0 is end of stream.
    pub fn on_read(&mut self, side: Side, n: usize, now: Instant) {
        if n == 0 {
            self.peer_mut(side).stream = Stream::Eof;
        } else if side == Side::Broker {
            self.last_broker_read = Some(now);
            self.liveness.on_broker_bytes(now);
        }
    }

    fn peer_mut(&mut self, side: Side) -> &mut Peer {
        match side {
            Side::Client => &mut self.client,
            Side::Broker => &mut self.broker,
        }
    }

    /// Look at what was read from `side`: whole frames move to the other
    /// side's queue (some looked into, see `intercept`). The client's end
    /// of stream ends the connection here (a partial frame left at EOF can
    /// never complete); the broker's, after this round's writes
    /// ([`Self::broker_ended`]).
    pub fn process(&mut self, side: Side, now: Instant) -> Result<(), Ending> {
        #[cfg(feature = "test-hooks")]
        if side == Side::Client && crate::relay::test_hooks::asks_for_panic(&self.from_client.inbuf)
        {
            panic!("test-hooks: the client asked the pump to panic");
        }
        self.scan_frames(side, now)?;
        if side == Side::Client && self.client.at_eof() {
            return Err(Ending::ClientGone(None));
        }
        Ok(())
    }

    /// Judge the broker (rule R7). Ok(true): the driver must do the hidden
    /// read into `inbound(Broker)` and report it with
    /// [`Self::after_hidden_read`], using the same `now`.
    pub fn judge_broker(&mut self, now: Instant) -> Result<bool, Ending> {
        if !self.phase.is_tuned() && now >= self.started + self.handshake_timeout {
            return Err(Ending::HandshakeTimedOut {
                limit: self.handshake_timeout,
                waiting_for: self.handshake_awaits,
            });
        }
        let paused = self.from_broker.held() >= self.buffer_limit();
        match self.liveness.judge(now, paused) {
            Judgement::NeedsHiddenRead => Ok(true),
            Judgement::Settled(verdict) => self.apply(verdict).map(|()| false),
        }
    }

    pub fn after_hidden_read(&mut self, read: HiddenRead, now: Instant) -> Result<(), Ending> {
        let verdict = self.liveness.after_hidden_read(read, now);
        self.apply(verdict)
    }

    fn apply(&mut self, verdict: Verdict) -> Result<(), Ending> {
        match verdict {
            Verdict::Alive => Ok(()),
            Verdict::Dead(silence) => Err(Ending::BrokerSilent(silence)),
            Verdict::Eof => {
                self.broker.stream = Stream::Eof;
                Ok(())
            }
        }
    }

    /// Queue the heartbeats owed now (rules R3, R5). `awake_anyway`: this
    /// round read something, so a heartbeat that is merely worth sending
    /// rides along. A heartbeat never passes queued bytes.
    pub fn queue_heartbeats(&mut self, now: Instant, awake_anyway: bool) {
        if self.from_client.out_is_empty() && self.liveness.heartbeat_due(true, now, awake_anyway) {
            self.from_client.push(Bytes::from_static(&HEARTBEAT_FRAME));
            self.liveness.on_sent(true, now);
            self.heartbeats_to_broker += 1;
        }
        if self.from_broker.out_is_empty() && self.liveness.heartbeat_due(false, now, awake_anyway)
        {
            self.from_broker.push(Bytes::from_static(&HEARTBEAT_FRAME));
            self.liveness.on_sent(false, now);
        }
    }

    /// The driver wrote (and consumed) `n` > 0 bytes of
    /// [`Self::outbound`] to `side`.
    pub fn on_written(&mut self, side: Side, n: usize, now: Instant) {
        match side {
            Side::Broker => self.bytes_to_broker += n as u64,
            Side::Client => self.bytes_to_client += n as u64,
        }
        self.liveness.on_sent(side == Side::Broker, now);
    }

    /// The broker's end of stream ends the connection once this round's
    /// writes are done.
    pub fn broker_ended(&self) -> Option<Ending> {
        self.broker.at_eof().then_some(Ending::BrokerGone(None))
    }

    /// Nothing more to do until a socket or the timer wakes the driver:
    /// first the quiet mark, if it should change; then the timer.
    pub fn before_sleep(&self, now: Instant) -> Action {
        let nothing_pending = self.from_client.held() == 0 && self.from_broker.held() == 0;
        match self.liveness.quiet_change(nothing_pending, now) {
            Some(raised) => Action::SetQuietMark { raised },
            None => {
                let heartbeats = self.liveness.next_deadline(
                    self.from_client.out_is_empty(),
                    self.from_broker.out_is_empty(),
                );
                let handshake =
                    (!self.phase.is_tuned()).then_some(self.started + self.handshake_timeout);
                Action::ArmTimer(heartbeats.into_iter().chain(handshake).min())
            }
        }
    }

    /// From when a wakeup before the deadline of [`Action::ArmTimer`] is
    /// worth it (rule R17): a heartbeat would ride along; such a wakeup
    /// is a round with `awake_anyway` and, quiet, a drain.
    pub fn worth_waking_from(&self) -> Option<Instant> {
        self.liveness.worth_waking_from(
            self.from_client.out_is_empty(),
            self.from_broker.out_is_empty(),
        )
    }

    /// A wakeup on purpose (rule R17) should first drain what the raised
    /// mark hides: reading it now keeps the broker's next heartbeat from
    /// waking the thread on its own.
    pub fn drain_wanted(&self) -> bool {
        self.liveness.quiet_raised()
    }

    /// What the drain read into [`Self::inbound`] (Broker); frames in it
    /// are processed with the next [`Self::process`].
    pub fn after_drain(&mut self, read: HiddenRead, now: Instant) -> Result<(), Ending> {
        let verdict = self.liveness.after_drain(read, now);
        self.apply(verdict)
    }

    /// The driver set the quiet mark (or failed to). A mark that cannot be
    /// lowered ends the connection (rule R6).
    pub fn on_quiet_mark(
        &mut self,
        raised: bool,
        result: std::io::Result<()>,
    ) -> Result<(), Ending> {
        self.liveness
            .on_quiet_mark(raised, result)
            .map_err(|e| Ending::BrokerGone(Some(e)))
    }

    /// Counts and settings for the status page.
    pub fn traffic(&self) -> Traffic {
        let tuned = self.phase.is_tuned();
        Traffic {
            bytes_to_broker: self.bytes_to_broker,
            bytes_to_client: self.bytes_to_client,
            frames_to_broker: self.from_client.frames,
            frames_to_client: self.from_broker.frames,
            heartbeats_to_broker: self.heartbeats_to_broker,
            heartbeats_from_broker: self.from_broker.heartbeats,
            last_broker_read: self
                .last_broker_read
                .map(|t| t.saturating_duration_since(self.started)),
            heartbeat_secs: if tuned {
                u32::try_from(self.liveness.interval().as_secs()).unwrap_or(u32::MAX)
            } else {
                0
            },
            frame_max: if tuned {
                u32::try_from(self.phase.frame_max()).unwrap_or(u32::MAX)
            } else {
                0
            },
            paused: !self.broker.at_eof() && self.from_broker.held() >= self.buffer_limit(),
        }
    }

    /// The connection ends: the plan for both sides (rule R10). Takes what
    /// is queued either way.
    pub fn close(&mut self, ending: Ending, now: Instant) -> ClosePlan {
        let facts = Facts {
            tuned: self.phase.is_tuned(),
            client: self.client,
            broker: self.broker,
            relay_heartbeat: self.liveness.interval(),
            to_client: self.from_broker.take_out(),
            to_broker: self.from_client.take_out(),
            broker_unread: std::mem::take(&mut self.from_broker.inbuf),
        };
        close_plan::plan(ending, facts, now)
    }

    /// The last event of a connection, once its plan has run.
    pub fn closed_event(&self, kind: EndKind, reason: String, now: Instant) -> Event {
        Event::Closed {
            id: self.id,
            kind,
            reason,
            after: now.saturating_duration_since(self.started),
            bytes_to_broker: self.bytes_to_broker,
            bytes_to_client: self.bytes_to_client,
        }
    }
}
