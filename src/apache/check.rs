//! The cross-server configuration check (`check_config` hook), and how a
//! server is named in messages.

use super::bindings::{APLOG_EMERG, HTTP_INTERNAL_SERVER_ERROR, OK, server_rec};
use super::ffi::{Server, boundary};
use crate::config::{NamedServer, ServerConfig, check_env_conflicts};
use std::ffi::c_int;

/// "main server (FILE:LINE)" or "virtual host NAME (FILE:LINE)", for
/// messages that must let the operator find the server.
pub(super) fn describe(server: Server) -> String {
    if server.is_virtual() {
        let name = server
            .hostname()
            .map(|h| h.into_owned())
            .unwrap_or_else(|| "(no ServerName)".to_string());
        match server.defined_at() {
            Some(at) => format!("virtual host {name} ({at})"),
            None => format!("virtual host {name}"),
        }
    } else {
        // The main server has no <VirtualHost> line; point at its broker.
        match server.config().and_then(|c| c.broker_at.clone()) {
            Some(at) => format!("main server ({at})"),
            None => "main server".to_string(),
        }
    }
}

/// `check_config`: runs after the vhost configs are merged, for `httpd -t`
/// and for every start and restart. A conflict is logged and fails the
/// configuration (httpd then prints "Configuration Failed" and exits).
///
/// # Safety
/// `s` is NULL or httpd's main server_rec (the head of the server list).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn amqphb_check_config(s: *mut server_rec) -> c_int {
    // SAFETY: NULL or the main server (contract above).
    let main = unsafe { Server::from_raw(s) };
    let failed = HTTP_INTERNAL_SERVER_ERROR as c_int;
    // A panic here is a bug found at start-up, with the operator watching:
    // failing the start is safer than running an unchecked configuration.
    boundary("check_config", main, failed, || {
        let servers = main.all();
        let unconfigured = ServerConfig::default();
        let named: Vec<NamedServer<'_>> = servers
            .iter()
            .map(|s| NamedServer {
                description: describe(*s),
                config: s.config().map_or(&unconfigured, |c| &c.core),
            })
            .collect();
        match check_env_conflicts(&named) {
            Ok(()) => OK as c_int,
            Err(message) => {
                main.log(APLOG_EMERG, &message);
                failed
            }
        }
    })
}
