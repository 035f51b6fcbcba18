//! A private RabbitMQ node, driven through the Python harness
//! (tests/harness/rabbit.py), which owns everything about starting and
//! stopping one: ports, cookie, data dir, leftovers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const PYTHON: &str = "/usr/bin/python3";

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/rabbit.py")
}

pub struct Node {
    pub workdir: PathBuf,
    pub nodename: String,
    pub amqp_port: u16,
    pub tls_port: Option<u16>,
    pub ca_path: Option<PathBuf>,
    pub log_path: PathBuf,
    pub start_seconds: f64,
    /// None once stopped or killed.
    beam_pid: Mutex<Option<i32>>,
    stopped: AtomicBool,
}

/// One line of `rabbitmqctl list_connections peer_port timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerConnection {
    pub peer_port: u16,
    pub timeout: u16,
}

fn run_harness(args: &[&str], timeout: Duration) -> Result<String, String> {
    let script = harness();
    if !script.exists() {
        return Err(format!(
            "the RabbitMQ test harness {} is missing",
            script.display()
        ));
    }
    let mut cmd = Command::new(PYTHON);
    cmd.arg(&script).args(args);
    let started = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {PYTHON} {}: {e}", script.display()))?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "rabbit.py {} failed ({}) after {:.1}s:\n{}{}",
            args.join(" "),
            out.status,
            elapsed.as_secs_f64(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    if elapsed > timeout {
        return Err(format!(
            "rabbit.py {} took {:.1}s (limit {timeout:?})",
            args.join(" "),
            elapsed.as_secs_f64()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Node {
    /// Start a node in `workdir` (created). Fails with the harness's own
    /// message when RabbitMQ is missing or does not come up.
    pub fn start(workdir: &Path, tls: bool) -> Result<Node, String> {
        std::fs::create_dir_all(workdir)
            .map_err(|e| format!("cannot create {}: {e}", workdir.display()))?;
        let dir = workdir.to_string_lossy().into_owned();
        let mut args = vec!["start", dir.as_str()];
        if tls {
            args.push("--tls");
        }
        let out = run_harness(&args, Duration::from_secs(120))?;
        let line = out.lines().last().unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("rabbit.py start printed no JSON ({e}): {out}"))?;
        let port = |k: &str| v[k].as_u64().and_then(|p| u16::try_from(p).ok());
        let string = |k: &str| v[k].as_str().map(str::to_string);
        let node = Node {
            workdir: workdir.to_path_buf(),
            nodename: string("nodename").unwrap_or_default(),
            amqp_port: port("amqp_port").ok_or_else(|| format!("no amqp_port in {line}"))?,
            tls_port: port("tls_port"),
            ca_path: string("ca_path").map(PathBuf::from),
            log_path: string("log_path")
                .map(PathBuf::from)
                .ok_or_else(|| format!("no log_path in {line}"))?,
            start_seconds: v["start_seconds"].as_f64().unwrap_or(0.0),
            beam_pid: Mutex::new(v["beam_pid"].as_i64().map(|p| p as i32)),
            stopped: AtomicBool::new(false),
        };
        if tls && (node.tls_port.is_none() || node.ca_path.is_none()) {
            return Err(format!("node started without its TLS listener: {line}"));
        }
        Ok(node)
    }

    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}/", self.amqp_port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.amqp_port))
    }

    pub fn beam_pid(&self) -> Option<i32> {
        *self.beam_pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), String> {
        let pid = self.beam_pid().ok_or("the node is not running")?;
        // SAFETY: kill(2) with a pid the harness reported for this node.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(format!(
                "kill({pid}, {sig}): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Freeze the broker: its sockets stay open, nothing is answered.
    pub fn sigstop(&self) -> Result<(), String> {
        self.signal(libc::SIGSTOP)
    }

    pub fn sigcont(&self) -> Result<(), String> {
        self.signal(libc::SIGCONT)
    }

    /// Kill the beam process outright (a broker crash).
    pub fn kill(&self) -> Result<(), String> {
        self.signal(libc::SIGCONT)?;
        self.signal(libc::SIGKILL)?;
        *self.beam_pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Stop the node (an orderly shutdown, when it runs) and start it
    /// again with the same name, ports and data dir.
    pub fn restart(&self) -> Result<f64, String> {
        let dir = self.workdir.to_string_lossy().into_owned();
        let started = Instant::now();
        let out = run_harness(&["restart", &dir], Duration::from_secs(150))?;
        let line = out.lines().last().unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("rabbit.py restart printed no JSON ({e}): {out}"))?;
        if v["amqp_port"].as_u64() != Some(u64::from(self.amqp_port)) {
            return Err(format!(
                "the node came back on another port: {line} (was {})",
                self.amqp_port
            ));
        }
        *self.beam_pid.lock().unwrap_or_else(|p| p.into_inner()) =
            v["beam_pid"].as_i64().map(|p| p as i32);
        Ok(started.elapsed().as_secs_f64())
    }

    /// Stop the node and everything it started (also after `kill`).
    pub fn stop(&self) -> Result<(), String> {
        let dir = self.workdir.to_string_lossy().into_owned();
        let result = run_harness(&["stop", &dir], Duration::from_secs(90)).map(|_| ());
        self.stopped.store(true, Ordering::SeqCst);
        *self.beam_pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
        result
    }

    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let dir = self.workdir.to_string_lossy().into_owned();
        let mut all = vec!["ctl", dir.as_str()];
        all.extend_from_slice(args);
        run_harness(&all, Duration::from_secs(60))
    }

    /// `rabbitmqctl list_connections peer_port timeout`.
    pub fn connections(&self) -> Result<Vec<BrokerConnection>, String> {
        let out = self.ctl(&["-q", "list_connections", "peer_port", "timeout"])?;
        let mut list = Vec::new();
        for line in out.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [port, timeout] = fields[..] {
                // A header line ("peer_port timeout") does not parse; skip it.
                if let (Ok(peer_port), Ok(timeout)) = (port.parse(), timeout.parse()) {
                    list.push(BrokerConnection { peer_port, timeout });
                }
            }
        }
        Ok(list)
    }

    pub fn connection(&self, peer_port: u16) -> Result<Option<BrokerConnection>, String> {
        Ok(self
            .connections()?
            .into_iter()
            .find(|c| c.peer_port == peer_port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The node's log entries (an entry is a timestamped line and its
    /// continuation lines) that mention `needle`.
    pub fn log_entries_with(&self, needle: &str) -> Vec<String> {
        log_entries(&self.log_text())
            .into_iter()
            .filter(|e| e.contains(needle))
            .collect()
    }

    /// Wait until some log entry mentions every one of `needles`; the
    /// entry is returned.
    pub fn wait_log_entry(&self, needles: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = log_entries(&self.log_text());
            if let Some(e) = entries
                .into_iter()
                .find(|e| needles.iter().all(|n| e.contains(n)))
            {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no entry of the broker log {} mentions all of {needles:?} within {timeout:?}; its tail:\n{}",
                    self.log_path.display(),
                    tail(&self.log_text(), 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Node {
    /// The log entry for the close of the connection from `peer_port`; an
    /// error when the broker saw that socket vanish ("client unexpectedly
    /// closed TCP connection") instead of receiving a Connection.Close.
    pub fn wait_clean_close(&self, peer_port: u16) -> Result<String, String> {
        let entry = self.wait_log_entry(
            &[
                "closing AMQP connection",
                &format!("127.0.0.1:{peer_port} ->"),
            ],
            Duration::from_secs(20),
        )?;
        if entry.contains("unexpectedly closed") {
            return Err(format!(
                "the broker saw the connection vanish without Connection.Close: {entry}"
            ));
        }
        Ok(entry)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.stopped.load(Ordering::SeqCst) {
            if let Err(e) = self.stop() {
                eprintln!("stopping RabbitMQ node {}: {e}", self.nodename);
            }
        }
    }
}

/// Split a RabbitMQ log into entries. RabbitMQ writes each line of a
/// multi-line message with the same "date time [level] <pid>" prefix, so
/// consecutive lines with one prefix are one entry; a line without a prefix
/// continues the entry before it.
pub fn log_entries(text: &str) -> Vec<String> {
    fn prefix(line: &str) -> Option<&str> {
        if !line.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            return None;
        }
        // date, time, [level], <pid>
        let mut end = 0;
        for (n, (i, _)) in line.match_indices(' ').enumerate() {
            if n == 3 {
                end = i;
                break;
            }
        }
        (end > 0).then(|| &line[..end])
    }
    let mut entries: Vec<(Option<String>, String)> = Vec::new();
    for line in text.lines() {
        let p = prefix(line);
        match entries.last_mut() {
            Some((last_prefix, entry)) if p.is_none() || p == last_prefix.as_deref() => {
                entry.push('\n');
                entry.push_str(line);
            }
            _ => entries.push((p.map(str::to_string), line.to_string())),
        }
    }
    entries.into_iter().map(|(_, e)| e).collect()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
