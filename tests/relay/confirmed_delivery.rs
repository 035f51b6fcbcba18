//! Publisher confirms across broker faults. A client publishes persistent
//! messages through the relay without pause, with confirms, while its
//! broker is frozen, killed or restarted; the relay has two brokers, so the
//! next connection goes to the second while the first is down. What the
//! client sees, and how soon, is checked for each fault, and at the end
//! every message a broker confirmed must be in that broker's queue: 0 of N
//! confirmed messages lost.
//!
//! The two nodes are not clustered. A cluster would test RabbitMQ's own
//! replication; what the relay owes is the failover to the second address
//! and an exact relay of confirms, which two independent nodes show.

use crate::Env;
use crate::support::amqp::{Client, Ending, Tuning, body, method};
use crate::support::rabbit::Node;
use crate::support::relay::{Relay, Settings};
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, connection};
use mod_amqp_heartbeat::config::Directive;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const INTERVAL: u16 = 2;
/// Long enough for a broker just resumed (SIGCONT) or restarted to send
/// its Start on a loaded machine: a phase that expects broker 1 must not
/// find the relay moved on to broker 2.
const CONNECT_TIMEOUT: u64 = 4;
const QUEUE: &str = "confirmed-delivery";
/// Unconfirmed publishes a client keeps in flight.
const WINDOW: usize = 32;
/// One publish per this much time at most: enough traffic that every fault
/// hits messages in flight, few enough that the queues drain in seconds.
const PACE: Duration = Duration::from_millis(2);
const BODY_LEN: usize = 512;
/// Confirms a publisher collects before the fault is injected.
const BEFORE_FAULT: u64 = 150;
/// Message indices of phase n start at n * PHASE_STRIDE, so an index says
/// which publisher sent it.
const PHASE_STRIDE: u64 = 1_000_000;

/// How a publisher's connection ended.
#[derive(Debug)]
enum End {
    /// Connection.Close from the relay (or the broker through it).
    Closed {
        code: u16,
        text: String,
        at: Instant,
    },
    /// The socket ended without a Connection.Close.
    Socket { ending: Ending, at: Instant },
    /// The test asked it to stop; it closed with Connection.Close 200.
    Stopped,
}

/// What one publishing connection did.
struct Outcome {
    published: u64,
    confirmed: BTreeSet<u64>,
    nacked: BTreeSet<u64>,
    end: End,
}

/// A client publishing through the relay on its own thread.
struct Publisher {
    client_port: u16,
    confirmed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Outcome, String>>,
}

