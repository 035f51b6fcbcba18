//! The frames the relay looks into: connection-class methods on channel 0
//! (rules R1, R2, R10) and heartbeats (absorbed by [`Direction::next_frame`],
//! rule R3). Everything else is only delimited and passes byte for byte.
//!
//! Each direction has one interception point, [`Session::client_method`]
//! and [`Session::broker_method`]: a method the relay should answer itself
//! (relay-side login, for one) belongs there.
//!
//! [`Direction::next_frame`]: crate::relay::io_buffers::Direction::next_frame

use crate::relay::frame::{
    CONNECTION_FORCED, FRAME_METHOD, FRAME_MIN_SIZE, NOT_ALLOWED, SYNTAX_ERROR, UNEXPECTED_FRAME,
};
use crate::relay::login::{self, LoginError};
use crate::relay::methods::{self, ConnectionMethod};
use crate::relay::session::close_plan::Ending;
use crate::relay::session::events::Side;
use crate::relay::session::phase::Phase;
use crate::relay::session::{Session, UNLIMITED_FRAME_MAX};
use bytes::{Buf, Bytes};
use std::ops::Range;
use std::time::Instant;

/// What becomes of an intercepted frame.
enum Intercepted {
    /// Passed on (maybe patched in place).
    Pass,
    /// Dropped unread; this frame is sent in its place.
    Replace(Bytes),
}

impl Session {
    /// Frames read from `side`, up to the last whole one: channel-0
    /// methods go through that side's interception point, then every frame
    /// passes (heartbeats were absorbed on the way).
    pub(super) fn scan_frames(&mut self, side: Side, now: Instant) -> Result<(), Ending> {
        let mut passed_frames = false;
        loop {
            let frame_max = self.phase.frame_max();
            let next = self.inbound(side).next_frame(frame_max);
            let Some((info, range)) = next.map_err(|e| Ending::bad_frame(side, &e))? else {
                break;
            };
            if info.kind == FRAME_METHOD && info.channel == 0 {
                let verdict = match side {
                    Side::Client => self.client_method(range, now)?,
                    Side::Broker => self.broker_method(range)?,
                };
                if let Intercepted::Replace(frame) = verdict {
                    // The frame is dropped unread and `frame` goes in its
                    // place, in order.
                    let inbound = self.inbound(side);
                    inbound.release_scanned();
                    inbound.inbuf.advance(info.len);
                    inbound.push(frame);
                    passed_frames = true;
                    continue;
                }
            }
            self.inbound(side).pass(info.len);
            passed_frames = true;
        }
        if passed_frames && !self.phase.is_tuned() {
            self.handshake_awaits = side.other();
        }
        self.note_busy(passed_frames, now);
        self.inbound(side).release_scanned();
        Ok(())
    }

    /// A channel-0 method from the client (its payload at `range` of the
    /// client's read buffer): TuneOk's heartbeat replaced by the relay's
    /// interval and the connection tuned (rule R1); StartOk replaced by the
    /// relay's login when it has credentials (rule R14); Close and CloseOk
    /// noted for the close plan.
    fn client_method(&mut self, range: Range<usize>, now: Instant) -> Result<Intercepted, Ending> {
        match methods::connection_method(&self.from_client.inbuf[range.clone()]) {
            Some(ConnectionMethod::StartOk) if self.login.is_some() => {
                return self.relay_start_ok(range).map(Intercepted::Replace);
            }
            Some(ConnectionMethod::TuneOk) => {
                let payload = &mut self.from_client.inbuf[range];
                let Some(fields) = methods::tune_fields(payload) else {
                    return Err(Ending::ClientSentBadFrame {
                        code: SYNTAX_ERROR,
                        text: "relay: malformed Connection.TuneOk".to_string(),
                    });
                };
                if let Some(text) = below_frame_min("TuneOk", fields.frame_max) {
                    return Err(Ending::ClientSentBadFrame {
                        code: NOT_ALLOWED,
                        text,
                    });
                }
                let relay_secs =
                    u16::try_from(self.liveness.interval().as_secs()).unwrap_or(u16::MAX);
                methods::set_tune_heartbeat(payload, relay_secs);
                // The broker sends frames up to what the client accepts
                // here: a client that ignored the relay's capped Tune (0,
                // "no limit", or more than the cap) would get the broker's
                // large frames refused by the relay (Close 501).
                let cap = UNLIMITED_FRAME_MAX as u32;
                if fields.frame_max == 0 || fields.frame_max > cap {
                    methods::set_tune_frame_max(payload, cap);
                }
                let frame_max = match fields.frame_max {
                    0 => UNLIMITED_FRAME_MAX,
                    n => (n as usize).min(UNLIMITED_FRAME_MAX),
                };
                self.phase = Phase::Tuned { frame_max };
                self.liveness.on_tuned(fields.heartbeat, now);
            }
            Some(ConnectionMethod::Close) => self.client.saw_close(),
            Some(ConnectionMethod::CloseOk) => self.client.saw_close_ok(),
            _ => {}
        }
        Ok(Intercepted::Pass)
    }

