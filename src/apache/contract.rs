//! Compile-time checks of the C/Rust contract (`apache/amqphb.h`, read by
//! both the shim and bindgen): every entry point defined here has the type
//! the header gives it, and every directive index the command table passes
//! names the same [`Directive`] on both sides. A mismatch is a build error,
//! not a crash in httpd.

use super::bindings::{
    amqp_heartbeat_daemon_start_fn, amqp_heartbeat_daemon_stop_fn, amqphb_check_config_fn,
    amqphb_child_init_fn, amqphb_child_stopping_fn, amqphb_create_server_config_fn,
    amqphb_directive_fn, amqphb_directive_index as index, amqphb_fixups_fn,
    amqphb_merge_server_config_fn, amqphb_post_config_fn, amqphb_status_handler_fn,
    amqphb_status_summary_fn,
};
use super::{check, child, daemon, server_config, status};
use crate::config::Directive;

const _: amqphb_create_server_config_fn = Some(server_config::amqphb_create_server_config);
const _: amqphb_merge_server_config_fn = Some(server_config::amqphb_merge_server_config);
const _: amqphb_directive_fn = Some(server_config::amqphb_directive);
const _: amqphb_check_config_fn = Some(check::amqphb_check_config);
const _: amqphb_child_init_fn = Some(child::amqphb_child_init);
const _: amqphb_child_init_fn = Some(child::amqphb_child_init_last);
const _: amqphb_child_stopping_fn = Some(child::amqphb_child_stopping);
const _: amqphb_fixups_fn = Some(child::amqphb_fixups);
const _: amqphb_post_config_fn = Some(status::amqphb_post_config);
const _: amqphb_status_handler_fn = Some(status::amqphb_status_handler);
const _: amqphb_status_summary_fn = Some(status::amqphb_status_summary);
const _: amqp_heartbeat_daemon_start_fn = Some(daemon::amqp_heartbeat_daemon_start);
const _: amqp_heartbeat_daemon_stop_fn = Some(daemon::amqp_heartbeat_daemon_stop);

/// The C index and the Rust directive agree, both ways.
const fn same(c: index::Type, directive: Directive) -> bool {
    matches!(Directive::from_index(c), Some(d) if d as u32 == directive as u32)
}

const _: () = {
    assert!(same(index::AMQPHB_BROKER, Directive::Broker));
    assert!(same(index::AMQPHB_INTERVAL, Directive::Interval));
    assert!(same(
        index::AMQPHB_CONNECT_TIMEOUT,
        Directive::ConnectTimeout
    ));
    assert!(same(index::AMQPHB_ENV, Directive::Env));
    assert!(same(
        index::AMQPHB_MAX_CONNECTIONS,
        Directive::MaxConnections
    ));
    assert!(same(
        index::AMQPHB_TLS_CA_CERTIFICATE_FILE,
        Directive::TlsCaCertificateFile
    ));
    assert!(same(index::AMQPHB_CHILD_RELAY, Directive::ChildRelay));
    // No directive beyond the C table's, none missing from it.
    assert!(Directive::from_index(index::AMQPHB_DIRECTIVE_COUNT).is_none());
    assert!(Directive::from_index(index::AMQPHB_DIRECTIVE_COUNT - 1).is_some());
};
