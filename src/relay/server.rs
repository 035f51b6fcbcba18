//! Accepting connections and running the relay's event loop.
//!
//! One current-thread tokio runtime (the relay thread is the only thread it
//! needs), one accept task per listener, one task per relayed connection.

use crate::relay::connection::{self, ConnectionContext};
use crate::relay::{EventLog, Level, RelayListener, peer};
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
        // Only lookups of broker host names (resolve.rs) use blocking
        // threads; let them go soon so an idle child is back to one relay
        // thread.
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
    let next_id = Arc::new(AtomicU64::new(1));
    for (index, spec) in listeners.into_iter().enumerate() {
        let tls = match spec.tls {
            Ok(t) => t,
            Err(e) => {
                log.event(
                    index,
                    Level::Error,
                    &format!("{e}; amqps:// brokers of this listener will fail"),
                );
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
}

/// Decrements the listener's connection count when a connection ends,
/// however it ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What becomes of a new client.
enum Verdict {
    Accept,
    /// It closed its end before it could be checked (nothing to refuse).
    Gone,
    Refuse(String),
}

/// True when the client already closed its end without sending anything:
/// a non-blocking peek sees the end of the stream (or a reset). Its socket
/// is then gone from every process, so the peer check could not find it.
fn closed_already(stream: &tokio::net::TcpStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut byte = [0u8; 1];
    matches!(
        recv(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ),
        Ok(0) | Err(nix::errno::Errno::ECONNRESET)
    )
}

impl Acceptor {
    /// Whether a new client may use the relay.
    fn verdict(
        &self,
        stream: &tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
    ) -> Verdict {
        match peer::client_is_this_process(peer, local) {
            Ok(true) => {}
            Ok(false) if closed_already(stream) => return Verdict::Gone,
            Ok(false) => {
                return Verdict::Refuse(
                    "its socket is not held by this process (only this httpd child's app may use its relay)".to_string(),
                );
            }
            Err(e) => {
                return Verdict::Refuse(format!(
                    "cannot tell which process holds its socket ({e})"
                ));
            }
        }
        let active = self.active.load(Ordering::Relaxed);
        let max = self.settings.max_connections as usize;
        if active >= max {
            return Verdict::Refuse(format!(
                "{active} connections already relayed (AMQPHeartbeatMaxConnections {max})"
            ));
        }
        Verdict::Accept
    }

    /// Close a refused client with a FIN rather than a reset (what it sent
    /// is read and dropped briefly), so it sees a plain end of stream.
    fn refuse(&self, mut stream: tokio::net::TcpStream) {
        self.tracker.spawn(async move {
            let deadline = std::time::Instant::now() + connection::CLOSE_TIMEOUT;
            connection::finish_client(&mut stream, Default::default(), None, deadline).await;
        });
    }

    async fn run(self, mut shutdown: watch::Receiver<Option<Duration>>) {
        let local = match self.listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                self.log.event(
                    self.index,
                    Level::Error,
                    &format!("listener has no address: {e}"),
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
                    self.log.event(
                        self.index,
                        Level::Error,
                        &format!("accept on {local} failed: {e}"),
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.verdict(&stream, peer, local) {
                Verdict::Accept => {}
                Verdict::Gone => {
                    self.log.event(
                        self.index,
                        Level::Info,
                        &format!("client {peer} closed its connection before it was accepted"),
                    );
                    continue;
                }
                Verdict::Refuse(reason) => {
                    self.log.event(
                        self.index,
                        Level::Warn,
                        &format!("refused {peer}: {reason}"),
                    );
                    self.refuse(stream);
                    continue;
                }
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
            };
            let stop = shutdown.clone();
            self.tracker.spawn(async move {
                connection::serve(stream, peer, ctx, stop).await;
                drop(guard);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::test_support::{Collect, listener_to_nowhere};

    /// A client that connects and closes at once is gone before the relay
    /// checks whose it is: that is an early close (info), not a refusal of
    /// another process (warn).
    #[test]
    fn a_client_that_closed_at_once_is_not_a_refusal() {
        let listener = listener_to_nowhere();
        let addr = listener.listener.local_addr().unwrap();
        // Connected and closed while nobody accepts yet: the relay finds it
        // in the backlog, its socket already gone from this process.
        drop(std::net::TcpStream::connect(addr).unwrap());
        let collect = Collect::new();
        let log: Arc<dyn EventLog> = collect.clone();
        let shutdown = Shutdown::new();
        let thread = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || run(vec![listener], shutdown, log))
        };
        let (level, _) = collect.wait_for(
            "closed its connection before it was accepted",
            Duration::from_secs(5),
        );
        shutdown.trigger(Duration::from_millis(100));
        thread.join().unwrap().unwrap();
        assert_eq!(level, Level::Info);
        assert!(
            !collect.events().iter().any(|(l, _)| *l <= Level::Warn),
            "{:?}",
            collect.events()
        );
    }
}
