//! The relay's life in one httpd child: `child_init` binds the listeners,
//! publishes the URLs and starts the thread; a cleanup on the child pool,
//! registered by a second, last `child_init`, stops it; `fixups` copies the
//! URLs into each request's environment. [`start`] is shared with the
//! mod_wsgi daemon entry point (`daemon.rs`).

use super::bindings::{
    APLOG_DEBUG, APLOG_ERR, APLOG_INFO, APLOG_NOTICE, APLOG_WARNING, DECLINED, apr_pool_t,
    apr_table_set, request_rec, server_rec,
};
use super::check::describe;
use super::ffi::{Server, boundary, c_string, pool_owned};
use super::status;
use super::wsgi_routing::{Routing, config_tree, noted_daemon_group};
use crate::config::{EnvExport, RelaySettings, published_url};
use crate::log_gate::LogGate;
use crate::relay::{EventLog, Level, RelayListener};
use crate::relay_thread::{RelayThread, StopHandle, StopOutcome};
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, c_int};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long the relay may take to close its upstreams when the child exits
/// (the child's whole exit must stay under a second).
const STOP_GRACE: Duration = Duration::from_millis(900);

/// How long requests keep their relayed connections once httpd stops a
/// child ungracefully (see [`amqphb_child_stopping`]): time to finish a
/// publish and its confirm, as a mod_wsgi daemon's running requests get,
/// and well inside httpd's SIGKILL at 9 s.
const UNGRACEFUL_HOLD: Duration = Duration::from_secs(2);

/// How long a timed-out stop waits for a relay log call in progress before
/// the child goes on freeing its pools (a log line takes microseconds; a
/// piped error log whose reader stalls could take longer).
const LOG_DRAIN: Duration = Duration::from_millis(100);

/// What each server publishes, (NAME, URL) pairs keyed by [`Server::key`].
/// Written once in child_init, then only read, from any request thread.
static PUBLISHED: OnceLock<HashMap<usize, Vec<(CString, CString)>>> = OnceLock::new();

/// The servers ([`Server::key`]) whose mod_wsgi requests go to daemon
/// processes: their requests get no URL from this process (see
/// wsgi_routing.rs).
static DAEMON_ROUTED: OnceLock<HashSet<usize>> = OnceLock::new();

/// The (NAME, URL) pairs this process published in its environment, once
/// [`start`] ran here.
static ENVIRONMENT: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// The started relay, from the first child_init to the last one, which
/// hands it to the child pool (or from [`start`] to the daemon entry).
static STARTED: Mutex<Option<ChildRelay>> = Mutex::new(None);

/// How this process's relay is stopped early (see
/// [`amqphb_child_stopping`]), with the pid that started it (a process
/// forked from the child without exec has no relay thread to stop) and
/// the main server, to log to.
static EARLY_STOP: OnceLock<(u32, StopHandle, Server)> = OnceLock::new();

/// `child_stopping` (httpd 2.4.49 and later; the shim calls it under the
/// threaded MPMs only): the MPM is about to stop this child. On an
/// ungraceful stop (`apachectl -k stop`, `-k restart`), event and worker
/// close their clients' HTTP connections and then join the worker
/// threads, whatever those are doing; a request waiting on the broker (a
/// stalled node) would keep its thread until the app's own socket timeout,
/// past httpd's patience: SIGKILL at 9 s, with no Connection.Close
/// upstream. So after UNGRACEFUL_HOLD (requests that are only busy finish
/// their AMQP work meanwhile) the relay closes every relayed connection,
/// which tells the app why (Close 320 "httpd child is exiting") and ends
/// the wait, and refuses new ones. The pool cleanup still stops the relay
/// at once when the workers are joined sooner, and waits for the thread as
/// before. On a graceful stop requests keep their connections.
///
/// # Safety
/// `_pchild` is NULL or the child's live pool (unused).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_child_stopping(_pchild: *mut apr_pool_t, graceful: c_int) {
    let Some(&(pid, ref handle, main)) = EARLY_STOP.get() else {
        return;
    };
    boundary("child_stopping", main, (), || {
        if graceful != 0 || pid != std::process::id() {
            return;
        }
        handle.begin_after(UNGRACEFUL_HOLD, STOP_GRACE);
        main.log(
            APLOG_INFO,
            &format!(
                "child stopping (not gracefully): relayed connections close in {} s unless the requests end sooner",
                UNGRACEFUL_HOLD.as_secs()
            ),
        );
    });
}

