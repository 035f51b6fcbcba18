//! Accepting connections and running the relay's event loop.
//!
//! One current-thread tokio runtime (the relay thread is the only thread it
//! needs), one accept task per listener, one task per relayed connection.

use crate::relay::closing;
use crate::relay::driver::{self, ConnectionContext};
use crate::relay::session::close_plan;
use crate::relay::session::events::{Event, Refusal};
use crate::relay::thread_timer::{Alarms, ThreadTimer};
use crate::relay::{EventLog, RelayListener, peer, upstream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Stop request shared between the relay thread and the thread that stops
/// it. Carries the grace period the relay has to close its upstreams.
#[derive(Clone)]
pub struct Shutdown {
    sender: Arc<watch::Sender<Option<Duration>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (sender, _) = watch::channel(None);
        Shutdown {
            sender: Arc::new(sender),
        }
    }

    pub fn trigger(&self, grace: Duration) {
        self.sender.send_replace(Some(grace));
    }

    pub fn is_triggered(&self) -> bool {
        self.sender.borrow().is_some()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Duration>> {
        self.sender.subscribe()
    }
}

/// Run the relay on `listeners` until `shutdown` is triggered; then every
/// connection closes its upstream with Connection.Close within the grace
/// period carried by the trigger.
pub fn run(
    listeners: Vec<RelayListener>,
    shutdown: Shutdown,
    log: Arc<dyn EventLog>,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Only DNS lookups of broker host names use blocking threads; let
        // them go soon so an idle child is back to one relay thread.
        .max_blocking_threads(2)
        .thread_keep_alive(Duration::from_secs(1))
        .thread_name("amqp-heartbeat-dns")
        .build()
        .map_err(|e| format!("cannot build the event loop: {e}"))?;
    runtime.block_on(serve_all(listeners, shutdown, log))
}

async fn serve_all(
    listeners: Vec<RelayListener>,
    shutdown: Shutdown,
    log: Arc<dyn EventLog>,
) -> Result<(), String> {
    let tracker = TaskTracker::new();
    // One timer for every connection of the thread (rule R14). Not in the
    // tracker: it never ends by itself and goes with the runtime.
    let (timer, alarms) =
        ThreadTimer::new().map_err(|e| format!("cannot create the relay's timer: {e}"))?;
    tokio::spawn(timer.run());
    let next_id = Arc::new(AtomicU64::new(1));
    for (index, spec) in listeners.into_iter().enumerate() {
        let tls = match upstream::tls_connector(&spec.settings) {
            Ok(t) => t,
            Err(e) => {
                log.record(index, &Event::TlsUnavailable { error: e });
                None
            }
        };
        let listener = tokio::net::TcpListener::from_std(spec.listener)
            .map_err(|e| format!("cannot use listening socket {index}: {e}"))?;
        let acceptor = Acceptor {
            index,
            listener,
            settings: spec.settings,
            tls,
            log: Arc::clone(&log),
            active: Arc::new(AtomicUsize::new(0)),
            next_id: Arc::clone(&next_id),
            tracker: tracker.clone(),
            alarms: alarms.clone(),
        };
        tracker.spawn(acceptor.run(shutdown.subscribe()));
    }
    let mut stop = shutdown.subscribe();
    let grace = match stop.wait_for(|v| v.is_some()).await {
        Ok(v) => v.unwrap_or(Duration::ZERO),
        Err(_) => Duration::ZERO,
    };
    tracker.close();
    // Connections close themselves within `grace`; a small margin covers
    // the last writes. Whatever is still running then is dropped with the
    // runtime.
    let _ = tokio::time::timeout(grace + Duration::from_millis(50), tracker.wait()).await;
    Ok(())
}

struct Acceptor {
    index: usize,
    listener: tokio::net::TcpListener,
    settings: Arc<crate::config::RelaySettings>,
    tls: Option<tokio_rustls::TlsConnector>,
    log: Arc<dyn EventLog>,
    active: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
    tracker: TaskTracker,
    alarms: Alarms,
}

/// Decrements the listener's connection count when a connection ends,
/// however it ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Acceptor {
    /// Why a new client may not use the relay, if it may not.
    fn refusal(&self, peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<Refusal> {
        match peer::client_is_this_process(peer, local) {
            Ok(true) => {}
            Ok(false) => return Some(Refusal::NotThisProcess),
            Err(e) => return Some(Refusal::OwnerUnknown(e.to_string())),
        }
        let active = self.active.load(Ordering::Relaxed);
        let max = self.settings.max_connections as usize;
        (active >= max).then_some(Refusal::TooMany { active, max })
    }

    /// Close a refused client with a FIN rather than a reset (what it sent
    /// is read and dropped briefly), so it sees a plain end of stream.
    fn refuse(&self, mut stream: tokio::net::TcpStream) {
        self.tracker.spawn(async move {
            let plan = close_plan::close_client_silently(std::time::Instant::now());
            closing::execute(plan, &mut stream, None).await;
        });
    }

    async fn run(self, mut shutdown: watch::Receiver<Option<Duration>>) {
        let local = match self.listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                self.log.record(
                    self.index,
                    &Event::ListenerUnusable {
                        error: e.to_string(),
                    },
                );
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                _ = shutdown.wait_for(|v| v.is_some()) => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    self.log.record(
                        self.index,
                        &Event::AcceptFailed {
                            local,
                            error: e.to_string(),
                        },
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Some(reason) = self.refusal(peer, local) {
                self.log
                    .record(self.index, &Event::Refused { peer, reason });
                self.refuse(stream);
                continue;
            }
            self.active.fetch_add(1, Ordering::Relaxed);
            let guard = ActiveGuard(Arc::clone(&self.active));
            let _ = stream.set_nodelay(true);
            let ctx = ConnectionContext {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                listener: self.index,
                settings: Arc::clone(&self.settings),
                tls: self.tls.clone(),
                log: Arc::clone(&self.log),
                alarms: self.alarms.clone(),
            };
            let stop = shutdown.clone();
            self.tracker.spawn(async move {
                driver::serve(stream, peer, ctx, stop).await;
                drop(guard);
            });
        }
    }
}
