//! What a broker would answer to bad input, a connection limit, and the
//! "only this process" rule; other connections never notice.

use crate::Env;
use crate::support::amqp::{self, Client, Ending, PROTOCOL_HEADER, Tuning, raw_frame};
use crate::support::rabbit::PYTHON;
use crate::support::relay::{Relay, Settings};
use mod_amqp_heartbeat::config::Directive;
use std::time::{Duration, Instant};

const FRAME_MAX: u32 = 131_072;

/// A healthy connection that proves, between cases, that it still works.
struct Witness {
    client: Client,
    queue: String,
    sent: u64,
}

impl Witness {
    fn open(relay: &Relay) -> Result<Witness, String> {
        let mut client = Client::open(relay.addr, Tuning::default())?;
        client.confirm_select(1)?;
        let queue = client.declare_private_queue(1)?;
        Ok(Witness {
            client,
            queue,
            sent: 0,
        })
    }

    fn check(&mut self, after: &str) -> Result<(), String> {
        self.sent += 1;
        let body = amqp::body(self.sent, 1000);
        let q = self.queue.clone();
        self.client
            .publish_confirmed(1, &q, &body)
            .and_then(|_| self.client.get(1, &q))
            .and_then(|m| match m {
                Some(m) if m.body == body => Ok(()),
                other => Err(format!("got {other:?}")),
            })
            .map_err(|e| format!("the healthy connection failed after {after}: {e}"))
    }
}

