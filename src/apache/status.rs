//! The status page's httpd side: the shared table of relay slots made in
//! the parent at post_config, a slot claimed by each relay process in the
//! shared start path (child_init), the `amqp-heartbeat-status` handler
//! and mod_status's `status_hook` (the C shim registers both).
//!
//! One table serves the parent's whole life: a graceful restart (post_config
//! again, in a freshly reloaded copy of this module, whose statics start
//! empty) finds it in the process pool (see the C shim) and keeps it, so children of the old generation, still finishing
//! their requests, stay listed next to the new ones; only a higher process
//! limit makes a new, larger table (old children then write the old one
//! and drop off the page). Slots are claimed by pid with a CAS, and freed
//! when their process exits, or found dead (pid gone, or reused: the
//! process start time differs) when a page is rendered or a slot claimed.

use super::bindings::{
    OK, amqphb_respond, amqphb_table_keep, amqphb_table_kept, request_rec, server_rec,
};
use super::ffi::{Server, boundary, c_str};
use crate::relay::EventLog;
use crate::status::counting::{CountingLog, unix_ms_now};
use crate::status::layout::{self, KIND_DAEMON, KIND_HTTPD_CHILD, Owner, Slot, Table};
use crate::status::{render, view};
use std::ffi::{c_char, c_int};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;

/// Slots beyond the MPM's process limit, for relays in mod_wsgi daemon
/// processes (forked by the parent too, outside the scoreboard).
const DAEMON_SLOTS: usize = 64;

/// The table, made by the parent, inherited by every child.
static TABLE: Mutex<Option<Table<'static>>> = Mutex::new(None);

fn table() -> Option<Table<'static>> {
    *TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

// amqphb_table_kept, amqphb_table_keep and amqphb_respond are defined in the
// C shim and declared in apache/amqphb.h (bindgen takes them from there).

/// `post_config`, in the parent (and once before it detaches): make the
/// table for `hard_limit` processes plus daemon slots, unless the one
/// already made is large enough. Never fails the start: without a table,
/// the page says so.
///
/// # Safety
/// `s` is NULL or the main server_rec; called while the process has one
/// thread (httpd's configuration phase).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_post_config(s: *mut server_rec, hard_limit: c_int) -> c_int {
    // SAFETY: NULL or the main server (contract above).
    let main = unsafe { Server::from_raw(s) };
    boundary("post_config", main, OK as c_int, || {
        let any_relay = main
            .all()
            .iter()
            .any(|s| s.config().and_then(|c| c.core.relay_settings()).is_some());
        if !any_relay {
            return OK as c_int;
        }
        let wanted = usize::try_from(hard_limit).unwrap_or(0).max(1) + DAEMON_SLOTS;
        let mut current = TABLE.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept_slots = 0usize;
        // SAFETY: s is the live main server (contract above); the shim
        // reads its process pool's userdata.
        let kept = unsafe { amqphb_table_kept(s, layout::TABLE_LAYOUT, &mut kept_slots) };
        if !kept.is_null() && kept_slots >= wanted {
            // SAFETY: kept is a table of kept_slots slots that an earlier
            // generation of this parent made below and never unmapped,
            // with this build's layout (the shim gives back only a table
            // kept with the same TABLE_LAYOUT).
            *current = Some(unsafe { table_at(kept.cast(), kept_slots) });
            main.log(
                super::bindings::APLOG_DEBUG,
                &format!("status table of {kept_slots} slots kept from the previous generation"),
            );
            return OK as c_int;
        }
        let len = Table::bytes(wanted);
        match crate::os::shm::shared_zeroed(len) {
            Ok(ptr) => {
                // SAFETY: a fresh mapping of Table::bytes(wanted) bytes,
                // never unmapped.
                *current = Some(unsafe { table_at(ptr.as_ptr(), wanted) });
                main.log(
                    super::bindings::APLOG_DEBUG,
                    &format!("status table of {wanted} slots ({len} bytes) made"),
                );
                // SAFETY: as above; the shim stores the address in the
                // process pool (a bigger table later replaces it there).
                if unsafe {
                    amqphb_table_keep(s, ptr.as_ptr().cast(), wanted, layout::TABLE_LAYOUT)
                } == 0
                {
                    main.log(
                        super::bindings::APLOG_WARNING,
                        "cannot keep the status table across restarts; a restart makes a new one",
                    );
                }
            }
            Err(e) => main.log(
                super::bindings::APLOG_ERR,
                &format!("cannot make the status table ({len} bytes): {e}; amqp-heartbeat-status shows nothing"),
            ),
        }
        OK as c_int
    })
}

/// The table of `slots` slots at `base`: the owners first (16 bytes
/// each), the slots right after them, 8-aligned as Slot needs.
///
/// # Safety
/// `base` is a page-aligned shared mapping of at least
/// `Table::bytes(slots)` bytes, zero-filled when made (valid Owners and
/// Slots: atomics only), never unmapped (so 'static) and only ever
/// accessed through the atomics.
unsafe fn table_at(base: *mut u8, slots: usize) -> Table<'static> {
    let owners = base.cast::<Owner>();
    // SAFETY: both ranges lie inside the mapping (contract above) and do
    // not overlap; Owner and Slot are valid for any bytes written only
    // through their atomics.
    unsafe {
        Table {
            owners: std::slice::from_raw_parts(owners, slots),
            slots: std::slice::from_raw_parts(owners.add(slots).cast::<Slot>(), slots),
        }
    }
}