    /// The StartOk that logs in with the configured credentials, built
    /// from the client's (rule R14).
    fn relay_start_ok(&self, range: Range<usize>) -> Result<Bytes, Ending> {
        let (Some(credentials), Some(offered)) = (&self.login, &self.offered_mechanisms) else {
            return Err(Ending::ClientSentBadFrame {
                code: UNEXPECTED_FRAME,
                text: "relay: Connection.StartOk before the broker's Connection.Start".into(),
            });
        };
        login::start_ok_with(&self.from_client.inbuf[range], offered, credentials).map_err(|e| {
            match e {
                LoginError::Malformed(_) => Ending::ClientSentBadFrame {
                    code: SYNTAX_ERROR,
                    text: format!("relay: {e}"),
                },
                // The broker cannot be logged in to as configured: the
                // client hears why, the broker gets a plain close.
                LoginError::NoMechanism(_) => Ending::BrokerSentBadFrame {
                    code: CONNECTION_FORCED,
                    text: format!("relay: {e}"),
                },
            }
        })
    }

    /// A channel-0 method from the broker: Tune's heartbeat offered to the
    /// client as 0 and its frame_max capped at the relay's (rule R2); Start's mechanisms kept when the relay logs
    /// in (rule R14); Close and CloseOk noted for the close plan.
    fn broker_method(&mut self, range: Range<usize>) -> Result<Intercepted, Ending> {
        match methods::connection_method(&self.from_broker.inbuf[range.clone()]) {
            Some(ConnectionMethod::Start) if self.login.is_some() => {
                let offered =
                    login::offered_mechanisms(&self.from_broker.inbuf[range]).map_err(|e| {
                        Ending::BrokerSentBadFrame {
                            code: SYNTAX_ERROR,
                            text: format!("relay: {e}"),
                        }
                    })?;
                self.offered_mechanisms = Some(offered);
            }
            Some(ConnectionMethod::Tune) => {
                let payload = &mut self.from_broker.inbuf[range];
                let Some(fields) = methods::tune_fields(payload) else {
                    return Err(Ending::BrokerSentBadFrame {
                        code: SYNTAX_ERROR,
                        text: "relay: malformed Connection.Tune".to_string(),
                    });
                };
                if let Some(text) = below_frame_min("Tune", fields.frame_max) {
                    return Err(Ending::BrokerSentBadFrame {
                        code: SYNTAX_ERROR,
                        text,
                    });
                }
                methods::set_tune_heartbeat(payload, 0);
                // The client may not propose more than the relay accepts
                // (0 is "no limit"), or its large frames would get Close
                // 501 through the relay and work direct (rule R2).
                let cap = UNLIMITED_FRAME_MAX as u32;
                if fields.frame_max == 0 || fields.frame_max > cap {
                    methods::set_tune_frame_max(payload, cap);
                }
            }
            Some(ConnectionMethod::Close) => self.broker.saw_close(),
            Some(ConnectionMethod::CloseOk) => self.broker.saw_close_ok(),
            _ => {}
        }
        Ok(Intercepted::Pass)
    }

    /// Frames other than heartbeats moved: not idle (rule R6). A client's
    /// own heartbeats do not count, or a client that heartbeats often
    /// would keep the upstream from ever going quiet.
    fn note_busy(&mut self, passed_frames: bool, now: Instant) {
        if passed_frames {
            self.liveness.on_busy(now);
        }
    }
}

/// The error text for a frame_max (of `method`) below AMQP's minimum; 0 is
/// "no limit".
fn below_frame_min(method: &str, frame_max: u32) -> Option<String> {
    (1..FRAME_MIN_SIZE).contains(&frame_max).then(|| {
        format!("relay: Connection.{method} frame_max {frame_max} is below AMQP's minimum of {FRAME_MIN_SIZE}")
    })
}
