//! Liveness of one relayed connection, in one place: the upstream and
//! client heartbeat timers, the quiet mark's state, and the verdict on
//! the broker (rules R4 to R7 in docs/DESIGN.md).
//!
//! The timers themselves are [`HeartbeatTimers`]; this type decides which
//! of them run, feeds them, and keeps the quiet mark's state so the two
//! can never disagree. It does no I/O: raising the mark and the hidden
//! read are actions the driver performs and reports back.

use crate::relay::heartbeat::HeartbeatTimers;
use std::time::{Duration, Instant};

/// The broker, as far as the relay can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    /// Nothing received for 2 x interval (the silence so far).
    Dead(Duration),
    /// It closed its end of the TCP connection.
    Eof,
}

/// The verdict's first step: the timers alone may only suspect the broker
/// when a raised mark could be hiding its last heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    Settled(Verdict),
    /// Read what the raised mark may hide, then [`Liveness::after_hidden_read`].
    NeedsHiddenRead,
}

/// What the driver's hidden read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiddenRead {
    Nothing,
    Eof,
    /// This many bytes, now at the end of the broker's read buffer.
    Bytes(usize),
}

/// The receive low-water mark's state (rule R6). Present only on plain
/// TCP upstreams whose mark could be set.
#[derive(Clone, Copy, Debug)]
struct QuietMark {
    idle_after: Duration,
    last_busy: Instant,
    raised: bool,
}

#[derive(Clone, Debug)]
pub struct Liveness {
    interval: Duration,
    /// Armed when TuneOk has gone up (rule R4).
    upstream: Option<HeartbeatTimers>,
    /// Heartbeats the client asked for in its TuneOk, sent by the relay
    /// (rule R3).
    client: Option<HeartbeatTimers>,
    quiet: Option<QuietMark>,
}

