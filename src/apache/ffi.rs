//! Small helpers shared by every entry point: the panic boundary, C
//! strings, a handle on `server_rec`, the log bridge and pool cleanups.

use super::bindings::{
    amqphb_log, amqphb_module_config, apr_pool_cleanup_null, apr_pool_cleanup_register, apr_pool_t,
    apr_status_t, server_rec,
};
use super::server_config::ModuleConfig;
use std::borrow::Cow;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

// amqphb_log and amqphb_module_config are defined in the C shim (they need
// httpd macros: ap_log_error's module index, ap_get_module_config) and
// declared in apache/amqphb.h, from which bindgen takes them.

/// Run an entry point's body; a panic is logged at error level on `server`
/// and `on_panic` returned instead of unwinding into httpd.
pub(super) fn boundary<R>(entry: &str, server: Server, on_panic: R, body: impl FnOnce() -> R) -> R {
    // The state a panicking body leaves behind is either discarded or only
    // read by later entries that re-validate it, so observing it is fine.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            server.log(
                super::bindings::APLOG_ERR,
                &format!(
                    "internal error in {entry}: {}",
                    crate::relay::panic_guard::message(payload.as_ref())
                ),
            );
            on_panic
        }
    }
}

/// A C string for a Rust message; an interior NUL (never expected) becomes
/// U+FFFD instead of failing.
pub(super) fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\u{fffd}")).unwrap_or_default()
}

/// Read a NUL-terminated C string, if the pointer is not NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub(super) unsafe fn c_str<'a>(ptr: *const c_char) -> Option<&'a CStr> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: non-NULL, and the caller guarantees termination and lifetime.
        Some(unsafe { CStr::from_ptr(ptr) })
    }
}

/// A `server_rec` from httpd's configuration (main server or vhost), or
/// none. Keeping only the address makes it `Copy`, `Send` and `Sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Server(*const server_rec);

// SAFETY: a Server is only created from httpd's server_recs, which live in
// pconf: allocated before any hook of ours runs, never changed after the
// configuration phase and freed only when pconf is cleared, which in a child
// happens after the relay thread (the only other thread holding a Server)
// was stopped or muted (see child.rs). Every use is a read, and the log
// call it feeds, ap_log_error, is thread-safe.
unsafe impl Send for Server {}
// SAFETY: as for Send: shared use is read-only.
unsafe impl Sync for Server {}

impl Server {
    /// No server: logs go where httpd sends server-less messages (stderr
    /// during start-up, the main error log afterwards).
    pub(super) const NONE: Server = Server(std::ptr::null());

    /// # Safety
    /// `s` is NULL or one of httpd's server_recs (see the Send impl).
    pub(super) unsafe fn from_raw(s: *const server_rec) -> Server {
        Server(s)
    }

    /// The key under which per-server state of the child is kept.
    pub(super) fn key(self) -> usize {
        self.0 as usize
    }

    fn rec(&self) -> Option<&server_rec> {
        // SAFETY: NULL or a live, no longer mutated server_rec (type invariant).
        unsafe { self.0.as_ref() }
    }

    /// Every server of the configuration, main server first.
    pub(super) fn all(self) -> Vec<Server> {
        let mut servers = Vec::new();
        let mut next = self;
        while let Some(rec) = next.rec() {
            servers.push(next);
            // The list links httpd's server_recs only.
            next = Server(rec.next);
        }
        servers
    }

    pub(super) fn is_virtual(self) -> bool {
        self.rec().is_some_and(|r| r.is_virtual != 0)
    }

    pub(super) fn hostname(&self) -> Option<Cow<'_, str>> {
        // SAFETY: server_hostname is NULL or a string in pconf, like the record.
        self.rec()
            .and_then(|r| unsafe { c_str(r.server_hostname) })
            .map(CStr::to_string_lossy)
    }

    /// Where the `<VirtualHost>` block starts (`file:line`), when known.
    pub(super) fn defined_at(&self) -> Option<String> {
        let rec = self.rec()?;
        // SAFETY: defn_name is NULL or a string in pconf, like the record.
        let file = unsafe { c_str(rec.defn_name) }?;
        Some(format!(
            "{}:{}",
            file.to_string_lossy(),
            rec.defn_line_number
        ))
    }

    /// This module's configuration of the server; `None` when create failed.
    pub(super) fn config(&self) -> Option<&ModuleConfig> {
        let rec = self.rec()?;
        // SAFETY: rec is a live server_rec; the shim reads its module_config
        // vector, whose slot for this module is NULL or a pointer returned by
        // our create/merge (server_config.rs), alive until pconf is cleared.
        // Nothing mutates it outside the single-threaded directive phase.
        unsafe { amqphb_module_config(rec).cast::<ModuleConfig>().as_ref() }
    }

    /// This module's configuration of the server, for the directive
    /// handlers.
    ///
    /// # Safety
    /// No other reference to this server's configuration is alive: httpd
    /// runs directive handlers one at a time, before any hook of ours.
    pub(super) unsafe fn config_mut(&mut self) -> Option<&mut ModuleConfig> {
        let rec = self.rec()?;
        // SAFETY: as in `config`; exclusive by the caller's guarantee.
        unsafe { amqphb_module_config(rec).cast::<ModuleConfig>().as_mut() }
    }

    /// Log through the shim's `ap_log_error` (this module's index, so
    /// `LogLevel amqp_heartbeat:LEVEL` applies).
    pub(super) fn log(self, level: u32, message: &str) {
        let message = c_string(message);
        let level = c_int::try_from(level).unwrap_or(c_int::MAX);
        // SAFETY: the server is NULL or live (type invariant), which
        // ap_log_error accepts; message is NUL-terminated and outlives the
        // call; the shim formats it with "%s", so '%' in it is harmless.
        unsafe { amqphb_log(self.0, level, message.as_ptr()) }
    }
}

/// Hand `value` to `pool`: it is dropped when the pool is cleared or
/// destroyed. Returns the pointer to store in httpd's structures, or NULL
/// (value dropped at once) when there is no pool.
///
/// # Safety
/// `pool` is NULL or a live APR pool of this process.
pub(super) unsafe fn pool_owned<T>(pool: *mut apr_pool_t, value: T) -> *mut T {
    if pool.is_null() {
        return std::ptr::null_mut();
    }
    let ptr = Box::into_raw(Box::new(value));
    // SAFETY: pool is live; ptr is a leaked Box that only drop_boxed::<T>
    // frees, once, when the pool runs its cleanups. Child processes that exec
    // run apr_pool_cleanup_null, so a forked CGI never frees it.
    unsafe {
        apr_pool_cleanup_register(
            pool,
            ptr.cast(),
            Some(drop_boxed::<T>),
            Some(apr_pool_cleanup_null),
        );
    }
    ptr
}

/// The pool cleanup registered by [`pool_owned`].
unsafe extern "C" fn drop_boxed<T>(data: *mut c_void) -> apr_status_t {
    boundary("pool cleanup", Server::NONE, 0, || {
        if !data.is_null() {
            // SAFETY: data is the Box pointer pool_owned::<T> registered;
            // APR runs a cleanup once, so it is freed exactly once.
            drop(unsafe { Box::from_raw(data.cast::<T>()) });
        }
        0
    })
}