impl Publisher {
    /// Open a connection through the relay (the relay picks the broker),
    /// declare the durable queue, select confirms, then publish until the
    /// connection ends or `finish` is called.
    fn start(addr: SocketAddr, phase: u64) -> Result<Publisher, String> {
        let mut client = Client::open(addr, Tuning::heartbeat(0))?;
        client.declare_durable_queue(1, QUEUE)?;
        client.confirm_select(1)?;
        let client_port = client.local_port();
        let confirmed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (confirmed, stop) = (Arc::clone(&confirmed), Arc::clone(&stop));
            std::thread::spawn(move || publish(client, phase * PHASE_STRIDE, &confirmed, &stop))
        };
        Ok(Publisher {
            client_port,
            confirmed,
            stop,
            thread,
        })
    }

    fn wait_confirms(&self, n: u64, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.confirmed.load(Ordering::SeqCst) < n {
            if self.thread.is_finished() || Instant::now() > deadline {
                return Err(format!(
                    "{what}: only {} of {n} publishes confirmed",
                    self.confirmed.load(Ordering::SeqCst)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Wait for the connection to end by itself (a fault).
    fn join(self, what: &str) -> Result<Outcome, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.thread.is_finished() {
            if Instant::now() > deadline {
                self.stop.store(true, Ordering::SeqCst);
                return Err(format!(
                    "{what}: the client's connection did not end in 30 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.thread
            .join()
            .map_err(|_| format!("{what}: the publisher thread panicked"))?
    }

    /// Stop publishing, wait for the outstanding confirms, close.
    fn finish(self, what: &str) -> Result<Outcome, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.join(what)
    }
}

fn publish(
    mut client: Client,
    first_index: u64,
    confirmed_count: &AtomicU64,
    stop: &AtomicBool,
) -> Result<Outcome, String> {
    // Delivery tag t carries message first_index + t.
    let mut next_tag = 1u64;
    let mut unconfirmed = BTreeSet::new();
    let mut confirmed = BTreeSet::new();
    let mut nacked = BTreeSet::new();
    let mut last_publish = Instant::now() - PACE;
    let mut write_failed = false;
    let end = loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && unconfirmed.is_empty() {
            client.close()?;
            break End::Stopped;
        }
        if !stopping
            && !write_failed
            && unconfirmed.len() < WINDOW
            && last_publish.elapsed() >= PACE
        {
            let index = first_index + next_tag;
            match client.publish_persistent(1, QUEUE, &body(index, BODY_LEN)) {
                Ok(()) => {
                    unconfirmed.insert(next_tag);
                    next_tag += 1;
                    last_publish = Instant::now();
                }
                // The relay closed; what it said is still to be read.
                Err(_) => write_failed = true,
            }
        }
        let frame = match client.read_frame_until(Instant::now() + Duration::from_millis(1))? {
            Ok(received) => received.frame,
            Err(Ending::Timeout) => continue,
            Err(ending) => {
                break End::Socket {
                    ending,
                    at: Instant::now(),
                };
            }
        };
        match frame {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
                let settled = settle(&mut unconfirmed, ack.delivery_tag, ack.multiple);
                confirmed_count.fetch_add(settled.len() as u64, Ordering::SeqCst);
                confirmed.extend(settled.into_iter().map(|t| first_index + t));
            }
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(nack))) => {
                let settled = settle(&mut unconfirmed, nack.delivery_tag, nack.multiple);
                nacked.extend(settled.into_iter().map(|t| first_index + t));
            }
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                let ok = method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                // The relay may have shut its side already.
                let _ = client.send_raw(&ok);
                break End::Closed {
                    code: close.reply_code,
                    text: close.reply_text.to_string(),
                    at: Instant::now(),
                };
            }
            AMQPFrame::Heartbeat => {}
            other => return Err(format!("unexpected frame while publishing: {other:?}")),
        }
    };
    Ok(Outcome {
        published: next_tag - 1,
        confirmed,
        nacked,
        end,
    })
}

/// Remove and return the tags an Ack or Nack settles.
fn settle(unconfirmed: &mut BTreeSet<u64>, tag: u64, multiple: bool) -> Vec<u64> {
    if multiple {
        let rest = unconfirmed.split_off(&(tag + 1));
        std::mem::replace(unconfirmed, rest).into_iter().collect()
    } else {
        unconfirmed.take(&tag).into_iter().collect()
    }
}

/// The broker the relay dialled for this client: 1 or 2.
fn broker_used(relay: &Relay, client_port: u16) -> Result<usize, String> {
    let line = relay.log.wait_for(
        &[&format!("client 127.0.0.1:{client_port} relayed to")],
        Duration::from_secs(5),
    )?;
    ["broker 1 of 2", "broker 2 of 2"]
        .iter()
        .position(|b| line.contains(b))
        .map(|i| i + 1)
        .ok_or_else(|| format!("which broker? {line}"))
}

/// Every message index in the queue of `node`, read directly (not through
/// the relay).
fn queued_indices(node: &Node) -> Result<Vec<u64>, String> {
    let mut c = Client::open(node.addr(), Tuning::default())?;
    let count = c.declare_durable_queue(1, QUEUE)?;
    c.qos(1, 1000)?;
    c.consume(1, QUEUE, true)?;
    let mut indices = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let m = c.next_delivery(1, Duration::from_secs(10))?;
        let head: [u8; 8] = m
            .body
            .get(..8)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("a message of {} bytes has no index", m.body.len()))?;
        indices.push(u64::from_be_bytes(head));
    }
    c.close()?;
    Ok(indices)
}

/// One step of the scenario, for the report and the final accounting.
struct Phase {
    number: u64,
    name: &'static str,
    broker: usize,
    outcome: Outcome,
}

fn expect_close(
    phase: &str,
    outcome: &Outcome,
    fault_at: Instant,
    within: Duration,
    text_has: &str,
) -> Result<Duration, String> {
    match &outcome.end {
        End::Closed { code, text, at } => {
            let took = at.saturating_duration_since(fault_at);
            ensure!(
                *code == 320 && text.contains(text_has),
                "{phase}: the client got Connection.Close {code} '{text}', expected 320 mentioning '{text_has}'"
            );
            ensure!(
                took <= within,
                "{phase}: Connection.Close 320 came {took:.2?} after the fault, bound {within:?}"
            );
            eprintln!(
                "{phase}: Close 320 after {took:.2?} ('{text}'); {} published, {} confirmed",
                outcome.published,
                outcome.confirmed.len()
            );
            Ok(took)
        }
        End::Socket { ending, at } => Err(format!(
            "{phase}: the client's socket ended ({ending:?}) {:.2?} after the fault, without a Connection.Close",
            at.saturating_duration_since(fault_at)
        )),
        End::Stopped => Err(format!(
            "{phase}: the connection outlived the fault (the test closed it)"
        )),
    }
}

/// A publisher through the relay that was relayed to `broker` and has
/// collected the confirms to go on with.
fn publishing_on(
    relay: &Relay,
    phase: u64,
    name: &str,
    broker: usize,
) -> Result<Publisher, String> {
    let p = Publisher::start(relay.addr, phase)?;
    let used = broker_used(relay, p.client_port)?;
    ensure!(
        used == broker,
        "{name}: the relay dialled broker {used}, expected broker {broker}"
    );
    p.wait_confirms(BEFORE_FAULT, name)?;
    Ok(p)
}

/// A publisher that runs undisturbed on the broker it is given.
fn undisturbed(
    relay: &Relay,
    phase: u64,
    name: &'static str,
    broker: usize,
) -> Result<Phase, String> {
    let outcome = publishing_on(relay, phase, name, broker)?.finish(name)?;
    ensure!(
        matches!(outcome.end, End::Stopped),
        "{name}: the connection ended with {:?}",
        outcome.end
    );
    Ok(Phase {
        number: phase,
        name,
        broker,
        outcome,
    })
}

