//! Integration tests of the relay against a real RabbitMQ node.
//!
//! The relay runs in this process, as in an httpd child, and the clients
//! run on this process's threads (the relay refuses any other process).
//! One private RabbitMQ node (with a TLS listener) is shared by every test
//! that does not hurt its broker; it is started on first use and always
//! stopped at the end, also when tests fail or panic. Tests that freeze or
//! kill a broker start their own node.
//!
//! The binary uses libtest-mimic (`harness = false`) so that the shared
//! node outlives the individual tests: `cargo test --test relay [FILTER]`.
//! AMQPHB_TEST_VERBOSE=1 echoes every relay event to stderr; AMQPHB_KEEP=1
//! keeps the node work dirs (logs) even when everything passed.

#[macro_use]
mod support;

#[path = "relay/bad_input.rs"]
mod bad_input;
#[path = "relay/broker_failures.rs"]
mod broker_failures;
#[path = "relay/closing.rs"]
mod closing;
#[path = "relay/confirmed_delivery.rs"]
mod confirmed_delivery;
#[path = "relay/hostile_broker.rs"]
mod hostile_broker;
#[path = "relay/liveness.rs"]
mod liveness;
#[path = "relay/login.rs"]
mod login;
#[path = "relay/panics.rs"]
mod panics;
#[path = "relay/quiet_upstream.rs"]
mod quiet_upstream;
#[path = "relay/tls.rs"]
mod tls;
#[path = "relay/traffic.rs"]
mod traffic;

use libtest_mimic::{Arguments, Failed, Trial};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use support::rabbit::Node;

/// What every test gets: the shared node and a place for its own nodes.
pub struct Env {
    base: PathBuf,
    shared: OnceLock<Result<Node, String>>,
}

impl Env {
    /// The shared node (plain and TLS listeners), started on first use.
    pub fn node(&self) -> Result<&Node, String> {
        self.shared
            .get_or_init(|| {
                let node = Node::start(&self.base.join("shared"), true)
                    .map_err(|e| format!("the shared RabbitMQ node did not start: {e}"))?;
                eprintln!(
                    "shared RabbitMQ node {} up in {:.1}s (amqp {}, tls {:?})",
                    node.nodename, node.start_seconds, node.amqp_port, node.tls_port
                );
                Ok(node)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A node of the test's own, for tests that freeze or kill a broker.
    /// Dropping it stops it.
    pub fn own_node(&self, name: &str) -> Result<Node, String> {
        Node::start(&self.base.join(name), false)
    }

    fn shutdown(&self) -> Result<(), String> {
        match self.shared.get() {
            Some(Ok(node)) => node.stop(),
            _ => Ok(()),
        }
    }
}

/// Stops the shared node however main ends (a panic in main included).
struct StopOnDrop(Arc<Env>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("stopping the shared RabbitMQ node: {e}");
        }
    }
}

pub type TestFn = fn(&Env) -> Result<(), String>;

/// `module::function, ...` to `("module::function", function)` pairs.
macro_rules! trial_list {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$((concat!(stringify!($module), "::", stringify!($name)), $module::$name as TestFn)),*]
    };
}

/// The trials that run together, longest first (the pool starts them in
/// this order).
fn parallel_trials() -> Vec<(&'static str, TestFn)> {
    trial_list![
        confirmed_delivery::confirmed_messages_survive_broker_faults,
        liveness::silent_client_keeps_broker_connection,
        broker_failures::frozen_then_killed_broker,
        liveness::sleeping_consumer_is_not_a_dead_broker,
        liveness::direct_silent_client_is_dropped_by_broker,
        bad_input::malformed_input_table,
        traffic::amiquip_through_relay,
        traffic::raw_client_through_relay,
        quiet_upstream::hidden_heartbeat_counts_before_the_verdict,
        login::configured_credentials_replace_the_clients,
        login::client_credentials_pass_through_without_configured_ones,
        panics::a_panic_in_the_pump_closes_both_sides_with_541,
        panics::a_panicking_acceptor_accepts_again,
        closing::client_close_is_clean,
        closing::broker_close_is_forwarded,
        closing::vanished_client_is_closed_upstream,
        closing::stop_closes_every_upstream,
        bad_input::max_connections,
        bad_input::other_process_is_refused,
        broker_failures::first_broker_unreachable_second_used,
        broker_failures::silent_broker_at_connect_time,
        hostile_broker::a_broker_that_stalls_in_the_handshake_is_given_up,
        tls::tls_with_test_ca,
        tls::tls_with_wrong_ca_fails_clearly,
    ]
}

/// Trials that run after the others, one at a time: some load the whole
/// machine (hundreds of connects) and would make the timing bounds of the
/// others meaningless; others bound a heartbeat's cadence to well under a
/// second, which a 2-core machine booting RabbitMQ nodes for the parallel
/// trials cannot promise a thread. The random-input trial also floods the shared
/// node's log (about 800 entries a second); RabbitMQ's logger then drops
/// entries under its overload protection, and a concurrent trial waiting
/// for one (the direct control's "missed heartbeats") never saw it.
fn alone_trials() -> Vec<(&'static str, TestFn)> {
    trial_list![
        hostile_broker::garbage_after_a_bad_frame_is_not_buffered,
        liveness::connection_burst_does_not_stall_heartbeats,
        liveness::client_heartbeat_1_gets_relay_heartbeats,
        liveness::slow_dials_do_not_delay_other_connections,
        bad_input::random_client_bytes_never_hurt_the_relay,
    ]
}

fn trials(env: &Arc<Env>, list: Vec<(&'static str, TestFn)>) -> Vec<Trial> {
    list.into_iter()
        .map(|(name, f)| {
            let env = Arc::clone(env);
            Trial::test(name, move || {
                let started = std::time::Instant::now();
                let result = f(&env).map_err(Failed::from);
                eprintln!("{name}: {:.1}s", started.elapsed().as_secs_f64());
                result
            })
        })
        .collect()
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // Most trials wait on sockets and timers, not on the CPU: run them all
    // at once, whatever the core count.
    if args.test_threads.is_none() {
        args.test_threads = Some(32);
    }
    let base = std::env::temp_dir().join(format!("amqphb-relay-tests-{}", std::process::id()));
    let env = Arc::new(Env {
        base: base.clone(),
        shared: OnceLock::new(),
    });
    let guard = StopOnDrop(Arc::clone(&env));
    let together = libtest_mimic::run(&args, trials(&env, parallel_trials()));
    let alone = libtest_mimic::run(
        &Arguments {
            test_threads: Some(1),
            ..args.clone()
        },
        trials(&env, alone_trials()),
    );
    drop(guard);
    let failed = together.has_failed() || alone.has_failed();
    if base.exists() {
        if failed || std::env::var_os("AMQPHB_KEEP").is_some() {
            eprintln!("node work dirs and logs kept in {}", base.display());
        } else {
            let _ = std::fs::remove_dir_all(&base);
        }
    }
    if failed {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}