/// Each bad header or frame on a fresh connection gets what a broker would
/// send; a healthy connection opened before keeps working throughout.
pub fn malformed_input_table(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "malformed",
        Settings::new(&[&node.url()]).interval(2).build(),
    )?;
    relay.explain((|| {
        let mut witness = Witness::open(&relay)?;

        let headers: &[(&str, &[u8])] = &[
            ("AMQP 0-8 header", b"AMQP\x00\x00\x08\x00"),
            ("AMQP 0-9 header", b"AMQP\x00\x00\x09\x00"),
            ("AMQP 1.0 header", b"AMQP\x00\x01\x00\x00"),
            ("HTTP request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ];
        for (name, bytes) in headers {
            let mut c = Client::connect(relay.addr)?;
            c.send_raw(bytes)?;
            let (got, ending) = c.read_raw_until(Instant::now() + Duration::from_secs(5), 64)?;
            ensure!(
                got == PROTOCOL_HEADER,
                "{name}: the relay answered {:?}, expected the AMQP 0-9-1 header",
                String::from_utf8_lossy(&got)
            );
            ensure!(
                ending == Ending::Eof,
                "{name}: after the header the connection ended with {ending:?}, not a close"
            );
            witness.check(name)?;
        }

        // A method frame that is fine but for its frame-end octet.
        let qos = amqp::method(
            1,
            amq_protocol::protocol::AMQPClass::Basic(
                amq_protocol::protocol::basic::AMQPMethod::Qos(
                    amq_protocol::protocol::basic::Qos {
                        prefetch_count: 10,
                        global: false,
                    },
                ),
            ),
        );
        let mut bad_end = qos.clone();
        if let Some(last) = bad_end.last_mut() {
            *last = 0x00;
        }
        // A body frame header announcing more than the negotiated frame_max,
        // followed by a little of its payload.
        let mut oversized = raw_frame(3, 1, &[], 0xCE);
        oversized[3..7].copy_from_slice(&FRAME_MAX.to_be_bytes());
        oversized.truncate(7);
        oversized.extend_from_slice(&[0u8; 1000]);
        let frames: Vec<(&str, Vec<u8>, u16)> = vec![
            ("bad frame-end octet", bad_end, 501),
            ("unknown frame type 9", raw_frame(9, 1, b"abc", 0xCE), 505),
            ("unknown frame type 'X'", raw_frame(b'X', 0, b"", 0xCE), 505),
            ("frame larger than frame_max", oversized, 501),
            (
                "heartbeat with a payload",
                raw_frame(8, 0, b"abcd", 0xCE),
                501,
            ),
            ("heartbeat on channel 1", raw_frame(8, 1, b"", 0xCE), 501),
            // After a valid frame in the same write: the valid one is
            // relayed, the bad one still caught.
            (
                "valid frame then a bad one",
                [qos.clone(), raw_frame(9, 1, b"", 0xCE)].concat(),
                505,
            ),
        ];
        let mut upstreams = Vec::new();
        for (name, bytes, code) in frames {
            let mut c = Client::open(relay.addr, Tuning::heartbeat(0))?;
            upstreams.push((name, relay.upstream_port(c.local_port())?));
            c.send_raw(&bytes)?;
            let (got, text) = c
                .expect_close(Duration::from_secs(5))
                .map_err(|e| format!("{name}: {e}"))?;
            ensure!(
                got == code,
                "{name}: Connection.Close {got} '{text}', expected {code}"
            );
            ensure!(
                !text.is_empty(),
                "{name}: Connection.Close without a reason"
            );
            let ending = c.read_ending(Duration::from_secs(3))?;
            ensure!(
                ending == Ending::Eof,
                "{name}: after the Close the socket ended with {ending:?}"
            );
            witness.check(name)?;
        }
        // Each upstream was closed with a Connection.Close of the relay's,
        // which the broker logs as a client-initiated close.
        for (name, port) in upstreams {
            node.wait_clean_close(port)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        ensure!(!relay.log.contains("panicked"), "the relay panicked");
        witness.client.close()
    })())
}

/// AMQPHeartbeatMaxConnections 2: the third connection is refused (closed,
/// logged); once one closes, a new one is accepted.
pub fn max_connections(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let settings = Settings::new(&[&node.url()])
        .interval(2)
        .set(Directive::MaxConnections, "2");
    let relay = Relay::start("max-conn", settings.build())?;
    relay.explain((|| {
        let a = Client::open(relay.addr, Tuning::default())?;
        let mut b = Client::open(relay.addr, Tuning::default())?;

        // The third is refused in AMQP: the relay's Start, then Close 530
        // naming the limit, which the client raises as its error.
        let refused_at = Instant::now();
        let refusal = match Client::open(relay.addr, Tuning::default()) {
            Ok(_) => return Err("a third connection was accepted over the limit of 2".into()),
            Err(e) => e,
        };
        ensure!(
            refusal.contains("reply_code: 530")
                && refusal.contains(
                    "relay: 2 connections already relayed (AMQPHeartbeatMaxConnections 2)"
                ),
            "the third connection was not told why: {refusal} (after {:.2?})",
            refused_at.elapsed()
        );
        let line = relay.log.wait_for(
            &["refused", "AMQPHeartbeatMaxConnections 2"],
            Duration::from_secs(2),
        )?;
        eprintln!("max connections: the third connection got: {refusal}; relay: {line}");

        a.close()?;
        // The slot frees when the first connection's task ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut c = loop {
            match Client::open(relay.addr, Tuning::default()) {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("no new connection accepted after one closed: {e}")),
            }
        };
        c.confirm_select(1)?;
        c.publish_confirmed(1, "nowhere", b"third time lucky")?;
        b.confirm_select(1)?;
        b.publish_confirmed(1, "nowhere", b"still here")?;
        c.close()?;
        b.close()
    })())
}

/// A client in another process (python3) is reset without any AMQP reply,
/// and the refusal is logged.
pub fn other_process_is_refused(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "other-process",
        Settings::new(&[&node.url()]).interval(2).build(),
    )?;
    relay.explain((|| {
        let script = format!(
            r#"
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
print("local", s.getsockname()[1], flush=True)
s.settimeout(5)
try:
    # The relay resets a foreign client at once: maybe before connect()
    # even returns here.
    s.connect(("127.0.0.1", {port}))
    s.sendall(b"AMQP\x00\x00\x09\x01")
    data = s.recv(4096)
    print("EOF" if not data else "DATA " + data.hex())
except (ConnectionResetError, BrokenPipeError):
    print("RESET")
except socket.timeout:
    print("TIMEOUT")
"#,
            port = relay.addr.port()
        );
        let out = std::process::Command::new(PYTHON)
            .arg("-c")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {PYTHON}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        ensure!(
            out.status.success(),
            "the python client failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let verdict = stdout.lines().last().unwrap_or("");
        ensure!(
            verdict == "EOF" || verdict == "RESET",
            "the python client was not just closed: {verdict}"
        );
        let port = stdout
            .lines()
            .find_map(|l| l.strip_prefix("local "))
            .unwrap_or("?")
            .to_string();
        let line = relay.log.wait_for(
            &["refused", &format!("127.0.0.1:{port}")],
            Duration::from_secs(2),
        )?;
        ensure!(
            line.contains("not held by this process"),
            "the refusal does not say why: {line}"
        );
        eprintln!("other process: python saw {verdict}; relay: {line}");
        ensure!(
            !relay.log.contains("relayed to"),
            "the other process was relayed to the broker"
        );
        // And this process is still served.
        Client::open(relay.addr, Tuning::default())?.close()
    })())
}

