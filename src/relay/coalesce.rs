//! One relay thread's wakeups, coalesced (rule R17 in docs/DESIGN.md):
//! the timing half, with no I/O, tested with a fake clock;
//! `relay::thread_timer` is its one timerfd.
//!
//! Each connection asleep gives a [`Window`]: it must be woken by `by`
//! (its next heartbeat or verdict deadline), and waking it any time from
//! `from` on is worth it (a heartbeat would ride along, rule R5; a quiet
//! upstream would be drained). The thread's one timer fires at the
//! earliest `by`; whenever the thread is awake, for that timer or for any
//! socket, every connection whose window has opened is woken too. Their
//! next windows then start together, so the connections of an idle thread
//! fall into step and the thread wakes about once per period, not once
//! per connection. No deadline is ever moved later; some are taken
//! earlier, never before their `from`.
//!
//! A linear scan: a relay thread holds a few connections (at most
//! `AMQPHeartbeatMaxConnections`), and the scan runs once per wakeup.

use std::time::{Duration, Instant};

/// A window no earlier than this after the instant it is set: one already
/// open would be rung by every other connection's wakeup while its owner
/// could do nothing with it (bytes queued before its heartbeat).
pub const MIN_LEAD: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// From here on, a wakeup is worth something.
    pub from: Instant,
    /// The deadline: the connection must be woken by then.
    pub by: Instant,
}

impl Window {
    /// A window for deadline `by`, worth opening from `from` (None: only
    /// at the deadline), set at `now`.
    pub fn new(from: Option<Instant>, by: Instant, now: Instant) -> Window {
        let by = by.max(now + MIN_LEAD);
        let from = from.unwrap_or(by).clamp(now + MIN_LEAD, by);
        Window { from, by }
    }
}

/// The sleeping connections of one thread, each with its window and `T`
/// (what wakes it: a `Waker` in the driver, a name in tests).
pub struct Wakeups<T> {
    entries: Vec<(u64, Window, T)>,
}

impl<T> Default for Wakeups<T> {
    fn default() -> Self {
        Wakeups {
            entries: Vec::new(),
        }
    }
}

impl<T> Wakeups<T> {
    /// Connection `key` sleeps with `window` (None: until its sockets wake
    /// it), replacing what it had.
    pub fn set(&mut self, key: u64, window: Option<Window>, waker: T) {
        self.remove(key);
        if let Some(window) = window {
            self.entries.push((key, window, waker));
        }
    }

    pub fn remove(&mut self, key: u64) {
        self.entries.retain(|(k, _, _)| *k != key);
    }

    /// When the thread's timer must fire: the earliest deadline.
    pub fn next_fire(&self) -> Option<Instant> {
        self.entries.iter().map(|(_, w, _)| w.by).min()
    }

    /// The thread is awake at `now`: every connection whose window has
    /// opened is taken out, to be woken (it sets a new window when it
    /// sleeps again).
    pub fn take_open(&mut self, now: Instant) -> Vec<T> {
        let mut open = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            if self.entries[i].1.from <= now {
                open.push(self.entries.swap_remove(i).2);
            } else {
                i += 1;
            }
        }
        open
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_timer_fires_at_the_earliest_deadline_and_takes_every_open_window() {
        let t0 = Instant::now();
        let mut w = Wakeups::default();
        w.set(1, Some(Window::new(Some(t0 + 2 * S), t0 + 5 * S, t0)), 'a');
        w.set(2, Some(Window::new(Some(t0 + 4 * S), t0 + 9 * S, t0)), 'b');
        w.set(3, Some(Window::new(Some(t0 + 6 * S), t0 + 7 * S, t0)), 'c');
        w.set(4, None, 'd');
        assert_eq!(w.len(), 3);
        assert_eq!(w.next_fire(), Some(t0 + 5 * S));
        let mut woken = w.take_open(t0 + 5 * S);
        woken.sort();
        assert_eq!(woken, ['a', 'b'], "b's window is open: it comes along");
        assert_eq!(w.next_fire(), Some(t0 + 7 * S));
        assert!(w.take_open(t0 + 5 * S).is_empty());
    }

    #[test]
    fn deadlines_are_never_moved_later_nor_windows_left_open() {
        let t0 = Instant::now();
        let w = Window::new(Some(t0 + 3 * S), t0 + 2 * S, t0);
        assert_eq!((w.from, w.by), (t0 + 2 * S, t0 + 2 * S));
        let w = Window::new(None, t0 + 2 * S, t0);
        assert_eq!(w.from, t0 + 2 * S);
        let w = Window::new(Some(t0 - S), t0 + 2 * S, t0);
        assert_eq!(w.from, t0 + MIN_LEAD, "already open: opens just after now");
        let w = Window::new(Some(t0 - S), t0 - S, t0);
        assert_eq!(w.by, t0 + MIN_LEAD, "past deadline: at once");
    }

    #[test]
    fn a_set_replaces_and_a_remove_forgets() {
        let t0 = Instant::now();
        let mut w = Wakeups::default();
        w.set(1, Some(Window::new(None, t0 + 5 * S, t0)), 'a');
        w.set(1, Some(Window::new(None, t0 + 8 * S, t0)), 'a');
        assert_eq!(w.next_fire(), Some(t0 + 8 * S));
        w.remove(1);
        assert!(w.is_empty());
        assert_eq!(w.next_fire(), None);
    }

    /// Connections sending a heartbeat on every wakeup, worth it after
    /// interval/4 and due after 5/8 x interval (rules R4, R5), started at
    /// scattered times: the thread's timer fires once per period, not once
    /// per connection.
    fn fires_over(connections: u64, seconds: u64) -> usize {
        let interval = 8 * S;
        let t0 = Instant::now();
        let mut w = Wakeups::default();
        let sleep = |w: &mut Wakeups<u64>, k, now: Instant| {
            let window = Window::new(Some(now + interval / 4), now + interval * 5 / 8, now);
            w.set(k, Some(window), k);
        };
        for k in 0..connections {
            let started = t0 + interval * 5 / 8 * (k as u32) / (connections as u32);
            sleep(&mut w, k, started);
        }
        let mut fires = 0;
        while let Some(at) = w.next_fire() {
            if at > t0 + S * seconds as u32 {
                break;
            }
            fires += 1;
            for k in w.take_open(at) {
                sleep(&mut w, k, at);
            }
        }
        fires
    }

    #[test]
    fn scattered_connections_fall_into_step() {
        // One period is 5 s: 20 in 100 s with one connection.
        assert_eq!(fires_over(1, 100), 20);
        let eight = fires_over(8, 100);
        assert!(eight <= 22, "8 connections: {eight} fires in 100 s");
    }
}
