//! Per-server configuration records (create/merge) and the directive
//! handler. All parsing and checking is in [`crate::config`]; this file only
//! moves values across the FFI boundary.

use super::bindings::{apr_pool_t, apr_pstrdup, cmd_parms, server_rec};
use super::ffi::{Server, boundary, c_str, c_string, pool_owned};
use crate::config::{Directive, ServerConfig};
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::ptr;

/// What httpd stores in this module's slot of each server's config vector.
#[derive(Clone, Debug, Default)]
pub(super) struct ModuleConfig {
    pub(super) core: ServerConfig,
    /// `file:line` of the `AMQPHeartbeatBroker` the brokers come from, so
    /// messages about the main server can point at a line.
    pub(super) broker_at: Option<String>,
}

impl ModuleConfig {
    fn merge(base: &ModuleConfig, add: &ModuleConfig) -> ModuleConfig {
        ModuleConfig {
            core: ServerConfig::merge(&base.core, &add.core),
            broker_at: if add.core.brokers.is_some() {
                add.broker_at.clone()
            } else {
                base.broker_at.clone()
            },
        }
    }
}

/// `create_server_config`: a fresh, empty record owned by `pool` (pconf).
///
/// # Safety
/// `pool` is NULL or a live APR pool. Returns NULL only if the record could
/// not be made; the other entries treat a NULL record as "not configured".
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_create_server_config(
    pool: *mut apr_pool_t,
    _s: *mut server_rec,
) -> *mut c_void {
    // The server_rec is still being built here, so a panic is logged
    // without it.
    boundary(
        "create_server_config",
        Server::NONE,
        ptr::null_mut(),
        || {
            // SAFETY: httpd passes its live configuration pool.
            unsafe { pool_owned(pool, ModuleConfig::default()) }.cast()
        },
    )
}

/// `merge_server_config`: a NEW record, `add` (the vhost) over `base` (the
/// main server); the inputs are not touched.
///
/// # Safety
/// `pool` is NULL or a live APR pool; `base` and `add` are NULL or records
/// returned by create/merge, alive for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_merge_server_config(
    pool: *mut apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
) -> *mut c_void {
    // Should merging panic, the vhost keeps its own, unmerged record.
    boundary("merge_server_config", Server::NONE, add, || {
        // SAFETY: NULL or our records (contract above), only read here.
        let (base, add) = unsafe {
            (
                base.cast::<ModuleConfig>().as_ref(),
                add.cast::<ModuleConfig>().as_ref(),
            )
        };
        let merged = match (base, add) {
            (Some(base), Some(add)) => ModuleConfig::merge(base, add),
            (None, Some(only)) | (Some(only), None) => only.clone(),
            (None, None) => ModuleConfig::default(),
        };
        // SAFETY: httpd passes its live configuration pool.
        unsafe { pool_owned(pool, merged) }.cast()
    })
}

/// The handler of every `AMQPHeartbeat*` directive. `directive_index` is a
/// [`Directive`] value; `argv` holds `argc` NUL-terminated arguments.
/// Returns NULL on success, or an error message allocated in `cmd->pool`
/// (or a static one) that httpd prints as the syntax error.
///
/// # Safety
/// `cmd` is NULL or the live `cmd_parms` of the directive being processed;
/// `argv` points to `argc` valid C strings (any may be NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_directive(
    cmd: *mut cmd_parms,
    directive_index: c_uint,
    argc: c_int,
    argv: *const *const c_char,
) -> *const c_char {
    // SAFETY: NULL or live (contract above); only read.
    let Some(cmd) = (unsafe { cmd.as_ref() }) else {
        return c"AMQPHeartbeat: directive handler called without cmd_parms".as_ptr();
    };
    // SAFETY: cmd->server is the server_rec the directive configures.
    let server = unsafe { Server::from_raw(cmd.server) };
    let on_panic =
        c"AMQPHeartbeat: internal error in the directive handler (see the error log)".as_ptr();
    boundary("directive handler", server, on_panic, || {
        // SAFETY: argv/argc as given by the shim (contract above).
        let args = unsafe { arguments(argc, argv) };
        match apply(cmd, server, directive_index, args) {
            Ok(()) => ptr::null(),
            Err(message) => pool_string(cmd.pool, &message),
        }
    })
}

