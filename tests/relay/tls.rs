//! amqps:// upstream with certificate verification against the CA given by
//! AMQPHeartbeatTLSCACertificateFile.

use crate::Env;
use crate::support::amqp::{self, Client, Tuning};
use crate::support::relay::{Relay, Settings};
use mod_amqp_heartbeat::config::Directive;
use std::path::PathBuf;
use std::time::Duration;

fn tls_settings(env: &Env, ca: &str) -> Result<(Settings, String), String> {
    let node = env.node()?;
    let port = node.tls_port.ok_or("the shared node has no TLS listener")?;
    // "localhost": the name in the test server certificate (and SNI).
    let url = format!("amqps://localhost:{port}/");
    let settings = Settings::new(&[&url])
        .interval(2)
        .set(Directive::TlsCaCertificateFile, ca);
    Ok((settings, url))
}

fn ca_paths(env: &Env) -> Result<(PathBuf, PathBuf), String> {
    let ca = env
        .node()?
        .ca_path
        .clone()
        .ok_or("the shared node has no test CA")?;
    // The harness makes an unrelated second CA beside the first.
    let other = ca.with_file_name("other-ca.pem");
    ensure!(other.exists(), "no unrelated CA at {}", other.display());
    Ok((ca, other))
}

/// Verification on, the right CA: works end to end, large bodies included.
pub fn tls_with_test_ca(env: &Env) -> Result<(), String> {
    let (ca, _) = ca_paths(env)?;
    let (settings, url) = tls_settings(env, &ca.to_string_lossy())?;
    let relay = Relay::start("tls", settings.build())?;
    relay.explain((|| {
        let mut c = Client::open(relay.addr, Tuning::heartbeat(0))?;
        relay
            .log
            .wait_for(&["relayed to", "amqps://localhost"], Duration::from_secs(2))?;
        c.confirm_select(1)?;
        let q = c.declare_private_queue(1)?;
        for (i, len) in [10usize, 300 * 1024, 0, 131_064, 131_065]
            .iter()
            .enumerate()
        {
            let body = amqp::body(i as u64, *len);
            c.publish_confirmed(1, &q, &body)?;
            let m = c
                .get(1, &q)?
                .ok_or_else(|| format!("message {i} missing"))?;
            ensure!(
                m.body == body,
                "message {i} via {url}: {}",
                amqp::first_difference(&body, &m.body)
            );
        }
        c.close()
    })())
}

/// Verification on, an unrelated CA: the dial fails, the client is closed
/// without a word, and the log names the broker and says TLS.
pub fn tls_with_wrong_ca_fails_clearly(env: &Env) -> Result<(), String> {
    let (_, other) = ca_paths(env)?;
    let (settings, url) = tls_settings(env, &other.to_string_lossy())?;
    let relay = Relay::start("tls-wrong-ca", settings.build())?;
    relay.explain((|| {
        // The client never reaches the broker; it is told why (Close 320
        // from the relay, naming the certificate problem).
        let told = match Client::open(relay.addr, Tuning::heartbeat(0)) {
            Ok(_) => {
                return Err("a handshake completed with a broker the relay cannot verify".into());
            }
            Err(e) => e,
        };
        ensure!(
            told.contains("reply_code: 320") && told.contains("UnknownIssuer"),
            "the client was not told why: {told}"
        );
        let line = relay.log.wait_for(&["TLS"], Duration::from_secs(2))?;
        let port = url.rsplit(':').next().unwrap_or("").trim_end_matches('/');
        ensure!(
            line.contains(&format!("localhost:{port}")),
            "the TLS error does not name the broker {url}: {line}"
        );
        ensure!(
            line.to_lowercase().contains("certificate") || line.contains("UnknownIssuer"),
            "the TLS error does not say what is wrong with the certificate: {line}"
        );
        eprintln!("wrong CA: {line}");
        Ok(())
    })())
}
