//! The relay of a mod_wsgi daemon process (`WSGIDaemonProcess`).
//!
//! mod_wsgi forks its daemons from the httpd parent, so they never run
//! httpd's `child_init` and get no relay from [`super::child`]. They do
//! inherit the parsed configuration and this mapped module, so the project's
//! `apache/amqp_heartbeat_daemon.py`, run in the daemon by a
//! `WSGIImportScript` line, calls the two exported entry points below
//! through ctypes:
//!
//! - [`amqp_heartbeat_daemon_start`]: the same start as `child_init` (every
//!   server that names a broker, the same listeners, environment names and
//!   rules), then the published NAME=URL pairs for the script to copy into
//!   `os.environ`. Idempotent.
//! - [`amqp_heartbeat_daemon_stop`]: Connection.Close on every upstream and
//!   the thread stopped, within 900 ms. The script calls it from Python's
//!   `atexit`, which in a daemon runs after mod_wsgi has joined its request
//!   threads and before `Py_Finalize` tears the interpreter down. A C
//!   `atexit` handler calls it too, for the exits that skip Python's
//!   (mod_wsgi's shutdown-timeout reaper calls `exit(-1)`;
//!   `WSGIDestroyInterpreter Off`); the second call finds nothing to do.
//!
//! Both are safe to call in any process that has the module mapped: the
//! start reports a missing httpd configuration (`ap_server_conf` not set)
//! instead of using it, and the stop does nothing when nothing runs.

use super::bindings::{APLOG_INFO, APLOG_NOTICE, ap_server_conf};
use super::child::{ChildRelay, published_environment, start, take_started};
use super::ffi::{Server, boundary, c_string};
use super::status::ProcessKind;
use std::ffi::{CStr, CString, c_char, c_int};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// [`amqp_heartbeat_daemon_start`]: a relay runs in this process;
/// `*report` holds the published `NAME=URL` lines.
pub const DAEMON_STARTED: c_int = 0;
/// No server of the configuration names a broker: nothing was started
/// (logged once).
pub const DAEMON_NOT_CONFIGURED: c_int = 1;
/// Not started; `*report` says why.
pub const DAEMON_FAILED: c_int = -1;

/// What the daemon entry did in this process.
enum State {
    NotStarted,
    NotConfigured,
    /// `None`: the relay belongs to the child pool (an MPM child whose
    /// child_init started it), or it was stopped.
    Running(Option<ChildRelay>),
}

static STATE: Mutex<State> = Mutex::new(State::NotStarted);

/// The `NAME=URL` lines handed to the caller; set once, alive for the
/// process, so the pointer given out stays valid.
static REPORT: OnceLock<CString> = OnceLock::new();

/// Start this process's relay from the configuration it inherited and
/// point `*report` (when not NULL) at a NUL-terminated text owned by the
/// module: the `NAME=URL` lines on [`DAEMON_STARTED`], the reason on
/// [`DAEMON_FAILED`], empty on [`DAEMON_NOT_CONFIGURED`].
///
/// # Safety
/// `report` is NULL or points to writable storage for one pointer. Call it
/// from the process's only thread when possible (mod_wsgi runs
/// `WSGIImportScript` before it starts the daemon's threads): only then is
/// the C environment set here; otherwise the caller sets it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqp_heartbeat_daemon_start(report: *mut *const c_char) -> c_int {
    let (code, text) = boundary(
        "amqp_heartbeat_daemon_start",
        Server::NONE,
        failed(c"internal error (see the error log)"),
        start_once,
    );
    if !report.is_null() {
        // SAFETY: writable per the contract above; `text` is 'static.
        unsafe { *report = text.as_ptr() };
    }
    code
}