/// `child_init`, registered APR_HOOK_REALLY_FIRST: runs in the new child,
/// after it dropped privileges and before it serves (or starts worker
/// threads, or lets another module start an interpreter).
///
/// # Safety
/// `pchild` is NULL or the child's live pool; `s` is NULL or the main
/// server_rec.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_child_init(_pchild: *mut apr_pool_t, s: *mut server_rec) {
    // SAFETY: NULL or the main server (contract above).
    let main = unsafe { Server::from_raw(s) };
    // A panic leaves the child without a relay but serving.
    boundary("child_init", main, (), || {
        if main.config().is_some_and(|c| !c.core.child_relay()) {
            main.log(
                APLOG_DEBUG,
                "AMQPHeartbeatChildRelay Off: no relay in this child",
            );
            return;
        }
        // SAFETY: httpd runs this hook first among the child_init hooks,
        // before the child starts any other thread.
        if unsafe { start(main, true, status::ProcessKind::HttpdChild) }.is_some() {
            note_daemon_routed(main);
        }
    });
}

/// Fill [`DAEMON_ROUTED`] for `fixups`, from httpd's configuration tree.
fn note_daemon_routed(main: Server) {
    let routing = Routing::from_tree(&config_tree());
    let routed = main
        .all()
        .into_iter()
        .filter(|s| s.config().is_some_and(|c| c.core.brokers.is_some()))
        .filter(|s| routing.routes(s.defined_at().filter(|_| s.is_virtual()).as_deref()))
        .map(|s| {
            s.log(
                APLOG_DEBUG,
                &format!(
                    "{}: mod_wsgi hands its requests to daemon processes (WSGIProcessGroup); no relay URL in their environment from this child",
                    describe(s)
                ),
            );
            s.key()
        })
        .collect();
    let _ = DAEMON_ROUTED.set(routed);
}

/// `child_init`, registered APR_HOOK_REALLY_LAST: attach the relay started
/// by [`amqphb_child_init`] to the child pool, so that it stops when the
/// child exits.
///
/// Why a second hook: a pool runs its cleanups last registered first, and
/// other modules register theirs in their own child_init. mod_wsgi's tears
/// down the Python interpreters, which aborts the child (SIGABRT in
/// Py_Finalize) when httpd stops it in the middle of a request. Registered
/// after every other child_init, the relay's cleanup runs before all of
/// theirs: the upstreams are closed with Connection.Close before anything
/// else of the child is taken apart.
///
/// # Safety
/// `pchild` is NULL or the child's live pool; `s` is NULL or the main
/// server_rec.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_child_init_last(pchild: *mut apr_pool_t, s: *mut server_rec) {
    // SAFETY: NULL or the main server (contract above).
    let main = unsafe { Server::from_raw(s) };
    boundary("child_init (last)", main, (), || {
        let Some(relay) = take_started() else {
            return;
        };
        // SAFETY: the child's pool (contract above). The relay is stopped
        // when the child pool is destroyed, i.e. when the child exits.
        if unsafe { pool_owned(pchild, relay) }.is_null() {
            main.log(
                APLOG_ERR,
                "no child pool to attach the relay to; relay stopped",
            );
        }
    });
}

/// `fixups`: the request's server publishes its relay URL(s) in
/// `subprocess_env` too (what CGI-style interfaces, mod_wsgi's environ and
/// PHP's `$_SERVER` read), unless mod_wsgi will ship the request to a
/// daemon process, which cannot use this child's relay. Always DECLINED.
///
/// # Safety
/// `r` is NULL or the live request being processed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_fixups(r: *mut request_rec) -> c_int {
    let declined = DECLINED as c_int;
    // SAFETY: NULL or the live request (contract above); only read here.
    let Some(request) = (unsafe { r.as_ref() }) else {
        return declined;
    };
    // SAFETY: r->server is one of httpd's server_recs.
    let server = unsafe { Server::from_raw(request.server) };
    boundary("fixups", server, declined, || {
        let Some(exports) = PUBLISHED.get().and_then(|p| p.get(&server.key())) else {
            return declined;
        };
        if request.subprocess_env.is_null()
            || DAEMON_ROUTED
                .get()
                .is_some_and(|r| r.contains(&server.key()))
            || noted_daemon_group(request)
        {
            return declined;
        }
        for (name, url) in exports {
            // SAFETY: subprocess_env is the request's live table (checked
            // non-NULL); apr_table_set copies both strings into its pool.
            unsafe { apr_table_set(request.subprocess_env, name.as_ptr(), url.as_ptr()) };
        }
        declined
    })
}

/// A server that names a broker, as child_init sees it.
struct RelayServer {
    server: Server,
    description: String,
    settings: RelaySettings,
    exports: Vec<EnvExport>,
}

/// One loopback listener, shared by the servers with equal settings.
struct Group {
    settings: Arc<RelaySettings>,
    /// `None` when binding failed (already logged).
    bound: Option<(RelayListener, SocketAddr)>,
    /// The first server using it: relay events about it are logged there.
    server: Server,
}

