//! What the relay's unit tests share: a log that keeps every event, and a
//! listener whose broker is nowhere.

use crate::config::{Directive, ServerConfig};
use crate::relay::{EventLog, Level, RelayListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Collect(Mutex<Vec<(Level, String)>>);

impl EventLog for Collect {
    fn event(&self, _: usize, level: Level, message: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push((level, message.to_string()));
        }
    }
}

impl Collect {
    pub fn new() -> Arc<Collect> {
        Arc::new(Collect::default())
    }

    pub fn events(&self) -> Vec<(Level, String)> {
        self.0.lock().unwrap().clone()
    }

    pub fn messages(&self) -> Vec<String> {
        self.events().into_iter().map(|(_, m)| m).collect()
    }

    /// Wait until an event's message contains `needle`; returns it.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> (Level, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self.events().into_iter().find(|(_, m)| m.contains(needle)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no event with {needle:?} in {limit:?}: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A relay listener whose broker is nowhere (port 1).
pub fn listener_to_nowhere() -> RelayListener {
    let mut config = ServerConfig::default();
    config
        .apply(Directive::Broker, &["amqp://127.0.0.1:1/"])
        .unwrap();
    RelayListener::bind_loopback(Arc::new(config.relay_settings().unwrap())).unwrap()
}

/// Run the `#[ignore]`d unit test `name` (its full path) alone in a
/// process of its own, for a test that changes what the whole process has
/// (its descriptor limit); fails when it does.
pub fn run_alone(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This process's descriptor table, kept full by `fill_descriptor_table`;
/// dropping it closes the filler and puts the process's limit back.
pub struct FullTable {
    filler: Vec<std::net::TcpStream>,
    soft: u64,
    hard: u64,
}

impl FullTable {
    /// Free one descriptor (for a client to connect with).
    pub fn free_one(&mut self) {
        assert!(
            self.filler.pop().is_some(),
            "nothing was filled: no descriptor was free below the limit"
        );
    }
}

impl Drop for FullTable {
    /// The limit goes back too: it bounds descriptor numbers, not their
    /// count, so closing the filler alone frees as many descriptors as the
    /// filler took, which depends on what the process inherited (a test
    /// harness's stray descriptor above the limit takes no slot below it).
    /// Without a stray one, the queued client took the only slot freed and
    /// the relay never had one to accept it: a CI failure twice.
    fn drop(&mut self) {
        self.filler.clear();
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            self.soft,
            self.hard,
        );
    }
}

/// Lower this process's RLIMIT_NOFILE to what is open now plus `spare`,
/// then take descriptors (duplicates of `fd`) until none is left below it:
/// what a flood does to a child near its limit.
pub fn fill_descriptor_table(fd: &std::net::TcpStream, spare: u64) -> FullTable {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open + spare, hard).unwrap();
    let mut filler = Vec::new();
    while let Ok(dup) = fd.try_clone() {
        filler.push(dup);
    }
    FullTable { filler, soft, hard }
}