impl Liveness {
    /// `quiet_capable`: the upstream is plain TCP, so a raised mark keeps
    /// a lone heartbeat (8 bytes) from waking the relay.
    pub fn new(interval: Duration, quiet_capable: bool, now: Instant) -> Liveness {
        Liveness {
            interval,
            upstream: None,
            client: None,
            quiet: quiet_capable.then_some(QuietMark {
                idle_after: interval / 2,
                last_busy: now,
                raised: false,
            }),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// TuneOk went up: the relay heartbeats the broker, and the client
    /// when it asked (its silence is never held against it).
    pub fn on_tuned(&mut self, client_heartbeat: u16, now: Instant) {
        self.upstream = Some(HeartbeatTimers::new(self.interval, now));
        if client_heartbeat > 0 {
            let mut hb = HeartbeatTimers::new(Duration::from_secs(client_heartbeat.into()), now);
            hb.set_receive_paused(true, now);
            self.client = Some(hb);
        }
    }

    /// Relay heartbeats to the client are on (it asked in TuneOk).
    pub fn heartbeats_client(&self) -> bool {
        self.client.is_some()
    }

    /// Bytes came from the broker.
    pub fn on_broker_bytes(&mut self, now: Instant) {
        if let Some(hb) = &mut self.upstream {
            hb.on_received(now);
        }
    }

    /// Frames other than heartbeats moved: not idle (rule R6).
    pub fn on_busy(&mut self, now: Instant) {
        if let Some(quiet) = &mut self.quiet {
            quiet.last_busy = now;
        }
    }

    /// Bytes went out to `to_broker ? broker : client`: that side's send
    /// timer restarts.
    pub fn on_sent(&mut self, to_broker: bool, now: Instant) {
        let hb = if to_broker {
            &mut self.upstream
        } else {
            &mut self.client
        };
        if let Some(hb) = hb {
            hb.on_sent(now);
        }
    }

    /// A heartbeat should go to that side now: due on its own timer, or
    /// worth sending because the relay is awake anyway (rule R5).
    pub fn heartbeat_due(&self, to_broker: bool, now: Instant, awake_anyway: bool) -> bool {
        let hb = if to_broker {
            &self.upstream
        } else {
            &self.client
        };
        hb.as_ref()
            .is_some_and(|hb| hb.send_due(now) || awake_anyway && hb.worth_sending(now))
    }

    /// Judge the broker. `receive_paused`: the relay is not reading it
    /// (the client is not reading, rule R7), so silence proves nothing.
    pub fn judge(&mut self, now: Instant, receive_paused: bool) -> Judgement {
        let Some(hb) = &mut self.upstream else {
            return Judgement::Settled(Verdict::Alive);
        };
        hb.set_receive_paused(receive_paused, now);
        if !hb.peer_dead(now) {
            Judgement::Settled(Verdict::Alive)
        } else if self.quiet.is_some_and(|q| q.raised) {
            // A raised mark may have kept the broker's last heartbeat from
            // waking the relay: read it first, judged with the same `now`.
            Judgement::NeedsHiddenRead
        } else {
            Judgement::Settled(Verdict::Dead(hb.silence(now)))
        }
    }

    /// The hidden read's result, judged with the `now` of [`Self::judge`].
    pub fn after_hidden_read(&mut self, read: HiddenRead, now: Instant) -> Verdict {
        let Some(hb) = &mut self.upstream else {
            return Verdict::Alive;
        };
        match read {
            HiddenRead::Nothing => Verdict::Dead(hb.silence(now)),
            HiddenRead::Eof => Verdict::Eof,
            HiddenRead::Bytes(_) => {
                hb.on_hidden_received(now);
                Verdict::Alive
            }
        }
    }

    /// Bytes the relay drained from under a raised mark while it was awake
    /// on purpose (rule R17), before any verdict was due. They count as
    /// received now: they arrived at some time since the last read, and
    /// crediting the latest possible time never declares a live broker
    /// dead early (crediting them one interval back, as the verdict's
    /// hidden read does, could: a heartbeat drained just after it arrived
    /// would leave only one interval before the verdict). The price is a
    /// later verdict, by the time the bytes waited (see R7). Nothing there
    /// proves nothing yet: the verdict is not due.
    pub fn after_drain(&mut self, read: HiddenRead, now: Instant) -> Verdict {
        match read {
            HiddenRead::Nothing => Verdict::Alive,
            HiddenRead::Eof => Verdict::Eof,
            HiddenRead::Bytes(_) => {
                self.on_broker_bytes(now);
                Verdict::Alive
            }
        }
    }

    /// Before the relay sleeps: the mark the upstream should have, when
    /// that differs from what it has. Raised only once tuned, with nothing
    /// half-read or queued (`nothing_pending`) and interval/2 idle.
    pub fn quiet_change(&self, nothing_pending: bool, now: Instant) -> Option<bool> {
        let quiet = self.quiet.as_ref()?;
        self.upstream.as_ref()?;
        let want = nothing_pending && now >= quiet.last_busy + quiet.idle_after;
        (want != quiet.raised).then_some(want)
    }

    /// The driver set the mark to `raised` (or failed to). A mark that
    /// cannot be raised only costs the optimisation; one that cannot be
    /// lowered could strand the tail of a frame, so that error comes back
    /// and ends the connection.
    pub fn on_quiet_mark(
        &mut self,
        raised: bool,
        result: std::io::Result<()>,
    ) -> std::io::Result<()> {
        let Some(quiet) = &mut self.quiet else {
            return Ok(());
        };
        match result {
            Ok(()) => quiet.raised = raised,
            Err(e) if quiet.raised => return Err(e),
            Err(_) => self.quiet = None,
        }
        let raised = self.quiet_raised();
        if let Some(hb) = &mut self.upstream {
            hb.set_quiet(raised);
        }
        Ok(())
    }

    pub fn quiet_raised(&self) -> bool {
        self.quiet.is_some_and(|q| q.raised)
    }

    /// When the relay must wake next, if nothing else wakes it. A side
    /// with bytes still queued (`can_send_*` false) gets no send deadline:
    /// a heartbeat cannot pass them, and their write wakes the relay.
    pub fn next_deadline(&self, can_send_broker: bool, can_send_client: bool) -> Option<Instant> {
        let up = self
            .upstream
            .as_ref()
            .and_then(|hb| hb.next_deadline(can_send_broker));
        let down = self
            .client
            .as_ref()
            .and_then(|hb| hb.next_deadline(can_send_client));
        up.into_iter().chain(down).min()
    }

    /// From when waking before [`Self::next_deadline`] is worth it (rule
    /// R17): a heartbeat would ride along to a side that can take one.
    pub fn worth_waking_from(
        &self,
        can_send_broker: bool,
        can_send_client: bool,
    ) -> Option<Instant> {
        let up = self
            .upstream
            .as_ref()
            .filter(|_| can_send_broker)
            .map(HeartbeatTimers::worth_sending_from);
        let down = self
            .client
            .as_ref()
            .filter(|_| can_send_client)
            .map(HeartbeatTimers::worth_sending_from);
        up.into_iter().chain(down).min()
    }
}
