//! Panics inside the relay's tasks (issue 11, item 8), made on cue with the
//! test-only triggers of the `test-hooks` feature (src/relay/test_hooks.rs;
//! `make test` builds the relay tests with it). A panic in a connection's
//! pump ends that connection only, both sides told with Connection.Close
//! 541; a panicking acceptor accepts again on the same socket. Either way
//! it is logged and the relay goes on serving.

use crate::Env;
#[cfg(feature = "test-hooks")]
use crate::support::amqp::{Client, FRAME_END, Tuning, raw_frame};
#[cfg(feature = "test-hooks")]
use crate::support::relay::{Relay, Settings};
#[cfg(feature = "test-hooks")]
use mod_amqp_heartbeat::relay::Event;
#[cfg(feature = "test-hooks")]
use mod_amqp_heartbeat::relay::test_hooks;
#[cfg(feature = "test-hooks")]
use std::time::{Duration, Instant};

#[cfg(not(feature = "test-hooks"))]
const NO_HOOKS: &str = "the relay tests were built without the test-hooks feature, so no panic \
     can be triggered: run them as make test does (cargo test --release --features test-hooks)";

pub fn a_panic_in_the_pump_closes_both_sides_with_541(env: &Env) -> Result<(), String> {
    #[cfg(feature = "test-hooks")]
    return pump_panic(env);
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = env;
        Err(NO_HOOKS.into())
    }
}

pub fn a_panicking_acceptor_accepts_again(env: &Env) -> Result<(), String> {
    #[cfg(feature = "test-hooks")]
    return acceptor_panic(env);
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = env;
        Err(NO_HOOKS.into())
    }
}

#[cfg(feature = "test-hooks")]
fn pump_panic(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "pump-panic",
        Settings::new(&[&node.url()]).interval(2).build(),
    )?;
    relay.explain((|| {
        let mut c = Client::open(relay.addr, Tuning::default())?;
        let upstream = relay.upstream_port(c.local_port())?;
        ensure!(
            node.connection(upstream)?.is_some(),
            "the broker does not list the relayed connection"
        );
        c.send_raw(&raw_frame(3, 1, test_hooks::PANIC_MARKER, FRAME_END))?;
        let (code, text) = c.expect_close(Duration::from_secs(3))?;
        ensure!(
            code == 541 && text.contains("internal error") && text.contains("test-hooks"),
            "the client got Close {code} '{text}', not 541 naming the internal error"
        );
        // The broker got its Close too: the connection is gone there.
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.connection(upstream)?.is_some() {
            ensure!(
                Instant::now() < deadline,
                "the broker still lists the upstream 5 s after the panic"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ensure!(
            node.log_entries_with("client unexpectedly closed TCP connection")
                .iter()
                .all(|l| !l.contains(&format!(":{upstream} "))),
            "the broker saw the upstream close abruptly, without the relay's Close"
        );
        // And the relay serves the next client.
        let mut next = Client::open(relay.addr, Tuning::default())?;
        next.publish(1, "nowhere", b"after a panic")?;
        next.close()
    })())
}

#[cfg(feature = "test-hooks")]
fn acceptor_panic(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    let relay = Relay::start(
        "acceptor-panic",
        Settings::new(&[&node.url()]).interval(2).build(),
    )?;
    relay.explain((|| {
        test_hooks::panic_acceptor_once(relay.addr.port());
        // This connection is accepted and lost with the panic.
        let lost = Client::open(relay.addr, Tuning::default());
        ensure!(lost.is_err(), "the connection accepted as the acceptor panicked was served");
        relay.log.wait_for_event(
            "AcceptorPanicked",
            |e| matches!(e, Event::AcceptorPanicked { message, .. } if message.contains("test-hooks")),
            Duration::from_secs(2),
        )?;
        // The acceptor is back on the same socket.
        let c = Client::open(relay.addr, Tuning::default())?;
        c.close()
    })())
}
