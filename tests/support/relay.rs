//! The relay under test, run in this process as the module runs it in an
//! httpd child: listeners bound first, then one relay thread.

use mod_amqp_heartbeat::config::{Directive, RelaySettings, ServerConfig};
use mod_amqp_heartbeat::relay::{Event, EventLog, Level, RelayListener};
use mod_amqp_heartbeat::relay_thread::{RelayThread, StopOutcome};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every relay event, kept for the test to inspect (and echoed to stderr
/// with AMQPHB_TEST_VERBOSE=1).
pub struct CollectLog {
    name: String,
    started: Instant,
    events: Mutex<Vec<(Level, String)>>,
    /// The same events with their fields, for assertions that do not
    /// depend on log prose.
    typed: Mutex<Vec<Event>>,
    echo: bool,
}

impl CollectLog {
    pub fn new(name: &str) -> CollectLog {
        CollectLog {
            name: name.to_string(),
            started: Instant::now(),
            events: Mutex::new(Vec::new()),
            typed: Mutex::new(Vec::new()),
            echo: std::env::var_os("AMQPHB_TEST_VERBOSE").is_some(),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().map(|(l, m)| format!("[{l:?}] {m}")).collect()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    /// Every typed event so far that `matches`.
    pub fn events(&self, matches: impl Fn(&Event) -> bool) -> Vec<Event> {
        let typed = self.typed.lock().unwrap_or_else(|p| p.into_inner());
        typed.iter().filter(|e| matches(e)).cloned().collect()
    }

    /// Wait until a typed event `matches`; returns it.
    pub fn wait_for_event(
        &self,
        what: &str,
        matches: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Result<Event, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events(&matches).into_iter().next() {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return Err(format!("no relay event {what} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until one event mentions every needle; returns it.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no relay event mentions all of {needles:?} within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl EventLog for CollectLog {
    fn record(&self, listener: usize, event: &Event) {
        self.typed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
        self.event(listener, event.level(), &event.to_string());
    }

    fn event(&self, listener: usize, level: Level, message: &str) {
        if self.echo {
            eprintln!(
                "[{:>7.3}s {} relay {listener} {level:?}] {message}",
                self.started.elapsed().as_secs_f64(),
                self.name
            );
        }
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((level, message.to_string()));
    }
}

/// Settings through the directive parser, as httpd would build them.
pub struct Settings {
    config: ServerConfig,
}

impl Settings {
    pub fn new(brokers: &[&str]) -> Settings {
        let mut config = ServerConfig::default();
        config
            .apply(Directive::Broker, brokers)
            .unwrap_or_else(|e| panic!("AMQPHeartbeatBroker {brokers:?}: {e}"));
        Settings { config }
    }

    pub fn set(mut self, directive: Directive, value: &str) -> Settings {
        self.config
            .apply(directive, &[value])
            .unwrap_or_else(|e| panic!("{} {value}: {e}", directive.name()));
        self
    }

    pub fn interval(self, secs: u16) -> Settings {
        self.set(Directive::Interval, &secs.to_string())
    }

    pub fn build(&self) -> RelaySettings {
        self.config
            .relay_settings()
            .expect("a broker is configured")
    }
}

/// One running relay thread; `addr` is its first listener, `addrs` all of
/// them (one per settings given, in order, as httpd's servers).
pub struct Relay {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub log: Arc<CollectLog>,
    thread: Option<RelayThread>,
}

impl Relay {
    pub fn start(name: &str, settings: RelaySettings) -> Result<Relay, String> {
        Relay::start_many(name, vec![settings])
    }

    pub fn start_many(name: &str, settings: Vec<RelaySettings>) -> Result<Relay, String> {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for s in settings {
            let listener = RelayListener::bind_loopback(Arc::new(s))
                .map_err(|e| format!("bind_loopback: {e}"))?;
            addrs.push(
                listener
                    .listener
                    .local_addr()
                    .map_err(|e| format!("local_addr: {e}"))?,
            );
            listeners.push(listener);
        }
        let log = Arc::new(CollectLog::new(name));
        let thread = RelayThread::start(listeners, Arc::clone(&log) as Arc<dyn EventLog>)?;
        Ok(Relay {
            addr: addrs[0],
            addrs,
            log,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/", self.addr)
    }

    /// The relay's own port on the upstream socket of the connection whose
    /// client socket has local port `client_port` (from the relay's "relayed
    /// to" event): the broker's peer_port for that connection.
    pub fn upstream_port(&self, client_port: u16) -> Result<u16, String> {
        let needle = format!("client 127.0.0.1:{client_port} relayed to");
        let line = self
            .log
            .wait_for(&[&needle, "upstream from"], Duration::from_secs(5))?;
        line.rsplit("upstream from ")
            .next()
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .ok_or_else(|| format!("no upstream address in relay event: {line}"))
    }

    pub fn stop(mut self, grace: Duration) -> StopOutcome {
        match self.thread.take() {
            Some(t) => t.stop(grace),
            None => StopOutcome::Clean,
        }
    }

    /// Turn a failure into one that carries the relay's events.
    pub fn explain<T>(&self, result: Result<T, String>) -> Result<T, String> {
        result.map_err(|e| format!("{e}\n--- relay events:\n{}", self.log.text()))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop(Duration::from_secs(2));
        }
    }
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> Result<usize, String> {
    status_bytes("VmRSS:")
}

/// Peak resident set size of this process since the last
/// [`reset_peak_rss`], in bytes.
pub fn peak_rss_bytes() -> Result<usize, String> {
    status_bytes("VmHWM:")
}

/// Start a new peak RSS measurement (Linux >= 4.0: "5" to clear_refs).
pub fn reset_peak_rss() -> Result<(), String> {
    std::fs::write("/proc/self/clear_refs", "5").map_err(|e| format!("/proc/self/clear_refs: {e}"))
}

fn status_bytes(field: &str) -> Result<usize, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no {field} in /proc/self/status"))
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local_addr").port()
}