/// The arguments as C strings, in order; a NULL entry is skipped.
///
/// # Safety
/// `argv` points to `argc` pointers, each NULL or a valid C string that
/// lives as long as the directive's processing.
unsafe fn arguments<'a>(argc: c_int, argv: *const *const c_char) -> Vec<&'a std::ffi::CStr> {
    let count = usize::try_from(argc).unwrap_or(0);
    if argv.is_null() || count == 0 {
        return Vec::new();
    }
    // SAFETY: argv holds argc pointers (contract above).
    let pointers = unsafe { std::slice::from_raw_parts(argv, count) };
    // SAFETY: each is NULL or a valid C string (contract above).
    pointers
        .iter()
        .filter_map(|&p| unsafe { c_str(p) })
        .collect()
}

fn apply(
    cmd: &cmd_parms,
    mut server: Server,
    index: c_uint,
    args: Vec<&std::ffi::CStr>,
) -> Result<(), String> {
    let directive = Directive::from_index(index).ok_or_else(|| {
        format!("AMQPHeartbeat: unknown directive number {index} (C shim and Rust disagree)")
    })?;
    let name = directive.name();
    let mut texts = Vec::with_capacity(args.len());
    for (n, arg) in args.iter().enumerate() {
        let text = arg.to_str().map_err(|_| {
            format!(
                "{name}: argument {} ('{}') is not valid UTF-8",
                n + 1,
                arg.to_string_lossy()
            )
        })?;
        texts.push(text);
    }
    // SAFETY: httpd runs directive handlers one at a time and nothing else
    // holds a reference to a configuration record during parsing.
    let config = unsafe { server.config_mut() }.ok_or_else(|| {
        format!("{name}: this server has no configuration record (module initialisation failed)")
    })?;
    config.core.apply(directive, &texts)?;
    if directive == Directive::Broker {
        config.broker_at = directive_location(cmd);
    }
    Ok(())
}

/// `file:line` of the directive being processed.
fn directive_location(cmd: &cmd_parms) -> Option<String> {
    // SAFETY: cmd->directive is NULL or the live config tree node of this
    // directive (pconf), and its filename NULL or a string in pconf.
    let (file, line) = unsafe {
        let node = cmd.directive.as_ref()?;
        (c_str(node.filename)?, node.line_num)
    };
    Some(format!("{}:{line}", file.to_string_lossy()))
}

/// Copy a message into `pool` for httpd to print; a static message when the
/// copy fails, never NULL (which would mean success).
fn pool_string(pool: *mut apr_pool_t, message: &str) -> *const c_char {
    let fallback =
        c"AMQPHeartbeat: invalid directive (the error message could not be allocated)".as_ptr();
    if pool.is_null() {
        return fallback;
    }
    let text = c_string(message);
    // SAFETY: pool is cmd->pool, live while the configuration is read;
    // apr_pstrdup copies the NUL-terminated text.
    let copy = unsafe { apr_pstrdup(pool, text.as_ptr()) };
    if copy.is_null() { fallback } else { copy }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_broker(url: &str, at: &str) -> ModuleConfig {
        let mut config = ModuleConfig::default();
        config.core.apply(Directive::Broker, &[url]).unwrap();
        config.broker_at = Some(at.to_string());
        config
    }

    #[test]
    fn merge_points_at_the_broker_line_it_took() {
        let main = with_broker("amqp://a/", "main.conf:3");
        let mut vhost = ModuleConfig::default();
        vhost.core.apply(Directive::Interval, &["5"]).unwrap();
        let merged = ModuleConfig::merge(&main, &vhost);
        assert_eq!(merged.broker_at.as_deref(), Some("main.conf:3"));
        assert_eq!(merged.core.interval_secs, Some(5));

        let own = with_broker("amqp://b/", "vhost.conf:9");
        let merged = ModuleConfig::merge(&main, &own);
        assert_eq!(merged.broker_at.as_deref(), Some("vhost.conf:9"));
        assert_eq!(main.broker_at.as_deref(), Some("main.conf:3"));
    }
}
