//! Refusal logging, rate-limited: any local user can connect to the relay
//! as often as it likes, and each refusal must not cost a line in the
//! error log. The first refusal of a quiet spell is logged in full; the
//! ones after it within [`INTERVAL`] are counted, and the count is logged
//! when the interval ends (with the last reason), so a flood costs one
//! line per interval.
//!
//! Pure bookkeeping with the clock passed in; the acceptor arms a timer
//! for [`RefusalLog::due`] only while refusals are counted, so an idle
//! relay never wakes for it.

use std::time::{Duration, Instant};

pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct RefusalLog {
    /// When the current interval started (its first refusal was logged).
    since: Option<Instant>,
    /// Refusals after the first in the current interval, not yet logged.
    counted: u64,
    last: String,
}

/// What to log for one refusal.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The count of an interval that ended, to log first.
    pub summary: Option<String>,
    /// Whether this refusal is logged in full (else only counted).
    pub log_this: bool,
}

impl RefusalLog {
    /// A refusal at `now` for `reason` (its log text): what to log now.
    pub fn refused(&mut self, now: Instant, reason: String) -> Verdict {
        let summary = self.flush(now);
        let log_this = self.since.is_none();
        if log_this {
            self.since = Some(now);
        } else {
            self.counted += 1;
            self.last = reason;
        }
        Verdict { summary, log_this }
    }

    /// When [`RefusalLog::flush`] has something to say.
    pub fn due(&self) -> Option<Instant> {
        let since = self.since?;
        (self.counted > 0).then(|| since + INTERVAL)
    }

    /// At the end of an interval: the count of what was not logged, if
    /// any; the next refusal starts a new interval.
    pub fn flush(&mut self, now: Instant) -> Option<String> {
        let since = self.since?;
        if now < since + INTERVAL {
            return None;
        }
        self.since = None;
        let counted = std::mem::take(&mut self.counted);
        (counted > 0).then(|| {
            format!(
                "refused {counted} more connection(s) in {} s; the last: {}",
                INTERVAL.as_secs(),
                std::mem::take(&mut self.last)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_one_line_per_interval() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        let logged = |summary: Option<&str>| Verdict {
            summary: summary.map(str::to_string),
            log_this: true,
        };
        assert_eq!(log.refused(t0, "first".into()), logged(None));
        assert_eq!(log.due(), None, "nothing counted yet: no timer");
        for i in 1..=1000u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(
                log.refused(at, format!("r{i}")),
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
            Some("refused 1000 more connection(s) in 10 s; the last: r1000")
        );
        assert_eq!(log.due(), None);
        // The next refusal, later, is logged in full again.
        let later = t0 + INTERVAL * 3;
        assert_eq!(log.refused(later, "again".into()), logged(None));
    }

    #[test]
    fn a_late_refusal_carries_the_count_it_finds() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        log.refused(t0, "a".into());
        log.refused(t0, "b".into());
        // The timer did not run (the acceptor was busy): the next refusal
        // after the interval logs the count and itself.
        assert_eq!(
            log.refused(t0 + INTERVAL * 2, "c".into()),
            Verdict {
                summary: Some("refused 1 more connection(s) in 10 s; the last: b".into()),
                log_this: true
            }
        );
    }
}