/// Body of child_init (and of the daemon entry point): bind, publish,
/// start the thread and leave it in [`STARTED`]. Returns `None` when no
/// server names a broker (nothing done), else the (NAME, URL) pairs put in
/// the process environment (empty when no listener could be bound).
///
/// `kind` labels the process on the status page (an httpd child or a
/// mod_wsgi daemon process).
///
/// # Safety
/// With `set_environment`, only while this process has a single thread (it
/// calls setenv). Once per process.
pub(super) unsafe fn start(
    main: Server,
    set_environment: bool,
    kind: status::ProcessKind,
) -> Option<Vec<(String, String)>> {
    let servers: Vec<RelayServer> = main
        .all()
        .into_iter()
        .filter_map(|server| {
            let config = &server.config()?.core;
            Some(RelayServer {
                server,
                description: describe(server),
                settings: config.relay_settings()?,
                exports: config.env_exports(),
            })
        })
        .collect();
    if servers.is_empty() {
        // No server names a broker: no thread, no environment.
        return None;
    }

    let mut groups: Vec<Group> = Vec::new();
    let mut published: HashMap<usize, Vec<(CString, CString)>> = HashMap::new();
    let mut environment: Vec<(String, String)> = Vec::new();
    for relay_server in &servers {
        let (group, first_on_listener) = match groups
            .iter()
            .position(|g| *g.settings == relay_server.settings)
        {
            Some(index) => (&groups[index], false),
            None => {
                groups.push(bind(relay_server));
                (&groups[groups.len() - 1], true)
            }
        };
        let Some((_, addr)) = &group.bound else {
            continue;
        };
        let urls = publish(relay_server, *addr, first_on_listener, &mut environment);
        published.insert(
            relay_server.server.key(),
            urls.iter()
                .map(|(name, url)| (c_string(name), c_string(url)))
                .collect(),
        );
    }

    for (name, url) in environment.iter().filter(|_| set_environment) {
        // SAFETY: setenv is only sound while no other thread may read or
        // write the environment. This hook runs first among child_init hooks
        // in a child that has a single thread: prefork never has more, event
        // starts its workers after child_init, no other module's child_init
        // has run yet, and the relay thread is started below, after this.
        // The daemon entry passes set_environment only when it counted one
        // thread in the process.
        unsafe { std::env::set_var(name, url) };
    }
    let _ = ENVIRONMENT.set(environment.clone());
    if PUBLISHED.set(published).is_err() {
        main.log(
            APLOG_WARNING,
            "child_init ran twice in this process; keeping the first relay URLs for requests",
        );
    }

    let mut listeners = Vec::new();
    let mut listener_servers = Vec::new();
    let mut listener_names = Vec::new();
    for group in groups {
        if let Some((listener, addr)) = group.bound {
            listeners.push(listener);
            listener_servers.push(group.server);
            listener_names.push((status::server_name(group.server), addr.port()));
        }
    }
    if listeners.is_empty() {
        return Some(environment);
    }
    let count = listeners.len();
    let gate = Arc::new(LogGate::new());
    let log = Arc::new(ApacheLog {
        servers: listener_servers,
        main,
        gate: Arc::clone(&gate),
    });
    let (log, status) = status::attach(&listener_names, log, kind);
    crate::relay::panic_guard::install_hook();
    match RelayThread::start(listeners, log) {
        Ok(thread) => {
            main.log(APLOG_INFO, &format!("relay thread started ({count} listener(s))"));
            if EARLY_STOP
                .set((std::process::id(), thread.stop_handle(), main))
                .is_err()
            {
                main.log(
                    APLOG_WARNING,
                    "a second relay started in this process; an ungraceful stop closes only the first one's connections early",
                );
            }
            let relay = ChildRelay {
                thread: Some(thread),
                pid: std::process::id(),
                main,
                gate,
                _status: status,
            };
            // Attached to the child pool by amqphb_child_init_last.
            *STARTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(relay);
        }
        Err(e) => main.log(
            APLOG_ERR,
            &format!("{e}; this child serves requests without a relay (connections to its URL are refused)"),
        ),
    }
    Some(environment)
}

/// What [`start`] published in this process, if it ran here.
pub(super) fn published_environment() -> Option<&'static [(String, String)]> {
    ENVIRONMENT.get().map(Vec::as_slice)
}

