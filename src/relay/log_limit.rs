//! The acceptor's log, rate-limited: any local user can connect to the
//! relay as often as it likes, and no connection may cost a line in the
//! error log of its own. Three things a flood can repeat are limited each
//! on its own: refusals, clients that closed before they were accepted
//! (a connect-and-reset flood), and failed accepts (EMFILE, retried every
//! 100 ms while it lasts). The first of a quiet spell is logged in full;
//! the ones after it within [`INTERVAL`] are counted, and the count is
//! logged when the interval ends (with the last one's text), so a flood
//! costs one line per interval and kind.
//!
//! Pure bookkeeping with the clock passed in; the acceptor arms a timer
//! for [`AcceptorLogs::due`] only while something is counted, so an idle
//! relay never wakes for it.

use crate::relay::session::events::Event;
use std::fmt;
use std::time::{Duration, Instant};

pub const INTERVAL: Duration = Duration::from_secs(10);

/// The rate limit of one kind of event. The last one counted is kept as
/// it came (`T`) and only turned into text when the count is logged: a
/// flood costs no formatting per event.
pub struct RateLimit<T> {
    /// What is counted, plural, for the summary line.
    what: &'static str,
    /// When the current interval started (its first event was logged).
    since: Option<Instant>,
    /// Events after the first in the current interval, not yet logged.
    counted: u64,
    last: Option<T>,
}

/// What to log for one event.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The count of an interval that ended, to log first.
    pub summary: Option<String>,
    /// Whether this event is logged in full (else only counted).
    pub log_this: bool,
}

impl<T: fmt::Display> RateLimit<T> {
    pub fn new(what: &'static str) -> RateLimit<T> {
        RateLimit {
            what,
            since: None,
            counted: 0,
            last: None,
        }
    }

    /// An event at `now` (`event`, which logs as its `Display`): what to
    /// log now.
    pub fn record(&mut self, now: Instant, event: T) -> Verdict {
        let summary = self.flush(now);
        let log_this = self.since.is_none();
        if log_this {
            self.since = Some(now);
        } else {
            self.counted += 1;
            self.last = Some(event);
        }
        Verdict { summary, log_this }
    }

    /// When [`RateLimit::flush`] has something to say.
    pub fn due(&self) -> Option<Instant> {
        let since = self.since?;
        (self.counted > 0).then(|| since + INTERVAL)
    }

    /// At the end of an interval: the count of what was not logged, if
    /// any; the next event starts a new interval.
    pub fn flush(&mut self, now: Instant) -> Option<String> {
        let since = self.since?;
        if now < since + INTERVAL {
            return None;
        }
        self.since = None;
        let counted = std::mem::take(&mut self.counted);
        let last = self.last.take();
        (counted > 0).then(|| {
            let last = last.map(|e| e.to_string()).unwrap_or_default();
            format!(
                "{counted} more {} in {} s; the last: {last}",
                self.what,
                INTERVAL.as_secs(),
            )
        })
    }
}

/// The kinds of event an acceptor limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    Refusals,
    EarlyCloses,
    AcceptFailures,
}

/// The three rate limits of one acceptor (of relay events; of text in
/// the tests).
pub struct AcceptorLogs<T = Event> {
    refusals: RateLimit<T>,
    early_closes: RateLimit<T>,
    accept_failures: RateLimit<T>,
}

impl<T: fmt::Display> Default for AcceptorLogs<T> {
    fn default() -> Self {
        AcceptorLogs {
            refusals: RateLimit::new("refusal(s)"),
            early_closes: RateLimit::new("client(s) closed before they were accepted"),
            accept_failures: RateLimit::new("failed accept(s)"),
        }
    }
}

impl<T: fmt::Display> AcceptorLogs<T> {
    pub fn limit(&mut self, kind: Limited) -> &mut RateLimit<T> {
        match kind {
            Limited::Refusals => &mut self.refusals,
            Limited::EarlyCloses => &mut self.early_closes,
            Limited::AcceptFailures => &mut self.accept_failures,
        }
    }

    /// The earliest summary due, if anything is counted.
    pub fn due(&self) -> Option<Instant> {
        [&self.refusals, &self.early_closes, &self.accept_failures]
            .into_iter()
            .filter_map(RateLimit::due)
            .min()
    }

    /// The summaries due at `now`, each with its kind.
    pub fn flush(&mut self, now: Instant) -> Vec<(Limited, String)> {
        [
            Limited::Refusals,
            Limited::EarlyCloses,
            Limited::AcceptFailures,
        ]
        .into_iter()
        .filter_map(|kind| self.limit(kind).flush(now).map(|s| (kind, s)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_one_line_per_interval() {
        let t0 = Instant::now();
        let mut log = RateLimit::<String>::new("refusal(s)");
        let logged = |summary: Option<&str>| Verdict {
            summary: summary.map(str::to_string),
            log_this: true,
        };
        assert_eq!(log.record(t0, "first".into()), logged(None));
        assert_eq!(log.due(), None, "nothing counted yet: no timer");
        for i in 1..=1000u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(
                log.record(at, format!("r{i}")),
                Verdict {
                    summary: None,
                    log_this: false
                }
            );
        }
        assert_eq!(log.due(), Some(t0 + INTERVAL));
        assert_eq!(log.flush(t0 + INTERVAL - Duration::from_millis(1)), None);
        assert_eq!(
            log.flush(t0 + INTERVAL).as_deref(),
            Some("1000 more refusal(s) in 10 s; the last: r1000")
        );
        assert_eq!(log.due(), None);
        // The next refusal, later, is logged in full again.
        let later = t0 + INTERVAL * 3;
        assert_eq!(log.record(later, "again".into()), logged(None));
    }

    #[test]
    fn a_late_refusal_carries_the_count_it_finds() {
        let t0 = Instant::now();
        let mut log = RateLimit::<String>::new("refusal(s)");
        log.record(t0, "a".into());
        log.record(t0, "b".into());
        // The timer did not run (the acceptor was busy): the next refusal
        // after the interval logs the count and itself.
        assert_eq!(
            log.record(t0 + INTERVAL * 2, "c".into()),
            Verdict {
                summary: Some("1 more refusal(s) in 10 s; the last: b".into()),
                log_this: true
            }
        );
    }

    /// Each kind is limited on its own: an early-close flood does not
    /// hide the first refusal, and the timer is the earliest due.
    #[test]
    fn kinds_are_limited_apart() {
        let t0 = Instant::now();
        let mut logs = AcceptorLogs::<String>::default();
        assert_eq!(logs.due(), None);
        for i in 0..100u32 {
            let said = logs
                .limit(Limited::EarlyCloses)
                .record(t0, format!("early {i}"));
            assert_eq!(said.log_this, i == 0);
        }
        let at = t0 + Duration::from_secs(1);
        assert!(
            logs.limit(Limited::Refusals)
                .record(at, "r0".into())
                .log_this
        );
        assert!(
            !logs
                .limit(Limited::Refusals)
                .record(at, "r1".into())
                .log_this
        );
        assert_eq!(logs.due(), Some(t0 + INTERVAL));
        assert_eq!(
            logs.flush(t0 + INTERVAL),
            vec![(
                Limited::EarlyCloses,
                "99 more client(s) closed before they were accepted in 10 s; the last: early 99"
                    .to_string()
            )]
        );
        assert_eq!(logs.due(), Some(at + INTERVAL));
        assert_eq!(
            logs.flush(at + INTERVAL),
            vec![(
                Limited::Refusals,
                "1 more refusal(s) in 10 s; the last: r1".to_string()
            )]
        );
        assert_eq!(logs.due(), None);
    }
}
