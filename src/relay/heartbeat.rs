//! One heartbeat timer (rules R4, R5, R7 in docs/DESIGN.md), separate from
//! I/O so it is tested with a fake clock; `session::liveness` owns the
//! connection's timers and decides when they run.
//!
//! - send: a heartbeat rides along whenever the relay is awake anyway and
//!   nothing was written for interval/4 (typically: the broker's own
//!   heartbeat, which RabbitMQ sends every interval/2, just arrived), and is
//!   due on its own timer when nothing was written for 5/8 x interval.
//!   Riding along halves the idle wakeups (one per broker heartbeat instead
//!   of two) while the gap stays well inside what the broker tolerates (it
//!   closes after about 2 x interval of silence);
//! - receive: the peer is dead after 2 x interval with nothing received.
//! - quiet (rule R6): while a lone broker heartbeat no longer wakes
//!   the relay, it wakes once per interval (every second broker
//!   heartbeat); the own timer then moves to 5/4 x interval so it does not
//!   add a wakeup of its own, and the heartbeat still rides along once per
//!   interval, which RabbitMQ (it closes after 2 to 3 intervals of
//!   silence) takes with room to spare.
//!
//! The receive watch can be paused: while the relay deliberately stops
//! reading the broker (the client is not reading its deliveries), silence
//! proves nothing, so it must not count.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct HeartbeatTimers {
    interval: Duration,
    last_sent: Instant,
    last_received: Instant,
    receive_paused: bool,
    quiet: bool,
}

impl HeartbeatTimers {
    pub fn new(interval: Duration, now: Instant) -> HeartbeatTimers {
        HeartbeatTimers {
            interval,
            last_sent: now,
            last_received: now,
            receive_paused: false,
            quiet: false,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    pub fn on_received(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// Bytes that waited unseen under a raised low-water mark (rule R6)
    /// arrived at some time since the last wakeup; the next broker
    /// heartbeat would have woken the relay, so take them as at most one
    /// interval old. The broker gets one more interval to speak.
    pub fn on_hidden_received(&mut self, now: Instant) {
        let at = now.checked_sub(self.interval).unwrap_or(now);
        self.last_received = self.last_received.max(at);
    }

    /// Pause or resume the receive watch. Resuming starts a fresh 2 x
    /// interval window: the relay was not listening before.
    pub fn set_receive_paused(&mut self, paused: bool, now: Instant) {
        if self.receive_paused && !paused {
            self.last_received = now;
        }
        self.receive_paused = paused;
    }

    /// Rule R6: the peer's heartbeats wake the relay once per
    /// interval instead of twice.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    fn send_at(&self) -> Instant {
        let after = if self.quiet {
            self.interval * 5 / 4
        } else {
            self.interval * 5 / 8
        };
        self.last_sent + after
    }

    /// True when a heartbeat is worth sending now because the relay is awake
    /// anyway: nothing was written for interval/4.
    pub fn worth_sending(&self, now: Instant) -> bool {
        now >= self.worth_sending_from()
    }

    /// From when a heartbeat would ride along (rule R17: the thread may
    /// wake this connection from then on, with others).
    pub fn worth_sending_from(&self) -> Instant {
        self.last_sent + self.interval / 4
    }

    fn dead_at(&self) -> Instant {
        self.last_received + self.interval * 2
    }

    pub fn send_due(&self, now: Instant) -> bool {
        now >= self.send_at()
    }

    pub fn peer_dead(&self, now: Instant) -> bool {
        !self.receive_paused && now >= self.dead_at()
    }

    /// Silence so far, for the log line that declares the peer dead.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_received)
    }

    /// When something next needs doing; the event loop sleeps until then
    /// (no polling: an idle connection wakes twice per interval).
    /// `can_send` is false while earlier bytes are still waiting to be
    /// written: a heartbeat cannot go out before them, and their write
    /// wakes the loop anyway.
    pub fn next_deadline(&self, can_send: bool) -> Option<Instant> {
        let send = can_send.then(|| self.send_at());
        let dead = (!self.receive_paused).then(|| self.dead_at());
        match (send, dead) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn sends_at_five_eighths_and_rides_along_after_a_quarter() {
        let t0 = Instant::now();
        let hb = HeartbeatTimers::new(8 * S, t0);
        assert!(!hb.worth_sending(t0 + S));
        assert!(hb.worth_sending(t0 + 2 * S));
        assert!(!hb.send_due(t0 + 4 * S));
        assert!(hb.send_due(t0 + 5 * S));
        assert_eq!(hb.next_deadline(true), Some(t0 + 5 * S));
    }

    #[test]
    fn quiet_moves_the_own_timer_past_one_interval() {
        let t0 = Instant::now();
        let mut hb = HeartbeatTimers::new(8 * S, t0);
        hb.set_quiet(true);
        assert!(!hb.send_due(t0 + 9 * S));
        assert!(hb.send_due(t0 + 10 * S));
        assert!(hb.worth_sending(t0 + 8 * S));
        hb.set_quiet(false);
        assert!(hb.send_due(t0 + 5 * S));
    }

    #[test]
    fn rearms_on_write() {
        let t0 = Instant::now();
        let mut hb = HeartbeatTimers::new(16 * S, t0);
        assert!(!hb.send_due(t0 + 9 * S));
        assert!(hb.send_due(t0 + 10 * S));
        assert_eq!(hb.next_deadline(true), Some(t0 + 10 * S));
        assert_eq!(hb.next_deadline(false), Some(t0 + 32 * S));
        hb.on_sent(t0 + 4 * S);
        assert!(!hb.send_due(t0 + 13 * S));
        assert!(hb.send_due(t0 + 14 * S));
    }

    #[test]
    fn dead_after_two_intervals_of_silence() {
        let t0 = Instant::now();
        let mut hb = HeartbeatTimers::new(10 * S, t0);
        hb.on_sent(t0 + 15 * S);
        assert!(!hb.peer_dead(t0 + 19 * S));
        assert!(hb.peer_dead(t0 + 20 * S));
        assert_eq!(hb.silence(t0 + 20 * S), 20 * S);
        hb.on_received(t0 + 18 * S);
        assert!(!hb.peer_dead(t0 + 37 * S));
        assert!(hb.peer_dead(t0 + 38 * S));
    }

    #[test]
    fn paused_receive_watch_never_declares_death() {
        let t0 = Instant::now();
        let mut hb = HeartbeatTimers::new(2 * S, t0);
        hb.set_receive_paused(true, t0 + S);
        assert!(!hb.peer_dead(t0 + 100 * S));
        assert_eq!(hb.next_deadline(true), Some(t0 + 2 * S * 5 / 8));
        assert_eq!(hb.next_deadline(false), None);
        // Resuming opens a fresh window rather than counting the pause.
        hb.set_receive_paused(false, t0 + 100 * S);
        assert!(!hb.peer_dead(t0 + 103 * S));
        assert!(hb.peer_dead(t0 + 104 * S));
    }
}