/// Start publishing on broker 1, wait for some confirms, inject `fault`,
/// and return what the client saw and when the fault began.
fn faulted(
    relay: &Relay,
    phase: u64,
    name: &'static str,
    fault: impl FnOnce() -> Result<(), String>,
) -> Result<(Phase, Instant), String> {
    let p = publishing_on(relay, phase, name, 1)?;
    let fault_at = Instant::now();
    fault()?;
    let outcome = p.join(name)?;
    Ok((
        Phase {
            number: phase,
            name,
            broker: 1,
            outcome,
        },
        fault_at,
    ))
}

/// Broker 1 frozen, killed and restarted under a publishing client, with
/// broker 2 behind it; then 0 confirmed messages missing from the queues.
pub fn confirmed_messages_survive_broker_faults(env: &Env) -> Result<(), String> {
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(|| env.own_node("confirms-1"));
        let b = s.spawn(|| env.own_node("confirms-2"));
        (
            a.join().unwrap_or_else(|_| Err("start panicked".into())),
            b.join().unwrap_or_else(|_| Err("start panicked".into())),
        )
    });
    let (first, second) = (first?, second?);
    let relay = Relay::start(
        "confirms",
        Settings::new(&[&first.url(), &second.url()])
            .interval(INTERVAL)
            .set(Directive::ConnectTimeout, &CONNECT_TIMEOUT.to_string())
            .build(),
    )?;
    let nodes = [&first, &second];
    relay.explain((|| {
        let mut phases = Vec::new();

        let (frozen, at) = faulted(&relay, 1, "broker 1 frozen (SIGSTOP)", || first.sigstop())?;
        let bound = Duration::from_secs(2 * u64::from(INTERVAL) + 1);
        expect_close(frozen.name, &frozen.outcome, at, bound, "heartbeat")?;
        phases.push(frozen);
        // Broker 1 takes the TCP connection but says nothing: the connect
        // timeout moves the relay on to broker 2.
        phases.push(undisturbed(&relay, 2, "broker 1 still frozen", 2)?);
        first.sigcont()?;

        let (killed, at) = faulted(&relay, 3, "broker 1 killed (SIGKILL)", || first.kill())?;
        // Seen on the socket's end at once, not by heartbeats (at least
        // 2 x INTERVAL); the rest is room for a loaded machine, where a
        // killed beam's sockets close only once its last thread is gone
        // (one in fsync for a persistent publish holds them).
        expect_close(killed.name, &killed.outcome, at, Duration::from_secs(3), "")?;
        phases.push(killed);
        phases.push(undisturbed(&relay, 4, "broker 1 dead", 2)?);

        first.restart()?;
        let (restarted, at) = faulted(&relay, 5, "broker 1 restarted (orderly)", || {
            first.restart().map(drop)
        })?;
        // RabbitMQ says why: CONNECTION_FORCED ... reason 'shutdown'.
        expect_close(
            restarted.name,
            &restarted.outcome,
            at,
            // Includes `rabbitmqctl shutdown`'s own start (an Erlang VM).
            Duration::from_secs(30),
            "shutdown",
        )?;
        phases.push(restarted);
        phases.push(undisturbed(&relay, 6, "broker 1 back", 1)?);

        account(&phases, &nodes)
    })())
}

/// Every confirmed message is in the queue of the broker that confirmed it.
fn account(phases: &[Phase], nodes: &[&Node; 2]) -> Result<(), String> {
    let mut missing = Vec::new();
    let mut report = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let queued = queued_indices(node)?;
        let present: BTreeSet<u64> = queued.iter().copied().collect();
        let (mut confirmed, mut published, mut unconfirmed_kept) = (0, 0, 0);
        for phase in phases.iter().filter(|p| p.broker == n + 1) {
            let o = &phase.outcome;
            published += o.published;
            confirmed += o.confirmed.len();
            ensure!(
                o.nacked.is_empty(),
                "{}: the broker nacked {} publishes",
                phase.name,
                o.nacked.len()
            );
            for index in &o.confirmed {
                if !present.contains(index) {
                    missing.push((phase.name, *index));
                }
            }
            unconfirmed_kept += present
                .iter()
                .filter(|i| *i / PHASE_STRIDE == phase.number && !o.confirmed.contains(i))
                .count();
        }
        report.push(format!(
            "broker {}: {published} published, {confirmed} confirmed, {} in the queue \
             ({unconfirmed_kept} of them never confirmed, {} duplicates)",
            n + 1,
            queued.len(),
            queued.len() - present.len()
        ));
    }
    let confirmed: usize = phases.iter().map(|p| p.outcome.confirmed.len()).sum();
    eprintln!(
        "confirmed delivery: {} of {confirmed} confirmed messages lost; {}",
        missing.len(),
        report.join("; ")
    );
    ensure!(
        missing.is_empty(),
        "{} confirmed messages are not in the queue, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    Ok(())
}