/// This process's slot; given back when dropped (the process exits).
pub(super) struct StatusSlot {
    table: Table<'static>,
    index: usize,
    pid: u32,
}

impl Drop for StatusSlot {
    fn drop(&mut self) {
        // A process forked from the relay's without exec (Python
        // multiprocessing) inherits this value and drops it when it
        // exits; the slot is still the running relay's.
        if std::process::id() == self.pid {
            view::release(self.table, self.index, self.pid);
        }
    }
}

/// Claim a slot for this relay process (listeners: server name and port,
/// in the relay's order) and wrap `log` so it counts into it. Without a
/// table or a free slot, `log` is returned as is.
/// What kind of process a relay runs in, as the status page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ProcessKind {
    HttpdChild,
    WsgiDaemon,
}

pub(super) fn attach(
    listeners: &[(String, u16)],
    log: Arc<dyn EventLog>,
    kind: ProcessKind,
) -> (Arc<dyn EventLog>, Option<StatusSlot>) {
    let Some(table) = table() else {
        return (log, None);
    };
    let pid = std::process::id();
    let start = view::process_start(pid).map_or(0, |(start, _)| start);
    let kind = match kind {
        ProcessKind::HttpdChild => KIND_HTTPD_CHILD,
        ProcessKind::WsgiDaemon => KIND_DAEMON,
    };
    let Some(index) = view::claim(table, pid, start, kind, view::process_alive) else {
        log.event(
            0,
            crate::relay::Level::Warn,
            "no free slot in the status table; this relay is not on the status page",
        );
        return (log, None);
    };
    let slot = &table.slots[index];
    for (i, (server, port)) in listeners.iter().enumerate() {
        slot.set_listener(i, server, *port);
    }
    slot.running.store(1, Relaxed);
    let counting: Arc<dyn EventLog> = Arc::new(CountingLog::new(log, slot));
    (counting, Some(StatusSlot { table, index, pid }))
}

/// How a server is labelled on the page: its ServerName.
pub(super) fn server_name(server: Server) -> String {
    server
        .hostname()
        .map_or_else(|| "(no ServerName)".to_string(), |h| h.into_owned())
}

fn snapshot() -> Vec<view::ProcessView> {
    table().map_or_else(Vec::new, |t| view::snapshot(t, view::process_alive))
}

/// The handler for `SetHandler amqp-heartbeat-status` (the shim checked
/// the handler name and the method): HTML, `?json`, `?metrics`, `?health`.
///
/// # Safety
/// `r` is the live request; `args` is NULL or its query string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_status_handler(r: *mut request_rec, args: *const c_char) -> c_int {
    // SAFETY: NULL or the request's query string, alive during the request.
    let args = unsafe { c_str(args) }.map(|a| a.to_string_lossy().into_owned());
    // SAFETY: r is the live request; its server is one of httpd's.
    let server = unsafe { Server::from_raw(r.as_ref().map_or(std::ptr::null(), |r| r.server)) };
    boundary("status handler", server, 500, || {
        let processes = snapshot();
        let now = unix_ms_now();
        let (status, content_type, body) = match render::format_of(args.as_deref().unwrap_or("")) {
            render::Format::Json => (200, "application/json", render::json(&processes, now)),
            render::Format::Metrics => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                render::metrics(&processes, now),
            ),
            render::Format::Health => match render::health(&processes, now) {
                Ok(text) => (200, "text/plain; charset=utf-8", text),
                Err(text) => (503, "text/plain; charset=utf-8", text),
            },
            render::Format::Html => (
                200,
                "text/html; charset=utf-8",
                render::html(&processes, now),
            ),
        };
        respond(r, status, content_type, &body);
        OK as c_int
    })
}

/// mod_status's `status_hook`: summary lines on server-status (`short`:
/// the `?auto` form).
///
/// # Safety
/// `r` is the live request being answered by mod_status.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_status_summary(r: *mut request_rec, short: c_int) -> c_int {
    // SAFETY: r is the live request; its server is one of httpd's.
    let server = unsafe { Server::from_raw(r.as_ref().map_or(std::ptr::null(), |r| r.server)) };
    boundary("status hook", server, OK as c_int, || {
        let text = render::summary(&snapshot(), unix_ms_now(), short != 0);
        respond(r, 0, "", &text);
        OK as c_int
    })
}

/// Write `body` (status 0 and an empty type: leave them as they are).
fn respond(r: *mut request_rec, status: c_int, content_type: &str, body: &str) {
    let content_type = super::ffi::c_string(content_type);
    // SAFETY: r is the live request (callers' contract); the strings
    // outlive the call, which copies what it keeps into the request pool.
    unsafe {
        amqphb_respond(
            r,
            status,
            content_type.as_ptr(),
            body.as_ptr().cast(),
            body.len(),
        )
    };
}
