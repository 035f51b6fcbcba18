//! Broker host names to addresses, without reading this process's
//! environment once the relay thread runs.
//!
//! glibc's `getenv` takes no lock, and `getaddrinfo` reads the environment
//! on every lookup (`LOCALDOMAIN`, `RES_OPTIONS`, `HOSTALIASES`), while an
//! interpreter in the same process may write it at any time (PHP
//! `putenv()`, Python `os.environ[...] = ...`). So the relay never calls
//! `getaddrinfo` itself: it runs `getent ahosts NAME` (glibc's own front
//! end to `getaddrinfo`, so `/etc/hosts`, nsswitch.conf and resolv.conf
//! apply as for any program) with an environment made of the resolver
//! variables captured by [`capture_environment`] before the thread
//! started. The spawn passes that environment explicitly and an absolute
//! path, so it reads nothing of the process's own. A pure-Rust resolver
//! would avoid the process but not nsswitch's sources, at the cost of a
//! dozen crates.
//!
//! A lookup runs on tokio's blocking pool (signals blocked there too) and
//! is bounded: the helper is killed at the deadline.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const GETENT: &str = "/usr/bin/getent";

/// The variables glibc's resolver reads.
const RESOLVER_VARIABLES: [&str; 3] = ["LOCALDOMAIN", "RES_OPTIONS", "HOSTALIASES"];

static ENVIRONMENT: OnceLock<Vec<(OsString, OsString)>> = OnceLock::new();

/// Take the resolver's variables from the environment. Call before the
/// relay thread starts, while the process has one thread (child_init);
/// later calls keep the first capture.
pub fn capture_environment() {
    ENVIRONMENT.get_or_init(|| {
        RESOLVER_VARIABLES
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|value| (OsString::from(name), value)))
            .collect()
    });
}

/// The addresses of `host` (a name, not an IP literal), with `port`, in the
/// order getaddrinfo gives them; at most `limit` spent.
pub async fn resolve(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, String> {
    let name = host.to_string();
    tokio::task::spawn_blocking(move || lookup(&name, port, limit))
        .await
        .map_err(|e| format!("the lookup of {host} failed: {e}"))?
}

fn lookup(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, String> {
    let deadline = Instant::now() + limit;
    let mut child = helper(GETENT)
        .args(["ahosts", "--", host])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {GETENT} to resolve {host}: {e}"))?;
    // The answer (a few lines per address) fits in the pipe, so waiting
    // before reading cannot block the helper.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "cannot resolve {host}: no answer within {} ms",
                    limit.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot resolve {host}: {e}")),
        }
    };
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        stdout
            .read_to_string(&mut output)
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    }
    match status.code() {
        Some(0) => Ok(parse(&output, port)),
        Some(2) => Err(format!("cannot resolve {host}: no such host")),
        _ => Err(format!(
            "cannot resolve {host}: {GETENT} ended with {status}"
        )),
    }
}

/// A command for `program` (an absolute path: no PATH search) whose
/// environment is the captured one alone: with `env_clear`, std builds it
/// without reading this process's environment.
fn helper(program: &str) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .envs(ENVIRONMENT.get().into_iter().flatten().cloned());
    command
}

/// `getent ahosts` prints `ADDRESS STREAM|DGRAM|RAW [NAME]` per address and
/// socket type; the STREAM lines, in order, without repeats.
fn parse(output: &str, port: u16) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for line in output.lines() {
        let mut fields = line.split_whitespace();
        let (Some(address), Some("STREAM")) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(ip) = address.parse::<IpAddr>() else {
            continue;
        };
        let addr = SocketAddr::new(ip, port);
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getent_output_is_parsed() {
        let output = "127.0.0.1       STREAM localhost\n127.0.0.1       DGRAM  \n127.0.0.1       RAW    \n::1             STREAM \n::1             DGRAM  \n127.0.0.1       STREAM \n";
        assert_eq!(
            parse(output, 5672),
            vec![
                "127.0.0.1:5672".parse::<SocketAddr>().unwrap(),
                "[::1]:5672".parse().unwrap()
            ]
        );
        assert!(parse("garbage\n\nx STREAM\n", 1).is_empty());
    }

    /// The helper sees the variables captured before the thread started,
    /// and nothing else of this process's environment (which has PATH).
    #[test]
    fn the_helper_gets_only_the_captured_environment() {
        assert!(std::env::var_os("PATH").is_some());
        capture_environment();
        let output = helper("/usr/bin/env").output().unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        for line in printed.lines() {
            let name = line.split('=').next().unwrap_or("");
            assert!(RESOLVER_VARIABLES.contains(&name), "{printed}");
        }
    }

    #[test]
    fn names_resolve_and_unknown_ones_fail() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let found = runtime
            .block_on(resolve("localhost", 5672, Duration::from_secs(5)))
            .unwrap();
        assert!(
            found
                .iter()
                .any(|a| a.ip().is_loopback() && a.port() == 5672)
        );
        let err = runtime
            .block_on(resolve(
                "no-such-host.invalid",
                5672,
                Duration::from_secs(5),
            ))
            .unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
    }
}
