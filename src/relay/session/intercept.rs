//! The frames the relay looks into: connection-class methods on channel 0
//! (rules R1, R2, R10) and heartbeats (absorbed by [`Direction::next_frame`],
//! rule R3). Everything else is only delimited and passes byte for byte.
//!
//! Each direction has one interception point, [`Session::client_method`]
//! and [`Session::broker_method`]: a method the relay should answer itself
//! (relay-side login, for one) belongs there.
//!
//! [`Direction::next_frame`]: crate::relay::io_buffers::Direction::next_frame

use crate::relay::frame::{FRAME_METHOD, SYNTAX_ERROR};
use crate::relay::methods::{self, ConnectionMethod};
use crate::relay::session::close_plan::Ending;
use crate::relay::session::events::Side;
use crate::relay::session::phase::Phase;
use crate::relay::session::{Session, UNLIMITED_FRAME_MAX};
use std::ops::Range;
use std::time::Instant;

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
                match side {
                    Side::Client => self.client_method(range, now)?,
                    Side::Broker => self.broker_method(range)?,
                }
            }
            self.inbound(side).pass(info.len);
            passed_frames = true;
        }
        self.note_busy(passed_frames, now);
        self.inbound(side).release_scanned();
        Ok(())
    }

    /// A channel-0 method from the client (its payload at `range` of the
    /// client's read buffer): TuneOk's heartbeat replaced by the relay's
    /// interval and the connection tuned (rule R1); Close and CloseOk
    /// noted for the close plan.
    fn client_method(&mut self, range: Range<usize>, now: Instant) -> Result<(), Ending> {
        match methods::connection_method(&self.from_client.inbuf[range.clone()]) {
            Some(ConnectionMethod::TuneOk) => {
                let payload = &mut self.from_client.inbuf[range];
                let Some(fields) = methods::tune_fields(payload) else {
                    return Err(Ending::ClientSentBadFrame {
                        code: SYNTAX_ERROR,
                        text: "relay: malformed Connection.TuneOk".to_string(),
                    });
                };
                let relay_secs =
                    u16::try_from(self.liveness.interval().as_secs()).unwrap_or(u16::MAX);
                methods::set_tune_heartbeat(payload, relay_secs);
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
        Ok(())
    }

    /// A channel-0 method from the broker: Tune's heartbeat offered to the
    /// client as 0 (rule R2); Close and CloseOk noted for the close plan.
    fn broker_method(&mut self, range: Range<usize>) -> Result<(), Ending> {
        match methods::connection_method(&self.from_broker.inbuf[range.clone()]) {
            Some(ConnectionMethod::Tune) => {
                let payload = &mut self.from_broker.inbuf[range];
                if !methods::set_tune_heartbeat(payload, 0) {
                    return Err(Ending::BrokerSentBadFrame {
                        code: SYNTAX_ERROR,
                        text: "relay: malformed Connection.Tune".to_string(),
                    });
                }
            }
            Some(ConnectionMethod::Close) => self.broker.saw_close(),
            Some(ConnectionMethod::CloseOk) => self.broker.saw_close_ok(),
            _ => {}
        }
        Ok(())
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