/// Property: whatever a client sends after the handshake (frames with
/// random types, channels, payloads and end octets, and plain garbage),
/// its connection ends within a bound, with a Connection.Close or a closed
/// socket; the relay never panics and a healthy connection keeps working.
/// (A channel-0 method of an unknown class that the relay rightly passes
/// on makes RabbitMQ 3.10's reader crash and reset the connection; the
/// client then gets the relay's Close 320 "connection to the broker lost".)
pub fn random_client_bytes_never_hurt_the_relay(env: &Env) -> Result<(), String> {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

    let node = env.node()?;
    let relay = Relay::start("fuzz", Settings::new(&[&node.url()]).interval(2).build())?;
    let witness = std::cell::RefCell::new(relay.explain(Witness::open(&relay))?);
    // How the cases ended ("Close 501", "closed"), to show what was exercised.
    let endings = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());

    let frame = (
        prop_oneof![Just(1u8), Just(2), Just(3), Just(8), any::<u8>()],
        0u16..3,
        proptest::collection::vec(any::<u8>(), 0..48),
        prop_oneof![4 => Just(0xCEu8), 1 => any::<u8>()],
    )
        .prop_map(|(kind, channel, payload, end)| raw_frame(kind, channel, &payload, end));
    let chunk = prop_oneof![3 => frame, 1 => proptest::collection::vec(any::<u8>(), 1..24)];
    let input = proptest::collection::vec(chunk, 1..6).prop_map(|chunks| chunks.concat());

    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&input, |bytes| {
        let fail = |m: String| TestCaseError::fail(m);
        let mut c = Client::open(relay.addr, Tuning::heartbeat(0)).map_err(fail)?;
        c.send_raw(&bytes).map_err(fail)?;
        // Whatever is left half-sent can never complete: say we are done.
        let _ = c.stream().shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut how = "closed without Close".to_string();
        loop {
            match c.read_frame_until(deadline) {
                Ok(Ok(r)) => {
                    use amq_protocol::protocol::{AMQPClass, connection};
                    if let amq_protocol::frame::AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                    ) = r.frame
                    {
                        how = match close.reply_code {
                            501 | 505 => format!("Close {}", close.reply_code),
                            // Rarer endings are worth seeing in full.
                            code => {
                                format!("Close {code} '{}' after {bytes:02X?}", close.reply_text)
                            }
                        };
                    }
                }
                Ok(Err(Ending::Eof | Ending::Reset)) => break,
                Ok(Err(Ending::Timeout)) => {
                    return Err(fail(format!(
                        "the connection was still open 5 s after sending {bytes:02X?}"
                    )));
                }
                // Bytes the codec cannot read can only come from the broker
                // or the relay: that is a failure too.
                Err(e) => return Err(fail(format!("after sending {bytes:02X?}: {e}"))),
            }
        }
        *endings.borrow_mut().entry(how).or_default() += 1;
        witness
            .borrow_mut()
            .check(&format!("random bytes {bytes:02X?}"))
            .map_err(fail)
    });
    eprintln!(
        "random client bytes: cases ended with {:?}",
        endings.borrow()
    );
    relay.explain(match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(why, bytes)) => {
            Err(format!("minimal failing input {bytes:02X?}: {why}"))
        }
        Err(TestError::Abort(why)) => Err(format!("property test aborted: {why}")),
    })?;
    ensure!(
        !relay.log.contains("panicked"),
        "the relay panicked:\n{}",
        relay.log.text()
    );
    witness.into_inner().client.close()
}