/// The relay [`start`] left behind, for its owner.
pub(super) fn take_started() -> Option<ChildRelay> {
    STARTED.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Bind the listener for `relay_server`'s settings; failure is logged and
/// leaves the servers using these settings without a relay in this child.
fn bind(relay_server: &RelayServer) -> Group {
    let settings = Arc::new(relay_server.settings.clone());
    let bound = RelayListener::bind_loopback(Arc::clone(&settings)).and_then(|l| {
        let addr = l.listener.local_addr()?;
        Ok((l, addr))
    });
    let bound = match bound {
        Ok(bound) => Some(bound),
        Err(e) => {
            relay_server.server.log(
                APLOG_ERR,
                &format!(
                    "cannot listen on 127.0.0.1 for {}: {e}; no relay for it in this child",
                    relay_server.description
                ),
            );
            None
        }
    };
    Group {
        settings,
        bound,
        server: relay_server.server,
    }
}

/// The (NAME, URL) pairs of one server; adds them to the process
/// environment list unless an earlier server already took the NAME. The
/// first server on a listener says so at notice; the others sharing it
/// (thousands of vhosts may inherit one broker) at debug, or every child
/// start would cost the error log a line per vhost.
fn publish(
    relay_server: &RelayServer,
    addr: SocketAddr,
    first_on_listener: bool,
    environment: &mut Vec<(String, String)>,
) -> Vec<(String, String)> {
    let Some(first_broker) = relay_server.settings.brokers.first() else {
        return Vec::new();
    };
    let urls: Vec<(String, String)> = relay_server
        .exports
        .iter()
        .map(|export| {
            (
                export.name.clone(),
                published_url(&export.scheme, addr, first_broker),
            )
        })
        .collect();
    let brokers: Vec<String> = relay_server
        .settings
        .brokers
        .iter()
        .map(ToString::to_string)
        .collect();
    let names: Vec<&str> = urls.iter().map(|(name, _)| name.as_str()).collect();
    relay_server.server.log(
        if first_on_listener {
            APLOG_NOTICE
        } else {
            APLOG_DEBUG
        },
        &format!(
            "relay listening on {addr} for {} -> {}, published as {}",
            relay_server.description,
            brokers.join(" "),
            names.join(", ")
        ),
    );
    for (name, url) in &urls {
        match environment.iter().find(|(n, _)| n == name) {
            // check_config allows this only for the same relay, so the URLs
            // can differ only in SCHEME; requests still get their own.
            Some((_, existing)) if existing != url => relay_server.server.log(
                APLOG_WARNING,
                &format!(
                    "{name} is published with another scheme by an earlier server; the process environment keeps the first"
                ),
            ),
            Some(_) => {}
            None => environment.push((name.clone(), url.clone())),
        }
    }
    urls
}

/// Relay events to the error log, on the server that owns the listener.
struct ApacheLog {
    /// By listener index, as given to the relay.
    servers: Vec<Server>,
    main: Server,
    /// Closed when the thread outlived its stop: the process is exiting
    /// and the log may be going away.
    gate: Arc<LogGate>,
}

impl EventLog for ApacheLog {
    fn event(&self, listener: usize, level: Level, message: &str) {
        let server = self.servers.get(listener).copied().unwrap_or(self.main);
        let level = match level {
            Level::Error => APLOG_ERR,
            Level::Warn => APLOG_WARNING,
            Level::Notice => APLOG_NOTICE,
            Level::Info => APLOG_INFO,
            Level::Debug => APLOG_DEBUG,
        };
        self.gate.pass(|| server.log(level, message));
    }
}

/// Owned by the child pool (or the daemon entry); dropping it stops the
/// relay.
pub(super) struct ChildRelay {
    thread: Option<RelayThread>,
    /// The process that started the thread. A process forked from the
    /// child without exec (Python multiprocessing) inherits the pool and
    /// its cleanup, but not the thread.
    pid: u32,
    main: Server,
    gate: Arc<LogGate>,
    /// Given back after the thread stopped (fields drop after `drop`).
    _status: Option<status::StatusSlot>,
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if std::process::id() != self.pid {
            // Nothing to stop or wait for here: the thread lives only in
            // the child. Its handle is left alone (no detach of a thread
            // this process does not have).
            std::mem::forget(thread);
            self.main.log(
                APLOG_DEBUG,
                &format!(
                    "exiting process forked from child {} without its relay thread; nothing to stop",
                    self.pid
                ),
            );
            return;
        }
        match thread.stop(STOP_GRACE) {
            StopOutcome::Clean => self.main.log(APLOG_NOTICE, "relay thread stopped cleanly"),
            StopOutcome::TimedOut => {
                // From here on the thread never logs: what it was logging
                // has finished (or LOG_DRAIN ran out, said below).
                let drained = self.gate.close(LOG_DRAIN);
                self.main.log(
                    APLOG_WARNING,
                    &format!(
                        "relay thread did not stop within {} ms; it ends with the child, its log muted{}",
                        STOP_GRACE.as_millis(),
                        if drained {
                            ""
                        } else {
                            " (one of its log calls was still running)"
                        }
                    ),
                );
            }
        }
    }
}