/// Stop the relay started by [`amqp_heartbeat_daemon_start`]: Connection.Close
/// on every upstream, at most 900 ms. Returns 1 when it stopped a relay, 0
/// when there was none (never started, or already stopped).
#[unsafe(no_mangle)]
pub extern "C" fn amqp_heartbeat_daemon_stop() -> c_int {
    boundary("amqp_heartbeat_daemon_stop", Server::NONE, 0, || {
        // Held while the relay stops: a concurrent stop (exit() from another
        // thread) waits for the closes instead of ending the process under
        // them.
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *state {
            State::Running(relay) => match relay.take() {
                Some(relay) => {
                    drop(relay);
                    1
                }
                None => 0,
            },
            _ => 0,
        }
    })
}

fn failed(reason: &'static CStr) -> (c_int, &'static CStr) {
    (DAEMON_FAILED, reason)
}

fn start_once() -> (c_int, &'static CStr) {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    match &*state {
        State::Running(_) => return (DAEMON_STARTED, report()),
        State::NotConfigured => return (DAEMON_NOT_CONFIGURED, c""),
        State::NotStarted => {}
    }
    if let Some(environment) = published_environment() {
        // An httpd child whose child_init already started its relay.
        *state = State::Running(None);
        return (DAEMON_STARTED, set_report(environment));
    }
    let Some(main) = main_server() else {
        return failed(c"no httpd configuration in this process (ap_server_conf is not set): call it in a mod_wsgi daemon process");
    };
    if main.config().is_none() {
        return failed(c"mod_amqp_heartbeat has no configuration in this process (is it loaded by this httpd?)");
    }
    let began = Instant::now();
    let single_threaded = thread_count() == Some(1);
    // SAFETY: start sets the environment only when told so, and it is told
    // so only when this process has one thread (counted just now, by the
    // thread that runs this; nothing else can start one meanwhile). It
    // runs once: STATE is held and moves on from NotStarted below.
    let Some(environment) = (unsafe { start(main, single_threaded, ProcessKind::WsgiDaemon) })
    else {
        main.log(
            APLOG_NOTICE,
            &format!(
                "mod_wsgi daemon process {}: no server names an AMQPHeartbeatBroker; no relay started",
                std::process::id()
            ),
        );
        *state = State::NotConfigured;
        return (DAEMON_NOT_CONFIGURED, c"");
    };
    let relay = take_started();
    let running = relay.is_some();
    *state = State::Running(relay);
    if running {
        register_exit_stop(main);
    }
    main.log(
        APLOG_INFO,
        &format!(
            "mod_wsgi daemon process {}: relay {} in {} us{}",
            std::process::id(),
            if running { "started" } else { "not running" },
            began.elapsed().as_micros(),
            if single_threaded {
                ""
            } else {
                " (several threads: environment left to the caller)"
            }
        ),
    );
    (DAEMON_STARTED, set_report(&environment))
}

fn set_report(environment: &[(String, String)]) -> &'static CStr {
    let lines: String = environment
        .iter()
        .map(|(name, url)| format!("{name}={url}\n"))
        .collect();
    REPORT.get_or_init(|| c_string(&lines)).as_c_str()
}

fn report() -> &'static CStr {
    REPORT.get().map_or(c"", CString::as_c_str)
}

/// httpd's main server; none before httpd has read its configuration.
fn main_server() -> Option<Server> {
    // SAFETY: ap_server_conf is httpd's `server_rec *` global, set once the
    // configuration is read and never changed in a child or daemon process
    // (read by value here).
    let main = unsafe { ap_server_conf };
    if main.is_null() {
        return None;
    }
    // SAFETY: the main server_rec of the configuration this process runs.
    Some(unsafe { Server::from_raw(main) })
}

fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(Iterator::count)
}

/// Stop the relay in C `exit()` too, once per process.
fn register_exit_stop(main: Server) {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: at_exit is a plain extern "C" fn of this module, which
        // stays mapped until the process ends (httpd never unloads it in a
        // daemon process).
        if unsafe { libc::atexit(at_exit) } != 0 {
            main.log(
                APLOG_NOTICE,
                "cannot register the relay's stop with atexit; it stops with the interpreter only",
            );
        }
    });
}

extern "C" fn at_exit() {
    amqp_heartbeat_daemon_stop();
}
